"""edgefm vs the strongest peers on this machine, at real model sizes, measured against the machine's own limit.

Builds CLIP ViT-B/32 and DINOv2 ViT-S/14 (224 px) from their real configs with seeded random weights (no
downloads), compiles them with edgefm for ONNX Runtime and OpenVINO in fp32/fp16/int8/int4, and times them side
by side with PyTorch (fp32 eager; bf16 autocast and bf16 + torch.compile where the CPU has bf16), Optimum's ONNX
export on ONNX Runtime and optimum-intel's OpenVINO export in fp32/fp16/int8/int4 (both in their own venvs: they
pin transformers < 4.58). Every (component, engine, batch) runs in a fresh process, so peak RSS is that row's.
Before timing it measures the machine's GEMM ceiling per compute type; each row reports its achieved GFLOP/s
(FLOPs counted by torch's FlopCounterMode on the model) and its share of the ceiling of the type it computes in.
Every engine is scored with edgefm's task checks on the held-out photos / prompts, against the fp32 export.

    python benchmarks/bench_peers.py [--quick] [--out DIR] [--iters N] [--threads N] [--no-optimum]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REAL = {"clip": "vit-b-32", "dinov2": "small"}
QUICK = {"clip": "tiny", "dinov2": "tiny"}
SHORT = {"onnxruntime": "ort", "openvino": "ov"}  # row names of earlier reports; other targets go by their name
PRECISIONS = ["fp32", "fp16", "int8", "int4"]
TORCH = ["torch-fp32", "torch-bf16-autocast", "torch-bf16-compile"]
OPTIMUM_OV = [f"optimum-ov-{p}" for p in PRECISIONS]


def edgefm_builds(only: list[str] | None) -> dict[str, tuple[str, list[str]]]:
    """{row prefix: (target, precisions)} for every installed target whose artifacts run here (or those in `only`)."""
    from edgefm.contract import registry

    builds = {}
    for name, target in sorted(registry.targets().items()):
        if (only and name not in only) or target.available() or target.cannot_run_here():
            continue
        builds[SHORT.get(name, name)] = (name, [p for p in PRECISIONS if any(p == q.value for q in target.precisions)])
    return builds
OPTIMUM_PIP = [["install", "optimum-onnx==0.1.0", "onnxruntime", "pillow"]]
# torch pinned again (else its torchvision requirement pulls a CUDA torch), then PyPI's torchvision (a CUDA build that
# breaks `import transformers` next to CPU torch; optimum-intel needs it only for vision-language models) removed
OPTIMUM_INTEL_PIP = [["install", "optimum-intel[openvino]==2.2.0", "pillow", os.environ.get("TORCH", "torch==2.13.0")],
                     ["uninstall", "-y", "torchvision"]]


# -- child: load one engine, time it, score it, report ---------------------------------------------
def child(spec: dict) -> None:
    from peer_runners import runner, task_metrics

    from edgefm.bench.timing import peak_rss_mib, summarize, time_calls

    feeds = dict(np.load(spec["inputs"]))
    call, size, extra = runner(spec)
    np.savez(spec["outputs"], **call(feeds))
    result = summarize(time_calls(lambda: call(feeds), spec["warmup"], spec["iters"]), spec["batch"])
    result.update(extra, size_mib=size / 2**20, peak_rss_mib=peak_rss_mib())  # before scoring opens the reference
    if spec["score"]:
        result["metrics"] = task_metrics(spec, call)
    print(json.dumps(result))


# -- parent: build artifacts, prepare inputs, spawn children, write reports --------------------------
def build(family: str, variant: str, root: Path, targets: dict, log) -> dict:
    from edgefm.jobs.compile import compile_artifact
    from edgefm.jobs.export import export

    start = time.perf_counter()
    export(family, root / "exported", variant=variant, random_weights=True, overwrite=True, log=log)
    record = {"family": family, "variant": variant, "export_s": time.perf_counter() - start, "compile": {}}
    for short, (target, precisions) in targets.items():
        for precision in precisions:
            start = time.perf_counter()
            manifest = compile_artifact(root / "exported", target, precision, root / f"{short}-{precision}",
                                        overwrite=True, allow_below_gate=True, log=log)
            record["compile"][f"edgefm-{short}-{precision}"] = {"seconds": time.perf_counter() - start, "components": {
                name: {"scheme": e.options["compile"]["scheme"], "passed": e.validation["passed"],
                       "value": e.validation["value"], "compute": artifact_compute(precision, e.options["compile"])}
                for name, e in manifest.components.items()}}
    return record


def artifact_compute(precision: str, compiled: dict) -> str:
    """What the GEMMs of an edgefm artifact compute in, for its share of the ceiling: int8 for int8, and for
    ONNX Runtime int4 (MatMulNBits at accuracy level 4 multiplies in int8); OpenVINO float and int4 weights
    in the inference precision the manifest records; ONNX Runtime fp16 in fp32 (its x86 CPU kernels upcast)."""
    if precision == "int8" or (precision == "int4" and "inference_precision" not in compiled):
        return "int8"
    return "bf16" if compiled.get("inference_precision") == "bf16" else "fp32"


def optimum_exports(models: dict, root: Path, log) -> tuple[dict, dict]:
    """Save the same random weights as HF model dirs, then export them with optimum-onnx and optimum-intel, each
    in its own venv; a peer that fails to install or export is recorded with its error, not fatal."""
    from edgefm.contract import registry
    from edgefm.exporters.base import ExportOptions

    dirs = {}
    for family, variant in models.items():
        fam = registry.family(family)
        loaded = fam.load(fam.resolve(None, variant, random_weights=True), ExportOptions())
        dirs[family] = root / "hf" / family
        loaded.model.save_pretrained(dirs[family])
        loaded.processor.save_pretrained(dirs[family])  # optimum reads the image size from it
    calibration = root / "hf" / "calibration.npz"
    np.savez(calibration, **calibration_inputs(root))
    onnx = _peer_export("optimum-onnx", root / ".optimum-venv", OPTIMUM_PIP, "optimum_export.py",
                        [dirs["clip"], dirs["dinov2"], root / "optimum"], log)
    intel = _peer_export("optimum-intel", root / ".optimum-intel-venv", OPTIMUM_INTEL_PIP,
                         "optimum_intel_export.py", [dirs["clip"], dirs["dinov2"], calibration, root / "optimum-intel"],
                         log)
    return onnx, intel


def calibration_inputs(root: Path) -> dict:
    """The calibration photos and prompts edgefm calibrates on, preprocessed per model, for optimum-intel's int8."""
    from edgefm.calibration.data import load as load_calibration

    data = load_calibration()
    count = min(len(data.calib_images), len(data.calib_prompts))
    items = lambda family, component: make_inputs(root / family / "exported", component, count,  # noqa: E731
                                                  split="calib")
    return {"pixel_values": items("clip", "image_encoder")["pixel_values"],
            "dinov2_pixel_values": items("dinov2", "image_encoder")["pixel_values"],
            "input_ids": items("clip", "text_encoder")["input_ids"]}


def _peer_export(package: str, venv: Path, pip_steps: list[list[str]], script: str, args: list, log) -> dict:
    """Make the peer's venv (CPU torch first, then each of `pip_steps`: pip's arguments) and run its export
    script there."""
    python = venv / "bin" / "python"
    try:
        if not python.exists():
            log(f"creating {venv} for {package} (its transformers pin conflicts with edgefm's)")
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            for step in [["install", os.environ.get("TORCH", "torch==2.13.0")], *pip_steps]:
                subprocess.run([str(python), "-m", "pip", *step, "-q"], check=True, capture_output=True)
        log(f"exporting with {package}")
        start = time.perf_counter()
        printed = subprocess.run([str(python), str(Path(__file__).with_name(script)), *map(str, args)], check=True,
                                 capture_output=True, text=True).stdout.strip().splitlines()
        versions = subprocess.run([str(python), "-c", "from importlib.metadata import version as v; import json; "
                                   f"print(json.dumps({{p: v(p) for p in ({package!r}, 'optimum', 'transformers')}}))"],
                                  check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        tail = ((exc.stderr or "").strip().splitlines() or [f"exit {exc.returncode}"])[-1]
        return {"error": f"{package} failed: {tail}"}
    failed = json.loads(printed[-1]).get("errors", {}) if printed and printed[-1].startswith("{") else {}
    return {"export_s": time.perf_counter() - start, **json.loads(versions.stdout), "errors": failed}


def make_inputs(exported: Path, component: str, batch: int, split: str = "heldout") -> dict:
    """The held-out (or calibration) photos / prompts, tiled to the batch."""
    from edgefm.calibration.data import load as load_calibration
    from edgefm.contract.manifest import Manifest
    from edgefm.runtimes.preprocess import preprocess
    from edgefm.runtimes.tokenizer import TextTokenizer

    manifest, data = Manifest.load(exported), load_calibration()
    spec = manifest.components[component].inputs[0]
    if spec.dtype == "float32":
        images = data.heldout_images if split == "heldout" else data.calib_images
        return {spec.name: preprocess([images[i % len(images)] for i in range(batch)], manifest.task["preprocess"])}
    prompts = data.heldout_prompts if split == "heldout" else data.calib_prompts
    tokenize = TextTokenizer.from_manifest(manifest, exported)
    return {spec.name: tokenize([prompts[i % len(prompts)] for i in range(batch)])}


def artifact_of(engine: str, family_root: Path, root: Path, family: str, component: str) -> str:
    graph = family if family == "dinov2" else f"clip-{component}"
    if engine == "optimum-ort":
        return str(root / "optimum" / graph)
    if engine.startswith("optimum-ov-"):
        return str(root / "optimum-intel" / graph / engine.removeprefix("optimum-ov-"))
    return str(family_root / engine.removeprefix("edgefm-")) if engine.startswith("edgefm-") else ""


def bench_rows(base: dict, engines: list[str], work: Path, root: Path, score: bool, log):
    """One row per engine on one (component, batch); torch fp32 runs first: cosine reference and FLOP count."""
    from edgefm.contract.compare import cosine_rows

    key = f"{base['family']}-{base['component']}-b{base['batch']}"
    inputs = work / f"{key}.in.npz"
    family_root = Path(base["exported"]).parent
    np.savez(inputs, **make_inputs(Path(base["exported"]), base["component"], base["batch"]))
    reference = gflop = None
    for engine in engines:
        log(f"{key} {engine}")
        spec = {**base, "engine": engine, "inputs": str(inputs), "outputs": str(work / f"{key}.{engine}.npz"),
                "artifact": artifact_of(engine, family_root, root, base["family"], base["component"]), "score": score}
        done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
        row = {k: spec[k] for k in ("family", "variant", "component", "engine", "batch")}
        if done.returncode:
            yield {**row, "error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
            continue
        row.update(json.loads(done.stdout.strip().splitlines()[-1]))
        got = np.load(spec["outputs"])
        if engine == "torch-fp32":
            reference, gflop = got, row["gflop"]
        if reference is not None:  # mean cosine per row of the last axis (embedding / patch token), worst output
            row["cosine"] = min(float(cosine_rows(got[n], reference[n]).mean()) for n in reference.files)
        if gflop:
            row["gflop"] = gflop
        yield row


def engines_to_run(info: dict, optimum: dict | None, optimum_intel: dict | None, targets: dict
                   ) -> tuple[list[str], dict]:
    """The engines this machine and these installs can run, and why the others are left out."""
    from edgefm.bench.hardware import has_bf16

    engines, skipped = ["torch-fp32"], {}
    for engine in TORCH[1:]:
        if has_bf16(info["isa"]):
            engines.append(engine)
        else:
            skipped[engine] = "this CPU has no bf16 instructions (AVX512-BF16 / AMX): torch would emulate bf16"
    for names, export in ((["optimum-ort"], optimum), (OPTIMUM_OV, optimum_intel)):
        if export and "error" not in export:
            engines += names
        else:
            skipped.update(dict.fromkeys(names, export["error"] if export else "not run (--no-optimum)"))
    return engines + [f"edgefm-{short}-{p}" for short, (_, precisions) in targets.items() for p in precisions], skipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny presets (checks the script, not a benchmark)")
    parser.add_argument("--out", default="bench-out", type=Path)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--no-optimum", action="store_true", help="skip the Optimum peers (no venvs made)")
    parser.add_argument("--targets", help="edgefm targets to build, comma-separated (default: every installed one "
                                          "whose artifacts run here)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))

    from peer_report import plot, write_markdown
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from edgefm.bench import hardware
    from edgefm.contract import registry

    models, root = (QUICK if args.quick else REAL), args.out.resolve()
    batches = [int(b) for b in args.batches.split(",")]
    work = root / "inputs"
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    targets = edgefm_builds(args.targets.split(",") if args.targets else None)
    info = hardware.describe(args.threads, ["onnxruntime", "openvino"] + [registry.target(t).runtime
                                                                          for t, _ in targets.values()])
    info["gemm_ceiling"] = hardware.gemm_ceilings(args.threads)  # first, on an idle machine
    info["libraries"].update({name: hardware.package_version(name) for name in ("torch", "transformers", "nncf")})
    rows = []
    with Progress(TextColumn("{task.description}", style="cyan"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn()) as progress:
        task = progress.add_task("", total=len(models) + 1)
        log = lambda message: progress.update(task, description=message[:100])  # noqa: E731
        builds = []
        for family, variant in models.items():
            builds.append(build(family, variant, root / family, targets, log))
            progress.advance(task)
        optimum = optimum_intel = None
        if not args.no_optimum:
            optimum, optimum_intel = optimum_exports(models, root, log)
        progress.advance(task)
        engines, skipped = engines_to_run(info, optimum, optimum_intel, targets)
        runs = sum(len(registry.family(f).component_names) for f in models) * len(batches) * len(engines)
        progress.update(task, total=len(models) + 1 + runs)
        for family, variant in models.items():
            for component in registry.family(family).component_names:
                for batch in batches:
                    base = {"family": family, "variant": variant, "component": component, "batch": batch,
                            "exported": str(root / family / "exported"), "iters": args.iters,
                            "warmup": args.warmup, "threads": args.threads}
                    for row in bench_rows(base, engines, work, root, batch == batches[0], log):
                        rows.append(row)
                        progress.advance(task)
    report = {"hardware": info, "optimum": optimum, "optimum_intel": optimum_intel, "skipped": skipped,
              "builds": builds, "rows": rows, "quick": args.quick, "iters": args.iters, "warmup": args.warmup,
              "minutes": (time.perf_counter() - start) / 60}
    (root / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(root / "results.md", report)
    plot(root / "results.png", rows, batches)
    print(f"wrote {root / 'results.md'}, results.json, results.png in {report['minutes']:.1f} min")


if __name__ == "__main__":
    main()
