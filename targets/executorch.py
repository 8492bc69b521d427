"""ExecuTorch target: one XNNPACK-delegated program (.pte) per component, for CPUs (Android, iOS, Linux, Mac).

Like Core ML it converts torch, not ONNX: each program is lowered from the torch wrapper the ONNX graph was
exported from, rebuilt from the manifest (`torch_rebuild.py`): torch.export -> edge dialect -> XNNPACK
delegate -> .pte. Precisions:
- fp32: constant subgraphs folded first (DINOv2's position-embedding interpolation would otherwise run as
  portable kernels outside XNNPACK: 4x slower);
- int8: the XNNPACK quantizer (torchao pt2e): static per-channel weights and activations calibrated on the
  calibration feeds, on linear / conv layers (the residual stream stays float); then with the first and last
  layers in float; then dynamic activations (no calibration);
- int4: int4 weights per group with int8 dynamic activations (torchao), the whole model, then ends in float.
No fp16: in XNNPACK fp16, CLIP tiny's text encoder misses its fp16 gate (zero-shot agreement 0.95, gate 1.0;
DINOv2 tiny and CLIP's image encoder pass), measured with executorch 1.5.1.

Shapes are static (dynamic torch.export dims cost ~2.7x latency at batch 1): batch is 1 (the runtime runs a
batch item by item) and every other symbolic dim is fixed at its manifest default, so exports whose other
dims vary per call (DINOv2 with --dynamic-resolution, SAM 2's point and memory counts) are refused.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from edgefm.contract.errors import EdgefmError
from edgefm.contract.manifest import ComponentEntry, sha256_file
from edgefm.contract.records import Check
from edgefm.contract.spec import Precision
from edgefm.targets.base import CompileRequest, Scheme, Target, option

COMPUTE_OPS = ("linear", "convolution", "addmm", "mm", "bmm")  # what must run in XNNPACK (edge op names)


@dataclass(frozen=True)
class ExecuTorchOptions:
    int4_group_size: int = option(32, "Weights per int4 scale.", kind=int, minimum=1,
                                  precisions=("int4",))  # torchao PerGroup

    def __post_init__(self):
        group = self.int4_group_size
        if group < 32 or group & (group - 1):  # XNNPACK delegates groups of multiples of 32
            raise EdgefmError(f"int4 group size {group} must be a power of two >= 32 (e.g. 32, 64, 128)")


@contextlib.contextmanager
def quiet():
    """torch.export, torchao and the XNNPACK lowering warn and log per graph; nothing may reach stdout, where
    edgefm's result tables go."""
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def static_shapes(entry: ComponentEntry) -> dict[str, list[int]]:
    """Per input, the program's sizes: batch 1, every other symbolic dim at its manifest default."""
    rules = entry.options.get("dims", {})
    return {spec.name: [dim if isinstance(dim, int) else 1 if dim == "batch" else rules.get(dim, {}).get("default", 1)
                        for dim in spec.shape] for spec in entry.inputs}


def varying_dims(entry: ComponentEntry) -> list[str]:
    """Non-batch symbolic dims a static program cannot hold: any whose rule does not pin it (default == max,
    inputs padded to their maximum, like CLIP's 77 tokens)."""
    rules = entry.options.get("dims", {})
    found = []
    for spec in entry.inputs:
        for dim in spec.shape:
            rule = rules.get(dim, {}) if isinstance(dim, str) else {}
            pinned = "default" in rule and rule.get("max") == rule["default"]
            if isinstance(dim, str) and dim != "batch" and not pinned:
                found.append(dim)
    return list(dict.fromkeys(found))


class ExecuTorchTarget(Target):
    name = "executorch"
    runtime = "executorch"
    precisions = (Precision.FP32, Precision.INT8, Precision.INT4)
    default_precision = Precision.FP32
    options_class = ExecuTorchOptions
    requires = ("executorch", "torchao", "torch")
    demo_precisions = ()

    def check_options(self, options: ExecuTorchOptions, source) -> None:
        varying = {name: varying_dims(entry) for name, entry in source.components.items()}
        varying = {name: dims for name, dims in varying.items() if dims}
        if not varying:
            return
        where = "; ".join(f"{name}: {', '.join(dims)}" for name, dims in varying.items())
        if (source.source or {}).get("options", {}).get("dynamic_resolution"):
            raise EdgefmError(f"ExecuTorch programs have static shapes, and this export has a dynamic resolution "
                              f"({where}): export without --dynamic-resolution (one artifact per --resolution)")
        raise EdgefmError(f"ExecuTorch programs have static shapes, and {source.family} feeds sizes that vary per "
                          f"call ({where}), so {source.family} does not convert to ExecuTorch; compile it for "
                          "onnxruntime or openvino")

    def schemes(self, precision: Precision, options: ExecuTorchOptions, entry=None) -> list[Scheme]:
        common = {"shapes": static_shapes(entry) if entry is not None else {}}
        if precision is Precision.FP32:
            return [Scheme("fp32-xnnpack", {**common, "weights": "float", "activations": "float", "compute": "fp32"})]
        if precision is Precision.INT8:
            # linear / conv layers only: the quantizer's other patterns (the residual stream's adds, muls) cost
            # too much (CLIP tiny zero-shot agreement 0.55-0.80, gate 0.9) for the time a failed rung takes
            layers = {**common, "weights": "int8", "granularity": "per_channel", "activations": "int8",
                      "compute": "int8", "quantized_ops": "linear_conv", "ends_float": False}
            return [Scheme("int8-static-per-channel-layers-only", layers),
                    Scheme("int8-static-per-channel-layers-only-ends-float", {**layers, "ends_float": True}),
                    Scheme("int8-dynamic-per-channel", {**layers, "activations": "dynamic"})]
        group = options.int4_group_size
        int4 = {**common, "weights": "int4", "granularity": "per_group", "group_size": group,
                "activations": "dynamic", "compute": "int8"}
        # no finer-group rung: XNNPACK delegates int4 groups of multiples of 32 only, the default
        return [Scheme(f"int4-weights-group{group}-int8-dynamic", {**int4, "ends_float": False}),
                Scheme(f"int4-weights-group{group}-int8-dynamic-ends-float", {**int4, "ends_float": True})]

    def uses_calibration(self, precision: Precision, scheme: Scheme, options) -> bool:
        """Only static int8 computes activation ranges from the feeds; dynamic activations are measured per run."""
        return scheme.params.get("activations") == "int8"

    def runtime_settings(self, precision: Precision, scheme: Scheme, options) -> dict:
        return {"shapes": scheme.params.get("shapes", {})}  # the sizes the program holds: the session checks feeds

    def compile(self, request: CompileRequest, options: ExecuTorchOptions) -> str:
        from edgefm.targets import executorch_lower

        with quiet():
            try:
                program, record = executorch_lower.lower(request, _component(request), options)
            except EdgefmError:
                raise
            except Exception as exc:
                cause = (str(exc).strip().splitlines() or [""])[0][:300]
                raise EdgefmError(f"{request.component}: ExecuTorch conversion failed ({type(exc).__name__}: {cause}); "
                                  f"{_family(request)} does not convert to ExecuTorch: compile it for onnxruntime "
                                  "or openvino") from exc
        out = request.out_dir / f"{request.component}.pte"
        out.write_bytes(program)
        request.cache.get(_record_key(request), dict).update(record)
        return out.name

    def static_checks(self, request: CompileRequest, entry: ComponentEntry, options) -> list:
        record = request.cache.get(_record_key(request), dict)
        checks = [delegated_check(record["operators"])]
        if request.precision in (Precision.INT8, Precision.INT4):
            bits = 8 if request.precision is Precision.INT8 else 4
            checks.append(storage_check(record["layers"], record["asked_quantized"], bits))
        checks.append(size_check(request.out_dir / entry.file, record))
        return checks


def delegated_check(operators: dict[str, tuple[int, int]]) -> Check:
    """Share of the graph's compute ops (linear, conv, matmul) that XNNPACK runs, from the delegation table
    {op: (delegated, not delegated)}; every one must be (a portable-kernel matmul is a lowering problem)."""
    compute = {op: counts for op, counts in operators.items() if _op_kind(op) in COMPUTE_OPS}
    delegated = sum(d for d, _ in compute.values())
    total = sum(d + n for d, n in compute.values())
    left = sorted(op for op, (_, n) in compute.items() if n)
    return Check("compute_ops_in_xnnpack", delegated / total if total else 1.0, 1.0,
                 detail={"compute_ops": total, "not_delegated": left})


def storage_check(layers: list[int], asked: int, bits: int) -> Check:
    """Linear / conv ops of the lowered graph whose weights come in as `bits`-bit integers, against what the
    scheme asked (every layer, or all but the ends): the share is 1.0 only when the counts agree both ways.
    `layers` holds each layer's weight bits (32: float)."""
    stored = sum(1 for b in layers if b == bits)
    value = min(stored, asked) / max(stored, asked) if max(stored, asked) else 1.0
    return Check(f"weights_stored_int{bits}", value, 1.0,
                 detail={"layers": len(layers), "stored": stored, "asked": asked})


def size_check(path: Path, record: dict) -> Check:
    """The written program against the bytes its weights need as stored (float ones 4 or 2 bytes, quantized ones
    `bits / 8`, scales) plus 64 KiB for the program itself: far above that, it kept weights it was asked to shrink
    (int8 weights left in fp32 are 1.5-4x their bytes)."""
    expected = record["weight_bytes"] + 2**16
    return Check("program_bytes_vs_weights", path.stat().st_size / expected, 1.25, higher_is_better=False,
                 detail={"program_bytes": path.stat().st_size, "weight_bytes": record["weight_bytes"]})


def _op_kind(op: str) -> str:
    """'aten_linear_default' -> 'linear'."""
    name = op.removeprefix("aten_")
    for suffix in ("_default", "_tensor", "_int"):
        name = name.removesuffix(suffix)
    return name


def _record_key(request: CompileRequest) -> tuple:
    return ("executorch lowering", str(request.out_dir), request.component)


def _exported(request: CompileRequest) -> tuple[Path, str]:
    artifact = Path(request.source).parent
    return artifact, sha256_file(artifact / "manifest.json")


def _component(request: CompileRequest):
    from edgefm.targets.torch_rebuild import rebuilt_components

    return rebuilt_components(*_exported(request), request.cache)[request.component]


def _family(request: CompileRequest) -> str:
    from edgefm.contract.manifest import Manifest

    return Manifest.load(Path(request.source).parent, verify=False).family


TARGET = ExecuTorchTarget()
