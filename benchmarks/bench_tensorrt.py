"""TensorRT matrix: every family in fp32 / fp16 / int8 / fp8, engines built and timed on this GPU.

Per model it exports (tiny presets by default; `--real`: real configs with random weights), compiles for
TensorRT in each precision (typed ONNX + build plan, gated on ONNX Runtime on the CPU), builds the
engines here (`edgefm engine`, which gates them against the fp32 export on this GPU), then times each
engine at batch 1 and reports per component:
- the CPU-side gate of the graph (ONNX Runtime) and the engine's own gate (TensorRT), against the fp32 export;
- nodes pinned to fp32 from data, engine build seconds, engine size;
- batch-1 median latency and its speedup over the fp32 engine measured in the same run, and device memory.
fp8 is skipped (said in the report) on GPUs below compute capability 8.9.
Without TensorRT and a GPU it refuses, unless `--plan-only`: then only the CPU-side columns are filled.

    python benchmarks/bench_tensorrt.py [--real | --models clip:tiny,sd15:tiny] [--plan-only] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from bench_common import bar_panels, each_model, save_report

PRECISIONS = ("fp32", "fp16", "int8", "fp8")
QUICK_MODELS = "clip:tiny,dinov2:tiny,sam2:tiny,sd15:tiny,sdxl:tiny"
REAL_MODELS = "clip:vit-b-32,dinov2:small,sam2:hiera-tiny,sd15:v1-5"


def bench_model(family: str, variant: str, out: Path, iters: int, engines: bool) -> list[dict]:
    from edgefm.jobs.compile import compile_artifact
    from edgefm.jobs.export import export

    exported = out / f"{family}-{variant}"
    if not (exported / "manifest.json").is_file():
        export(family, exported, variant=variant, random_weights=variant != "tiny", overwrite=True)
    rows = []
    for precision in PRECISIONS:
        planned = out / f"{family}-{variant}-tensorrt-{precision}"
        started = time.perf_counter()
        compile_artifact(exported, "tensorrt", precision, planned, allow_below_gate=True, overwrite=True)
        rows += _rows(family, variant, planned, time.perf_counter() - started, precision, engines, out, iters)
    fp32 = {r["component"]: r["latency_ms"] for r in rows if r["precision"] == "fp32"}
    for row in rows:
        base = fp32.get(row["component"])
        row["speedup_vs_fp32"] = base / row["latency_ms"] if base and row["latency_ms"] else None
    return rows


def _rows(family, variant, planned: Path, compile_s: float, precision: str, engines: bool, out: Path,
          iters: int) -> list[dict]:
    from edgefm.bench.hardware import gpu_memory_mib
    from edgefm.bench.timing import artifact_latencies
    from edgefm.contract.manifest import Manifest
    from edgefm.runtimes.tensorrt import this_machine
    from edgefm.targets.tensorrt_device import build_engines
    from edgefm.targets.tensorrt_plan import cc_tuple

    plan = Manifest.load(planned)
    engines_dir = planned.with_name(planned.name + "-engines")
    built, build_s, latencies, memory, skipped = None, None, {}, None, None
    if engines and precision == "fp8" and cc_tuple(this_machine()["compute_capability"]) < (8, 9):
        skipped = "fp8 needs compute capability 8.9+"
    elif engines:
        started = time.perf_counter()
        built = build_engines(planned, engines_dir, cache=out / "engine-cache", rebuild=True, allow_below_gate=True,
                              overwrite=True)
        build_s = time.perf_counter() - started
        latencies = artifact_latencies(engines_dir, iters)
        memory = gpu_memory_mib(os.getpid())
    rows = []
    for name, entry in plan.components.items():
        engine = built.components[name] if built else None
        pins = json.loads((planned / f"{name}.fp16_pins.json").read_text())
        rows.append({"model": f"{family}:{variant}", "component": name, "precision": entry.precision,
                     "scheme": entry.options["compile"]["scheme"], "fp32_pins": len(pins["nodes"]),
                     "graph_mib": entry.size_mib(planned), "compile_s": compile_s,
                     "cpu_gate": _gate(entry.validation), "engine_gate": _gate(engine.validation) if engine else skipped,
                     "build_s": build_s, "engine_mib": (engines_dir / engine.file).stat().st_size / 2**20 if engine else None,
                     "latency_ms": latencies.get((str(engines_dir), name)),
                     "gpu_memory_mib": memory})
    if plan.pipeline_validation:  # SAM 2 / SD: the task end to end, and what it kept in fp32
        kept = ", ".join(plan.pipeline_validation["kept_fp32"]) or "none"
        rows.append({**rows[-1], "component": "end to end", "precision": precision, "scheme": f"kept fp32: {kept}", "fp32_pins": None,
                     "graph_mib": None, "cpu_gate": _gate(plan.pipeline_validation),
                     "engine_gate": _gate(built.pipeline_validation) if built else skipped, "engine_mib": None,
                     "latency_ms": None})
    return rows


def _gate(validation: dict) -> str:
    return (f"{validation['metric']} {validation['value']:.5f} ({'pass' if validation['passed'] else 'BELOW'} "
            f"gate {validation['gate']})")


def report(rows: list[dict], out: Path) -> None:
    from edgefm.bench.hardware import describe, summary_lines

    def fmt(value, digits=2):
        return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    lines = ["| model | component | precision (scheme) | fp32 pins | graph on ONNX Runtime vs fp32 export | "
             "engine vs fp32 export | engine MiB | build s | batch-1 ms | vs fp32 engine | GPU MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['component']} | {r['precision']} ({r['scheme']}) | {fmt(r['fp32_pins'])} | "
                     f"{r['cpu_gate']} | {r['engine_gate'] or 'not built (--plan-only)'} | {fmt(r['engine_mib'])} | "
                     f"{fmt(r['build_s'], 0)} | {fmt(r['latency_ms'], 3)} | {fmt(r['speedup_vs_fp32'])}x | "
                     f"{fmt(r['gpu_memory_mib'], 0)} |")
    text = "\n".join(lines + ["", "GPU MiB: device memory this process held after loading and timing the engines "
                               "(NVML), all components of the artifact together.", "",
                               *summary_lines(describe(None, ["onnxruntime", "tensorrt"]))]) + "\n"
    save_report(out, text, rows)
    timed = [{"engine": f"{r['model']} {r['component']} {r['precision']}", "latency_ms": r["latency_ms"],
              "speedup": r["speedup_vs_fp32"]} for r in rows if r["latency_ms"]]
    if timed:
        bar_panels(timed, [("latency_ms", "batch-1 median latency (ms)"), ("speedup", "speedup vs the fp32 engine")],
                   "TensorRT engines per precision", out / "tensorrt-latency.png")


def main() -> None:
    from edgefm.runtimes.tensorrt import unavailable_reason

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", action="store_true", help=f"real configs, random weights: {REAL_MODELS}")
    parser.add_argument("--models", help=f"family:variant list (default {QUICK_MODELS})")
    parser.add_argument("--plan-only", action="store_true", help="CPU side only: graphs, pins and their gates")
    parser.add_argument("--out", type=Path, default=Path("bench-tensorrt"))
    parser.add_argument("--iters", type=int, default=100)
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason and not args.plan_only:
        sys.exit(f"this benchmark builds and times TensorRT engines, which cannot run here ({reason}); "
                 "run it on a GPU machine, or pass --plan-only for the CPU-side figures")
    each_model(args.models or (REAL_MODELS if args.real else QUICK_MODELS),
               lambda family, variant: bench_model(family, variant, args.out, args.iters, not args.plan_only),
               report, args.out)


if __name__ == "__main__":
    main()
