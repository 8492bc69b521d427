"""What the per-model benchmark scripts share: a median timer and the bar-chart picture of their rows."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgefm.bench.timing import time_calls


def median_ms(call, iters: int) -> float:
    """Median wall time of `call` in ms over `iters` runs, after one untimed warm-up run."""
    return float(np.median(time_calls(call, 1, iters)))


def bar_panels(rows: list[dict], panels: list[tuple[str, str]], title: str, path: Path) -> None:
    """One bar chart per (row key, panel title), engines on the x axis; the torch rows (peers) in grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5))
    names = [r["engine"] for r in rows]
    for ax, (key, panel) in zip(axes, panels):
        ax.bar(names, [r[key] for r in rows], color=["#888" if n.startswith("torch") else "#1e90ff" for n in names])
        ax.set_title(panel, fontsize=10)
        ax.tick_params(axis="x", labelrotation=25, labelsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def each_model(models: str, bench: Callable[[str, str], list[dict]], report: Callable[[list[dict], Path], None],
               out: Path) -> None:
    """`bench(family, variant)` per "family:variant" item of `models`, reporting after every model so that a
    long run leaves what it measured."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for item in models.split(","):
        family, variant = item.split(":")
        rows += bench(family, variant)
        report(rows, out)


def save_report(out: Path, text: str, rows: list[dict]) -> None:
    """report.md (what people read) and report.json (every row), and the text on stdout."""
    (out / "report.md").write_text(text)
    (out / "report.json").write_text(json.dumps(rows, indent=2))
    print(text)
