"""The compile job: exported artifact -> compiled artifact for one target and precision, its on-device step
included. `edgefm compile`, `build`, `demo`, `--precision auto` / `--target auto` and the matrix all go through
`compile_artifact`, so they run the same phases in the same order:

1. check the target's options against the export;
2. per component, the target's scheme ladder (jobs.component), each attempt validated against the fp32 export on
   held-out real inputs; families with an end-to-end check then gate the pipeline (jobs.pipeline_check);
3. the target's artifact files, the manifest, the artifact moved into place whole;
4. the target's on-device step, where this machine is the device it is for (else a line saying where and how).
"""
from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefm.contract import registry
from edgefm.contract.cache import CompileCache
from edgefm.contract.errors import ArtifactError, EdgefmError, UnknownChoiceError
from edgefm.contract.manifest import Manifest, sha256_file
from edgefm.contract.spec import Precision
from edgefm.contract.staging import staging_dir
from edgefm.jobs.component import CompileContext
from edgefm.jobs.on_device import finish_on_device
from edgefm.targets.base import Target

AUTO = "auto"  # --precision auto / --target auto: compile every candidate, keep the best that passes (jobs.auto)
ON_DEVICE_POLICIES = ("here", "deferred")  # run the on-device step now where this is the device; or leave it


@dataclass(frozen=True)
class CompileJob:
    """What one compile is asked, checked before any work: the library form of `edgefm compile`'s flags."""

    target: str
    precision: str  # a precision the target builds, or "auto"
    options: Any = None  # the target's options dataclass (None: its defaults); None for --target auto
    calib_dir: Path | None = None
    calib_size: int | None = None
    prompts: Path | None = None
    allow_below_gate: bool = False
    objective: str | None = None  # what --precision auto optimizes: latency (default) or size
    on_device: str = "here"  # "deferred": the caller runs the on-device step itself (the matrix, on its device)

    @classmethod
    def from_flags(cls, flags: Mapping[str, Any], target_flags: Mapping[str, Any]) -> CompileJob:
        """The job of the CLI's shared compile flags (None: not given) and its target flags, refusing combinations
        that cannot mean anything before any work starts."""
        target = flags.get("target") or registry.default_target().name
        allow_below_gate, objective = bool(flags.get("allow_below_gate")), flags.get("objective")

        def job(precision: str, options: Any) -> CompileJob:
            return cls(target, precision, options, flags.get("calib"), flags.get("calib_size"),
                       flags.get("calib_prompts"), allow_below_gate, objective)

        if target == AUTO:
            return job(_auto_target_precision(flags, target_flags), None)
        precision = flags.get("precision") or registry.target(target).default_precision.value
        if precision == AUTO and allow_below_gate:
            raise EdgefmError("--allow-below-gate does not combine with --precision auto, which keeps only "
                              "precisions that pass their gates")
        if precision != AUTO and objective:
            raise EdgefmError(f"--objective applies to --precision auto only (got --precision {precision})")
        return job(precision, target_options(target, **target_flags))

    def inputs(self) -> list[Path | None]:
        """The user's files the job reads: an output may not be one of them."""
        return [self.calib_dir, self.prompts]


def _auto_target_precision(flags: Mapping[str, Any], target_flags: Mapping[str, Any]) -> str:
    """`--target auto` tries every runnable target with its default options, so it implies --precision auto and
    takes no target flags."""
    given = ["--" + k.replace("_", "-") for k, v in target_flags.items() if v is not None]
    if given:
        raise EdgefmError(f"{', '.join(given)} belong to one target; --target auto tries every target with its "
                          "defaults, so name the --target to set them")
    if flags.get("precision") not in (None, AUTO):
        raise EdgefmError(f"--target auto chooses the precision too; drop --precision {flags['precision']} or "
                          "name a --target")
    if flags.get("allow_below_gate"):
        raise EdgefmError("--allow-below-gate does not combine with --target auto, which keeps only candidates "
                          "that pass their gates")
    return AUTO


def available_target(target_name: str) -> Target:
    """The target, or a clear error when this machine lacks what compiling for it needs."""
    target: Target = registry.target(target_name)
    reason = target.available()
    if reason:
        raise EdgefmError(f"target {target.name} cannot compile on this machine: {reason}")
    return target


def resolve_target(target_name: str, precision: str) -> tuple[Target, Precision]:
    target = available_target(target_name)
    chosen = Precision.parse(precision)
    if chosen not in target.precisions:
        raise UnknownChoiceError(f"precision for {target.name}", precision, [p.value for p in target.precisions])
    return target, chosen


def target_options(target_name: str, **values: Any) -> Any:
    """The target's typed options from command-line values; None means "the target's default"."""
    target = registry.target(target_name)
    fields = {f.name for f in dataclasses.fields(target.options_class)}
    given = {k: v for k, v in values.items() if v is not None}
    foreign = sorted(set(given) - fields)
    if foreign:
        flags = ", ".join("--" + k.replace("_", "-") for k in foreign)
        raise EdgefmError(f"{flags} do(es) not apply to target {target.name}; its options are "
                          f"{', '.join('--' + f.replace('_', '-') for f in sorted(fields))}")
    return target.options_class(**given)


def load_exported(artifact: Path) -> Manifest:
    manifest = Manifest.load(artifact)
    if manifest.stage != "exported":
        raise ArtifactError(f"{artifact} is already compiled ({manifest.stage}); compile the exported artifact "
                            f"it was made from: {(manifest.parent or {}).get('path', '?')}")
    return manifest


def compile_artifact(artifact: Path, target_name: str, precision: str, out: Path, *, calib_dir: Path | None = None,
                     calib_size: int | None = None, prompts: Path | None = None, options: Any = None,
                     allow_below_gate: bool = False, objective: str | None = None, overwrite: bool = False,
                     on_device: str = "here", log: Callable[[str], None] = print,
                     cache: CompileCache | None = None) -> Manifest:
    """Compile `artifact` into `out` (see the module docstring for the phases). `cache`: what this compile computes
    once (the fp32 export's sessions, captured feeds, reference outputs); a caller compiling the same export several
    times may pass one."""
    job = CompileJob(target_name, precision, options, calib_dir, calib_size, prompts, allow_below_gate, objective,
                     on_device)
    return run_job(Path(artifact), job, Path(out), overwrite=overwrite, log=log, cache=cache)


def run_job(artifact: Path, job: CompileJob, out: Path, *, overwrite: bool = False,
            log: Callable[[str], None] = print, cache: CompileCache | None = None) -> Manifest:
    """`compile_artifact` of a CompileJob (what the CLI builds from its flags)."""
    if job.on_device not in ON_DEVICE_POLICIES:
        raise EdgefmError(f"on_device={job.on_device!r}: one of {', '.join(ON_DEVICE_POLICIES)}")
    if job.precision == AUTO or job.target == AUTO:
        from edgefm.jobs.auto import compile_auto

        return compile_auto(artifact, job.target, out, objective=job.objective or "latency", options=job.options,
                            calib_dir=job.calib_dir, calib_size=job.calib_size, prompts=job.prompts,
                            overwrite=overwrite, log=log)
    target, _ = resolve_target(job.target, job.precision)
    manifest = _compile_here(artifact, job, out, overwrite, log, cache or CompileCache())
    if job.on_device == "deferred":
        return manifest
    return finish_on_device(target, out, manifest, allow_below_gate=job.allow_below_gate, log=log)


def _compile_here(artifact: Path, job: CompileJob, out: Path, overwrite: bool, log: Callable[[str], None],
                  cache: CompileCache) -> Manifest:
    """Phases 1-3: the compiled artifact in `out`, written whole or not at all."""
    from edgefm.calibration.data import load as load_calibration
    from edgefm.jobs.pipeline_check import compile_and_check_pipeline
    from edgefm.runtimes.loader import open_sessions

    target, precision = resolve_target(job.target, job.precision)
    options = job.options or target.options_class()
    artifact = artifact.resolve()
    with staging_dir(out, overwrite, [artifact, *job.inputs()], log) as tmp:
        source = load_exported(artifact)
        target.check_options(options, source)
        family = registry.family(source.family)
        data = load_calibration(job.calib_dir, job.calib_size, job.prompts)
        if data.note:
            log(data.note)
        calibration = {"dir": str(Path(job.calib_dir).resolve()) if job.calib_dir else None, "size": data.size,
                       "prompts": str(job.prompts) if job.prompts else None}
        context = CompileContext(target, options, precision, artifact, tmp, source, family, family.calibration(),
                                 data, open_sessions(artifact, source, cache), calibration, job.allow_below_gate, log,
                                 cache)
        pipeline = None
        if family.pipeline_gates(precision.value):
            compiled, pipeline = compile_and_check_pipeline(context)
        else:
            compiled = {name: context.compile_component(name, precision) for name in source.components}
        for entry, files_dir in compiled.values():
            for name in entry.files():
                shutil.move(str(files_dir / name), tmp / name)
        for name in source.assets:
            shutil.copy2(artifact / name, tmp / name)
        shutil.rmtree(tmp / ".work", ignore_errors=True)
        manifest = context.manifest({name: entry for name, (entry, _) in compiled.items()}, pipeline)
        for name, text in target.artifact_files(manifest, tmp).items():
            (tmp / name).write_text(text)
            manifest.assets[name] = sha256_file(tmp / name)
        manifest.save(tmp)
    return manifest
