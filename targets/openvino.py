"""OpenVINO target: IR (xml + bin) in fp32, fp16 (compressed weights), int8 (NNCF PTQ), int4 (NNCF weights).

Every precision converts the exported fp32 ONNX graph with `openvino.convert_model`; NNCF then
quantizes it. The precision the device computes in is part of each scheme and goes into the
manifest, because OpenVINO's CPU plugin computes in bf16 by default wherever the CPU has bf16
instructions, which would silently change what an "fp32" artifact computes.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from dataclasses import dataclass

from edgefm.contract.errors import EdgefmError
from edgefm.contract.spec import Precision
from edgefm.targets.base import CompileRequest, Scheme, Target, first_and_last, option

QUANTIZABLE = ("MatMul", "Convolution")


@dataclass(frozen=True)
class OpenVinoOptions:
    device: str = option("CPU", "Where the artifact is validated and runs: CPU, GPU or NPU, as OpenVINO lists them.")
    # layers whose width the group does not divide get a smaller one
    int4_group_size: int = option(32, "Weights per int4 scale.", kind=int, minimum=1,
                                  precisions=("int4",))
    int4_ratio: float = option(1.0, "Share of linear layers in int4; the rest stay int8.", kind=float,
                               precisions=("int4",))

    def __post_init__(self):
        group = self.int4_group_size
        if group < 16 or group & (group - 1):
            raise EdgefmError(f"int4 group size {group} must be a power of two >= 16 (e.g. 32, 64, 128)")
        if not 0 < self.int4_ratio <= 1:
            raise EdgefmError(f"int4 ratio {self.int4_ratio} must be in (0, 1]: the share of layers in int4")


@contextlib.contextmanager
def quiet_nncf():
    """NNCF prints statistics tables and progress bars to stdout, where edgefm's result tables go."""
    from nncf.common.logging import nncf_logger

    level = nncf_logger.level
    nncf_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        nncf_logger.setLevel(level)


def _reduced_precision(device: str) -> str:
    """The device's own default compute precision (bf16 on CPUs with bf16 instructions, f16 on GPUs)."""
    import openvino as ov

    return ov.Core().get_property(device, "INFERENCE_PRECISION_HINT").get_type_name()


def _ends(model) -> list[str]:
    return first_and_last([op.get_friendly_name() for op in model.get_ordered_ops()
                           if op.get_type_name() in QUANTIZABLE])


class OpenVinoTarget(Target):
    name = "openvino"
    runtime = "openvino"
    precisions = (Precision.FP32, Precision.FP16, Precision.INT8, Precision.INT4)
    options_class = OpenVinoOptions
    demo_precisions = ("fp32", "fp16", "int8", "int4")
    demo_every_family = True
    requires = ("openvino", "nncf")

    def runtime_settings(self, precision: Precision, scheme: Scheme, options: OpenVinoOptions) -> dict:
        return {"device": scheme.params.get("device", options.device),
                "inference_precision": scheme.params.get("inference_precision")}

    def schemes(self, precision: Precision, options: OpenVinoOptions, entry=None) -> list[Scheme]:
        import openvino as ov

        from edgefm.runtimes.openvino import check_device

        check_device(ov.Core(), options.device)
        f32 = {"inference_precision": "f32", "device": options.device}
        if precision is Precision.FP32:
            return [Scheme("f32", f32)]
        if precision is Precision.FP16:
            ladder = [Scheme("fp16-weights-f32-compute", f32)]
            reduced = _reduced_precision(options.device)
            if reduced != "f32":  # try the faster native compute first; the gate decides
                ladder.insert(0, Scheme(f"fp16-weights-{reduced}-compute",
                                        {"inference_precision": reduced, "device": options.device}))
            return ladder
        if precision is Precision.INT8:
            # Global min/max activation ranges first: NNCF's default averages per-sample ranges, which clips
            # outlier tokens such as a ViT's CLS token (tiny DINOv2: cosine 0.978 default vs 0.9997 min/max).
            # SmoothQuant moves activation outliers into the weights; NNCF's default strength (alpha 0.95 for
            # MatMul) moves too much for a trained ViT (trained DINOv2-S/14 at 224: cosine 0.953), a light one
            # keeps the int8 weights fine (0.984, retrieval and patch-match agreement 0.925 / 0.960).
            ladder = [Scheme("int8-transformer-minmax-smoothquant0.15", {**f32, "minmax": True, "smooth_quant": 0.15,
                                                                         "ignore_ends": False}),
                      Scheme("int8-transformer-minmax", {**f32, "minmax": True, "smooth_quant": "default",
                                                         "ignore_ends": False}),
                      Scheme("int8-transformer", {**f32, "minmax": False, "smooth_quant": "default",
                                                  "ignore_ends": False}),
                      Scheme("int8-transformer-minmax-no-smoothquant-ends-float",
                             {**f32, "minmax": True, "smooth_quant": "off", "ignore_ends": True})]
            reduced = _reduced_precision(options.device)
            if reduced != "f32":  # what stays float (softmax, norms, attention's activation products) in bf16 first:
                # DINOv2-S/14 b1 / b8 on a 2-core Xeon with AMX: 13.4 / 87 ms vs 16.1 / 94 ms with f32 compute
                first = ladder[0]
                ladder.insert(0, Scheme(f"{first.name}-{reduced}-compute", {**first.params,
                                                                            "inference_precision": reduced}))
            return ladder
        group, ratio = options.int4_group_size, options.int4_ratio
        int4 = lambda mode, group, ratio: Scheme(  # noqa: E731
            f"int4-{mode}-group{group}" + (f"-ratio{ratio:g}" if ratio < 1 else ""),
            {**f32, "mode": f"INT4_{mode.upper()}", "group_size": group, "ratio": ratio, "calibrated": ratio < 1})
        ladder = [int4("sym", group, ratio), int4("asym", group, ratio)]
        if group > 16:  # finer groups cost a little size and recover accuracy
            ladder.append(int4("asym", group // 2, ratio))
        # then keep the layers most sensitive on the calibration data in int8 (NNCF ranks them by the Hessian of
        # their input activations), more of them on each rung: the gate chooses the int4 / int8 mix
        for share in (0.8, 0.6):
            if ratio > share:
                ladder.append(int4("asym", max(group // 2, 16), share))
        return ladder

    def compile(self, request: CompileRequest, options: OpenVinoOptions) -> str:
        import openvino as ov

        model = ov.convert_model(str(request.source))
        params = request.scheme.params
        with quiet_nncf():
            if request.precision is Precision.INT8:
                model = self._int8(model, request, params)
            elif request.precision is Precision.INT4:
                model = self._int4(model, params, request.calibration_feeds)
        out = request.out_dir / f"{request.component}.xml"
        # fp16 stores weights in half precision; quantized models keep their int weights either way
        ov.save_model(model, str(out), compress_to_fp16=request.precision is Precision.FP16)
        return out.name

    def _int8(self, model, request: CompileRequest, params: dict):
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        advanced = AdvancedQuantizationParameters()
        if params["minmax"]:
            advanced.activations_range_estimator_params = RangeEstimatorParametersSet.MINMAX
        if params["smooth_quant"] != "default":  # a MatMul alpha; -1 turns it off
            alpha = -1 if params["smooth_quant"] == "off" else params["smooth_quant"]
            advanced.smooth_quant_alphas = AdvancedSmoothQuantParameters(matmul=alpha)
        ignored = nncf.IgnoredScope(names=_ends(model) if params["ignore_ends"] else [], validate=False)
        return nncf.quantize(model, nncf.Dataset(request.calibration_feeds), model_type=nncf.ModelType.TRANSFORMER,
                             subset_size=len(request.calibration_feeds), ignored_scope=ignored,
                             advanced_parameters=advanced)

    def _int4(self, model, params: dict, feeds: list[dict]):
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

        mixed = params["calibrated"]  # which layers stay int8 is then decided on the calibration activations
        return nncf.compress_weights(
            model, mode=getattr(nncf.CompressWeightsMode, params["mode"]), group_size=params["group_size"],
            ratio=params["ratio"], dataset=nncf.Dataset(feeds) if mixed else None,
            subset_size=len(feeds) if mixed else 128,
            advanced_parameters=AdvancedCompressionParameters(group_size_fallback_mode=GroupSizeFallbackMode.ADJUST))

    # -- layers back in float (the per-layer search of edgefm.jobs.sensitivity) -----------------------
    def quantized_layers(self, request: CompileRequest, file: str) -> list[str]:
        import openvino as ov

        if request.precision is not Precision.INT8:  # int4 is weight-only: NNCF's ratio keeps layers in int8
            return []
        model = ov.Core().read_model(str(request.out_dir / file))
        return [op.get_friendly_name() for op in model.get_ordered_ops() if _activation_quantizers(op)]

    def restore_layers(self, request: CompileRequest, file: str, into: CompileRequest, options) -> str:
        """The layers keep their int8 weights and read float activations (their FakeQuantize bypassed): the
        activations carry the outliers that break int8."""
        import openvino as ov

        layers = set(into.scheme.params["float_layers"])
        model = ov.Core().read_model(str(request.out_dir / file))
        for op in model.get_ordered_ops():
            if op.get_friendly_name() in layers:
                for port, quantizer in _activation_quantizers(op):
                    op.input(port).replace_source_output(quantizer.input_value(0))
        ov.save_model(model, str(into.out_dir / file), compress_to_fp16=False)
        return file


def _activation_quantizers(op) -> list:
    """(input port, FakeQuantize node) of each activation input of a quantizable op (weights are compressed
    constants by the time the IR is written, so a FakeQuantize feeding a MatMul quantizes an activation)."""
    if op.get_type_name() not in QUANTIZABLE:
        return []
    sources = [(i, inp.get_source_output().get_node()) for i, inp in enumerate(op.inputs())]
    return [(i, node) for i, node in sources if node.get_type_name() == "FakeQuantize"]


TARGET = OpenVinoTarget()
