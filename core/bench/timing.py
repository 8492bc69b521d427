"""Timing and memory figures taken in this process: what `edgefm bench`, `--precision auto` and the demo measure."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np


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
