"""`--precision auto` (and `--target auto`): compile every candidate, keep those that pass their gates, measure,
pick the best.

Nothing is assumed about speed: on a CPU without int8 dot-product instructions int8 is often slower
than fp32, and only a measurement on the machine says so. With `--target auto` the candidates are every
precision of every installed target whose artifacts run on this machine, each with its default options.
"""
from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefm.contract import registry
from edgefm.contract.errors import EdgefmError, GateError
from edgefm.contract.manifest import Manifest
from edgefm.contract.records import Candidate, Selection
from edgefm.jobs.compile import AUTO

if TYPE_CHECKING:
    from edgefm.jobs.compile import CompileJob
    from edgefm.targets.base import Target

# Within this share of the best figure two candidates are a tie (timing noise); the more precise one wins.
TIE = 0.03


def precision_order() -> list[str]:
    """Every precision a target builds, most to least precise: the order of Precision (contract.spec)."""
    from edgefm.contract.spec import Precision

    return [p.value for p in Precision]


def choose(candidates: list[Candidate], objective: str) -> tuple[Candidate, str]:
    """The candidate to keep and why. Candidates come in candidate order: the earlier target wins a tie between
    equally precise candidates."""
    figure = {"latency": lambda c: c.latency_ms, "size": lambda c: c.size_mib}[objective]
    passing = [c for c in candidates if c.passed]
    if not passing:
        raise GateError("no candidate passes its accuracy gate: " +
                        "; ".join(f"{c.label}: {c.reason}" for c in candidates))
    best = min(figure(c) for c in passing)
    ties = [c for c in passing if figure(c) <= best * (1 + TIE)]
    order = precision_order()
    chosen = min(ties, key=lambda c: order.index(c.precision))
    unit = "ms" if objective == "latency" else "MiB"
    others = ", ".join(f"{c.label} {figure(c):.2f}" for c in passing if c is not chosen)
    reason = (f"{chosen.label}: {'lowest batch-1 latency' if objective == 'latency' else 'smallest size'} "
              f"({figure(chosen):.2f} {unit}) among candidates passing their gates"
              + (f" (others: {others} {unit})" if others else "")
              + (f"; within {TIE:.0%} of the best, so the most precise of those" if len(ties) > 1 else ""))
    return chosen, reason


def _measure(directory: Path, iters: int) -> tuple[float, float]:
    """Summed batch-1 median latency of all components, and total size."""
    from edgefm.bench.timing import artifact_latencies

    latency = sum(artifact_latencies(directory, iters).values())
    manifest = Manifest.load(directory, verify=False)
    return latency, sum(e.size_mib(directory) for e in manifest.components.values())


def candidate_targets(target_name: str) -> tuple[list[Target], dict[str, str]]:
    """The targets to try, and for `auto` the ones left out with why (recorded in the manifest)."""
    from edgefm.jobs.compile import available_target

    if target_name != AUTO:
        target = available_target(target_name)
        cannot_run = target.cannot_run_here()
        if cannot_run:
            raise EdgefmError(f"--precision auto times every precision on this machine, but {target.name} artifacts "
                              f"cannot run here ({cannot_run}); choose a precision")
        return [target], {}
    usable, skipped = [], {}
    for name, target in registry.targets().items():
        reason = target.available() or target.cannot_run_here()
        if reason:
            skipped[name] = reason
        else:
            usable.append(target)
    if not usable:
        raise EdgefmError("--target auto found no installed target whose artifacts run on this machine (" +
                          "; ".join(f"{k}: {v}" for k, v in skipped.items()) + "); pip install 'edgefm[build]' "
                          "or name a --target")
    return usable, skipped


def compile_auto(artifact: Path, target_name: str, out: Path, *, objective: str = "latency", iters: int = 30,
                 options: Any = None, calib_dir: Path | None = None, calib_size: int | None = None,
                 prompts: Path | None = None, overwrite: bool = False,
                 log: Callable[[str], None] = print) -> Manifest:
    """Compile every candidate (each through the compile job), keep the best that passes its gates (`objective`),
    and record every candidate's figures in the manifest's `selection`."""
    from edgefm.contract.cache import CompileCache
    from edgefm.contract.staging import staging_dir
    from edgefm.jobs.compile import CompileJob

    targets, skipped = candidate_targets(target_name)
    cache = CompileCache()  # the candidates share the export's sessions, feeds
    with staging_dir(Path(out), overwrite, [artifact, calib_dir, prompts], log) as tmp:
        candidates = [_try(artifact, CompileJob(target.name, precision.value, options, calib_dir, calib_size, prompts),
                           tmp / ".candidates", iters, log, cache)
                      for target in targets for precision in target.precisions]
        chosen, reason = choose(candidates, objective)
        log(f"auto: keeping {reason}")
        for produced in (tmp / ".candidates" / f"{chosen.target}-{chosen.precision}").iterdir():
            shutil.move(str(produced), tmp / produced.name)
        shutil.rmtree(tmp / ".candidates")
        manifest = Manifest.load(tmp)
        manifest.selection = _selection(target_name, objective, chosen, reason, candidates, skipped, targets, iters)
        manifest.save(tmp)
    return manifest


def _selection(target_name: str, objective: str, chosen: Candidate, reason: str, candidates: list[Candidate],
               skipped: dict[str, str], targets: list[Target], iters: int) -> Selection:
    from edgefm.bench.hardware import describe

    hardware = describe(None, [t.runtime for t in targets])
    return Selection(f"--target {target_name} --precision auto", objective, chosen.precision, chosen.target or "",
                     reason, tuple(candidates), skipped, {k: hardware[k] for k in ("cpu", "isa")},
                     f"median of {iters} runs at batch 1, summed over components")


def _try(artifact: Path, job: CompileJob, root: Path, iters: int, log: Callable[[str], None],
         cache: Any) -> Candidate:
    """Compile one candidate into root/TARGET-PRECISION and measure it; a failure is a recorded candidate."""
    from edgefm.jobs.compile import run_job

    where = root / f"{job.target}-{job.precision}"
    log(f"auto: compiling {job.target} {job.precision}")
    try:
        compiled = run_job(artifact, job, where, log=log, cache=cache)
    except GateError as exc:
        return Candidate(job.precision, False, job.target, str(exc))
    except Exception as exc:  # one candidate failing to build must not discard the others
        log(f"auto: {job.target} {job.precision} failed to compile: {exc!r}")
        return Candidate(job.precision, False, job.target, f"compile failed: {exc!r}")
    latency, size = _measure(where, iters)
    log(f"auto: {job.target} {job.precision} passes its gates; {latency:.2f} ms (batch 1, all components), "
        f"{size:.2f} MiB")
    validation: dict[str, Any] = {name: e.validation.value for name, e in compiled.components.items() if e.validation}
    pipeline = compiled.pipeline_validation
    if pipeline:
        validation["end to end"] = {c.metric: c.value for c in pipeline.checks}
        validation["kept_fp32"] = list(pipeline.kept_fp32)
    return Candidate(job.precision, True, job.target, None, latency, size, validation)
