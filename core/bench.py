"""`edgefm bench`: latency percentiles, throughput, load time and peak memory per component.

Each (artifact, component) runs in a fresh Python process, so peak RSS belongs to that component
alone and one artifact's threads or caches cannot warm up the next one.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgefm.errors import EdgefmError


def time_calls(call, warmup: int, iters: int) -> list[float]:
    """Milliseconds per call of `call()`, after `warmup` untimed calls."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def summarize(times: list[float], batch: int) -> dict:
    median = float(np.median(times))
    return {"batch": batch, "median_ms": median, "p90_ms": float(np.percentile(times, 90)),
            "p99_ms": float(np.percentile(times, 99)), "items_per_s": batch * 1e3 / median, "iters": len(times)}


def measure(session, batch: int, warmup: int, iters: int, rng: np.random.Generator) -> dict:
    """Latency of `session.run` on random feeds of one batch size (the feeds do not change a graph's cost)."""
    feeds = session.example_feeds(rng, batch=batch)
    return summarize(time_calls(lambda: session.run(feeds), warmup, iters), batch)


def artifact_latencies(directory: Path, iters: int = 20) -> dict:
    """{(directory, component): batch-1 median ms}, in this process: the quick figure the demo table shows."""
    import edgefm

    artifact = edgefm.load(directory)
    rng = np.random.default_rng(0)
    return {(str(directory), name): measure(session, 1, 3, iters, rng)["median_ms"]
            for name, session in artifact.sessions.items()}


def peak_rss_mib() -> float | None:
    """This process's peak resident memory so far (None where the OS does not report it).

    On Linux VmHWM, not ru_maxrss: ru_maxrss carries the parent's peak over through fork + exec.
    """
    status = Path("/proc/self/status")
    if status.exists():
        return next(int(line.split()[1]) for line in status.read_text().splitlines()
                    if line.startswith("VmHWM:")) / 2**10
    try:
        import resource
    except ImportError:  # Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # bytes on macOS


def has_batch_axis(session) -> bool:
    return all("batch" in spec.shape for spec in session.inputs)


def bench_component(directory: Path, component: str, batches: list[int], warmup: int, iters: int,
                    threads: int | None) -> dict:
    """Load one component and time it at each batch size (run inside the worker process)."""
    from edgefm.hardware import gpu_memory_mib
    from edgefm.manifest import Manifest

    manifest = Manifest.load(directory)
    entry = manifest.components[component]
    runtime = importlib.import_module(f"edgefm.runtimes.{entry.runtime}")
    baseline = peak_rss_mib()
    start = time.perf_counter()
    session = runtime.open_session(directory / entry.file, entry, component, **({"threads": threads} if threads else {}))
    load_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    sizes = batches if has_batch_axis(session) else [1]
    runs = [measure(session, batch, warmup, iters, rng) for batch in sizes]
    peak = peak_rss_mib()
    return {"artifact": str(directory), "family": manifest.family, "variant": manifest.variant,
            "component": component, "target": entry.target or "export", "runtime": entry.runtime,
            "precision": entry.precision, "selection": (manifest.selection or {}).get("reason"),
            "size_mib": sum((directory / f).stat().st_size for f in entry.files()) / 2**20,
            "accuracy": _accuracy(entry.validation), "load_s": load_s, "peak_rss_mib": peak,
            "rss_over_baseline_mib": peak - baseline if peak is not None else None,
            "gpu_memory_mib": gpu_memory_mib(os.getpid()), "runs": runs}


def _accuracy(validation: dict | None) -> dict | None:
    if not validation:
        return None
    return {k: validation[k] for k in ("metric", "value", "gate", "passed", "reference")}


def run_bench(artifacts: list[Path], batches: list[int], warmup: int, iters: int, threads: int | None,
              progress=None) -> dict:
    """Benchmark every component of every artifact, each in its own process; `progress(label, done)` per job."""
    from edgefm.hardware import describe
    from edgefm.manifest import Manifest

    if warmup < 0 or iters < 1 or not batches or min(batches) < 1:
        raise EdgefmError(f"need --iters >= 1, --warmup >= 0 and batch sizes >= 1 (got iters {iters}, "
                          f"warmup {warmup}, batches {batches})")
    manifests = {Path(a): Manifest.load(Path(a)) for a in artifacts}  # verify everything before timing anything
    jobs = [(directory, name) for directory, m in manifests.items() for name in m.components]
    results = []
    for done, (directory, component) in enumerate(jobs):
        if progress:
            progress(f"{directory.name} {component}", done)
        results.append(_in_fresh_process(dict(directory=str(directory.resolve()), component=component,
                                              batches=batches, warmup=warmup, iters=iters, threads=threads)))
    runtimes = [e.runtime for m in manifests.values() for e in m.components.values()]
    return {"hardware": describe(threads, runtimes),
            "settings": {"batches": batches, "warmup": warmup, "iters": iters, "threads": threads,
                         "inputs": "random feeds at the manifest's default sizes"},
            "results": results}


def _in_fresh_process(job: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "result.json"
        done = subprocess.run([sys.executable, "-m", "edgefm.bench", json.dumps(job), str(result_path)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise EdgefmError(f"benchmarking {job['directory']} {job['component']} failed:\n{done.stderr[-2000:]}")
        return json.loads(result_path.read_text())


if __name__ == "__main__":  # the worker: python -m edgefm.bench JOB_JSON RESULT_PATH
    job = json.loads(sys.argv[1])
    job["directory"] = Path(job["directory"])
    Path(sys.argv[2]).write_text(json.dumps(bench_component(**job)))
