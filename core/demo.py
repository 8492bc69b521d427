"""The main job, fully offline: tiny presets -> ONNX -> every target and precision, validated and timed."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

DEMO_MODELS = [("clip", "tiny"), ("dinov2", "tiny")]
DEMO_TARGETS = ["onnxruntime", "openvino"]
DEMO_PRECISIONS = ["fp32", "fp16", "int8", "int4"]


def run_demo(out: Path, log: Callable[[str], None] = print):
    from edgefm.bench import artifact_latencies
    from edgefm.compile_job import compile_artifact
    from edgefm.export_job import export

    rows, latencies = [], {}
    for family, variant in DEMO_MODELS:
        exported = out / family / "exported"
        rows.append((exported, export(family, exported, variant=variant, overwrite=True, log=log)))
        latencies.update(artifact_latencies(exported))
        for target in DEMO_TARGETS:
            for precision in DEMO_PRECISIONS:
                compiled = out / family / f"{target}-{precision}"
                # keep below-gate results so the table shows them; the command still exits non-zero
                rows.append((compiled, compile_artifact(exported, target, precision, compiled,
                                                        allow_below_gate=True, overwrite=True, log=log)))
                latencies.update(artifact_latencies(compiled))
    return rows, latencies
