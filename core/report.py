"""Tables for people: build results and manifests (rich renderables)."""
from __future__ import annotations

from pathlib import Path

from edgefm.manifest import Manifest


SHORT_METRIC = {"cosine_min": "cos min", "rel_max_abs_diff": "rel diff", "cosine": "cos",
                "zero_shot_top1_agreement": "zero-shot top1", "image_mask_iou": "image IoU",
                "image_mask_iou_median": "image IoU@median", "video_mask_iou": "video IoU",
                "video_mask_iou_median": "video IoU@median"}


def _accuracy(validation: dict | None) -> tuple[str, str, str]:
    if not validation:
        return "-", "-", "-"
    checks = validation["checks"]
    value = ", ".join(f"{SHORT_METRIC.get(c['metric'], c['metric'])} {c['value']:.4g}" for c in checks)
    gate = ", ".join(f"{'>=' if c['higher_is_better'] else '<='} {c['gate']:g}" for c in checks)
    verdict = "[green]pass[/green]" if validation["passed"] else (
        "[yellow]below gate (allowed)[/yellow]" if validation.get("allowed_below_gate") else "[red]FAIL[/red]")
    return value, gate, verdict


def _short(directory: Path) -> str:
    try:
        return str(Path(directory).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(directory)


def results_table(rows: list[tuple[Path, Manifest]], latencies: dict | None = None):
    """One line per component: precision, size, accuracy vs reference, gate, pass, median latency."""
    from rich.table import Table

    table = Table(title="edgefm results (accuracy: exported vs torch, compiled vs fp32 export)")
    for column in ("artifact", "component", "target", "precision", "size MiB", "accuracy vs reference", "gate",
                   "result", "median ms (batch 1)"):
        table.add_column(column, overflow="fold", no_wrap=column in ("artifact", "result"))
    for directory, manifest in rows:
        for name, entry in manifest.components.items():
            latency = (latencies or {}).get((str(directory), name))
            table.add_row(_short(directory), name, entry.target or "export", entry.precision,
                          f"{entry.size_mib(directory):.2f}", *_accuracy(entry.validation),
                          f"{latency:.2f}" if latency is not None else "-")
        pipeline = manifest.pipeline_validation
        if pipeline:
            kept = f" ({', '.join(pipeline['kept_fp32'])} fp32)" if pipeline["kept_fp32"] else ""
            target = next(iter(manifest.components.values())).target
            table.add_row(_short(directory), "end to end", target, pipeline["precision"] + kept,
                          f"{sum(e.size_mib(directory) for e in manifest.components.values()):.2f}",
                          *_accuracy(pipeline), "-")
    return table


def inspect_view(directory: Path, manifest: Manifest):
    from rich.console import Group
    from rich.pretty import Pretty
    from rich.table import Table

    head = Table.grid(padding=(0, 2))
    for key, value in manifest.summary().items():
        head.add_row(f"[bold]{key}[/bold]", str(value))
    if manifest.parent:
        head.add_row("[bold]compiled from[/bold]", manifest.parent["path"])
    if manifest.selection:
        head.add_row("[bold]--precision auto[/bold]", manifest.selection["reason"])
    parts = [head, results_table([(directory, manifest)])]
    for name, entry in manifest.components.items():
        io = Table(title=f"{name}: {entry.file}", show_edge=False)
        for column in ("", "name", "dtype", "shape"):
            io.add_column(column)
        for kind, specs in (("in", entry.inputs), ("out", entry.outputs)):
            for spec in specs:
                io.add_row(kind, spec.name, spec.dtype, str(list(spec.shape)))
        parts += [io, Pretty({"options": entry.options, "calibration": entry.calibration})]
    return Group(*parts)
