"""edgefm vs its peers at real model sizes: PyTorch eager and Hugging Face Optimum's ONNX export on ONNX Runtime.

Builds CLIP ViT-B/32 and DINOv2 ViT-S/14 (224 px) from their real configs with seeded random weights
(no downloads), compiles them with edgefm for ONNX Runtime and OpenVINO in fp32/fp16/int8/int4,
exports the same weights with optimum-onnx (in its own venv: it pins transformers < 4.58), and times
every (component, engine, batch) in a fresh process so peak RSS belongs to that row alone. Inputs are
the held-out calibration photos / prompts tiled to the batch; cosine is against torch's outputs.

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
TARGETS = {"ort": "onnxruntime", "ov": "openvino"}
PRECISIONS = ["fp32", "fp16", "int8", "int4"]
PEERS = ["torch-eager", "optimum-ort"]
EDGEFM = [f"edgefm-{t}-{p}" for t in TARGETS for p in PRECISIONS]
OPTIMUM_PIN = ["optimum-onnx==0.1.0", "onnxruntime", "pillow"]


# -- child: load one engine, time it, report --------------------------------------------------------
def child(spec: dict) -> None:
    from edgefm.bench import peak_rss_mib, summarize, time_calls

    feeds = dict(np.load(spec["inputs"]))
    runner = {"torch-eager": torch_runner, "optimum-ort": optimum_runner}.get(spec["engine"], edgefm_runner)
    run, size = runner(spec, feeds)
    outputs = run()
    np.savez(spec["outputs"], **outputs)
    result = summarize(time_calls(run, spec["warmup"], spec["iters"]), spec["batch"])
    print(json.dumps({**result, "size_mib": size / 2**20, "peak_rss_mib": peak_rss_mib()}))


def torch_runner(spec: dict, feeds: dict):
    import torch

    from edgefm import registry
    from edgefm.exporters.base import ExportOptions

    torch.set_num_threads(spec["threads"])
    family = registry.family(spec["family"])
    loaded = family.load(family.resolve(None, spec["variant"], random_weights=True), ExportOptions())
    component = next(c for c in family.components(loaded, ExportOptions()) if c.name == spec["component"])
    tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}
    names = [o.name for o in component.outputs]

    def run():
        with torch.no_grad():
            out = component.module(**tensors)
        return dict(zip(names, (t.numpy() for t in (out if isinstance(out, tuple) else (out,)))))

    # Count only the parameters of modules this component calls (CLIP's wrapper holds both towers).
    called = []
    hooks = [m.register_forward_hook(lambda m, *_: called.append(m)) for m in component.module.modules()]
    run()
    for hook in hooks:
        hook.remove()
    params = {id(p): p for m in called for p in m.parameters(recurse=False)}
    return run, sum(p.numel() * p.element_size() for p in params.values())


def optimum_runner(spec: dict, feeds: dict):
    """Optimum's graphs through a plain ONNX Runtime session, outputs mapped to edgefm's names."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = spec["threads"]
    path = Path(spec["artifact"]) / "model.onnx"
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    if spec["family"] == "dinov2":
        def run():
            hidden = session.run(["last_hidden_state"], feeds)[0]
            return {"cls_embedding": hidden[:, 0], "patch_tokens": hidden[:, 1:]}
    elif spec["component"] == "image_encoder":
        def run():
            return {"image_embeds": session.run(["image_embeds"], feeds)[0]}
    else:
        text = {**feeds, "attention_mask": np.ones_like(feeds["input_ids"])}

        def run():
            return {"text_embeds": session.run(["text_embeds"], text)[0]}
    return run, sum(p.stat().st_size for p in path.parent.iterdir() if p.suffix in (".onnx", ".onnx_data", ".data"))


def edgefm_runner(spec: dict, feeds: dict):
    from edgefm.manifest import Manifest
    from edgefm.runtimes.loader import open_component

    directory = Path(spec["artifact"])  # open only this component's session, not the whole artifact
    entry = Manifest.load(directory).components[spec["component"]]
    session = open_component(directory, entry, spec["component"], threads=spec["threads"])
    return (lambda: session.run(feeds)), entry.size_mib(directory) * 2**20


# -- parent: build artifacts, prepare inputs, spawn children, write reports --------------------------
def build(family: str, variant: str, root: Path, log) -> dict:
    from edgefm.compile_job import compile_artifact
    from edgefm.export_job import export

    start = time.perf_counter()
    export(family, root / "exported", variant=variant, random_weights=True, overwrite=True, log=log)
    record = {"family": family, "variant": variant, "export_s": time.perf_counter() - start, "compile": {}}
    for short, target in TARGETS.items():
        for precision in PRECISIONS:
            start = time.perf_counter()
            manifest = compile_artifact(root / "exported", target, precision, root / f"{short}-{precision}",
                                        overwrite=True, allow_below_gate=True, log=log)
            record["compile"][f"edgefm-{short}-{precision}"] = {"seconds": time.perf_counter() - start, "components": {
                name: {"scheme": e.options["compile"]["scheme"], "passed": e.validation["passed"],
                       "value": e.validation["value"]} for name, e in manifest.components.items()}}
    return record


def optimum_export(models: dict, root: Path, log) -> dict:
    """Save the same random weights as HF model dirs, then export them with optimum in its own venv."""
    from edgefm import registry
    from edgefm.exporters.base import ExportOptions

    dirs = {}
    for family, variant in models.items():
        fam = registry.family(family)
        loaded = fam.load(fam.resolve(None, variant, random_weights=True), ExportOptions())
        dirs[family] = root / "hf" / family
        loaded.model.save_pretrained(dirs[family])
        loaded.processor.save_pretrained(dirs[family])  # optimum reads the image size from it
    venv = root / ".optimum-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        log(f"creating {venv} for optimum-onnx (it pins transformers < 4.58)")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", os.environ.get("TORCH", "torch==2.13.0")], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *OPTIMUM_PIN], check=True)
    log("exporting with optimum-onnx")
    start = time.perf_counter()
    subprocess.run([str(python), str(Path(__file__).with_name("optimum_export.py")), str(dirs["clip"]),
                    str(dirs["dinov2"]), str(root / "optimum")], check=True, capture_output=True)
    versions = subprocess.run([str(python), "-c", "from importlib.metadata import version as v; import json; "
                               "print(json.dumps({p: v(p) for p in ('optimum-onnx', 'optimum', 'transformers')}))"],
                              check=True, capture_output=True, text=True)
    return {"export_s": time.perf_counter() - start, **json.loads(versions.stdout)}


def make_inputs(exported: Path, component: str, batch: int) -> dict:
    from edgefm.calibration.data import load as load_calibration
    from edgefm.manifest import Manifest
    from edgefm.runtimes.preprocess import preprocess
    from edgefm.runtimes.tokenizer import TextTokenizer

    manifest, data = Manifest.load(exported), load_calibration()
    spec = manifest.components[component].inputs[0]
    if spec.dtype == "float32":
        images = data.heldout_images
        return {spec.name: preprocess([images[i % len(images)] for i in range(batch)], manifest.task["preprocess"])}
    prompts = data.heldout_prompts
    tokenize = TextTokenizer.from_manifest(manifest, exported)
    return {spec.name: tokenize([prompts[i % len(prompts)] for i in range(batch)])}


def artifact_of(engine: str, family_root: Path, root: Path, family: str, component: str) -> str:
    if engine == "optimum-ort":
        return str(root / "optimum" / (family if family == "dinov2" else f"clip-{component}"))
    return str(family_root / engine.removeprefix("edgefm-")) if engine.startswith("edgefm-") else ""


def bench_rows(base: dict, engines: list[str], work: Path, root: Path, log):
    """One row per engine on one (component, batch); torch runs first as the cosine reference."""
    from edgefm.compare import cosine_rows

    key = f"{base['family']}-{base['component']}-b{base['batch']}"
    inputs = work / f"{key}.in.npz"
    family_root = Path(base["exported"]).parent
    np.savez(inputs, **make_inputs(Path(base["exported"]), base["component"], base["batch"]))
    reference = None
    for engine in engines:
        log(f"{key} {engine}")
        spec = {**base, "engine": engine, "inputs": str(inputs), "outputs": str(work / f"{key}.{engine}.npz"),
                "artifact": artifact_of(engine, family_root, root, base["family"], base["component"])}
        done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
        row = {k: spec[k] for k in ("family", "variant", "component", "engine", "batch")}
        if done.returncode:
            yield {**row, "error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
            continue
        row.update(json.loads(done.stdout.strip().splitlines()[-1]))
        got = np.load(spec["outputs"])
        reference = got if engine == "torch-eager" else reference
        if reference is not None:  # mean cosine per row of the last axis (embedding / patch token), worst output
            row["cosine"] = min(float(cosine_rows(got[n], reference[n]).mean()) for n in reference.files)
        yield row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny presets (checks the script, not a benchmark)")
    parser.add_argument("--out", default="bench-out", type=Path)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--no-optimum", action="store_true", help="skip the optimum-onnx peer (no venv made)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from edgefm import hardware, registry
    from peer_report import plot, write_markdown

    models, root = (QUICK if args.quick else REAL), args.out.resolve()
    batches = [int(b) for b in args.batches.split(",")]
    work = root / "inputs"
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    engines = ["torch-eager"] + ([] if args.no_optimum else ["optimum-ort"]) + EDGEFM
    rows = []
    with Progress(TextColumn("{task.description}", style="cyan"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn()) as progress:
        runs = sum(len(registry.family(f).component_names) for f in models) * len(batches) * len(engines)
        task = progress.add_task("", total=len(models) + 1 + runs)
        log = lambda message: progress.update(task, description=message[:100])  # noqa: E731
        builds = []
        for family, variant in models.items():
            builds.append(build(family, variant, root / family, log))
            progress.advance(task)
        optimum = None if args.no_optimum else optimum_export(models, root, log)
        progress.advance(task)
        for family, variant in models.items():
            for component in registry.family(family).component_names:
                for batch in batches:
                    base = {"family": family, "variant": variant, "component": component, "batch": batch,
                            "exported": str(root / family / "exported"), "iters": args.iters,
                            "warmup": args.warmup, "threads": args.threads}
                    for row in bench_rows(base, engines, work, root, log):
                        rows.append(row)
                        progress.advance(task)
    info = hardware.describe(args.threads, ["onnxruntime", "openvino"])
    info["libraries"].update(torch=hardware.package_version("torch"),
                             transformers=hardware.package_version("transformers"), nncf=hardware.package_version("nncf"))
    report = {"hardware": info, "optimum": optimum, "builds": builds, "rows": rows, "quick": args.quick,
              "iters": args.iters, "warmup": args.warmup, "minutes": (time.perf_counter() - start) / 60}
    (root / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(root / "results.md", report)
    plot(root / "results.png", rows, batches)
    print(f"wrote {root / 'results.md'}, results.json, results.png in {report['minutes']:.1f} min")


if __name__ == "__main__":
    main()
