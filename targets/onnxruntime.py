"""ONNX Runtime target: fp32 (graph-optimized), fp16, int8 (static QDQ or dynamic), int4 (MatMulNBits).

Every precision starts from the fp32 graph after ONNX Runtime's transformer fusions, so the
compiled files differ from the fp32 artifact only in what the precision changes.
"""
from __future__ import annotations

import copy
import logging
import sys
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

from edgefm.contract.errors import EdgefmError
from edgefm.contract.spec import Precision
from edgefm.targets.base import CompileRequest, Scheme, Target, first_and_last, option

MATMUL_CONV = ["MatMul", "Gemm", "Conv"]
# fp16 fallbacks: normalisation and softmax overflow or lose precision first in ViTs.
FP16_SENSITIVE = ["LayerNormalization", "SkipLayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt"]
FP16_SENSITIVE_MORE = FP16_SENSITIVE + ["Gelu", "BiasGelu", "QuickGelu", "FastGelu", "Erf", "Exp", "Div"]


@dataclass(frozen=True)
class OnnxRuntimeOptions:
    int8_mode: str = option("static", "static (calibrated QDQ) or dynamic (activations quantized at run time).",
                            choices=("static", "dynamic"), precisions=("int8",))
    int4_group_size: int = option(32, "Weights per int4 scale.", kind=int, minimum=1,
                                  precisions=("int4",))  # the block of MatMulNBits
    int4_accuracy_level: int = 4  # MatMulNBits compute type: 4 = int8 (same accuracy, faster on CPUs), 0 = fp32
    fuse: bool = True  # ONNX Runtime transformer fusions (SkipLayerNorm, BiasGelu, ...)

    def __post_init__(self):
        if self.int8_mode not in ("static", "dynamic"):
            raise EdgefmError(f"int8 mode {self.int8_mode!r} is not one of: static, dynamic")
        block = self.int4_group_size
        if block < 16 or block & (block - 1):
            raise EdgefmError(f"int4 group size {block} must be a power of two >= 16 (e.g. 32, 64, 128)")
        if self.int4_accuracy_level not in (0, 1, 2, 3, 4):
            raise EdgefmError(f"int4 accuracy level {self.int4_accuracy_level} must be 0-4")


@contextmanager
def quiet_logs():
    """ONNX Runtime's quantizers log every node at INFO and advice at WARNING on the root logger, and its
    histogram calibrators print to stdout, where edgefm's result tables go."""
    logging.disable(logging.WARNING)
    try:
        with redirect_stdout(sys.stderr):
            yield
    finally:
        logging.disable(logging.NOTSET)


class _FeedReader:
    """onnxruntime.quantization's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: list[dict]):
        self._feeds = feeds
        self._iter = iter(feeds)

    def get_next(self):
        return next(self._iter, None)

    def rewind(self):
        self._iter = iter(self._feeds)


def _external(request: CompileRequest) -> bool:
    return bool(request.entry.data_files)


def _fusable(options: OnnxRuntimeOptions, entry) -> bool:
    """ORT's Python fusion passes hold ~5 copies of the weights (16.7 GB peak for the 3.4 GB SD 1.5 UNet,
    measured; ORT's own graph optimizations, which run at load anyway, peak at 3.7 GB): graphs past the
    protobuf limit (external data) skip them."""
    return options.fuse and not (entry is not None and entry.data_files)


def _ends(path: Path, op_types: list[str]) -> list[str]:
    import onnx

    return first_and_last([n.name for n in onnx.load(str(path), load_external_data=False).graph.node
                           if n.op_type in op_types])


def largest_same_shape_group(feeds: list[dict]) -> list[dict]:
    """The feeds sharing the most common input shapes: ONNX Runtime's histogram calibrators (entropy,
    distribution) stack each tensor across feeds, so they fail on SAM 2's varying point / memory counts."""
    groups: dict[tuple, list[dict]] = {}
    for feed in feeds:
        groups.setdefault(tuple((k, v.shape) for k, v in sorted(feed.items())), []).append(feed)
    return max(groups.values(), key=len)


def constant_names(graph) -> set[str]:
    """Tensors fixed in the graph: initializers and Constant outputs (weights, tables)."""
    return {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}


def _with_weights(path: Path, op_types: list[str]) -> list[str]:
    """Nodes of `op_types` with a constant (weight) operand; for Gather, a constant table (data, not indices)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    constants = constant_names(graph)
    return [n.name for n in graph.node if n.op_type in op_types
            and (n.input[0] in constants if n.op_type == "Gather" else any(i in constants for i in n.input))]


class OnnxRuntimeTarget(Target):
    name = "onnxruntime"
    runtime = "onnxruntime"
    precisions = (Precision.FP32, Precision.FP16, Precision.INT8, Precision.INT4)
    options_class = OnnxRuntimeOptions
    default = True  # onnxruntime is a runtime dependency: its artifacts run wherever edgefm installs
    demo_precisions = ("fp32", "fp16", "int8", "int4")
    demo_every_family = True
    requires = ("onnx", "onnxruntime.quantization")

    def uses_calibration(self, precision: Precision, scheme: Scheme, options: OnnxRuntimeOptions) -> bool:
        dynamic = precision is Precision.INT8 and options.int8_mode == "dynamic"  # ranges taken at run time
        return not dynamic and super().uses_calibration(precision, scheme, options)

    def schemes(self, precision: Precision, options: OnnxRuntimeOptions, entry=None) -> list[Scheme]:
        if precision is Precision.FP32:
            if not _fusable(options, entry):
                return [Scheme("unfused", {"fuse": False})]
            return [Scheme("fused", {"fuse": True}), Scheme("unfused", {"fuse": False})]
        if precision is Precision.FP16:
            return [Scheme("all-fp16", {"block": []}),
                    Scheme("norm-softmax-fp32", {"block": FP16_SENSITIVE}),
                    Scheme("norm-softmax-act-fp32", {"block": FP16_SENSITIVE_MORE})]
        if precision is Precision.INT8 and options.int8_mode == "dynamic":
            return [Scheme("dynamic-matmul", {"exclude_ends": False}),
                    Scheme("dynamic-matmul-ends-float", {"exclude_ends": True})]
        if precision is Precision.INT8:
            # Only the products with a weight operand, the usual choice for transformers: element-wise ops
            # (Add, Mul, Softmax, norms) and attention's activation x activation products cost little and
            # lose the most in int8. Entropy ranges first: trained ViTs carry outlier activations that min/max
            # ranges spend the int8 grid on (trained DINOv2-S/14 at 224: patch-match agreement 0.958 with
            # entropy ranges, 0.903 with min/max over every product).
            # Embedding tables (Gather of a constant: CLIP's token embeddings are 40% of its text encoder) are
            # quantized too on the first rungs; the last keeps them float.
            tables = {"op_types": MATMUL_CONV + ["Gather"], "weights_only": True}
            weights = {"op_types": MATMUL_CONV, "weights_only": True}
            return [Scheme("qdq-weights-entropy", {**tables, "calibration": "entropy", "exclude_ends": False}),
                    Scheme("qdq-weights-minmax", {**tables, "calibration": "minmax", "exclude_ends": False}),
                    Scheme("qdq-weights-entropy-ends-float", {**weights, "calibration": "entropy", "exclude_ends": True})]
        block = options.int4_group_size
        ladder = [Scheme(f"int4-sym-block{block}", {"symmetric": True, "block": block, "exclude_ends": False}),
                  Scheme(f"int4-asym-block{block}", {"symmetric": False, "block": block, "exclude_ends": False}),
                  Scheme(f"int4-asym-block{block}-ends-float", {"symmetric": False, "block": block, "exclude_ends": True})]
        if block > 16:  # finer blocks cost a little size and recover accuracy
            ladder.append(Scheme(f"int4-asym-block{block // 2}", {"symmetric": False, "block": block // 2,
                                                                   "exclude_ends": False}))
        return ladder

    def compile(self, request: CompileRequest, options: OnnxRuntimeOptions) -> str:
        with quiet_logs():
            return self._compile(request, options)

    def _compile(self, request: CompileRequest, options: OnnxRuntimeOptions) -> str:
        out = request.out_dir / f"{request.component}.onnx"
        if request.precision is Precision.FP32:
            self._optimize(request, request.scheme.params["fuse"], out)
            return out.name
        base = self._fp32_base(request, options)
        params = request.scheme.params
        if request.precision is Precision.FP16:
            self._fp16(base, out, params["block"], _external(request))
        elif request.precision is Precision.INT8:
            self._int8(base, out, request, options, params)
        else:
            self._int4(base, out, request, options, params)
        return out.name

    # -- precisions ------------------------------------------------------------------------------
    def _fp32_base(self, request: CompileRequest, options: OnnxRuntimeOptions) -> Path:
        """The optimized fp32 graph every lower precision starts from, made once per component."""
        base = request.work_dir / f"{request.component}.fp32.onnx"
        if not base.exists():
            self._optimize(request, _fusable(options, request.entry), base)
        return base

    def _optimize(self, request: CompileRequest, fuse: bool, out: Path) -> None:
        from onnxruntime.transformers.optimizer import optimize_model

        arch = request.entry.options.get("arch", {})
        model = optimize_model(str(request.source), model_type=arch.get("model_type", "bert") if fuse else "bert",
                               num_heads=arch.get("num_heads", 0), hidden_size=arch.get("hidden_size", 0),
                               opt_level=1, only_onnxruntime=not fuse)
        model.save_model_to_file(str(out), use_external_data_format=_external(request))

    def _fp16(self, base: Path, out: Path, block: list[str], external: bool) -> None:
        import onnx
        from onnxruntime.transformers import float16
        from onnxruntime.transformers.onnx_model import OnnxModel

        model = OnnxModel(onnx.load(str(base)))
        model.convert_float_to_float16(keep_io_types=True, op_block_list=float16.DEFAULT_OP_BLOCK_LIST + block)
        model.save_model_to_file(str(out), use_external_data_format=external)

    def _int8(self, base: Path, out: Path, request: CompileRequest, options: OnnxRuntimeOptions, params: dict) -> None:
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )

        exclude = _ends(base, MATMUL_CONV) if params["exclude_ends"] else []
        if options.int8_mode == "dynamic":
            quantize_dynamic(str(base), str(out), op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                             weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                             use_external_data_format=_external(request))
            return
        method = {"entropy": CalibrationMethod.Entropy, "minmax": CalibrationMethod.MinMax}[params["calibration"]]
        feeds = request.calibration_feeds if method is CalibrationMethod.MinMax else largest_same_shape_group(
            request.calibration_feeds)
        quantize_static(str(base), str(out), _FeedReader(feeds), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=params["op_types"], per_channel=True,
                        nodes_to_quantize=_with_weights(base, params["op_types"]) if params["weights_only"] else None,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                        calibrate_method=method, use_external_data_format=_external(request))

    def _int4(self, base: Path, out: Path, request: CompileRequest, options: OnnxRuntimeOptions, params: dict) -> None:
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        # embedding tables (Gather of a constant) too, as GatherBlockQuantized; the per-layer search can restore them
        quantizer = MatMulNBitsQuantizer(onnx.load(str(base)), block_size=params["block"], is_symmetric=params["symmetric"],
                                         accuracy_level=options.int4_accuracy_level or None,
                                         nodes_to_exclude=_ends(base, ["MatMul"]) if params["exclude_ends"] else [],
                                         op_types_to_quantize=("MatMul", "Gather"))
        quantizer.process()
        quantizer.model.save_model_to_file(str(out), use_external_data_format=_external(request))

    # -- layers back in float (the per-layer search of edgefm.jobs.sensitivity) -----------------------
    def quantized_layers(self, request: CompileRequest, file: str) -> list[str]:
        import onnx

        return quantized_nodes(onnx.load(str(request.out_dir / file), load_external_data=False).graph)

    def restore_layers(self, request: CompileRequest, file: str, into: CompileRequest, options) -> str:
        import onnx

        model = onnx.load(str(request.out_dir / file))
        base = onnx.load(str(request.work_dir / f"{request.component}.fp32.onnx"))
        restore_nodes(model.graph, base.graph, set(into.scheme.params["float_layers"]))
        onnx.save_model(model, str(into.out_dir / file), save_as_external_data=_external(request),
                        all_tensors_to_one_file=True, location=f"{file}.data")
        return file


def quantized_nodes(graph) -> list[str]:
    """Products and tables that compute in reduced precision: reading a DequantizeLinear, or ONNX Runtime's
    block-quantized ops."""
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n.name for n in graph.node if n.op_type in ("MatMulNBits", "GatherBlockQuantized")
            or (n.op_type in MATMUL_CONV + ["Gather"] and any(i in dequantized for i in n.input))]


def restore_nodes(graph, base, layers: set[str]) -> None:
    """Swap each named quantized node for its fp32 original from the graph the quantizers started from (by name,
    else by output: int4 renames the nodes it quantizes), bring its float weights, and drop what no longer
    feeds anything. Written here because ONNX Runtime's quantizers can only exclude nodes by
    re-quantizing, which re-runs calibration for every trial of the search."""
    by_name, by_output = {n.name: n for n in base.node}, {n.output[0]: n for n in base.node}
    weights = {t.name: t for t in base.initializer}
    present = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}  # a QDQ bias: DQ output
    nodes, restored = [], set()
    for node in graph.node:
        if node.name in layers:
            original = copy.deepcopy(by_name.get(node.name) or by_output[node.output[0]])
            original.output[:] = node.output  # a QDQ product writing a graph output writes it under another name
            node = original
            restored.update(node.output)
            for name in node.input:
                if name in weights and name not in present:
                    graph.initializer.append(weights[name])
                    present.add(name)
        nodes.append(node)
    # What a restored node writes is no longer quantized for the float ops that read it (bias Add, reshapes):
    # they read the tensor, not DQ(Q(tensor)). Quantized products downstream keep their quantized input.
    quantized = {n.output[0]: n.input[0] for n in nodes if n.op_type == "QuantizeLinear" and n.input[0] in restored}
    bypass = {n.output[0]: quantized[n.input[0]] for n in nodes if n.op_type == "DequantizeLinear"
              and n.input[0] in quantized}
    for node in nodes:
        if node.op_type not in MATMUL_CONV + ["MatMulNBits"]:  # Gather: its output is what the table held
            for index, name in enumerate(node.input):
                node.input[index] = bypass.get(name, name)
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(nodes):  # nodes are in topological order: one backward sweep finds the live ones
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(node.input)
            needed.update(_read_in_subgraphs(node))
    del graph.node[:]
    graph.node.extend(reversed(kept))
    unused = [t for t in graph.initializer if t.name not in needed]
    for tensor in unused:
        graph.initializer.remove(tensor)


def _read_in_subgraphs(node) -> set[str]:
    """Every name the bodies of an If / Loop / Scan read (their own tensors too: keeping more is harmless)."""
    import onnx

    names = set()
    for attribute in node.attribute:
        bodies = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
        for body in bodies:
            for inner in body.node:
                names.update(inner.input)
                names.update(_read_in_subgraphs(inner))
    return names


TARGET = OnnxRuntimeTarget()
