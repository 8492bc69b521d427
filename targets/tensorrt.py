"""TensorRT target: the ONNX each engine is built from is made and proven on the CPU; engines wait for a GPU.

TensorRT 10.12 deprecated, and 11 removed, weak typing (builder flags FP16 / INT8 letting the builder pick
each layer's precision). Engines come from strongly typed networks: every tensor's type is in the ONNX.
So the graph ONNX Runtime gates here is the program TensorRT builds, layer types included:
- fp32: the export as is (TF32 off in the engine).
- fp16: float16 except the nodes pinned to fp32 from data (`tensorrt_graphs.fp16_pins`: ranges recorded
  on the calibration feeds, the rule of NVIDIA ModelOpt AutoCast); then also norms and softmax; then fp32.
- int8 / fp8 (e4m3): explicit quantization, symmetric QDQ from ONNX Runtime's static quantizer on the
  matrix products, the rest in fp16 with the same pins.
- int4: weight-only, block-wise symmetric int4 DequantizeLinear on MatMul weights, the rest in fp16.
Nothing here imports TensorRT; `edgefm engine` (edgefm.targets.tensorrt_device) builds the engines from the build plan
(edgefm.targets.tensorrt_plan) on the GPU that will run them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgefm.contract.errors import EdgefmError
from edgefm.contract.spec import Precision
from edgefm.targets.base import CompileRequest, OnDeviceRequest, Scheme, Target, option
from edgefm.targets.onnxruntime import FP16_SENSITIVE, MATMUL_CONV
from edgefm.targets.tensorrt_plan import (
    DEVICE_PROFILES,
    PLAN_FILE,
    artifact_dims,
    check_shape_dims,
    parse_shape_overrides,
)

# ModelOpt AutoCast's default: activations past this magnitude keep their node in fp32 (fp16 tops out
# at 65504, and products / sums of such values get there within a layer).
FP16_DATA_MAX = 512.0


@dataclass(frozen=True)
class TensorRTOptions:
    device_profile: str = option("generic", "The GPU the engines are for (generic: the GPU they are built on).",
                                 choices=tuple(DEVICE_PROFILES), on_device=True)
    shapes: tuple[str, ...] = option((), "Optimization profile of a dynamic dim, DIM=MIN,OPT,MAX (repeatable), e.g. "
                                         "batch=1,4,16.", multiple=True, on_device=True)
    fp16_data_max: float = option(FP16_DATA_MAX, "Activations past this magnitude keep their node in fp32.",
                                  kind=float)
    # along the input axis
    int4_group_size: int = option(32, "Weights per int4 scale.", kind=int, minimum=1,
                                  precisions=("int4",))

    def __post_init__(self):
        if self.device_profile not in DEVICE_PROFILES:
            raise EdgefmError(f"device profile {self.device_profile!r} is not one of: {', '.join(DEVICE_PROFILES)}")
        parse_shape_overrides(self.shapes)  # bad syntax fails before any work
        if self.int4_group_size not in (16, 32, 64, 128):
            raise EdgefmError(f"int4 group size {self.int4_group_size}: use 16, 32, 64 or 128")
        if not 0 < self.fp16_data_max < float("inf"):
            raise EdgefmError("--fp16-data-max must be positive (default 512)")


class TensorRTTarget(Target):
    name = "tensorrt"
    # What this target writes runs on ONNX Runtime until `edgefm engine` adds the engines on the GPU.
    runtime = "onnxruntime"
    precisions = (Precision.FP32, Precision.FP16, Precision.INT8, Precision.FP8, Precision.INT4)
    default_precision = Precision.FP16
    options_class = TensorRTOptions
    demo_precisions = ("fp16", "int8", "fp8")
    device_resources = {"GPU": 1}  # engines are built, gated and timed on the GPU that runs them
    requires = ("onnx", "onnxruntime.quantization")

    def runtime_settings(self, precision: Precision, scheme: Scheme, options: TensorRTOptions) -> dict:
        # run as written on ONNX Runtime: its QDQ fusions (QLinearConcat, ...) would compute something else than
        # the engine, and reject the fp16 scales TensorRT reads
        return {"graph_optimization": "basic"}

    def device_unavailable(self, artifact: Path, manifest) -> str | None:
        """None on a GPU with TensorRT that the artifact's device profile is for."""
        from edgefm.runtimes.tensorrt import this_machine, unavailable_reason
        from edgefm.targets.tensorrt_plan import build_plan, check_device

        reason = unavailable_reason()
        if reason:
            return f"graphs and build plan written and validated on the CPU; engines not built here ({reason})"
        try:
            check_device(build_plan(manifest, artifact), this_machine())
        except EdgefmError as exc:  # e.g. compiled for a Jetson on a workstation: its engines are built there
            return f"graphs and build plan written and validated on the CPU; engines not built here ({exc})"
        return None

    def on_device(self, request: OnDeviceRequest):
        from edgefm.targets.tensorrt_device import build_engines

        return build_engines(request)

    def on_device_plan(self, artifact: Path, manifest, flags) -> dict:
        from edgefm.targets.tensorrt_plan import build_plan

        return build_plan(manifest, artifact, flags.get("device_profile"), flags.get("shapes"))

    def cannot_run_here(self) -> str | None:
        return ("TensorRT engines are built, gated and timed on their GPU by `edgefm engine`; compile gates the "
                "graphs they are built from on ONNX Runtime, fp16 storage emulated")

    def check_options(self, options: TensorRTOptions, source) -> None:
        check_shape_dims(parse_shape_overrides(options.shapes), artifact_dims(source))

    def schemes(self, precision: Precision, options: TensorRTOptions, entry=None) -> list[Scheme]:
        unsupported = DEVICE_PROFILES[options.device_profile]["unsupported"].get(precision.value)
        if unsupported:
            raise EdgefmError(f"{precision.value} does not run on device profile {options.device_profile} "
                              f"({unsupported}); choose another precision or device profile")
        if precision is Precision.FP32:
            return [Scheme("fp32", {"rest": "fp32"})]
        if precision is Precision.FP16:
            return [Scheme("fp16-range-pins", {"pin_ops": []}),
                    Scheme("fp16-range-pins-norm-softmax", {"pin_ops": FP16_SENSITIVE})]
        if precision is Precision.INT4:
            block = options.int4_group_size
            ladder = [Scheme(f"int4-weights-block{block}", {"block": block, "exclude_ends": False, "rest": "fp16"}),
                      Scheme(f"int4-weights-block{block}-ends-float", {"block": block, "exclude_ends": True,
                                                                       "rest": "fp16"})]
            if block > 16:  # finer blocks: a little more scale storage, less rounding error
                ladder.append(Scheme(f"int4-weights-block{block // 2}-ends-float",
                                     {"block": block // 2, "exclude_ends": True, "rest": "fp16"}))
            return ladder
        # int8 / fp8: the matrix products quantized, the rest fp16 (pinned); then only products with weights
        # (attention's activation x activation products stay float), the end layers float, the rest fp32
        qdq = {"op_types": MATMUL_CONV, "exclude_ends": False, "weights_only": False, "rest": "fp16"}
        return [Scheme("qdq-matmul-conv", qdq),
                Scheme("qdq-weight-matmul-conv", {**qdq, "weights_only": True}),
                Scheme("qdq-weight-matmul-conv-ends-float", {**qdq, "weights_only": True, "exclude_ends": True}),
                Scheme("qdq-weight-matmul-conv-ends-float-fp32-rest", {**qdq, "weights_only": True,
                                                                        "exclude_ends": True, "rest": "fp32"})]

    def compile(self, request: CompileRequest, options: TensorRTOptions) -> str:
        from edgefm.targets import tensorrt_graphs

        return tensorrt_graphs.write(request, options)

    def validation_session(self, request: CompileRequest, entry, options: TensorRTOptions):
        """The written graph on ONNX Runtime, with every fp16 tensor rounded through fp16 as the engine stores it
        (ONNX Runtime alone would compute many fp16 ops in fp32: see tensorrt_fp16)."""
        from edgefm.runtimes.onnxruntime import OnnxRuntimeSession
        from edgefm.targets import tensorrt_fp16
        from edgefm.targets.tensorrt_graphs import fp32_typed

        written = request.out_dir / entry.file
        if request.scheme.params.get("rest", "fp16") == "fp32":  # no fp16 tensor: the written graph as is
            session = OnnxRuntimeSession(written, entry, request.component, memory_arena=False)
            session.measured_with = "ONNX Runtime (CPU): the graph the engine is built from"
            return session
        emulated = request.work_dir / f"{request.component}-{request.scheme.name}.fp16-emulated.onnx"
        tensorrt_fp16.emulate(written, fp32_typed(request), emulated, bool(entry.data_files))
        session = OnnxRuntimeSession(emulated, entry, request.component, memory_arena=False)
        session.measured_with = ("ONNX Runtime (CPU): the graph the engine is built from, every fp16 tensor "
                                 "rounded through fp16 (fp32 arithmetic within each op)")
        return session

    def static_checks(self, request: CompileRequest, entry, options: TensorRTOptions) -> list:
        from edgefm.targets import tensorrt_graphs

        return tensorrt_graphs.checks(request, request.out_dir / entry.file)

    def quantized_layers(self, request: CompileRequest, file: str) -> list[str]:
        from edgefm.targets import tensorrt_graphs

        return tensorrt_graphs.quantized_layers(request)

    def restore_layers(self, request: CompileRequest, file: str, into: CompileRequest, options: TensorRTOptions) -> str:
        from edgefm.targets import tensorrt_graphs

        return tensorrt_graphs.restore(request, into, options)

    def artifact_files(self, manifest, directory) -> dict[str, str]:
        """The build plan, written beside the graphs: what `edgefm engine` needs on the device."""
        import json

        from edgefm.targets.tensorrt_plan import build_plan

        return {PLAN_FILE: json.dumps(build_plan(manifest, directory), indent=2) + "\n"}


TARGET = TensorRTTarget()
