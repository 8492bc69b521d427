"""Tables for people: build results and manifests (rich renderables)."""
from __future__ import annotations

from pathlib import Path

from edgefm.contract.errors import EdgefmError
from edgefm.contract.manifest import Manifest
from edgefm.contract.records import SHORT_METRIC, PipelineValidation, Validation


def _accuracy(validation: Validation | PipelineValidation | None) -> tuple[str, str, str]:
    if not validation:
        return "-", "-", "-"
    checks = validation.checks
    value = ", ".join(f"{SHORT_METRIC.get(c.metric, c.metric)} {c.value:.4g}" for c in checks)
    gate = ", ".join(f"{'>=' if c.higher_is_better else '<='} {c.gate:g}" for c in checks)
    verdict = "[green]pass[/green]" if validation.passed else (
        "[yellow]below gate (allowed)[/yellow]" if validation.allowed_below_gate else "[red]FAIL[/red]")
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
            kept = f" ({', '.join(pipeline.kept_fp32)} fp32)" if pipeline.kept_fp32 else ""
            target = next(iter(manifest.components.values())).target
            table.add_row(_short(directory), "end to end", target, pipeline.precision + kept,
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
        head.add_row(f"[bold]{manifest.selection.asked}[/bold]", manifest.selection.reason)
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


def sensitivity_view(manifest: Manifest, top: int = 25):
    """Per component whose compile searched for layers to keep in float: each layer's measured error contribution."""
    from rich.console import Group
    from rich.table import Table

    tables = []
    for name, entry in manifest.components.items():
        record = entry.validation.float_layers if entry.validation else None
        if not record:
            continue
        kept = set(record.kept)
        ranking = record.ranking
        latency = record.latency_ms_batch1
        cost = (f"; batch-1 ms {latency['all_quantized']:.2f} all quantized -> {latency['chosen']:.2f}" if latency
                else "; latency not measured here (the target's files run elsewhere)")
        table = Table(title=f"{name}: {len(kept)} of {len(ranking['layers'])} layers kept in float (from "
                            f"{record.from_scheme}){cost}. Contribution: {ranking['metric']}, on "
                            f"{ranking['measured_on']}")
        for column in ("rank", "layer", "error contribution", "kept in float"):
            table.add_column(column)
        for index, layer in enumerate(ranking["layers"][:top]):
            table.add_row(str(index + 1), layer["name"], f"{layer['contribution']:.3g}",
                          "yes" if layer["name"] in kept else "")
        tables.append(table)
    return Group(*tables) if tables else "no component of this artifact needed layers kept in float"


def sensitivity_plot(manifest: Manifest, path: Path) -> None:
    """A bar per layer (by rank) of its error contribution, the ones kept in float in red."""
    try:
        import matplotlib
    except ImportError:
        raise EdgefmError("--plot needs matplotlib: pip install 'edgefm[bench]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = {n: e.validation.float_layers for n, e in manifest.components.items()
               if e.validation and e.validation.float_layers}
    fig, axes = plt.subplots(len(records) or 1, 1, figsize=(12, 3.5 * max(len(records), 1)), squeeze=False)
    for ax, (name, record) in zip(axes[:, 0], records.items()):
        layers = record.ranking["layers"]
        ax.bar(range(len(layers)), [layer["contribution"] for layer in layers],
               color=["#d62728" if layer["name"] in record.kept else "#1e90ff" for layer in layers])
        ax.set_title(f"{name}: error contribution per quantized layer, by rank (red: kept in float)", fontsize=10)
        ax.set_xlabel("layer rank")
        ax.set_ylabel("drop of 1 - cosine")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
