"""Core ML packages per precision: size, compile time and accuracy, plus latency where Core ML runs (a Mac).

Exports each model (real configs with random weights by default; `--quick`: the tiny presets of every
family), compiles it for Core ML in each precision, and reports per component:
- the package size, and its ratio to the fp16 package;
- the compile time (conversion, compression, static checks, gates);
- the headline accuracy against the fp32 ONNX export, and what it was measured on. Off Apple
  systems that is the compressed torch wrapper, not Core ML.
On a Mac it also times each package at batch 1 through Core ML (median over `--iters`); elsewhere the
latency column says why it is missing.

    python benchmarks/bench_coreml.py [--quick] [--models clip:vit-b-32,dinov2:small] [--out DIR] [--iters N]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench_common import bar_panels, each_model, save_report

PRECISIONS = ("fp16", "int8", "int4")
REAL_MODELS = "clip:vit-b-32,dinov2:small"
QUICK_MODELS = "clip:tiny,dinov2:tiny,sam2:tiny,sd15:tiny"


def bench_model(family: str, variant: str, out: Path, iters: int) -> list[dict]:
    from edgefm.bench.timing import artifact_latencies
    from edgefm.contract.manifest import Manifest
    from edgefm.jobs.compile import compile_artifact
    from edgefm.jobs.export import export
    from edgefm.runtimes.coreml import unavailable_reason

    exported = out / f"{family}-{variant}"
    if not (exported / "manifest.json").is_file():
        export(family, exported, variant=variant, random_weights=variant != "tiny", overwrite=True)
    rows = []
    for precision in PRECISIONS:
        target_dir = out / f"{family}-{variant}-coreml-{precision}"
        started = time.perf_counter()
        # a precision below its gate is reported as such, not dropped
        manifest = compile_artifact(exported, "coreml", precision, target_dir, allow_below_gate=True, overwrite=True)
        seconds = time.perf_counter() - started
        latencies = artifact_latencies(target_dir, iters) if unavailable_reason() is None else {}
        for name, entry in manifest.components.items():
            validation = entry.validation
            rows.append({"model": f"{family}:{variant}", "component": name, "precision": entry.precision,
                         "scheme": entry.options["compile"]["scheme"], "size_mib": entry.size_mib(target_dir),
                         "compile_s": seconds, "metric": validation["metric"], "value": validation["value"],
                         "passed": validation["passed"], "gate": validation["gate"],
                         "measured_with": validation.get("measured_with", "Core ML"),
                         "latency_ms": latencies.get((str(target_dir), name))})
    fp16 = {r["component"]: r["size_mib"] for r in rows if r["precision"] == "fp16"}
    for row in rows:  # a component a pipeline check kept in fp32 has no fp16 package to compare with
        row["size_vs_fp16"] = row["size_mib"] / fp16[row["component"]] if row["component"] in fp16 else float("nan")
    print(f"{family}:{variant} exported from {Manifest.load(exported).source['id']}")
    return rows


def report(rows: list[dict], out: Path) -> None:
    from edgefm.bench.hardware import describe, summary_lines

    lines = ["| model | component | precision (scheme) | size MiB | vs fp16 | compile s (all components) "
             "| accuracy vs fp32 export | batch-1 ms |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        latency = f"{r['latency_ms']:.2f}" if r["latency_ms"] is not None else "no Core ML here"
        lines.append(f"| {r['model']} | {r['component']} | {r['precision']} ({r['scheme']}) | {r['size_mib']:.2f} | "
                     f"{r['size_vs_fp16']:.2f}x | {r['compile_s']:.0f} | {r['metric']} {r['value']:.5f} "
                     f"({'pass' if r['passed'] else 'BELOW'} gate {r['gate']}) | {latency} |")
    measured = sorted({r["measured_with"] for r in rows})
    machine = summary_lines(describe(None, ["coreml"]))
    text = "\n".join(lines + ["", "Accuracy measured with: " + "; ".join(measured), "", *machine]) + "\n"
    save_report(out, text, rows)
    sizes = [{"engine": f"{r['model']} {r['component']} {r['precision']}", "size_mib": r["size_mib"],
              "size_vs_fp16": r["size_vs_fp16"]} for r in rows]
    bar_panels(sizes, [("size_mib", "package size (MiB)"), ("size_vs_fp16", "size vs the fp16 package")],
               "Core ML packages per precision", out / "coreml-sizes.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"tiny presets: {QUICK_MODELS}")
    parser.add_argument("--models", help=f"family:variant list (default {REAL_MODELS})")
    parser.add_argument("--out", type=Path, default=Path("bench-coreml"))
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    each_model(args.models or (QUICK_MODELS if args.quick else REAL_MODELS),
               lambda family, variant: bench_model(family, variant, args.out, args.iters), report, args.out)


if __name__ == "__main__":
    main()
