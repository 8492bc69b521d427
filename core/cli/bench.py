"""`edgefm bench`, `demo`, `matrix`: timing artifacts, the offline main job, and matrices on Ray."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from edgefm.cli.console import console, exit_on_gate, log, picture_path, print_table


def _batches(ctx, param, value: str) -> list[int]:
    try:
        batches = [int(b) for b in value.split(",")]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of batch sizes of at least 1, e.g. 1,8")
    return batches


@click.command()
@click.argument("artifacts", nargs=-1, required=True, type=click.Path())
@click.option("--batch", "batches", default="1,8", show_default=True, callback=_batches,
              help="Batch sizes, comma-separated.")
@click.option("--warmup", default=5, type=click.IntRange(min=0), show_default=True, help="Untimed runs per batch size.")
@click.option("--iters", default=50, type=click.IntRange(min=1), show_default=True, help="Timed runs per batch size.")
@click.option("--threads", type=click.IntRange(min=1), help="Runtime threads (default: the runtime's own choice).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the full report as JSON.")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False), help="Write a markdown report.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), callback=picture_path,
              help="Write a PNG of latency and accuracy.")
def bench(artifacts, batches, warmup, iters, threads, json_path, markdown_path, plot_path):
    """Time every component of each ARTIFACT side by side: latency, throughput, load time, memory, accuracy."""
    from rich.progress import Progress

    from edgefm.bench import report as bench_report
    from edgefm.bench.hardware import summary_lines
    from edgefm.bench.runner import run_bench
    from edgefm.contract.staging import check_file_outputs

    check_file_outputs([json_path, markdown_path, plot_path], artifacts)

    with Progress(console=console(), transient=True) as progress:
        task = progress.add_task("benchmarking")
        report = run_bench([Path(a) for a in artifacts], batches, warmup, iters, threads,
                           progress=lambda label, done, total: progress.update(task, description=label,
                                                                               completed=done, total=total))
    console(stderr=False, min_width=170).print(bench_report.table(report))
    console(stderr=False).print("\n".join(summary_lines(report["hardware"]) + bench_report.notes(report)),
                                 highlight=False)
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
    if markdown_path:
        Path(markdown_path).write_text(bench_report.markdown(report))
    if plot_path:
        bench_report.plot(report, Path(plot_path))
    if report["errors"]:
        sys.exit(1)


@click.command()
@click.option("-o", "--out", default="edgefm-demo", show_default=True, type=click.Path(file_okay=False))
def demo(out):
    """The main job, offline: every family's tiny preset -> ONNX -> each target and precision, validated and
    timed, with pictures of what each precision changes (masks, generated images). Targets whose artifacts run
    elsewhere (on a Mac, on an NVIDIA GPU) are compiled and gated here and timed where they run."""
    from edgefm.jobs.demo import demo_pictures, run_demo

    rows, latencies = run_demo(Path(out), log=log)
    print_table(rows, latencies)
    for line in demo_pictures(Path(out), rows):
        click.echo(line)
    exit_on_gate(*[m for _, m in rows], strict=True)


@click.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--address", help="The Ray cluster to run on: auto (the one this machine joined with `ray start`) or "
                                "ray://HOST:PORT. Default: a Ray instance started on this machine for the run.")
@click.option("-o", "--out", default="matrix-out", show_default=True, type=click.Path(file_okay=False),
              help="Outputs by key, and report.json / .md / .html with its plots; a re-run builds only what is new.")
@click.option("--device-kind", "device_kinds", multiple=True, default=("local",), show_default=True,
              help="Device kinds this machine's own instance offers (repeatable); with --address each worker "
                   "advertises its own: ray start --resources '{\"edgefm-device:KIND\": 1}'.")
def matrix(spec, address, out, device_kinds):
    """Export, compile, validate and benchmark every model x target x precision x device of SPEC (TOML) as Ray
    tasks; the README's "Matrices on Ray" shows the format and a cluster set-up."""
    from rich.progress import Progress

    from edgefm.matrix.driver import run_matrix
    from edgefm.matrix.spec import DEVICE_KIND, load_spec

    bad = [kind for kind in device_kinds if not DEVICE_KIND.fullmatch(kind)]
    if bad:
        raise click.BadParameter(f"{bad[0]!r}: letters, digits, . _ - only", param_hint="--device-kind")
    checked = load_spec(Path(spec))
    with Progress(console=console(), transient=True) as progress:
        task = progress.add_task("starting Ray")

        def show(label: str, done: int, total: int, finished: bool) -> None:
            if finished:  # kept above the bar: one line per task, with where it ran and what it took
                progress.console.print(label, highlight=False, markup=False)
            progress.update(task, description=label, completed=done, total=total)

        report = run_matrix(checked, Path(out), address, tuple(device_kinds), progress=show)
    counts = report["counts"]
    console(stderr=False).print(
        f"rows {len(report['rows'])}; tasks run {counts['tasks_run']}, reused {counts['tasks_reused']}, failed "
        f"{counts['failed']}, retried {counts['retried']}; report: {Path(out) / 'report.html'} (.md, .json)",
        highlight=False)
    for error in report["errors"]:
        console().print(f"[bold red]failed:[/bold red] {error}", highlight=False)
    if report["errors"]:
        sys.exit(1)


COMMANDS = (bench, demo, matrix)
