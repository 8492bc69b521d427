"""`edgefm bench` output: one side-by-side table (ratios against the first artifact), markdown, and a plot."""
from __future__ import annotations

from pathlib import Path

from edgefm.bench.hardware import summary_lines
from edgefm.contract.errors import EdgefmError
from edgefm.contract.records import SHORT_METRIC

COLUMNS = ["artifact", "component", "target", "precision", "batch", "median ms", "p90 ms", "p99 ms", "items/s",
           "speed-up", "load s", "peak RSS MiB", "size MiB", "size ratio", "accuracy"]


def _fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def rows(report: dict) -> list[dict]:
    """The results with ratios against the first artifact that has the same model's component:
    speed-up = its median / this median at the same batch size (above 1 is faster; "-" when the first
    artifact has no row at that batch size), size ratio = this size / its size.
    """
    model = lambda r: (r["family"], r["variant"], r["component"])  # noqa: E731
    speed, size = {}, {}
    for r in report["results"]:
        first = size.setdefault(model(r), (r["artifact"], r["size_mib"]))[0]
        if r["artifact"] == first:
            speed[(*model(r), r["batch"])] = r["median_ms"]
    flat = []
    for r in report["results"]:
        base = speed.get((*model(r), r["batch"]))
        accuracy = r["accuracy"]
        flat.append({**r, "speedup_vs_first": base / r["median_ms"] if base else None,
                     "size_vs_first": r["size_mib"] / size[model(r)][1],
                     "accuracy_text": f"{SHORT_METRIC.get(accuracy['metric'], accuracy['metric'])} "
                                      f"{accuracy['value']:.4f}{'' if accuracy['passed'] else ' (below gate)'}"
                                      if accuracy else "-"})
    return flat


def _cells(row: dict) -> list[str]:
    target = row["target"] + (f" ({row['device']})" if row["device"] != "CPU" else "")
    memory = _fmt(row["peak_rss_mib"], 0) + (f" (+{row['gpu_memory_mib']:.0f} GPU)" if row["gpu_memory_mib"] else "")
    speedup = f"{row['speedup_vs_first']:.2f}x" if row["speedup_vs_first"] else "-"
    return [Path(row["artifact"]).name, row["component"], target, row["precision"], str(row["batch"]),
            _fmt(row["median_ms"]), _fmt(row["p90_ms"]), _fmt(row["p99_ms"]), _fmt(row["items_per_s"], 1),
            speedup, _fmt(row["load_s"]), memory, _fmt(row["size_mib"]), f"{row['size_vs_first']:.2f}x",
            row["accuracy_text"]]


def notes(report: dict) -> list[str]:
    return ([f"skipped: {s}" for s in report["skipped"]] + [f"failed: {e}" for e in report["errors"]])


def table(report: dict):
    from rich.table import Table

    result = Table(title="edgefm bench (speed-up and size ratio against the first artifact of the same model)")
    for column in COLUMNS:
        result.add_column(column, overflow="fold", no_wrap=column in ("artifact", "component", "target", "precision",
                                                                      "accuracy"))
    for row in rows(report):
        result.add_row(*_cells(row))
    return result


def markdown(report: dict) -> str:
    settings = report["settings"]
    lines = ["# edgefm bench", "", *summary_lines(report["hardware"]),
             f"- {settings['iters']} timed runs after {settings['warmup']} warm-up runs; inputs: {settings['inputs']}; "
             "each (artifact, component, batch) in a fresh process (peak RSS is that process's)",
             "- speed-up = median of the first artifact of the same model / this median (above 1 is faster); "
             "size ratio likewise; accuracy is the manifest's validation figure against its reference", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in rows(report)]
    lines += [""] + [f"- {note}" for note in notes(report)]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Latency at the first batch size and accuracy per artifact, one bar group per model component."""
    try:
        import matplotlib
    except ImportError:
        raise EdgefmError("--plot needs matplotlib: pip install 'edgefm[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batch = report["settings"]["batches"][0]
    results = [r for r in report["results"] if r["batch"] == batch]
    if not results:
        raise EdgefmError(f"nothing ran at batch {batch}, so there is nothing to plot")
    label = lambda r: f"{r['family']} {r['component']}"  # noqa: E731
    artifacts = list(dict.fromkeys(r["artifact"] for r in results))
    groups = list(dict.fromkeys(label(r) for r in results))
    fig, (ax_latency, ax_accuracy) = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / len(artifacts)
    for i, artifact in enumerate(artifacts):
        found = {label(r): r for r in results if r["artifact"] == artifact}
        xs = [g + i * width for g, name in enumerate(groups) if name in found]
        ax_latency.bar(xs, [found[n]["median_ms"] for n in groups if n in found], width, label=Path(artifact).name)
        ax_accuracy.bar(xs, [(found[n]["accuracy"] or {}).get("value", 0) for n in groups if n in found], width,
                        label=Path(artifact).name)
    for ax, title in ((ax_latency, f"median latency, batch {batch} (ms, lower is better)"),
                      (ax_accuracy, "accuracy vs reference (manifest figure, higher is better)")):
        ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], groups)
        ax.set_title(title, fontsize=10)
    values = [r["accuracy"]["value"] for r in results if r["accuracy"]]
    if values:
        ax_accuracy.set_ylim(max(0.0, min(values) - 0.01), 1.0005)
    ax_latency.legend(fontsize=8)
    fig.suptitle(report["hardware"]["cpu"], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
