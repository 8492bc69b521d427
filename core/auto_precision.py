"""`--precision auto`: compile every precision, keep those that pass their gates, measure, pick the best.

Nothing is assumed about speed: on a CPU without int8 dot-product instructions int8 is often slower
than fp32, and only a measurement on the machine says so.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from edgefm.errors import EdgefmError, GateError
from edgefm.manifest import Manifest

# Within this share of the best figure two candidates are a tie (timing noise); the more precise one wins.
TIE = 0.03
ORDER = ["fp32", "fp16", "fp8", "int8", "int4"]  # most to least precise


def choose(candidates: list[dict], objective: str) -> tuple[dict, str]:
    """The candidate to keep and why. Candidates carry precision, passed, latency_ms and size_mib."""
    key = {"latency": "latency_ms", "size": "size_mib"}[objective]
    passing = [c for c in candidates if c["passed"]]
    if not passing:
        raise GateError("no precision passes its accuracy gate: " +
                        "; ".join(f"{c['precision']}: {c['reason']}" for c in candidates))
    best = min(c[key] for c in passing)
    ties = [c for c in passing if c[key] <= best * (1 + TIE)]
    chosen = min(ties, key=lambda c: ORDER.index(c["precision"]))
    unit = "ms" if objective == "latency" else "MiB"
    others = ", ".join(f"{c['precision']} {c[key]:.2f}" for c in passing if c is not chosen)
    reason = (f"{chosen['precision']}: {'lowest batch-1 latency' if objective == 'latency' else 'smallest size'} "
              f"({chosen[key]:.2f} {unit}) among precisions passing their gates"
              + (f" (others: {others} {unit})" if others else "")
              + (f"; within {TIE:.0%} of the best, so the most precise of those" if len(ties) > 1 else ""))
    return chosen, reason


def _measure(directory: Path, iters: int) -> tuple[float, float]:
    """Summed batch-1 median latency of all components, and total size."""
    from edgefm.bench import artifact_latencies

    latency = sum(artifact_latencies(directory, iters).values())
    manifest = Manifest.load(directory, verify=False)
    return latency, sum(e.size_mib(directory) for e in manifest.components.values())


def compile_auto(artifact: Path, target_name: str, out: Path, objective: str = "latency", iters: int = 30,
                 overwrite: bool = False, log: Callable[[str], None] = print, **compile_kwargs) -> Manifest:
    from edgefm.compile_job import available_target, compile_artifact
    from edgefm.hardware import describe
    from edgefm.staging import staging_dir

    target = available_target(target_name)
    cannot_run = target.cannot_run_here()
    if cannot_run:
        raise EdgefmError(f"--precision auto times every precision on this machine, but {target.name} artifacts "
                          f"cannot run here ({cannot_run}); choose a precision")
    inputs = [artifact, compile_kwargs.get("calib_dir"), compile_kwargs.get("prompts")]
    with staging_dir(Path(out), overwrite, inputs, log) as tmp:
        candidates = []
        for precision in target.precisions:
            where = tmp / ".candidates" / precision.value
            log(f"auto: compiling {precision.value}")
            try:
                compile_artifact(artifact, target_name, precision.value, where, log=log, **compile_kwargs)
            except GateError as exc:
                candidates.append({"precision": precision.value, "passed": False, "reason": str(exc)})
                continue
            except Exception as exc:  # one precision failing to build must not discard the others
                log(f"auto: {precision.value} failed to compile: {exc!r}")
                candidates.append({"precision": precision.value, "passed": False,
                                   "reason": f"compile failed: {exc!r}"})
                continue
            latency, size = _measure(where, iters)
            log(f"auto: {precision.value} passes its gates; {latency:.2f} ms (batch 1, all components), {size:.2f} MiB")
            compiled = Manifest.load(where)
            validation = {name: e.validation["value"] for name, e in compiled.components.items()}
            if compiled.pipeline_validation:
                validation["end to end"] = {c["metric"]: c["value"] for c in compiled.pipeline_validation["checks"]}
                validation["kept_fp32"] = list(compiled.pipeline_validation["kept_fp32"])
            candidates.append({"precision": precision.value, "passed": True, "latency_ms": latency,
                               "size_mib": size, "validation": validation})
        chosen, reason = choose(candidates, objective)
        log(f"auto: keeping {reason}")
        for produced in (tmp / ".candidates" / chosen["precision"]).iterdir():
            shutil.move(str(produced), tmp / produced.name)
        shutil.rmtree(tmp / ".candidates")
        manifest = Manifest.load(tmp)
        hardware = describe(None, [target.runtime])
        manifest.selection = {"objective": objective, "chosen": chosen["precision"], "reason": reason,
                              "candidates": candidates, "measured_on": {k: hardware[k] for k in ("cpu", "isa")},
                              "timing": f"median of {iters} runs at batch 1, summed over components"}
        manifest.save(tmp)
    return manifest
