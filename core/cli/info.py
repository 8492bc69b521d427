"""`edgefm models`, `targets`, `inspect`, `validate`: what is installed, and what an artifact holds."""
from __future__ import annotations

import json
from pathlib import Path

import click

from edgefm.cli.console import console, exit_on_gate, log, picture_path, print_table


@click.command()
def models():
    """List model families, their variants (hub ids and offline presets) and components."""
    from rich.table import Table

    from edgefm.contract import registry

    table = Table(title="edgefm model families")
    for column in ("family", "variant", "hub id", "components", "description"):
        table.add_column(column)
    for family in sorted(registry.families().values(), key=lambda f: f.name):
        for variant in family.variants.values():
            table.add_row(family.name, variant.name, variant.hub_id or "(offline preset)",
                          ", ".join(family.component_names), variant.description)
    console(stderr=False).print(table)


@click.command()
def targets():
    """List deployment targets: their precisions, whether this machine compiles for them and runs what they write."""
    from rich.table import Table

    from edgefm.contract import registry

    table = Table(title="edgefm targets")
    for column in ("target", "precisions", "default precision", "compiles here", "runs here"):
        table.add_column(column)
    default = registry.default_target().name
    for name, target in sorted(registry.targets().items()):
        table.add_row(name + (" (default)" if name == default else ""), ", ".join(p.value for p in target.precisions),
                      target.default_precision.value, target.available() or "yes", target.cannot_run_here() or "yes")
    console(stderr=False).print(table)


@click.command()
@click.argument("artifact", type=click.Path())
@click.option("--against", type=click.Path(), help="Reference artifact (default: the parent export, or torch).")
@click.option("--calib", type=click.Path(), help="Folder of images to validate on (default: as when compiled).")
def validate(artifact, against, calib):
    """Re-run ARTIFACT's accuracy checks: compiled vs its fp32 export, or exported vs torch."""
    from edgefm.jobs.validate import validate as run_validation

    manifest = run_validation(Path(artifact), against=against, calib_dir=calib, log=log)
    print_table([(artifact, manifest)])
    exit_on_gate(manifest)


@click.command()
@click.argument("artifact", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the raw manifest.")
@click.option("--sensitivity", is_flag=True, help="Show each quantized layer's measured error contribution and "
              "which layers the compile kept in float.")
@click.option("--plot", type=click.Path(dir_okay=False), callback=picture_path,
              help="With --sensitivity: also draw it to this PNG.")
def inspect(artifact, as_json, sensitivity, plot):
    """Show an artifact's manifest for people (or as JSON)."""
    from edgefm.contract.manifest import Manifest

    if plot and not sensitivity:
        raise click.UsageError("--plot draws the --sensitivity view; add --sensitivity")
    from edgefm.contract.staging import check_file_outputs

    check_file_outputs([plot], [artifact])
    manifest = Manifest.load(Path(artifact), verify=False)
    if as_json:
        click.echo(json.dumps(manifest.to_json(), indent=2))
        return
    from edgefm.cli import tables as report

    if sensitivity:
        console(stderr=False).print(report.sensitivity_view(manifest))
        if plot:
            report.sensitivity_plot(manifest, Path(plot))
        return
    console(stderr=False).print(report.inspect_view(Path(artifact), manifest))


COMMANDS = (models, targets, inspect, validate)
