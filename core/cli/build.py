"""`edgefm export`, `compile`, `build`, and the on-device step: `plan`, `engine`."""
from __future__ import annotations

import json
from pathlib import Path

import click

from edgefm.cli.console import exit_on_gate, log, print_table
from edgefm.cli.flags import TargetFlagsCommand, finite


def _export_options(f):
    f = click.option("--model", help="Hub id or local directory written by save_pretrained().")(f)
    f = click.option("--variant", help="A named variant (see `edgefm models`); `tiny` works offline.")(f)
    f = click.option("--random-weights", is_flag=True,
                     help="Build the variant's real architecture with seeded random weights (no download).")(f)
    f = click.option("--resolution", type=click.IntRange(14, 4096),
                     help="Input size, for families that take one (a multiple of the patch size).")(f)
    f = click.option("--dynamic-resolution", is_flag=True,
                     help="Export with dynamic height/width, for families that take a --resolution.")(f)
    f = click.option("--lora", type=click.Path(exists=True),
                     help="Text-to-image families: LoRA weights (.safetensors file or folder) fused into the UNet "
                          "and text encoders before export.")(f)
    f = click.option("--lora-scale", type=float, default=1.0, callback=finite, show_default=True,
                     help="Strength of the fused LoRA.")(f)
    return f


EXPORT_FLAGS = ("model", "variant", "random_weights", "resolution", "dynamic_resolution", "lora", "lora_scale")


def _export(family: str, flags: dict, out: Path, overwrite: bool):
    """Export with the `_export_options` values in `flags`."""
    from edgefm.exporters.base import ExportOptions
    from edgefm.jobs.export import export

    options = ExportOptions(resolution=flags["resolution"], dynamic_resolution=flags["dynamic_resolution"],
                            lora=flags["lora"], lora_scale=flags["lora_scale"])
    return export(family, Path(out), model=flags["model"], variant=flags["variant"],
                  random_weights=flags["random_weights"], options=options, overwrite=overwrite, log=log)


def _split_export(flags: dict) -> tuple[dict, dict]:
    """(the export flags, the rest)."""
    return {k: flags[k] for k in EXPORT_FLAGS}, {k: v for k, v in flags.items() if k not in EXPORT_FLAGS}


@click.command("export")
@click.argument("family")
@_export_options
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Artifact directory to write.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def export_cmd(family, out, overwrite, **flags):
    """Export FAMILY to ONNX graphs + manifest, each checked against torch."""
    print_table([(out, _export(family, flags, out, overwrite))])


def _compile_options(f):
    """The flags every target shares; each target's own flags come from its options (cli_flags.py)."""
    f = click.option("--target", help="A deployment target from `edgefm targets` (default: the one marked there, "
                                       "which runs wherever edgefm installs), or auto (every installed target "
                                       "whose artifacts run here, each precision; keeps the fastest that passes "
                                       "its gates).")(f)
    f = click.option("--precision",
                     help="A precision the target builds (`edgefm targets`), or auto (compile each, keep the best "
                          "that passes its gate); default: the target's own.")(f)
    f = click.option("--objective", type=click.Choice(["latency", "size"]),
                     help="What --precision auto optimizes, measured on this machine (default latency).")(f)
    f = click.option("--calib", type=click.Path(), help="Folder of your own images for calibration/validation.")(f)
    f = click.option("--calib-size", type=click.IntRange(min=1), help="Calibration images (and prompts) to use.")(f)
    f = click.option("--calib-prompts", type=click.Path(dir_okay=False),
                     help="Text file, one prompt per line, for text encoders.")(f)
    f = click.option("--allow-below-gate", is_flag=True,
                     help="Keep the best attempt even if it misses its accuracy gate (recorded in the manifest).")(f)
    return f


def compile_job(flags: dict):
    """The CompileJob of a command's compile flags (shared and target ones), checked before any work starts."""
    from edgefm.cli.flags import split_flags
    from edgefm.jobs.compile import CompileJob

    common, target_flags = split_flags(flags)
    return CompileJob.from_flags(common, target_flags)


@click.command("compile", cls=TargetFlagsCommand)
@click.argument("artifact", type=click.Path())
@_compile_options
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False))
@click.option("--overwrite", is_flag=True)
def compile_cmd(artifact, out, overwrite, **flags):
    """Compile an exported ARTIFACT for a target and precision, validated against the fp32 export."""
    from edgefm.jobs.compile import run_job

    manifest = run_job(Path(artifact), compile_job(flags), Path(out), overwrite=overwrite, log=log)
    print_table([(out, manifest)])
    exit_on_gate(manifest)


@click.command(cls=TargetFlagsCommand, on_device=True)
@click.argument("artifact", type=click.Path())
@click.option("-o", "--out", type=click.Path(dir_okay=False), help="Write the plan here (default: print it).")
def plan(artifact, out, **flags):
    """Print what the on-device step of a compiled ARTIFACT will build (e.g. engines: graphs, fp32 pins,
    profiles, device)."""
    from edgefm.contract.staging import check_file_outputs
    from edgefm.jobs.on_device import plan_on_device

    check_file_outputs([out], [artifact])
    text = json.dumps(plan_on_device(Path(artifact), flags), indent=2) + "\n"
    if out:
        Path(out).write_text(text)
    else:
        click.echo(text, nl=False)


@click.command(cls=TargetFlagsCommand, on_device=True)
@click.argument("artifact", type=click.Path())
@click.option("--rebuild", is_flag=True, help="Build anew, past the cache, even if the artifact has been through "
              "this step.")
@click.option("--cache", type=click.Path(file_okay=False),
              help="The step's cache (default $EDGEFM_CACHE/TARGET or ~/.cache/edgefm/TARGET).")
@click.option("--against", type=click.Path(file_okay=False),
              help="The fp32 export the result is gated against (default: the one the artifact was compiled from).")
@click.option("--allow-below-gate", is_flag=True, help="Keep results below their gates (recorded in the manifest).")
@click.option("-o", "--out", type=click.Path(file_okay=False), help="Write the new artifact here (default: in place).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def engine(artifact, rebuild, cache, against, allow_below_gate, out, overwrite, **flags):
    """Run the on-device step of a compiled ARTIFACT on the device that will run it (e.g. build its engines on
    this GPU), gated against the fp32 export."""
    from edgefm.jobs.on_device import run_on_device

    manifest = run_on_device(Path(artifact), out=Path(out) if out else None, flags=flags, rebuild=rebuild,
                             cache=Path(cache) if cache else None, against=Path(against) if against else None,
                             allow_below_gate=allow_below_gate, overwrite=overwrite, log=log)
    print_table([(out or artifact, manifest)])
    exit_on_gate(manifest)


@click.command(cls=TargetFlagsCommand)
@click.argument("family")
@_export_options
@_compile_options
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False),
              help="Writes OUT/exported and OUT/<target>-<precision>.")
@click.option("--overwrite", is_flag=True)
def build(family, out, overwrite, **flags):
    """Export FAMILY and compile it in one go."""
    from edgefm.contract.staging import check_output
    from edgefm.jobs.compile import run_job

    out = Path(out)
    export_flags, compile_flags = _split_export(flags)
    job = compile_job(compile_flags)
    compiled_dir = out / f"{job.target}-{job.precision}"
    inputs = [export_flags["model"] and Path(export_flags["model"]), export_flags["lora"], *job.inputs()]
    for directory in (out / "exported", compiled_dir):  # both outputs are checked before the export starts
        check_output(directory, overwrite, inputs)
    exported = _export(family, export_flags, out / "exported", overwrite)
    compiled = run_job(out / "exported", job, compiled_dir, overwrite=overwrite, log=log)
    print_table([(out / "exported", exported), (compiled_dir, compiled)])
    exit_on_gate(compiled)


COMMANDS = (export_cmd, compile_cmd, build, plan, engine)
