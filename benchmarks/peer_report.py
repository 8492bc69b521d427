"""Markdown table and plot for bench_peers.py: edgefm engines with their speed-up over each peer."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgefm.hardware import summary_lines


def _peer_ms(rows: list) -> dict:
    return {(r["family"], r["component"], r["batch"], r["engine"]): r["median_ms"]
            for r in rows if r["engine"] in ("torch-eager", "optimum-ort") and "median_ms" in r}


def _gate(report: dict, row: dict) -> str:
    build = next(b for b in report["builds"] if b["family"] == row["family"])
    record = build["compile"].get(row["engine"])
    if not record:
        return "-"
    component = record["components"][row["component"]]
    return f"{'pass' if component['passed'] else 'BELOW GATE'} ({component['scheme']})"


def write_markdown(path: Path, report: dict) -> None:
    peers = _peer_ms(report["rows"])
    optimum = report["optimum"]
    lines = [f"# edgefm vs peers{' (quick, tiny presets: checks the script only)' if report['quick'] else ''}", "",
             *summary_lines(report["hardware"]),
             "- Peers: PyTorch eager fp32; " + (f"optimum-onnx {optimum['optimum-onnx']} (optimum {optimum['optimum']}, "
                                                 f"transformers {optimum['transformers']}) export on ONNX Runtime fp32"
                                                 if optimum else "optimum-onnx not run (--no-optimum)"),
             f"- {report['iters']} timed runs after {report['warmup']} warm-up; inputs: held-out calibration photos / "
             "prompts; every row in a fresh process (peak RSS is that row's alone)",
             "- speed-up vs X = X's median / this median (above 1: this is faster); cosine: mean per row vs torch "
             "eager outputs, worst output; gate: edgefm's own accuracy gate against its fp32 export", "",
             "| model | component | engine | batch | median ms | p90 ms | items/s | speed-up vs torch | "
             "speed-up vs optimum | peak RSS MiB | size MiB | cosine vs torch | edgefm gate (scheme) |",
             "|" + "---|" * 13]
    for r in report["rows"]:
        head = f"| {r['family']} {r['variant']} | {r['component']} | {r['engine']} | {r['batch']} |"
        if "error" in r:
            lines.append(f"{head} failed: {r['error']} |" + " |" * 8)
            continue
        ratio = lambda peer: (f"{peers[key] / r['median_ms']:.2f}x"  # noqa: E731
                              if (key := (r["family"], r["component"], r["batch"], peer)) in peers else "-")
        lines.append(f"{head} {r['median_ms']:.1f} | {r['p90_ms']:.1f} | {r['items_per_s']:.1f} | "
                     f"{ratio('torch-eager')} | {ratio('optimum-ort')} | {r['peak_rss_mib']:.0f} | "
                     f"{r['size_mib']:.1f} | {r.get('cosine', float('nan')):.5f} | {_gate(report, r)} |")
    lines += ["", "## Builds", "", f"optimum-onnx export: {optimum['export_s']:.0f} s (both models)" if optimum else "",
              "", "| model | export s | engine | compile s |", "|---|---|---|---|"]
    for b in report["builds"]:
        for engine, c in b["compile"].items():
            lines.append(f"| {b['family']} {b['variant']} | {b['export_s']:.0f} | {engine} | {c['seconds']:.0f} |")
    path.write_text("\n".join(lines) + "\n")


def plot(path: Path, rows: list, batches: list) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engines = list(dict.fromkeys(r["engine"] for r in rows))
    groups = list(dict.fromkeys(f"{r['family']}\n{r['component']}" for r in rows))
    fig, axes = plt.subplots(1, len(batches) + 1, figsize=(6.5 * (len(batches) + 1), 5), squeeze=False)
    width = 0.85 / len(engines)
    offsets = lambda i: np.arange(len(groups)) + (i - (len(engines) - 1) / 2) * width  # noqa: E731
    value = lambda engine, batch, key: {f"{r['family']}\n{r['component']}": r.get(key, 0) for r in rows  # noqa: E731
                                        if r["engine"] == engine and r["batch"] == batch}
    for ax, batch in zip(axes[0], batches):
        for i, engine in enumerate(engines):
            ms = value(engine, batch, "median_ms")
            ax.bar(offsets(i), [ms.get(g, 0) for g in groups], width, label=engine)
        ax.set_xticks(np.arange(len(groups)), groups, fontsize=8)
        ax.set_title(f"median latency, batch {batch} (ms, lower is better)", fontsize=10)
    ax = axes[0][-1]
    for i, engine in enumerate(engines):
        cos = value(engine, batches[0], "cosine")
        ax.bar(offsets(i), [cos.get(g, 0) for g in groups], width, label=engine)
    cosines = [r["cosine"] for r in rows if "cosine" in r]
    if cosines:
        ax.set_ylim(min(cosines) - 0.005, 1.0005)
    ax.set_xticks(np.arange(len(groups)), groups, fontsize=8)
    ax.set_title("cosine vs torch eager (higher is better)", fontsize=10)
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
