"""Core ML target: one ML program (.mlpackage) per component for Apple Silicon (Mac, iPhone, iPad).

coremltools no longer reads ONNX, so each package is converted from the torch wrapper the ONNX
graph was exported from, rebuilt from the manifest (`coreml_torch.py`). Precisions:
- fp32 / fp16: the compute precision of the program (fp16 is what the GPU and Neural Engine run);
- int8: per-channel symmetric weights, fp16 compute; int4: per-block symmetric weights (iOS 18 /
  macOS 15 ops); or, with `palettize_bits`, k-means palettized weights (4, 6 or 8 bits) instead.
Weights are compressed with coremltools.optimize.torch before conversion, so the torch module the
gates measure holds the very values stored in the package.

Shapes: batch is fixed at 1 (the runtime runs larger batches one item at a time, which is what the
Neural Engine wants anyway); other dynamic dims (SAM 2 point and memory counts, SD latent sizes)
are ranged unless `fixed_shapes` pins them to the manifest's defaults.
"""
from __future__ import annotations

import inspect
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefm.contract.errors import EdgefmError, UnknownChoiceError
from edgefm.contract.manifest import ComponentEntry, sha256_file
from edgefm.contract.spec import Precision, dim_range
from edgefm.targets.base import CompileRequest, Scheme, Target, option

DEPLOYMENT_TARGETS = ("ios17", "macos14", "ios18", "macos15")
COMPUTE_UNITS = ("ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY")
STORAGE = {"fp32": "FLOAT32", "fp16": "FLOAT16", "int8": "INT8", "int4": "INT4"}


@dataclass(frozen=True)
class CoreMLOptions:
    deployment_target: str | None = option(None, "Oldest OS to run on (default ios17; ios18 for int4 per-block "
                                                 "weights).", choices=DEPLOYMENT_TARGETS)
    compute_units: str = option("ALL", "Where Core ML may run the model.", choices=COMPUTE_UNITS)
    int4_group_size: int = option(32, "Weights per int4 scale.", kind=int, minimum=1,
                                  precisions=("int4",))  # per-block quantization
    palettize_bits: int | None = option(None, "Weights as k-means palettized look-up tables of this many bits.",
                                        kind=int, choices=(4, 6, 8), name="--palettize", precisions=("int8", "int4"))
    fixed_shapes: bool = option(False, "Pin dynamic sizes to their defaults (what the Neural Engine prefers).",
                                kind=bool)
    # as Apple's SD conversion does for iOS
    chunk_over_mib: float | None = option(None, "Split packages larger than this in two (iOS, e.g. the SD UNet).",
                                          kind=float)
    int8_activations: bool = option(False, "Also quantize activations, calibrated through Core ML (on a Mac).",
                                    kind=bool, precisions=("int8",))

    def __post_init__(self):
        if self.deployment_target is not None and self.deployment_target not in DEPLOYMENT_TARGETS:
            raise UnknownChoiceError("Core ML deployment target", self.deployment_target, DEPLOYMENT_TARGETS)
        if self.compute_units not in COMPUTE_UNITS:
            raise UnknownChoiceError("Core ML compute units", self.compute_units, COMPUTE_UNITS)
        if self.palettize_bits is not None and self.palettize_bits not in (4, 6, 8):
            raise EdgefmError(f"--palettize {self.palettize_bits}: Core ML palettizes to 4, 6 or 8 bits")
        if self.chunk_over_mib is not None and not self.fixed_shapes:
            # with ranged inputs, coremltools 9's bisect_model fails (uint16 gather indices) or describes the
            # pipeline's ranges wrongly (collapsed to [1, 2]); Apple's chunked SD models use fixed shapes anyway
            raise EdgefmError("--chunk-over-mib needs --fixed-shapes: chunked packages keep fixed input sizes")
        if self.int4_group_size < 8 or self.int4_group_size & (self.int4_group_size - 1):
            raise EdgefmError(f"int4 group size {self.int4_group_size} must be a power of two >= 8 (e.g. 32)")

    def target_for(self, precision: Precision) -> str:
        """The deployment target a precision builds for; per-block int4 needs iOS 18 / macOS 15 ops."""
        per_block = precision is Precision.INT4 and self.palettize_bits is None
        chosen = self.deployment_target or ("ios18" if per_block else "ios17")
        if per_block and chosen in ("ios17", "macos14"):
            raise EdgefmError(f"int4 per-block weights need iOS 18 / macOS 15 ops, not {chosen}: use "
                              "--deployment-target ios18 (or macos15), or --palettize 4, which runs on iOS 17")
        return chosen


def runtime_unavailable() -> str | None:
    from edgefm.runtimes.coreml import unavailable_reason

    return unavailable_reason()


class CoreMLTarget(Target):
    name = "coreml"
    runtime = "coreml"
    precisions = (Precision.FP32, Precision.FP16, Precision.INT8, Precision.INT4)
    default_precision = Precision.FP16  # what the GPU and Neural Engine compute in
    options_class = CoreMLOptions
    demo_precisions = ("fp16", "int8", "int4")
    requires = ("coremltools", "torch")

    def schemes(self, precision: Precision, options: CoreMLOptions, entry=None) -> list[Scheme]:
        common = {"deployment_target": options.target_for(precision), "shapes": _shapes(entry, options)}
        if precision in (Precision.FP32, Precision.FP16):
            if options.palettize_bits is not None:
                raise EdgefmError(f"--palettize compresses weights for int8 / int4, not {precision.value}")
            return [Scheme(precision.value, {**common, "compute_precision": precision.value, "weights": "float"})]
        half = {**common, "compute_precision": "fp16"}
        bits = options.palettize_bits
        if bits is not None:
            if bits > (8 if precision is Precision.INT8 else 4):
                raise EdgefmError(f"--palettize {bits} stores more bits than {precision.value}; use 4 for int4")
            return [Scheme(f"palettize-{bits}bit-kmeans", {**half, "weights": "palettize", "bits": bits,
                                                           "activations": "float"})]
        if precision is Precision.INT8:
            int8 = {**half, "weights": "int8", "granularity": "per_channel", "activations": "float"}
            ladder = [Scheme("int8-weights-per-channel", int8),
                      Scheme("int8-weights-per-channel-ends-fp16", {**int8, "ends_float": True})]
            if options.int8_activations:
                cannot_run = runtime_unavailable()
                if cannot_run:
                    raise EdgefmError("--int8-activations calibrates activations by running the model through "
                                      f"Core ML, which cannot run here ({cannot_run}); compile on a Mac, "
                                      "or drop the flag for int8 weights with fp16 activations")
                ladder.insert(0, Scheme("int8-weights-int8-activations", {**int8, "activations": "int8"}))
            return ladder
        int4 = lambda scheme, block, ends: Scheme(  # noqa: E731
            f"int4-{scheme}-weights-block{block}" + ("-ends-fp16" if ends else ""),
            {**half, "weights": "int4", "granularity": "per_block", "block_size": block, "mode": scheme,
             "ends_float": ends})
        block = options.int4_group_size
        finer = max(block // 2, 8)  # finer blocks cost a little size and recover accuracy
        ladder = [int4("symmetric", block, False), int4("affine", block, False)]
        if finer < block:
            ladder.append(int4("affine", finer, False))
        return ladder + [int4("affine", finer, True)]

    def runtime_settings(self, precision: Precision, scheme: Scheme, options: CoreMLOptions) -> dict:
        return {"deployment_target": scheme.params.get("deployment_target"), "compute_units": options.compute_units,
                "shapes": scheme.params.get("shapes", {})}

    def cannot_run_here(self) -> str | None:
        return runtime_unavailable()

    def compile(self, request: CompileRequest, options: CoreMLOptions) -> str:
        import torch

        from edgefm.targets import coreml_ops
        from edgefm.targets.coreml_torch import quiet_coremltools

        params = request.scheme.params
        component = _component(request)
        module = _compressed(request)
        sizes = _defaults(component, params["shapes"])
        example = _example(component, sizes)
        with quiet_coremltools():
            coreml_ops.register()
            with torch.no_grad():
                traced = torch.jit.trace(module, example_kwarg_inputs={k: torch.from_numpy(v) for k, v in example.items()},
                                         strict=False)
            try:
                model = _convert(traced, component, params, sizes, options)
            except (NotImplementedError, ValueError, TypeError, RuntimeError) as exc:
                raise EdgefmError(f"{request.component}: Core ML conversion failed ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
        if params.get("activations") == "int8":
            model = _quantize_activations(model, request.calibration_feeds, request.entry)
        model.short_description = f"edgefm {request.component} ({request.precision.value}, {request.scheme.name})"
        out = request.out_dir / f"{request.component}.mlpackage"
        model.save(str(out))
        if options.chunk_over_mib and _mib(out) > options.chunk_over_mib:
            _bisect(out)
        return out.name

    def validation_session(self, request: CompileRequest, entry: ComponentEntry, options):
        if runtime_unavailable() is None:  # on a Mac: the package itself, through Core ML
            return super().validation_session(request, entry, options)
        from edgefm.runtimes.torch_session import TorchWrapperSession

        params = request.scheme.params
        weights = ("the torch wrapper compressed by coremltools.optimize.torch" if params["weights"] != "float"
                   else "the torch wrapper")
        return TorchWrapperSession(request.component, _compressed(request), entry,
                                   half=params["compute_precision"] == "fp16", weights=weights,
                                   missing="no Core ML runtime here")

    def static_checks(self, request: CompileRequest, entry: ComponentEntry, options) -> list:
        from edgefm.targets import coreml_checks
        from edgefm.targets.coreml_torch import compressed_weight_elements

        params = request.scheme.params
        package = request.out_dir / entry.file
        spec = _load_spec(package)
        stored = f"UINT{params['bits']}" if params["weights"] == "palettize" else STORAGE[request.precision.value]
        compressed = None
        if params["weights"] != "float":
            component = _component(request)
            example = _example(component, _defaults(component, params["shapes"]))
            compressed = compressed_weight_elements(_compressed(request), example)
        return [coreml_checks.check_io(spec, entry, params["shapes"]),
                coreml_checks.check_opset(spec, _ct_target(params["deployment_target"])),
                coreml_checks.check_storage(spec, stored, compressed),
                coreml_checks.check_size(package, spec)]


def _convert(traced, component, params: dict, sizes: dict[str, int], options: CoreMLOptions):
    import coremltools as ct

    order = list(inspect.signature(component.module.forward).parameters)  # TorchScript binds inputs by position
    specs = sorted(component.inputs, key=lambda s: order.index(s.name))
    passes = ct.PassPipeline.DEFAULT
    if params["weights"] != "float":
        # coremltools 9's conv + transpose + bias fusion reads the conv weight's value, which compressed
        # weights do not have (AttributeError on SAM 2's int8 decoder); the bias stays a separate add.
        passes.remove_passes(["common::fuse_conv_bias"])
    return ct.convert(
        traced, convert_to="mlprogram",
        inputs=[ct.TensorType(name=s.name, shape=_coreml_shape(s, params["shapes"][s.name], sizes),
                              dtype=np.float32 if s.dtype.startswith("float") else np.int32) for s in specs],
        outputs=[ct.TensorType(name=s.name, dtype=np.float32) for s in component.outputs],
        minimum_deployment_target=_ct_target(params["deployment_target"]),
        compute_precision=ct.precision.FLOAT16 if params["compute_precision"] == "fp16" else ct.precision.FLOAT32,
        compute_units=ct.ComputeUnit[options.compute_units], pass_pipeline=passes)


def _quantize_activations(model, feeds: list[dict], entry: ComponentEntry):
    """int8 activations: coremltools runs the calibration feeds through Core ML and inserts quantize /
    dequantize pairs at the ranges it saw (macOS only: the calibration needs the runtime). Feeds are
    split to the package's batch of 1 (SD's UNet feeds hold the guided pair)."""
    import coremltools.optimize as cto

    from edgefm.runtimes.coreml import package_items

    config = cto.coreml.OptimizationConfig(global_config=cto.coreml.OpLinearQuantizerConfig(mode="linear_symmetric"))
    samples = [item for feed in feeds for item in package_items(entry.inputs, feed)]
    return cto.coreml.experimental.linear_quantize_activations(model, config, samples)


def _exported(request: CompileRequest) -> tuple[Path, str]:
    """The exported artifact and its manifest's sha256: the key of the rebuilt (and compressed) models."""
    artifact = Path(request.source).parent
    return artifact, sha256_file(artifact / "manifest.json")


def _component(request: CompileRequest):
    from edgefm.targets.torch_rebuild import rebuilt_components

    return rebuilt_components(*_exported(request), request.cache)[request.component]


def _example(component, sizes: dict[str, int]) -> dict[str, np.ndarray]:
    """The inputs the wrapper is traced (and its compressed layers found) with: fixed seed, package sizes."""
    return component.make_inputs(np.random.default_rng(0), sizes)


def _compressed(request: CompileRequest):
    """The component's wrapper with its scheme's weight compression. The compile, its gate and its checks share
    one copy; the job's cache holds one at a time (a compressed SD UNet is a whole model)."""
    from edgefm.targets.coreml_torch import compressed_module

    key = (*_exported(request), request.component, json.dumps(request.scheme.params, sort_keys=True))
    held = request.cache.get(("coreml compressed wrapper",), dict)
    if held.get("key") != key:
        held.clear()
        held.update(key=key, module=compressed_module(_component(request), request.scheme.params))
    return held["module"]


def _shapes(entry: ComponentEntry, options: CoreMLOptions) -> dict[str, list]:
    """Per input: a fixed size, or [lower, upper] for a ranged dim. Batch is always 1 (see the module doc)."""
    rules = entry.options.get("dims", {})
    shapes = {}
    for spec in entry.inputs:
        shape = []
        for dim in spec.shape:
            rule = rules.get(dim, {}) if isinstance(dim, str) else {}
            if isinstance(dim, int):
                shape.append(dim)
            elif dim == "batch":
                shape.append(1)
            elif options.fixed_shapes:
                shape.append(rule.get("default", 1))
            else:
                shape.append(list(dim_range(rule)))
        shapes[spec.name] = shape
    return shapes


def _defaults(component, shapes: dict[str, list]) -> dict[str, int]:
    """Sizes to trace at: each symbolic dim's default, or its fixed size in the package."""
    sizes = {dim: rule.get("default", 1) for dim, rule in component.dims.items()}
    for spec in component.inputs:
        for dim, size in zip(spec.shape, shapes[spec.name]):
            if isinstance(dim, str) and isinstance(size, int):
                sizes[dim] = size
    return sizes


def _coreml_shape(spec, shape: list, sizes: dict[str, int]):
    import coremltools as ct

    return ct.Shape([ct.RangeDim(lower_bound=size[0], upper_bound=size[1], default=sizes[dim])
                     if isinstance(size, list) else size for dim, size in zip(spec.shape, shape)])


def _ct_target(name: str):
    import coremltools as ct

    return {"ios17": ct.target.iOS17, "macos14": ct.target.macOS14, "ios18": ct.target.iOS18,
            "macos15": ct.target.macOS15}[name]


def _load_spec(package: Path):
    import coremltools as ct

    return ct.utils.load_spec(str(package))


def _mib(path: Path) -> float:
    from edgefm.contract.manifest import disk_bytes

    return disk_bytes(path) / 2**20


def _bisect(package: Path) -> None:
    """Split the program into two chunks of about equal weight, kept as one pipeline package."""
    import coremltools as ct

    chunks = package.parent / "chunks"
    ct.models.utils.bisect_model(str(package), str(chunks), merge_chunks_to_pipeline=True,
                                 check_output_correctness=runtime_unavailable() is None)
    shutil.rmtree(package)
    shutil.move(str(chunks / f"{package.stem}_chunked_pipeline.mlpackage"), str(package))
    shutil.rmtree(chunks)


TARGET = CoreMLTarget()
