"""The typed ONNX graphs TensorRT engines are built from, and the checks that need no TensorRT.

Everything that decides what an engine computes happens here, with onnx and ONNX Runtime's tools
(its calibrator records activation ranges, its static quantizer writes QDQ, its float16 converter
honours a node block list). NVIDIA ModelOpt's ONNX PTQ / AutoCast do the same jobs, but their `onnx`
extra pins onnxruntime-gpu on x86 Linux, which this CPU toolchain cannot carry.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from edgefm.contract.records import Check
from edgefm.contract.spec import Precision
from edgefm.targets.base import CompileRequest
from edgefm.targets.onnxruntime import (
    MATMUL_CONV,
    _ends,
    _FeedReader,
    constant_names,
    largest_same_shape_group,
    quantized_nodes,
    quiet_logs,
    restore_nodes,
)

FP16_MAX = 65504.0
PINS_SUFFIX = ".fp16_pins.json"  # the pin list travels with its graph (a data file of the component)
QDQ_TYPES = {Precision.INT8: "INT8", Precision.FP8: "FLOAT8E4M3FN", Precision.INT4: "INT4"}


def write(request: CompileRequest, options) -> str:
    """Write `<component>.onnx` (+ its pin list) for the request's precision and scheme; return the file name."""
    with quiet_logs():
        params, precision = request.scheme.params, request.precision
        pins = [] if precision is Precision.FP32 else fp16_pins(request, options.fp16_data_max)
        float_nodes = []  # matrix products the scheme leaves unquantized
        if precision in (Precision.INT8, Precision.FP8):
            float_nodes = _qdq(request, params, pins)
        elif precision is Precision.INT4:
            float_nodes = _int4_weights(request, params)
        return _typed(request, options, pins, float_nodes)


def _typed(request: CompileRequest, options, pins: list[str], float_nodes: list[str]) -> str:
    """`fp32_typed(request)` with the rest in fp16 but the pins, written with its pin list; the file name."""
    import onnx

    out, params = request.out_dir / f"{request.component}.onnx", request.scheme.params
    model = onnx.load(str(fp32_typed(request)))
    rest = "fp32" if request.precision is Precision.FP32 else params.get("rest", "fp16")
    if rest == "fp16":
        model = _to_fp16(model, pins, params.get("pin_ops", []))
    _save(model, out, bool(request.entry.data_files))
    record = {"data_max": options.fp16_data_max, "rest": rest, "nodes": pins if rest == "fp16" else [],
              "op_types": params.get("pin_ops", []), "not_quantized": sorted(set(float_nodes)),
              "ranges_from": f"{len(request.calibration_feeds)} calibration feeds, fp32 graph on ONNX Runtime"}
    (request.out_dir / f"{request.component}{PINS_SUFFIX}").write_text(json.dumps(record, indent=1) + "\n")
    return out.name


def quantized_layers(request: CompileRequest) -> list[str]:
    import onnx

    return quantized_nodes(onnx.load(str(fp32_typed(request)), load_external_data=False).graph)


def restore(request: CompileRequest, into: CompileRequest, options) -> str:
    """`request`'s quantized graph with `into`'s float_layers unquantized (their nodes and weights from the
    export; they then compute in the rest's precision, fp16 but for the pins), typed and written as `into`'s
    graph: no calibration runs again."""
    import onnx

    layers = into.scheme.params["float_layers"]
    with quiet_logs():
        model, source = onnx.load(str(fp32_typed(request))), onnx.load(str(request.source))
        # the export's names of the layers: int4 renames the nodes it quantizes, keeping what they write
        names, writes = {n.name for n in source.graph.node}, {n.name: n.output[0] for n in model.graph.node}
        original = {n.output[0]: n.name for n in source.graph.node}
        restored = [name if name in names else original[writes[name]] for name in layers]
        restore_nodes(model.graph, source.graph, set(layers))
        _save(model, fp32_typed(into), bool(request.entry.data_files))
        before = json.loads((request.out_dir / f"{request.component}{PINS_SUFFIX}").read_text())
        pins = fp16_pins(request, options.fp16_data_max)
        return _typed(into, options, pins, before["not_quantized"] + restored)


def fp32_typed(request: CompileRequest) -> Path:
    """The attempt's graph before its fp16 conversion: the export, or its quantized form (in the work dir)."""
    if request.precision in (Precision.FP32, Precision.FP16):
        return request.source
    return request.work_dir / f"{request.component}-{request.scheme.name}-{request.precision.value}.fp32-typed.onnx"


def fp16_pins(request: CompileRequest, data_max: float) -> list[str]:
    """Nodes that must stay fp32: a float input or output past `data_max` on the calibration feeds, or an
    initializer past fp16's range (ModelOpt AutoCast's rule). Computed once per component."""
    cache = request.work_dir / f"fp16_pins-{data_max:g}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(request.source))
    large = {name for name, peak in activation_peaks(request).items() if peak > data_max}
    large |= {init.name for init in model.graph.initializer if init.data_type == onnx.TensorProto.FLOAT
              and np.abs(numpy_helper.to_array(init)).max(initial=0.0) > FP16_MAX}
    pins = sorted(n.name for n in model.graph.node if large & {*n.input, *n.output})
    cache.write_text(json.dumps(pins))
    return pins


def activation_peaks(request: CompileRequest) -> dict[str, float]:
    """max |x| per tensor of the fp32 export over the calibration feeds (ONNX Runtime's MinMax calibrator)."""
    import numpy as np
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    calibrator = create_calibrator(str(request.source), op_types_to_calibrate=None,
                                   augmented_model_path=str(request.work_dir / "ranges.onnx"),
                                   calibrate_method=CalibrationMethod.MinMax,
                                   use_external_data_format=bool(request.entry.data_files))
    # one feed at a time, ranges merged as they come: one feed's intermediates in memory, not every feed's
    # (the calibrator's own `max_intermediate_outputs` drops the chunks it should merge, onnxruntime 1.32)
    for feed in request.calibration_feeds:
        calibrator.collect_data(_FeedReader([feed]))
    ranges = calibrator.compute_data()
    return {name: float(max(np.abs(data.range_value[0]).max(), np.abs(data.range_value[1]).max()))
            for name, data in ranges.data.items()}


def _qdq(request: CompileRequest, params: dict, pins: list[str]) -> list[str]:
    """Symmetric QDQ (TensorRT reads only zero-point-0 int8 / fp8) on the matrix products; pinned nodes stay
    float. Writes `fp32_typed(request)`; returns the products left float."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    qdq = fp32_typed(request)
    exclude = pins + (_ends(request.source, params["op_types"]) if params["exclude_ends"] else [])
    if params["weights_only"]:
        exclude += _activation_products(request.source)
    feeds = request.calibration_feeds
    if request.precision is Precision.FP8:  # per-tensor e4m3; ONNX Runtime's float8 path calibrates by distribution
        types = dict(activation_type=QuantType.QFLOAT8E4M3FN, weight_type=QuantType.QFLOAT8E4M3FN,
                     per_channel=False, calibrate_method=CalibrationMethod.Distribution)
        feeds = largest_same_shape_group(feeds)
    else:
        types = dict(activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                     calibrate_method=CalibrationMethod.MinMax)
    with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrator prints its progress
        quantize_static(str(request.source), str(qdq), _FeedReader(feeds),
                        quant_format=QuantFormat.QDQ, op_types_to_quantize=params["op_types"],
                        nodes_to_exclude=exclude, extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
                        use_external_data_format=bool(request.entry.data_files), **types)
    return exclude


def _activation_products(path: Path) -> list[str]:
    """MatMuls whose operands are both activations (attention's Q K^T and scores x V)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    constants = constant_names(graph)
    return [n.name for n in graph.node if n.op_type == "MatMul" and not constants & set(n.input)]


def _int4_weights(request: CompileRequest, params: dict) -> list[str]:
    """Block-wise symmetric int4 weights of MatMuls as DequantizeLinear (opset 21), activations stay float.
    Writes `fp32_typed(request)`; returns the MatMuls left float."""
    import onnx
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    exclude = _ends(request.source, ["MatMul"]) if params["exclude_ends"] else []
    quantizer = MatMulNBitsQuantizer(onnx.load(str(request.source)), block_size=params["block"], is_symmetric=True,
                                     quant_format=QuantFormat.QDQ, op_types_to_quantize=("MatMul",),
                                     nodes_to_exclude=exclude)
    quantizer.process()
    _save(quantizer.model.model, fp32_typed(request), bool(request.entry.data_files))
    return exclude


def _to_fp16(model, pins: list[str], pin_ops: list[str]):
    """float16 everywhere but the pinned nodes and op types (casts at their edges); inputs and outputs stay fp32."""
    from onnxruntime.transformers import float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    wrapped = OnnxModel(model)
    # DEFAULT_OP_BLOCK_LIST: ops ONNX Runtime has no fp16 CPU kernel for (Resize, TopK, ...): they stay fp32 so
    # the graph gated here is the one TensorRT builds.
    wrapped.convert_float_to_float16(keep_io_types=True, op_block_list=float16.DEFAULT_OP_BLOCK_LIST + pin_ops,
                                     node_block_list=pins)
    return wrapped.model


def _save(model, out: Path, external: bool) -> None:
    import onnx

    onnx.save_model(model, str(out), save_as_external_data=external, location=f"{out.name}.data")


# -- checks that need no TensorRT ------------------------------------------------------------------------------
def checks(request: CompileRequest, path: Path) -> list[Check]:
    """What TensorRT's ONNX parser and strongly typed builder need from the graph, read from the file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    nodes = list(model.graph.node)
    foreign = sorted({f"{n.domain}::{n.op_type}" for n in nodes if n.domain not in ("", "ai.onnx")})
    found = [Check("onnx_standard_ops_only", float(not foreign), 1.0,
                   detail={"foreign_ops": foreign} if foreign else {})]
    pins = json.loads((request.out_dir / f"{request.component}{PINS_SUFFIX}").read_text())
    qdq_type = QDQ_TYPES.get(request.precision)
    if qdq_type:
        asked = _quantizable(request.source, qdq_type) - set(pins.get("not_quantized", []))
        found += _qdq_checks(model, qdq_type, asked, _outputs(request.source, asked))
    if pins["rest"] == "fp16" and pins["nodes"]:
        found.append(_pins_check(model, pins["nodes"]))
    return found


def _quantizable(source: Path, qdq_type: str) -> set[str]:
    """Nodes of the fp32 export the precision quantizes: int4, MatMuls with a weight; int8 / fp8, the products."""
    import onnx

    graph = onnx.load(str(source), load_external_data=False).graph
    if qdq_type != "INT4":
        return {n.name for n in graph.node if n.op_type in MATMUL_CONV}
    weights = {i.name for i in graph.initializer}
    return {n.name for n in graph.node if n.op_type == "MatMul" and weights & set(n.input)}


def _outputs(source: Path, names: set[str]) -> set[str]:
    """What the named nodes of the export write."""
    import onnx

    return {n.output[0] for n in onnx.load(str(source), load_external_data=False).graph.node if n.name in names}


def _qdq_checks(model, qdq_type: str, asked: set[str], writes: set[str]) -> list[Check]:
    """Every product asked (found by name, or by what it `writes`: int4 renames the nodes it quantizes) reads a
    DequantizeLinear of the asked type, and every zero point is zero (TensorRT rejects others)."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    wanted = getattr(TensorProto, qdq_type)

    def quantized_type(node) -> int | None:  # weights: the stored tensor's type; activations: the zero point's
        for name in (node.input[0], node.input[2] if len(node.input) > 2 else ""):
            if name in inits and inits[name].data_type != TensorProto.FLOAT:
                return inits[name].data_type
        return None

    typed = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and quantized_type(n) == wanted}
    present = [n for n in model.graph.node if n.op_type in MATMUL_CONV and (n.name in asked or n.output[0] in writes)]
    unquantized = [n.name for n in present if not typed & set(n.input)]
    zero_points = [inits[n.input[2]] for n in model.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2] in inits]
    asymmetric = sorted({z.name for z in zero_points if np.any(numpy_helper.to_array(z).astype(np.float32) != 0)})
    # nothing asked (no products, or the scheme keeps the only ones float, e.g. SAM 2's one-conv mask prompt)
    return [Check(f"quantized_products_{qdq_type.lower()}", 1.0 - len(unquantized) / max(len(present), 1),
                  1.0 if present else 0.0, detail={"asked": len(present), **({"float": unquantized[:5]}
                                                                              if unquantized else {})}),
            Check("zero_points_zero", 1.0 - len(asymmetric) / max(len(zero_points), 1), 1.0,
                  detail={"nonzero": asymmetric[:5]} if asymmetric else {})]


def _pins_check(model, pinned: list[str]) -> Check:
    """Every pinned node computes in fp32 in the written graph (its float inputs and outputs are fp32)."""
    import onnx

    from edgefm.targets.tensorrt_fp16 import tensor_types

    types = tensor_types(model)
    wanted = set(pinned)
    halves = sorted(n.name for n in model.graph.node if n.name in wanted
                    and any(types.get(t) == onnx.TensorProto.FLOAT16 for t in [*n.input, *n.output]))
    present = sum(1 for n in model.graph.node if n.name in wanted)
    return Check("pinned_nodes_fp32", 1.0 - len(halves) / max(present, 1), 1.0,
                 detail={"pinned": present, **({"in_fp16": halves[:5]} if halves else {})})
