"""ONNX Runtime target: fp32 (graph-optimized), fp16, int8 (static QDQ or dynamic), int4 (MatMulNBits).

Every precision starts from the fp32 graph after ONNX Runtime's transformer fusions, so the
compiled files differ from the fp32 artifact only in what the precision changes.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edgefm.errors import EdgefmError
from edgefm.spec import Precision
from edgefm.targets.base import CompileRequest, Scheme, Target, first_and_last

MATMUL_CONV = ["MatMul", "Gemm", "Conv"]
# fp16 fallbacks: normalisation and softmax overflow or lose precision first in ViTs.
FP16_SENSITIVE = ["LayerNormalization", "SkipLayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt"]
FP16_SENSITIVE_MORE = FP16_SENSITIVE + ["Gelu", "BiasGelu", "QuickGelu", "FastGelu", "Erf", "Exp", "Div"]


@dataclass(frozen=True)
class OnnxRuntimeOptions:
    int8_mode: str = "static"  # "static" (QDQ, calibrated) or "dynamic" (activations quantized at run time)
    int4_group_size: int = 32  # weights per quantization block for MatMulNBits (16, 32, 64, 128, ...)
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
    """ONNX Runtime's quantizers log every node at INFO and advice at WARNING on the root logger."""
    logging.disable(logging.WARNING)
    try:
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


class OnnxRuntimeTarget(Target):
    name = "onnxruntime"
    runtime = "onnxruntime"
    precisions = (Precision.FP32, Precision.FP16, Precision.INT8, Precision.INT4)
    options_class = OnnxRuntimeOptions
    requires = ("onnx", "onnxruntime.quantization")

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
            # Quantizing only the matrix products is the usual choice for transformers: the element-wise
            # ops (Add, Mul, Softmax, norms) cost little and lose the most accuracy in int8.
            return [Scheme("qdq-matmul-conv", {"op_types": MATMUL_CONV, "exclude_ends": False}),
                    Scheme("qdq-matmul-conv-ends-float", {"op_types": MATMUL_CONV, "exclude_ends": True}),
                    Scheme("qdq-matmul", {"op_types": ["MatMul"], "exclude_ends": True})]
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
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

        exclude = _ends(base, MATMUL_CONV) if params["exclude_ends"] else []
        if options.int8_mode == "dynamic":
            quantize_dynamic(str(base), str(out), op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                             weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                             use_external_data_format=_external(request))
            return
        quantize_static(str(base), str(out), _FeedReader(request.calibration_feeds), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=params["op_types"], per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                        use_external_data_format=_external(request))

    def _int4(self, base: Path, out: Path, request: CompileRequest, options: OnnxRuntimeOptions, params: dict) -> None:
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        quantizer = MatMulNBitsQuantizer(onnx.load(str(base)), block_size=params["block"], is_symmetric=params["symmetric"],
                                         accuracy_level=options.int4_accuracy_level or None,
                                         nodes_to_exclude=_ends(base, ["MatMul"]) if params["exclude_ends"] else [])
        quantizer.process()
        quantizer.model.save_model_to_file(str(out), use_external_data_format=_external(request))


TARGET = OnnxRuntimeTarget()
