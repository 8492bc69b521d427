"""Markdown tables and plot for bench_peers.py: edgefm's best artifact against the best peer, every row's speed-ups,
achieved GFLOP/s and share of the machine's GEMM ceiling, cosine and task metrics."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgefm.bench.hardware import has_bf16, summary_lines

PEER_PREFIXES = ("torch-", "optimum-")
AIM = 1.5  # issue 17: edgefm's best passing artifact vs the fastest peer as accurate, at batch 1 and 8


def _key(row: dict) -> tuple:
    return row["family"], row["component"], row["batch"]


def _gate(report: dict, row: dict) -> dict | None:
    build = next(b for b in report["builds"] if b["family"] == row["family"])
    record = build["compile"].get(row["engine"])
    return record["components"][row["component"]] if record else None


def compute_type(report: dict, row: dict) -> str:
    engine = row["engine"]
    if engine.startswith("edgefm-"):
        return _gate(report, row)["compute"]
    if engine.startswith("torch-bf16") or (engine.startswith("optimum-ov-") and engine != "optimum-ov-int8"
                                           and has_bf16(report["hardware"]["isa"])):
        return "bf16"  # optimum-intel compiles without a precision hint: OpenVINO's CPU default is bf16 there
    return "int8" if engine == "optimum-ov-int8" else "fp32"


def _metrics(report: dict) -> dict:
    """Task metrics per (family, component, engine), scored once (first batch) and shared by its other rows."""
    return {(r["family"], r["component"], r["engine"]): r["metrics"] for r in report["rows"] if r.get("metrics")}


def _passes(report: dict, row: dict) -> bool:
    gate = _gate(report, row)
    return gate is None or gate["passed"]


def best_pairs(report: dict) -> list[dict]:
    """Per (model, component, batch): the fastest peer and edgefm's fastest artifact that passes its gate."""
    rows, metrics = [r for r in report["rows"] if "median_ms" in r], _metrics(report)
    out = []
    for key in dict.fromkeys(_key(r) for r in rows):
        same = [r for r in rows if _key(r) == key]
        peers = [r for r in same if r["engine"].startswith(PEER_PREFIXES)]
        ours = [r for r in same if r["engine"].startswith("edgefm-") and _passes(report, r)]
        if peers and ours:
            peer, best = min(peers, key=lambda r: r["median_ms"]), min(ours, key=lambda r: r["median_ms"])
            # the fastest peer whose every task metric is at least edgefm's: the same accuracy or better
            floor = metrics.get((key[0], key[1], best["engine"]), {})
            as_good = [r for r in peers if all(metrics.get((key[0], key[1], r["engine"]), {}).get(m, -1) >= v
                                               for m, v in floor.items())]
            peer_as_good = min(as_good, key=lambda r: r["median_ms"]) if as_good else None
            out.append({"key": key, "peer": peer, "edgefm": best, "ratio": peer["median_ms"] / best["median_ms"],
                        "peer_as_good": peer_as_good,
                        "ratio_as_good": peer_as_good["median_ms"] / best["median_ms"] if peer_as_good else None})
    return out


def _share(report: dict, row: dict) -> str:
    ceiling = (report["hardware"].get("gemm_ceiling") or {}).get("gflops", {})
    if "gflop" not in row:
        return "- | -"
    rate = row["gflop"] / (row["median_ms"] / 1e3)  # FLOPs were counted at this row's batch
    kind = compute_type(report, row)
    share = f"{rate / ceiling[kind]:.1%} of {kind}" if kind in ceiling else f"({kind}: no ceiling)"
    return f"{rate:.0f} | {share}"


def _metric_text(metrics: dict | None) -> str:
    return ", ".join(f"{k.replace('_agreement', '')} {v:.3f}" for k, v in (metrics or {}).items()) or "-"


def write_markdown(path: Path, report: dict) -> None:
    rows, metrics = report["rows"], _metrics(report)
    by_engine = {(_key(r), r["engine"]): r for r in rows if "median_ms" in r}
    versions = lambda peer, name: (f"{name} {peer[name]} (transformers {peer['transformers']})"  # noqa: E731
                                   if peer and "error" not in peer
                                   else f"{name}: {(peer or {}).get('error', 'not run')}")
    lines = [f"# edgefm vs peers{' (quick, tiny presets: checks the script only)' if report['quick'] else ''}", "",
             *summary_lines(report["hardware"]),
             "- Peers: PyTorch fp32 eager, bf16 autocast, bf16 + torch.compile (SDPA attention); "
             f"{versions(report['optimum'], 'optimum-onnx')} on ONNX Runtime fp32; "
             f"{versions(report['optimum_intel'], 'optimum-intel')} on OpenVINO",
             *[f"- Not run: {engine}: {why}" for engine, why in report["skipped"].items()],
             *[f"- {name.replace('_', '-')} could not build {graph}: {why.splitlines()[0]}"
               for name in ("optimum", "optimum_intel")
               for graph, why in (report[name] or {}).get("errors", {}).items()],
             f"- {report['iters']} timed runs after {report['warmup']} warm-up; inputs: held-out calibration photos / "
             "prompts tiled to the batch; every row in a fresh process (peak RSS is that row's alone)",
             "- x vs Y = Y's median / this median (above 1: this is faster). GFLOP/s: FLOPs of the model (torch "
             "FlopCounterMode) per second; share: of the GEMM ceiling of the type the row computes in. Cosine: mean "
             "per row vs torch fp32 outputs, worst output. Task metrics: edgefm's gate checks (vs the fp32 export, "
             "held-out data), scored at the first batch; gate: edgefm's own verdict for its precision", "",
             "## edgefm's best artifact that passes its gate vs the best peer", "",
             "Fastest peer, and fastest peer whose every task metric is at least edgefm's (same accuracy or better).",
             "", f"| model | component | batch | edgefm best | ms | task metrics | fastest peer | ms | task metrics | "
             f"speed-up | fastest peer as accurate | ms | speed-up | aim {AIM}x |", "|" + "---|" * 14]
    for pair in best_pairs(report):
        (family, component, batch), peer, ours = pair["key"], pair["peer"], pair["edgefm"]
        good = pair["peer_as_good"]
        same = (f"{good['engine']} | {good['median_ms']:.1f} | {pair['ratio_as_good']:.2f}x" if good
                else "none as accurate | - | -")
        lines.append(f"| {family} | {component} | {batch} | {ours['engine']} | {ours['median_ms']:.1f} | "
                     f"{_metric_text(metrics.get((family, component, ours['engine'])))} | {peer['engine']} | "
                     f"{peer['median_ms']:.1f} | {_metric_text(metrics.get((family, component, peer['engine'])))} | "
                     f"{pair['ratio']:.2f}x | {same} | {'met' if (pair['ratio_as_good'] or 0) >= AIM else 'missed'} |")
    lines += ["", "## Every row", "",
              "| model | component | engine | batch | median ms | p90 ms | items/s | vs torch fp32 | vs optimum-ort | "
              "GFLOP/s | share of ceiling | peak RSS MiB | size MiB | cosine vs torch | task metrics | edgefm gate |",
              "|" + "---|" * 16]
    for r in rows:
        head = f"| {r['family']} {r['variant']} | {r['component']} | {r['engine']} | {r['batch']} |"
        if "error" in r:
            lines.append(f"{head} failed: {r['error']} |" + " |" * 11)
            continue
        ratio = lambda peer: (f"{other['median_ms'] / r['median_ms']:.2f}x"  # noqa: E731
                              if (other := by_engine.get((_key(r), peer))) else "-")
        gate = _gate(report, r)
        verdict = f"{'pass' if gate['passed'] else 'BELOW GATE'} ({gate['scheme']})" if gate else "-"
        compile_s = f" (compile {r['compile_s']:.0f} s)" if "compile_s" in r else ""
        lines.append(f"{head} {r['median_ms']:.1f}{compile_s} | {r['p90_ms']:.1f} | {r['items_per_s']:.1f} | "
                     f"{ratio('torch-fp32')} | {ratio('optimum-ort')} | {_share(report, r)} | "
                     f"{r['peak_rss_mib']:.0f} | {r['size_mib']:.1f} | {r.get('cosine', float('nan')):.5f} | "
                     f"{_metric_text(metrics.get((r['family'], r['component'], r['engine'])))} | {verdict} |")
    lines += ["", "## Builds", ""]
    for name in ("optimum", "optimum_intel"):
        peer = report[name]
        if peer and "export_s" in peer:
            lines.append(f"- {name.replace('_', '-')} export: {peer['export_s']:.0f} s (both models, every precision)")
    lines += ["", "| model | export s | engine | compile s |", "|---|---|---|---|"]
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
    fig, axes = plt.subplots(1, len(batches) + 1, figsize=(7.5 * (len(batches) + 1), 5.5), squeeze=False)
    width = 0.85 / len(engines)
    offsets = lambda i: np.arange(len(groups)) + (i - (len(engines) - 1) / 2) * width  # noqa: E731
    value = lambda engine, batch, key: {f"{r['family']}\n{r['component']}": r.get(key, 0) for r in rows  # noqa: E731
                                        if r["engine"] == engine and r["batch"] == batch}
    colors = plt.get_cmap("tab20")
    for ax, batch in zip(axes[0], batches):
        for i, engine in enumerate(engines):
            ms = value(engine, batch, "median_ms")
            hatch = "//" if engine.startswith(PEER_PREFIXES) else None
            ax.bar(offsets(i), [ms.get(g, 0) for g in groups], width, label=engine, color=colors(i % 20), hatch=hatch)
        ax.set_xticks(np.arange(len(groups)), groups, fontsize=8)
        ax.set_title(f"median latency, batch {batch} (ms, lower is better; peers hatched)", fontsize=10)
    ax = axes[0][-1]
    for i, engine in enumerate(engines):
        cos = value(engine, batches[0], "cosine")
        ax.bar(offsets(i), [cos.get(g, 0) for g in groups], width, label=engine, color=colors(i % 20))
    cosines = [r["cosine"] for r in rows if "cosine" in r]
    if cosines:
        ax.set_ylim(min(cosines) - 0.005, 1.0005)
    ax.set_xticks(np.arange(len(groups)), groups, fontsize=8)
    ax.set_title("cosine vs torch fp32 (higher is better)", fontsize=10)
    axes[0][0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":  # re-render a run's tables and plot from its results.json
    import json
    import sys

    source = Path(sys.argv[1])
    saved = json.loads(source.read_text())
    write_markdown(source.with_suffix(".md"), saved)
    plot(source.with_suffix(".png"), saved["rows"], sorted({r["batch"] for r in saved["rows"]}))
