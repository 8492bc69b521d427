"""Median latency of each component of an artifact at batch 1 (the fuller benchmark is separate)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def median_latency_ms(session, feeds: dict, runs: int = 20, warmup: int = 3) -> float:
    for _ in range(warmup):
        session.run(feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(feeds)
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def artifact_latencies(directory: Path, runs: int = 20) -> dict:
    import edgefm

    artifact = edgefm.load(directory)
    rng = np.random.default_rng(0)
    return {(str(directory), name): median_latency_ms(session, session.example_feeds(rng), runs)
            for name, session in artifact.sessions.items()}
