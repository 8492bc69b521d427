"""`--precision auto` (and `--target auto`): compile every candidate, keep those that pass their gates, measure,
pick the best.

Nothing is assumed about speed: on a CPU without int8 dot-product instructions int8 is often slower
than fp32, and only a measurement on the machine says so. With `--target auto` the candidates are every
precision of every installed target whose artifacts run on this machine, each with its default options.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from edgefm.contract import registry
from edgefm.contract.errors import EdgefmError, GateError
from edgefm.contract.manifest import Manifest

# Within this share of the best figure two candidates are a tie (timing noise); the more precise one wins.
TIE = 0.03
ORDER = ["fp32", "fp16", "fp8", "int8", "int4"]  # most to least precise
AUTO = "auto"


def _label(candidate: dict) -> str:
    return f"{candidate['target']} {candidate['precision']}" if candidate.get("target") else candidate["precision"]


def choose(candidates: list[dict], objective: str) -> tuple[dict, str]:
    """The candidate to keep and why. Candidates carry precision, passed, latency_ms and size_mib (and target,
    in candidate order: the earlier target wins a tie between equally precise candidates)."""
    key = {"latency": "latency_ms", "size": "size_mib"}[objective]
    passing = [c for c in candidates if c["passed"]]
    if not passing:
        raise GateError("no candidate passes its accuracy gate: " +
                        "; ".join(f"{_label(c)}: {c['reason']}" for c in candidates))
    best = min(c[key] for c in passing)
    ties = [c for c in passing if c[key] <= best * (1 + TIE)]
    chosen = min(ties, key=lambda c: ORDER.index(c["precision"]))
    unit = "ms" if objective == "latency" else "MiB"
    others = ", ".join(f"{_label(c)} {c[key]:.2f}" for c in passing if c is not chosen)
    reason = (f"{_label(chosen)}: {'lowest batch-1 latency' if objective == 'latency' else 'smallest size'} "
              f"({chosen[key]:.2f} {unit}) among candidates passing their gates"
              + (f" (others: {others} {unit})" if others else "")
              + (f"; within {TIE:.0%} of the best, so the most precise of those" if len(ties) > 1 else ""))
    return chosen, reason


def _measure(directory: Path, iters: int) -> tuple[float, float]:
    """Summed batch-1 median latency of all components, and total size."""
    from edgefm.bench.timing import artifact_latencies

    latency = sum(artifact_latencies(directory, iters).values())
    manifest = Manifest.load(directory, verify=False)
    return latency, sum(e.size_mib(directory) for e in manifest.components.values())


def candidate_targets(target_name: str) -> tuple[list, dict[str, str]]:
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


def compile_auto(artifact: Path, target_name: str, out: Path, objective: str = "latency", iters: int = 30,
                 overwrite: bool = False, log: Callable[[str], None] = print, **compile_kwargs) -> Manifest:
    from edgefm.bench.hardware import describe
    from edgefm.contract.staging import staging_dir

    from edgefm.contract.cache import CompileCache

    targets, skipped = candidate_targets(target_name)
    inputs = [artifact, compile_kwargs.get("calib_dir"), compile_kwargs.get("prompts")]
    compile_kwargs = {**compile_kwargs, "cache": CompileCache()}  # the candidates share the export's sessions, feeds
    with staging_dir(Path(out), overwrite, inputs, log) as tmp:
        candidates = []
        for target in targets:
            for precision in target.precisions:
                candidates.append(_try(artifact, target.name, precision.value, tmp / ".candidates", iters, log,
                                       compile_kwargs))
        chosen, reason = choose(candidates, objective)
        log(f"auto: keeping {reason}")
        for produced in (tmp / ".candidates" / f"{chosen['target']}-{chosen['precision']}").iterdir():
            shutil.move(str(produced), tmp / produced.name)
        shutil.rmtree(tmp / ".candidates")
        manifest = Manifest.load(tmp)
        hardware = describe(None, [t.runtime for t in targets])
        manifest.selection = {"asked": f"--target {target_name} --precision auto", "objective": objective,
                              "chosen": chosen["precision"], "chosen_target": chosen["target"], "reason": reason,
                              "candidates": candidates, "targets_skipped": skipped,
                              "measured_on": {k: hardware[k] for k in ("cpu", "isa")},
                              "timing": f"median of {iters} runs at batch 1, summed over components"}
        manifest.save(tmp)
    return manifest


def _try(artifact: Path, target: str, precision: str, root: Path, iters: int, log, compile_kwargs: dict) -> dict:
    """Compile one candidate into root/TARGET-PRECISION and measure it; a failure is a recorded candidate."""
    from edgefm.jobs.compile import compile_artifact

    where, head = root / f"{target}-{precision}", {"target": target, "precision": precision}
    log(f"auto: compiling {target} {precision}")
    try:
        compile_artifact(artifact, target, precision, where, log=log, **compile_kwargs)
    except GateError as exc:
        return {**head, "passed": False, "reason": str(exc)}
    except Exception as exc:  # one candidate failing to build must not discard the others
        log(f"auto: {target} {precision} failed to compile: {exc!r}")
        return {**head, "passed": False, "reason": f"compile failed: {exc!r}"}
    latency, size = _measure(where, iters)
    log(f"auto: {target} {precision} passes its gates; {latency:.2f} ms (batch 1, all components), {size:.2f} MiB")
    compiled = Manifest.load(where)
    validation = {name: e.validation["value"] for name, e in compiled.components.items()}
    if compiled.pipeline_validation:
        validation["end to end"] = {c["metric"]: c["value"] for c in compiled.pipeline_validation["checks"]}
        validation["kept_fp32"] = list(compiled.pipeline_validation["kept_fp32"])
    return {**head, "passed": True, "latency_ms": latency, "size_mib": size, "validation": validation}
