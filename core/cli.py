"""`edgefm` command line. Heavy modules are imported inside commands so `--help` stays fast."""
from __future__ import annotations

import errno
import json
import math
import sys
from pathlib import Path

import click

from edgefm import __version__


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
        from edgefm.errors import EdgefmError

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

    from edgefm import registry

    table = Table(title="edgefm model families")
    for column in ("family", "variant", "hub id", "components", "description"):
        table.add_column(column)
    for family in sorted(registry.families().values(), key=lambda f: f.name):
        for variant in family.variants.values():
            table.add_row(family.name, variant.name, variant.hub_id or "(offline preset)",
                          ", ".join(family.component_names), variant.description)
    _console(stderr=False).print(table)


def _finite(ctx, param, value):
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number")
    return value


def _export_options(f):
    f = click.option("--model", help="Hub id or local directory written by save_pretrained().")(f)
    f = click.option("--variant", help="A named variant (see `edgefm models`); `tiny` works offline.")(f)
    f = click.option("--random-weights", is_flag=True,
                     help="Build the variant's real architecture with seeded random weights (no download).")(f)
    f = click.option("--resolution", type=click.IntRange(14, 4096),
                     help="Input size for DINOv2 (multiple of 14; default 224).")(f)
    f = click.option("--dynamic-resolution", is_flag=True, help="Export DINOv2 with dynamic height/width.")(f)
    f = click.option("--lora", type=click.Path(exists=True),
                     help="sd15/sdxl: LoRA weights (.safetensors file or folder) fused into the UNet and text "
                          "encoders before export.")(f)
    f = click.option("--lora-scale", type=float, default=1.0, callback=_finite, show_default=True,
                     help="Strength of the fused LoRA.")(f)
    return f


def _export(family, model, variant, random_weights, resolution, dynamic_resolution, lora, lora_scale, out, overwrite):
    from edgefm.export_job import export
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


def _int_choice(ctx, param, value):
    return None if value is None else int(value)


def _none_if_empty(ctx, param, value):
    return tuple(value) or None


def _shape_options(f):
    f = click.option("--device-profile", type=click.Choice(["generic", "jetson-orin", "a100", "h100"]),
                     help="tensorrt: the GPU the engines are for (default generic: the GPU they are built on).")(f)
    f = click.option("--shapes", multiple=True, callback=_none_if_empty,
                     help="tensorrt: optimization profile of a dynamic dim, DIM=MIN,OPT,MAX (repeatable), e.g. "
                          "batch=1,4,16.")(f)
    return f


def _compile_options(f):
    f = click.option("--target", default="onnxruntime", show_default=True,
                     help="Deployment target: onnxruntime, openvino, coreml, tensorrt, or auto (every installed target "
                          "whose artifacts run here, each precision; keeps the fastest that passes its gates).")(f)
    f = click.option("--precision",
                     help="fp32, fp16, int8, int4, fp8 (tensorrt), or auto (compile each, keep the best that passes "
                          "its gate); default: the target's own (fp32; coreml and tensorrt fp16).")(f)
    f = click.option("--objective", type=click.Choice(["latency", "size"]),
                     help="What --precision auto optimizes, measured on this machine (default latency).")(f)
    f = click.option("--calib", type=click.Path(), help="Folder of your own images for calibration/validation.")(f)
    f = click.option("--calib-size", type=click.IntRange(min=1), help="Calibration images (and prompts) to use.")(f)
    f = click.option("--calib-prompts", type=click.Path(dir_okay=False),
                     help="Text file, one prompt per line, for text encoders.")(f)
    f = click.option("--int8-mode", type=click.Choice(["static", "dynamic"]),
                     help="onnxruntime: static (calibrated QDQ, default) or dynamic.")(f)
    f = click.option("--int4-group-size", type=click.IntRange(min=1),
                     help="Weights per int4 scale (default 32).")(f)
    f = click.option("--int4-ratio", type=float, callback=_finite,
                     help="openvino: share of linear layers in int4 (default 1.0).")(f)
    f = click.option("--device", help="openvino: CPU (default), GPU or NPU, as OpenVINO lists them.")(f)
    f = click.option("--deployment-target", type=click.Choice(["ios17", "macos14", "ios18", "macos15"]),
                     help="coreml: oldest OS to run on (default ios17; ios18 for int4 per-block weights).")(f)
    f = click.option("--compute-units", type=click.Choice(["ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY"]),
                     help="coreml: where Core ML may run the model (default ALL).")(f)
    f = click.option("--palettize", "palettize_bits", type=click.Choice(["4", "6", "8"]), callback=_int_choice,
                     help="coreml: int8/int4 as k-means palettized weights of this many bits.")(f)
    f = click.option("--fixed-shapes", is_flag=True, default=None,
                     help="coreml: pin dynamic sizes to their defaults (what the Neural Engine prefers).")(f)
    f = click.option("--int8-activations", is_flag=True, default=None,
                     help="coreml: int8 also quantizes activations, calibrated through Core ML (on a Mac).")(f)
    f = click.option("--chunk-over-mib", type=float, callback=_finite,
                     help="coreml: split packages larger than this in two (iOS, e.g. the SD UNet).")(f)
    f = _shape_options(f)
    f = click.option("--fp16-data-max", type=float, callback=_finite,
                     help="tensorrt: activations past this magnitude keep their node in fp32 (default 512).")(f)
    f = click.option("--allow-below-gate", is_flag=True,
                     help="Keep the best attempt even if it misses its accuracy gate (recorded in the manifest).")(f)
    return f


TARGET_FLAGS = ("int8_mode", "int4_group_size", "int4_ratio", "device", "deployment_target", "compute_units",
                "palettize_bits", "fixed_shapes", "chunk_over_mib", "int8_activations", "device_profile", "shapes",
                "fp16_data_max")


def _compile_settings(flags: dict) -> tuple[dict, object]:
    """Check the compile flags before any work starts: (the flags every target shares, the target's options)."""
    from edgefm import registry
    from edgefm.auto_precision import AUTO
    from edgefm.compile_job import target_options
    from edgefm.errors import EdgefmError

    common = {k: v for k, v in flags.items() if k not in TARGET_FLAGS}
    if common["target"] == AUTO:
        return _auto_target_settings(common, flags)
    common["precision"] = common["precision"] or registry.target(common["target"]).default_precision.value
    precision, objective = common["precision"], common["objective"]
    if precision == "auto" and common["allow_below_gate"]:
        raise EdgefmError("--allow-below-gate does not combine with --precision auto, which keeps only "
                          "precisions that pass their gates")
    if precision != "auto" and objective:
        raise EdgefmError(f"--objective applies to --precision auto only (got --precision {precision})")
    return common, target_options(common["target"], **{k: v for k, v in flags.items() if k in TARGET_FLAGS})


def _auto_target_settings(common: dict, flags: dict) -> tuple[dict, None]:
    """`--target auto` tries every runnable target with its default options, so it implies --precision auto
    and takes no target flags."""
    from edgefm.auto_precision import AUTO
    from edgefm.errors import EdgefmError

    given = ["--" + k.replace("_", "-") for k in TARGET_FLAGS if flags.get(k) is not None]
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
    from edgefm.compile_job import compile_artifact

    common = dict(calib_dir=calib, calib_size=calib_size, prompts=calib_prompts, options=options,
                  overwrite=overwrite, log=_log)
    if precision == "auto":
        from edgefm.auto_precision import compile_auto

        return compile_auto(Path(artifact), target, Path(out), objective=objective or "latency", **common)
    return compile_artifact(Path(artifact), target, precision, Path(out), allow_below_gate=allow_below_gate,
                            **common)


@main.command("compile")
@click.argument("artifact", type=click.Path())
@_compile_options
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False))
@click.option("--overwrite", is_flag=True)
def compile_cmd(artifact, out, **kwargs):
    """Compile an exported ARTIFACT for a target and precision, validated against the fp32 export."""
    common, options = _compile_settings(kwargs)
    manifest = _compile(artifact, out, options, **common)
    if common["target"] == "tensorrt":
        manifest = _engines_if_possible(Path(out), manifest, common["allow_below_gate"])
    _print_table([(out, manifest)])
    _exit_on_gate(manifest)


def _engines_if_possible(artifact: Path, manifest, allow_below_gate: bool):
    """After a TensorRT compile: build the engines here when this is a GPU they are for, else say where and how."""
    from edgefm.errors import EdgefmError
    from edgefm.runtimes.tensorrt import this_machine, unavailable_reason
    from edgefm.targets.tensorrt_plan import build_plan, check_device

    reason = unavailable_reason()
    try:
        if not reason:
            check_device(build_plan(manifest, artifact), this_machine())
    except EdgefmError as exc:  # e.g. compiled for a Jetson on a workstation: its engines are built there
        reason = str(exc)
    if reason:
        _log(f"graphs and build plan written and validated on the CPU; engines not built here ({reason}). "
             f"On the GPU that will run them: `edgefm engine {artifact}`")
        return manifest
    from edgefm.engine_job import build_engines

    return build_engines(artifact, allow_below_gate=allow_below_gate, log=_log)


@main.command()
@click.argument("artifact", type=click.Path())
@_shape_options
@click.option("-o", "--out", type=click.Path(dir_okay=False), help="Write the plan here (default: print it).")
def plan(artifact, device_profile, shapes, out):
    """Print the TensorRT build plan of a tensorrt-compiled ARTIFACT: graphs, fp32 pins, profiles, device."""
    from edgefm.manifest import Manifest
    from edgefm.staging import check_file_outputs
    from edgefm.targets.tensorrt_plan import build_plan

    check_file_outputs([out], [artifact])
    derived = build_plan(Manifest.load(Path(artifact)), Path(artifact), device_profile, shapes)
    text = json.dumps(derived, indent=2) + "\n"
    if out:
        Path(out).write_text(text)
    else:
        click.echo(text, nl=False)


@main.command()
@click.argument("artifact", type=click.Path())
@_shape_options
@click.option("--rebuild", is_flag=True, help="Build anew, past the engine cache, even if the artifact has engines.")
@click.option("--cache", type=click.Path(file_okay=False),
              help="Engine and timing cache (default $EDGEFM_CACHE/tensorrt or ~/.cache/edgefm/tensorrt).")
@click.option("--against", type=click.Path(file_okay=False),
              help="The fp32 export the engines are gated against (default: the one the artifact was compiled from).")
@click.option("--allow-below-gate", is_flag=True, help="Keep engines below their gates (recorded in the manifest).")
@click.option("-o", "--out", type=click.Path(file_okay=False), help="Write the engine artifact here (default: in place).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def engine(artifact, device_profile, shapes, rebuild, cache, against, allow_below_gate, out, overwrite):
    """Build the TensorRT engines of a tensorrt-compiled ARTIFACT on this GPU and gate them against the fp32 export."""
    from edgefm.engine_job import build_engines

    manifest = build_engines(Path(artifact), Path(out) if out else None, device_profile, shapes, rebuild,
                             Path(cache) if cache else None, Path(against) if against else None, allow_below_gate,
                             overwrite, log=_log)
    _print_table([(out or artifact, manifest)])
    _exit_on_gate(manifest)


@main.command()
@click.argument("family")
@_export_options
@_compile_options
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False),
              help="Writes OUT/exported and OUT/<target>-<precision>.")
@click.option("--overwrite", is_flag=True)
def build(family, model, variant, random_weights, resolution, dynamic_resolution, lora, lora_scale, out, overwrite,
          **kwargs):
    """Export FAMILY and compile it in one go."""
    from edgefm.staging import check_output

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
    from edgefm.validate_job import validate as run_validation

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
    from edgefm.manifest import Manifest

    if plot and not sensitivity:
        raise click.UsageError("--plot draws the --sensitivity view; add --sensitivity")
    from edgefm.staging import check_file_outputs

    check_file_outputs([plot], [artifact])
    manifest = Manifest.load(Path(artifact), verify=False)
    if as_json:
        click.echo(json.dumps(manifest.to_json(), indent=2))
        return
    from edgefm import report

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

    from edgefm import bench_report
    from edgefm.bench import run_bench
    from edgefm.hardware import summary_lines
    from edgefm.staging import check_file_outputs

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
@click.option("--prompt", help="sd15/sdxl: text to draw (writes one PNG to -o).")
@click.option("--negative-prompt", help="sd15/sdxl: what to steer away from (classifier-free guidance).")
@click.option("--steps", type=click.IntRange(min=1),
              help="sd15/sdxl: denoising steps (default: the artifact's, e.g. 30; turbo 1).")
@click.option("--guidance", type=float, callback=_finite, help="sd15/sdxl: guidance scale; <= 1 turns guidance off.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="sd15/sdxl: noise seed; a seed reproduces its image.")
@click.option("--height", type=click.IntRange(min=1), help="sd15/sdxl: image height in pixels (default: the model's).")
@click.option("--width", type=click.IntRange(min=1), help="sd15/sdxl: image width in pixels (default: the model's).")
@click.option("--scheduler", type=click.Choice(["ddim", "euler", "lcm"]), help="sd15/sdxl (default: the checkpoint's).")
@click.option("--strength", type=click.FloatRange(0, 1, min_open=True), default=0.8, show_default=True,
              help="sd15/sdxl with --image: how far the image is noised before denoising (0-1].")
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
    from edgefm.errors import EdgefmError
    from edgefm.run_job import run_image, run_video

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

    from edgefm.run_job import run_text_to_image

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
    """The main job, offline: tiny CLIP, DINOv2, SAM 2 and Stable Diffusion 1.5 -> ONNX -> ONNX Runtime and
    OpenVINO fp32/fp16/int8/int4, validated and timed, plus pictures of SAM 2's masks and SD's images per precision;
    CLIP and DINOv2 also -> Core ML fp16/int8/int4 packages (timed on a Mac only) and TensorRT fp16/int8/fp8
    graphs + build plans (engines are built and timed on an NVIDIA GPU with `edgefm engine`)."""
    from edgefm.demo import run_demo, sam2_mask_grid, sd_image_grid

    rows, latencies = run_demo(Path(out), log=_log)
    _print_table(rows, latencies)

    def compiled(family: str) -> list[Path]:
        return [d for d, m in rows if m.family == family and m.stage == "compiled"]

    picture = sam2_mask_grid(Path(out) / "sam2" / "exported", compiled("sam2"), Path(out) / "sam2" / "masks-by-precision.png")
    click.echo(f"SAM 2 masks by precision (red: differs from the export's mask): {picture}")
    picture = sd_image_grid(Path(out) / "sd15" / "exported", compiled("sd15"), Path(out) / "sd15" / "images-by-precision.png")
    click.echo(f"Stable Diffusion images by precision (PSNR vs the export's image): {picture}")
    _exit_on_gate(*[m for _, m in rows], strict=True)


def _print_table(rows, latencies=None):
    from edgefm.report import results_table

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
