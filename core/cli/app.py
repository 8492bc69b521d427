"""`edgefm` command line. Heavy modules are imported inside commands so `--help` stays fast."""
from __future__ import annotations

import errno
import json
import sys
from pathlib import Path

import click

from edgefm import __version__
from edgefm.cli.flags import TargetFlagsCommand, finite


def _console(stderr: bool = True, min_width: int = 120):
    """Logs and errors go to stderr, result tables to stdout; tables stay readable when piped."""
    import shutil

    from rich.console import Console

    return Console(stderr=stderr, width=max(shutil.get_terminal_size((160, 24)).columns, min_width))


def _log(message: str) -> None:
    from rich.markup import escape

    _console().print(f"[dim]•[/dim] {escape(message)}", highlight=False)


# The OS errors a user causes and can fix: one line with the fix, not a traceback.
USER_OS_ERRORS = {errno.EACCES: "choose a folder you may write to", errno.EPERM: "choose a folder you may write to",
                  errno.EROFS: "choose a folder you may write to", errno.ENOSPC: "free some space or write elsewhere",
                  errno.EDQUOT: "free some space or write elsewhere", errno.ENAMETOOLONG: "use a shorter name"}


class _Group(click.Group):
    """Every error a user can fix is one line and exit code 2; a bug keeps its traceback and asks to be reported."""

    def invoke(self, ctx):
        from edgefm.contract.errors import EdgefmError

        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except EdgefmError as exc:
            _fail(str(exc), 2)
        except OSError as exc:
            if exc.errno not in USER_OS_ERRORS:
                _report_bug()
            _fail(f"{exc.strerror}: {exc.filename or ''}".rstrip(": ") + f"; {USER_OS_ERRORS[exc.errno]}", 2)
        except KeyboardInterrupt:
            _fail("interrupted; nothing half-written was left looking complete", 130)
        except Exception:
            _report_bug()


def _fail(message: str, code: int):
    from rich.markup import escape

    _console().print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def _report_bug():
    import traceback

    traceback.print_exc()
    _console().print(f"[bold red]this is a bug in edgefm {__version__}, not in how you ran it:[/bold red] please "
                     "report it with the command and the traceback above", highlight=False)
    sys.exit(1)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="edgefm")
def main():
    """Export vision foundation models to ONNX, compile them per target and precision, validate and run them."""


@main.command()
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
    _console(stderr=False).print(table)


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


def _export(family, model, variant, random_weights, resolution, dynamic_resolution, lora, lora_scale, out, overwrite):
    from edgefm.jobs.export import export
    from edgefm.exporters.base import ExportOptions

    options = ExportOptions(resolution=resolution, dynamic_resolution=dynamic_resolution, lora=lora,
                            lora_scale=lora_scale)
    return export(family, Path(out), model=model, variant=variant, random_weights=random_weights,
                  options=options, overwrite=overwrite, log=_log)


@main.command("export")
@click.argument("family")
@_export_options
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Artifact directory to write.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def export_cmd(family, model, variant, random_weights, resolution, dynamic_resolution, lora, lora_scale, out,
               overwrite):
    """Export FAMILY to ONNX graphs + manifest, each checked against torch."""
    manifest = _export(family, model, variant, random_weights, resolution, dynamic_resolution, lora, lora_scale, out,
                       overwrite)
    _print_table([(out, manifest)])


def _picture(ctx, param, value):
    if value is not None and Path(value).suffix.lower() not in (".png", ".svg", ".pdf"):
        raise click.BadParameter(f"{value}: give a .png, .svg or .pdf path")
    return value


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


def _compile_settings(flags: dict) -> tuple[dict, object]:
    """Check the compile flags before any work starts: (the flags every target shares, the target's options)."""
    from edgefm.contract import registry
    from edgefm.jobs.auto import AUTO
    from edgefm.jobs.compile import target_options
    from edgefm.cli.flags import split_flags
    from edgefm.contract.errors import EdgefmError

    common, target_flags = split_flags(flags)
    common["target"] = common["target"] or registry.default_target().name
    if common["target"] == AUTO:
        return _auto_target_settings(common, target_flags)
    common["precision"] = common["precision"] or registry.target(common["target"]).default_precision.value
    precision, objective = common["precision"], common["objective"]
    if precision == "auto" and common["allow_below_gate"]:
        raise EdgefmError("--allow-below-gate does not combine with --precision auto, which keeps only "
                          "precisions that pass their gates")
    if precision != "auto" and objective:
        raise EdgefmError(f"--objective applies to --precision auto only (got --precision {precision})")
    return common, target_options(common["target"], **target_flags)


def _auto_target_settings(common: dict, target_flags: dict) -> tuple[dict, None]:
    """`--target auto` tries every runnable target with its default options, so it implies --precision auto
    and takes no target flags."""
    from edgefm.jobs.auto import AUTO
    from edgefm.contract.errors import EdgefmError

    given = ["--" + k.replace("_", "-") for k, v in target_flags.items() if v is not None]
    if given:
        raise EdgefmError(f"{', '.join(given)} belong to one target; --target auto tries every target with its "
                          "defaults, so name the --target to set them")
    if common["precision"] not in (None, AUTO):
        raise EdgefmError(f"--target auto chooses the precision too; drop --precision {common['precision']} or "
                          "name a --target")
    if common["allow_below_gate"]:
        raise EdgefmError("--allow-below-gate does not combine with --target auto, which keeps only candidates "
                          "that pass their gates")
    return {**common, "precision": AUTO}, None


def _compile(artifact, out, options, target, precision, objective, calib, calib_size, calib_prompts,
             allow_below_gate, overwrite):
    from edgefm.jobs.compile import compile_artifact

    common = dict(calib_dir=calib, calib_size=calib_size, prompts=calib_prompts, options=options,
                  overwrite=overwrite, log=_log)
    if precision == "auto":
        from edgefm.jobs.auto import compile_auto

        return compile_auto(Path(artifact), target, Path(out), objective=objective or "latency", **common)
    return compile_artifact(Path(artifact), target, precision, Path(out), allow_below_gate=allow_below_gate,
                            **common)


@main.command("compile", cls=TargetFlagsCommand)
@click.argument("artifact", type=click.Path())
@_compile_options
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False))
@click.option("--overwrite", is_flag=True)
def compile_cmd(artifact, out, **kwargs):
    """Compile an exported ARTIFACT for a target and precision, validated against the fp32 export."""
    common, options = _compile_settings(kwargs)
    manifest = _compile(artifact, out, options, **common)
    if common["precision"] != "auto":  # a --precision auto candidate was timed here, so it needs no device step
        from edgefm.contract import registry

        manifest = registry.target(common["target"]).after_compile(Path(out), manifest, common["allow_below_gate"],
                                                                   _log)
    _print_table([(out, manifest)])
    _exit_on_gate(manifest)


@main.command()
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
    _console(stderr=False).print(table)


def _artifact_target(artifact: str):
    """The target a compiled artifact was built for, from its manifest."""
    from edgefm.contract import registry
    from edgefm.contract.errors import ArtifactError
    from edgefm.contract.manifest import Manifest

    manifest = Manifest.load(Path(artifact))
    built_for = sorted({e.target for e in manifest.components.values() if e.target})
    if manifest.stage != "compiled" or len(built_for) != 1:
        raise ArtifactError(f"{artifact} is not an artifact compiled for one target ({manifest.stage}); "
                            "give one that `edgefm compile` wrote")
    return registry.target(built_for[0]), manifest


@main.command(cls=TargetFlagsCommand, on_device=True)
@click.argument("artifact", type=click.Path())
@click.option("-o", "--out", type=click.Path(dir_okay=False), help="Write the plan here (default: print it).")
def plan(artifact, out, **flags):
    """Print what the on-device step of a compiled ARTIFACT will build (e.g. engines: graphs, fp32 pins,
    profiles, device)."""
    from edgefm.contract.staging import check_file_outputs

    check_file_outputs([out], [artifact])
    target, manifest = _artifact_target(artifact)
    text = json.dumps(target.on_device_plan(Path(artifact), manifest, flags), indent=2) + "\n"
    if out:
        Path(out).write_text(text)
    else:
        click.echo(text, nl=False)


@main.command(cls=TargetFlagsCommand, on_device=True)
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
    target, _ = _artifact_target(artifact)
    manifest = target.on_device(Path(artifact), Path(out) if out else None, flags, rebuild,
                                Path(cache) if cache else None, Path(against) if against else None, allow_below_gate,
                                overwrite, _log)
    _print_table([(out or artifact, manifest)])
    _exit_on_gate(manifest)


@main.command(cls=TargetFlagsCommand)
@click.argument("family")
@_export_options
@_compile_options
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False),
              help="Writes OUT/exported and OUT/<target>-<precision>.")
@click.option("--overwrite", is_flag=True)
def build(family, model, variant, random_weights, resolution, dynamic_resolution, lora, lora_scale, out, overwrite,
          **kwargs):
    """Export FAMILY and compile it in one go."""
    from edgefm.contract.staging import check_output

    out = Path(out)
    common, options = _compile_settings(kwargs)
    compiled_dir = out / f"{common['target']}-{common['precision']}"
    inputs = [model and Path(model), lora, common["calib"], common["calib_prompts"]]
    for directory in (out / "exported", compiled_dir):  # both outputs are checked before the export starts
        check_output(directory, overwrite, inputs)
    exported = _export(family, model, variant, random_weights, resolution, dynamic_resolution, lora, lora_scale,
                       out / "exported", overwrite)
    compiled = _compile(out / "exported", compiled_dir, options, overwrite=overwrite, **common)
    _print_table([(out / "exported", exported), (compiled_dir, compiled)])
    _exit_on_gate(compiled)


@main.command()
@click.argument("artifact", type=click.Path())
@click.option("--against", type=click.Path(), help="Reference artifact (default: the parent export, or torch).")
@click.option("--calib", type=click.Path(), help="Folder of images to validate on (default: as when compiled).")
def validate(artifact, against, calib):
    """Re-run ARTIFACT's accuracy checks: compiled vs its fp32 export, or exported vs torch."""
    from edgefm.jobs.validate import validate as run_validation

    manifest = run_validation(Path(artifact), against=against, calib_dir=calib, log=_log)
    _print_table([(artifact, manifest)])
    _exit_on_gate(manifest)


@main.command()
@click.argument("artifact", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the raw manifest.")
@click.option("--sensitivity", is_flag=True, help="Show each quantized layer's measured error contribution and "
              "which layers the compile kept in float.")
@click.option("--plot", type=click.Path(dir_okay=False), callback=_picture,
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
        _console(stderr=False).print(report.sensitivity_view(manifest))
        if plot:
            report.sensitivity_plot(manifest, Path(plot))
        return
    _console(stderr=False).print(report.inspect_view(Path(artifact), manifest))


def _batches(ctx, param, value: str) -> list[int]:
    try:
        batches = [int(b) for b in value.split(",")]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of batch sizes of at least 1, e.g. 1,8")
    return batches


@main.command()
@click.argument("artifacts", nargs=-1, required=True, type=click.Path())
@click.option("--batch", "batches", default="1,8", show_default=True, callback=_batches,
              help="Batch sizes, comma-separated.")
@click.option("--warmup", default=5, type=click.IntRange(min=0), show_default=True, help="Untimed runs per batch size.")
@click.option("--iters", default=50, type=click.IntRange(min=1), show_default=True, help="Timed runs per batch size.")
@click.option("--threads", type=click.IntRange(min=1), help="Runtime threads (default: the runtime's own choice).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the full report as JSON.")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False), help="Write a markdown report.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), callback=_picture,
              help="Write a PNG of latency and accuracy.")
def bench(artifacts, batches, warmup, iters, threads, json_path, markdown_path, plot_path):
    """Time every component of each ARTIFACT side by side: latency, throughput, load time, memory, accuracy."""
    from rich.progress import Progress

    from edgefm.bench import report as bench_report
    from edgefm.bench.runner import run_bench
    from edgefm.bench.hardware import summary_lines
    from edgefm.contract.staging import check_file_outputs

    check_file_outputs([json_path, markdown_path, plot_path], artifacts)

    with Progress(console=_console(), transient=True) as progress:
        task = progress.add_task("benchmarking")
        report = run_bench([Path(a) for a in artifacts], batches, warmup, iters, threads,
                           progress=lambda label, done, total: progress.update(task, description=label,
                                                                               completed=done, total=total))
    _console(stderr=False, min_width=170).print(bench_report.table(report))
    _console(stderr=False).print("\n".join(summary_lines(report["hardware"]) + bench_report.notes(report)),
                                 highlight=False)
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
    if markdown_path:
        Path(markdown_path).write_text(bench_report.markdown(report))
    if plot_path:
        bench_report.plot(report, Path(plot_path))
    if report["errors"]:
        sys.exit(1)


def _xy(ctx, param, values) -> list[list[float]]:
    try:
        parsed = [[float(v) for v in value.split(",")] for value in values]
    except ValueError:
        raise click.BadParameter(f"{values!r}: give each point as X,Y in image pixels, e.g. 320,240") from None
    if any(len(p) != 2 for p in parsed):
        raise click.BadParameter("give each point as X,Y in image pixels, e.g. 320,240")
    return parsed


def _box(ctx, param, value):
    if value is None:
        return None
    try:
        box = [float(v) for v in value.split(",")]
    except ValueError:
        box = []
    if len(box) != 4:
        raise click.BadParameter(f"{value!r}: give the box as X1,Y1,X2,Y2 in image pixels")
    return box


@main.command()
@click.argument("artifact", type=click.Path())
@click.option("--prompt", help="Text-to-image: text to draw (writes one PNG to -o).")
@click.option("--negative-prompt", help="Text-to-image: what to steer away from (classifier-free guidance).")
@click.option("--steps", type=click.IntRange(min=1),
              help="Text-to-image: denoising steps (default: the artifact's, e.g. 30; turbo 1).")
@click.option("--guidance", type=float, callback=finite,
              help="Text-to-image: guidance scale; <= 1 turns guidance off.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Text-to-image: noise seed; a seed reproduces its image.")
@click.option("--height", type=click.IntRange(min=1),
              help="Text-to-image: image height in pixels (default: the model's).")
@click.option("--width", type=click.IntRange(min=1),
              help="Text-to-image: image width in pixels (default: the model's).")
@click.option("--scheduler", type=click.Choice(["ddim", "euler", "lcm"]),
              help="Text-to-image (default: the checkpoint's).")
@click.option("--strength", type=click.FloatRange(0, 1, min_open=True), default=0.8, show_default=True,
              help="Text-to-image with --image: how far the image is noised before denoising (0-1].")
@click.option("--image", type=click.Path(dir_okay=False),
              help="Image to segment (SAM 2), or the start image of image-to-image (with --prompt).")
@click.option("--video", type=click.Path(), help="Directory of frames, or a video file (needs imageio[ffmpeg]).")
@click.option("--point", "points", multiple=True, callback=_xy, help="Foreground point X,Y (repeatable).")
@click.option("--background-point", "background", multiple=True, callback=_xy,
              help="Background point X,Y (repeatable).")
@click.option("--box", callback=_box, help="Box X1,Y1,X2,Y2 in image pixels.")
@click.option("--single-mask", is_flag=True, help="One mask instead of the best of three candidates.")
@click.option("-o", "--out", required=True, type=click.Path(),
              help="Overlay PNG (--image) or a directory of per-frame overlays (--video).")
@click.option("--overwrite", is_flag=True, help="Replace an existing -o image (or the frame overlays in -o).")
def run(artifact, prompt, negative_prompt, steps, guidance, seed, height, width, scheduler, strength, image, video,
        points, background, box, single_mask, out, overwrite):
    """Prompt a SAM 2 ARTIFACT on an image or a video and write mask overlays, or draw --prompt with an
    sd15 / sdxl ARTIFACT and write the image."""
    from edgefm.contract.errors import EdgefmError
    from edgefm.jobs.run import run_image, run_video

    if prompt is not None:
        if video or points or background or box or single_mask:
            raise EdgefmError("--prompt draws with a diffusion artifact; --video, --point, --background-point, --box "
                              "and --single-mask are SAM 2 options")
        _text_to_image(artifact, out, prompt=prompt, negative_prompt=negative_prompt, steps=steps, guidance=guidance,
                       seed=seed, height=height, width=width, scheduler=scheduler, image=image, strength=strength,
                       overwrite=overwrite)
        return
    if (image is None) == (video is None):
        raise EdgefmError("give exactly one of --image IMG or --video DIR_OR_FILE")
    prompt_points, labels = list(points) + list(background), [1] * len(points) + [0] * len(background)
    if video:
        summary = run_video(Path(artifact), Path(video), prompt_points, labels, box, Path(out), log=_log,
                            overwrite=overwrite)
        click.echo(f"{summary['frames']} frames, {summary['fps']:.2f} fps (encoder + tracking, overlays excluded), "
                   f"object visible in {summary['object_visible_frames']}; overlays in {out}/")
        return
    summary = run_image(Path(artifact), Path(image), prompt_points, labels, box, not single_mask, Path(out),
                        overwrite)
    click.echo(f"mask of {summary['mask_pixels']} px, predicted IoU {summary['score']:.3f} "
               f"(best of {summary['candidates']}); overlay in {out}")


def _text_to_image(artifact, out, **settings):
    from rich.progress import Progress

    from edgefm.jobs.run import run_text_to_image

    with Progress(console=_console(), transient=True) as progress:
        task = progress.add_task("denoising")
        summary = run_text_to_image(Path(artifact), Path(out), progress=lambda done, total: progress.update(
            task, completed=done, total=total), **settings)
    click.echo(f"{summary['width']}x{summary['height']} image, {summary['steps']} steps with {summary['scheduler']}, "
               f"guidance {summary['guidance']}, seed {summary['seed']}, {summary['seconds']:.2f} s "
               f"({summary['step_ms']:.1f} ms per step, encoders and decoder included); written to {out}")


@main.command()
@click.option("-o", "--out", default="edgefm-demo", show_default=True, type=click.Path(file_okay=False))
def demo(out):
    """The main job, offline: every family's tiny preset -> ONNX -> each target and precision, validated and
    timed, with pictures of what each precision changes (masks, generated images). Targets whose artifacts run
    elsewhere (on a Mac, on an NVIDIA GPU) are compiled and gated here and timed where they run."""
    from edgefm.jobs.demo import demo_pictures, run_demo

    rows, latencies = run_demo(Path(out), log=_log)
    _print_table(rows, latencies)
    for line in demo_pictures(Path(out), rows):
        click.echo(line)
    _exit_on_gate(*[m for _, m in rows], strict=True)


@main.command()
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
    with Progress(console=_console(), transient=True) as progress:
        task = progress.add_task("starting Ray")

        def show(label: str, done: int, total: int, finished: bool) -> None:
            if finished:  # kept above the bar: one line per task, with where it ran and what it took
                progress.console.print(label, highlight=False, markup=False)
            progress.update(task, description=label, completed=done, total=total)

        report = run_matrix(checked, Path(out), address, tuple(device_kinds), progress=show)
    counts = report["counts"]
    _console(stderr=False).print(
        f"rows {len(report['rows'])}; tasks run {counts['tasks_run']}, reused {counts['tasks_reused']}, failed "
        f"{counts['failed']}, retried {counts['retried']}; report: {Path(out) / 'report.html'} (.md, .json)",
        highlight=False)
    for error in report["errors"]:
        _console().print(f"[bold red]failed:[/bold red] {error}", highlight=False)
    if report["errors"]:
        sys.exit(1)


def _print_table(rows, latencies=None):
    from edgefm.cli.tables import results_table

    _console(stderr=False).print(results_table(rows, latencies))


def _exit_on_gate(*manifests, strict: bool = False):
    """Exit 1 when a component is below its gate, unless --allow-below-gate kept it (and not strict)."""
    def below(validation):
        return validation and not validation["passed"] and (strict or not validation.get("allowed_below_gate"))

    failed = [name for m in manifests for name, e in m.components.items() if below(e.validation)]
    failed += [f"{m.family} end to end" for m in manifests if below(m.pipeline_validation)]
    if failed:
        _console().print(f"[bold red]below gate:[/bold red] {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
