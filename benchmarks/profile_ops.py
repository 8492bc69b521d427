"""Where the time goes: per-operator-type time of one component on ONNX Runtime (its profiler) and OpenVINO
(its performance counters), side by side, to explain a gap between two artifacts of the same model.

    python benchmarks/profile_ops.py ARTIFACT [ARTIFACT ...] [--component NAME] [--batch 8] [--iters 10]

Prints, per artifact, the share of run time per operator type (top 12) and the total ms per run.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np


def onnxruntime_ops(path: Path, feeds: dict, iters: int, threads: int | None) -> Counter:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="edgefm-profile-")) / "onnxruntime")
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, feeds)  # warm-up, not counted below
    for _ in range(iters):
        session.run(None, feeds)
    profile = Path(session.end_profiling())
    events = json.loads(profile.read_text())
    shutil.rmtree(profile.parent)  # the temporary folder made above
    times = Counter()
    runs = [e for e in events if e.get("name") == "model_run"]
    first_counted = runs[1]["ts"] if len(runs) > 1 else 0
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= first_counted:
            times[event["args"]["op_name"]] += event["dur"] / 1e3 / iters
    return times


def openvino_ops(path: Path, feeds: dict, iters: int, threads: int | None, precision: str | None) -> Counter:
    import openvino as ov

    config = {"PERF_COUNT": True, "PERFORMANCE_HINT": "LATENCY",
              **({"INFERENCE_PRECISION_HINT": precision} if precision else {}),
              **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
    request = ov.Core().compile_model(str(path), "CPU", config).create_infer_request()
    request.infer(feeds)
    times = Counter()
    for _ in range(iters):
        request.infer(feeds)
        for info in request.profiling_info:  # per executed node; exec_type names the kernel (e.g. brgemm_avx512_amx)
            times[f"{info.node_type} ({info.exec_type})"] += info.real_time.total_seconds() * 1e3 / iters
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", nargs="+", type=Path)
    parser.add_argument("--component", help="default: the artifact's first component")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    import edgefm
    from edgefm.contract.manifest import Manifest

    for directory in args.artifacts:
        manifest = Manifest.load(directory)
        name = args.component or next(iter(manifest.components))
        entry = manifest.components[name]
        feeds = edgefm.load(directory)[name].example_feeds(np.random.default_rng(0), batch=args.batch)
        path = directory / entry.file
        if entry.runtime == "openvino":
            precision = entry.options["compile"].get("inference_precision")
            times = openvino_ops(path, feeds, args.iters, args.threads, precision)
        else:
            times = onnxruntime_ops(path, feeds, args.iters, args.threads)
        total = sum(times.values())
        print(f"\n{directory} {name} batch {args.batch}: {total:.1f} ms per run in operators")
        for op, ms in times.most_common(12):
            print(f"  {op:48s} {ms:8.1f} ms  {ms / total:6.1%}")


if __name__ == "__main__":
    main()
