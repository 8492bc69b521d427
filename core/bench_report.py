"""`edgefm bench` output: one side-by-side table (ratios against the first artifact), markdown, and a plot."""
from __future__ import annotations

from pathlib import Path

from edgefm.errors import EdgefmError
from edgefm.hardware import summary_lines
from edgefm.report import SHORT_METRIC

COLUMNS = ["artifact", "component", "target", "precision", "batch", "median ms", "p90 ms", "p99 ms", "items/s",
           "speed-up", "load s", "peak RSS MiB", "size MiB", "size ratio", "accuracy"]


def _fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def rows(report: dict) -> list[dict]:
    """Flat rows, one per (artifact, component, batch), with ratios against the same model's component and
    batch size in the first artifact that has it (speed-up = its median / this median, above 1 is faster;
    size ratio = this size / its size).
    """
    results = report["results"]
    baseline = {}
    for r in results:
        for run in r["runs"]:
            baseline.setdefault((r["family"], r["variant"], r["component"], run["batch"]), (run["median_ms"], r["size_mib"]))
    flat = []
    for r in results:
        for run in r["runs"]:
            base = baseline[(r["family"], r["variant"], r["component"], run["batch"])]
            accuracy = r["accuracy"]
            flat.append({**{k: r[k] for k in ("artifact", "component", "target", "precision", "load_s",
                                               "peak_rss_mib", "gpu_memory_mib", "size_mib")},
                         **run, "speedup_vs_first": base[0] / run["median_ms"],
                         "size_vs_first": r["size_mib"] / base[1],
                         "accuracy": f"{SHORT_METRIC.get(accuracy['metric'], accuracy['metric'])} {accuracy['value']:.4f}"
                                     f"{'' if accuracy['passed'] else ' (below gate)'}" if accuracy else "-"})
    return flat


def _cells(row: dict) -> list[str]:
    return [Path(row["artifact"]).name, row["component"], row["target"], row["precision"], str(row["batch"]),
            _fmt(row["median_ms"]), _fmt(row["p90_ms"]), _fmt(row["p99_ms"]), _fmt(row["items_per_s"], 1),
            f"{row['speedup_vs_first']:.2f}x", _fmt(row["load_s"]),
            _fmt(row["peak_rss_mib"], 0) + (f" (+{row['gpu_memory_mib']:.0f} GPU)" if row["gpu_memory_mib"] else ""),
            _fmt(row["size_mib"]), f"{row['size_vs_first']:.2f}x",
            row["accuracy"]]


def table(report: dict):
    from rich.table import Table

    result = Table(title="edgefm bench (speed-up and size ratio against the first artifact of the same model)")
    for column in COLUMNS:
        result.add_column(column, overflow="fold", no_wrap=column in ("artifact", "component", "target", "precision", "accuracy"))
    for row in rows(report):
        result.add_row(*_cells(row))
    return result


def markdown(report: dict) -> str:
    settings = report["settings"]
    lines = ["# edgefm bench", "", *summary_lines(report["hardware"]),
             f"- {settings['iters']} timed runs after {settings['warmup']} warm-up runs per batch size; "
             f"inputs: {settings['inputs']}; each component in a fresh process (peak RSS is that process's)",
             "- speed-up = median of the first artifact of the same model / this median (above 1 is faster); "
             "size ratio likewise; accuracy is the manifest's validation figure against its reference", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in rows(report)]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Batch-1 latency and accuracy per artifact, one bar group per component."""
    try:
        import matplotlib
    except ImportError:
        raise EdgefmError("--plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    artifacts = list(dict.fromkeys(r["artifact"] for r in results))
    label = lambda r: f"{r['family']} {r['component']}"  # noqa: E731
    components = list(dict.fromkeys(label(r) for r in results))
    fig, (ax_latency, ax_accuracy) = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / len(artifacts)
    for i, artifact in enumerate(artifacts):
        by_component = {label(r): r for r in results if r["artifact"] == artifact}
        xs = [c + i * width for c in range(len(components))]
        latency = [by_component[c]["runs"][0]["median_ms"] if c in by_component else 0 for c in components]
        accuracy = [(by_component[c]["accuracy"] or {}).get("value", 0) if c in by_component else 0
                    for c in components]
        ax_latency.bar(xs, latency, width, label=Path(artifact).name)
        ax_accuracy.bar(xs, accuracy, width, label=Path(artifact).name)
    for ax, title in ((ax_latency, f"median latency, batch {results[0]['runs'][0]['batch']} (ms, lower is better)"),
                      (ax_accuracy, "accuracy vs reference (manifest figure, higher is better)")):
        ax.set_xticks([c + 0.4 - width / 2 for c in range(len(components))], components)
        ax.set_title(title, fontsize=10)
    values = [(r["accuracy"] or {}).get("value") for r in results if r["accuracy"]]
    if values:
        ax_accuracy.set_ylim(max(0.0, min(values) - 0.01), 1.0005)
    ax_latency.legend(fontsize=8)
    fig.suptitle(report["hardware"]["cpu"], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
