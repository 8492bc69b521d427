"""`edgefm bench`: latency percentiles, throughput, load time and peak memory per component.

Each (artifact, component, batch size) runs in a fresh Python process, so peak RSS belongs to that row
alone and one artifact's threads or caches cannot warm up the next one.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgefm.bench.timing import measure, peak_rss_mib
from edgefm.contract.errors import EdgefmError
from edgefm.contract.records import Validation


def has_batch_axis(inputs) -> bool:
    return all("batch" in spec.shape for spec in inputs)


def bench_component(directory: Path, component: str, batch: int, warmup: int, iters: int,
                    threads: int | None) -> dict:
    """Load one component and time it at one batch size (runs inside the worker process)."""
    from edgefm.bench.hardware import gpu_memory_mib
    from edgefm.contract.manifest import Manifest
    from edgefm.runtimes.loader import open_component

    manifest = Manifest.load(directory, verify=False)  # the parent verified every file before any timing
    entry = manifest.components[component]
    start = time.perf_counter()
    session = open_component(directory, entry, component, **({"threads": threads} if threads else {}))
    load_s = time.perf_counter() - start
    timing = measure(session, batch, warmup, iters, np.random.default_rng(0))
    return {"artifact": str(directory), "family": manifest.family, "variant": manifest.variant,
            "component": component, "target": entry.target or "export", "device": getattr(session, "device", "CPU"),
            "runtime": entry.runtime, "precision": entry.precision,
            "size_mib": entry.size_mib(directory),
            "accuracy": _accuracy(entry.validation), "load_s": load_s, "peak_rss_mib": peak_rss_mib(),
            "gpu_memory_mib": gpu_memory_mib(os.getpid()), **timing}


def _accuracy(validation: Validation | None) -> dict | None:
    if not validation:
        return None
    return {k: validation[k] for k in ("metric", "value", "gate", "passed", "reference")}


def run_bench(artifacts: list[Path], batches: list[int], warmup: int, iters: int, threads: int | None,
              progress=None) -> dict:
    """Time every (artifact, component, batch size), each in its own process; `progress(label, done, total)`.

    A component without a batch axis runs at batch 1 only (listed under "skipped" for the others);
    a job that fails is listed under "errors" and the others go on.
    """
    from edgefm.bench.hardware import describe
    from edgefm.contract.manifest import Manifest

    if warmup < 0 or iters < 1 or not batches or min(batches) < 1:
        raise EdgefmError(f"need --iters >= 1, --warmup >= 0 and batch sizes >= 1 (got iters {iters}, "
                          f"warmup {warmup}, batches {batches})")
    manifests = {Path(a).resolve(): Manifest.load(Path(a)) for a in artifacts}  # verify before timing anything
    jobs, skipped = [], []
    for directory, manifest in manifests.items():
        for name, entry in manifest.components.items():
            for batch in batches:
                if batch == 1 or has_batch_axis(entry.inputs):
                    jobs.append((directory, name, batch))
                else:
                    skipped.append(f"{directory.name} {name} batch {batch}: the graph has a fixed batch size")
    results, errors = [], []
    for done, (directory, component, batch) in enumerate(jobs):
        if progress:
            progress(f"{directory.name} {component} batch {batch}", done, len(jobs))
        job = dict(directory=str(directory), component=component, batch=batch, warmup=warmup, iters=iters,
                   threads=threads)
        try:
            results.append(in_fresh_process(job))
        except EdgefmError as exc:
            errors.append(str(exc))
    if progress:
        progress("done", len(jobs), len(jobs))
    runtimes = [e.runtime for m in manifests.values() for e in m.components.values()]
    return {"hardware": describe(threads, runtimes),
            "settings": {"batches": batches, "warmup": warmup, "iters": iters, "threads": threads,
                         "inputs": "random feeds at the manifest's default sizes"},
            "results": results, "skipped": skipped, "errors": errors}


def in_fresh_process(job: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "result.json"
        done = subprocess.run([sys.executable, "-m", "edgefm.bench.runner", json.dumps(job), str(result_path)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
            raise EdgefmError(f"{job['directory']} {job['component']} batch {job['batch']} failed: {last}")
        return json.loads(result_path.read_text())


if __name__ == "__main__":  # the worker: python -m edgefm.bench.runner JOB_JSON RESULT_PATH
    job = json.loads(sys.argv[1])
    job["directory"] = Path(job["directory"])
    Path(sys.argv[2]).write_text(json.dumps(bench_component(**job)))
