"""CPU benchmark at real model sizes: PyTorch eager fp32 vs edgefm ONNX Runtime fp32/fp16/int8/int4.

Builds CLIP ViT-B/32 and DINOv2 ViT-S/14 (224 px) from their real configs with seeded random
weights (no downloads), exports and compiles them with edgefm, then times every
(component, engine, batch) in its own fresh process so peak RSS belongs to that one thing alone.
Inputs are the calibration held-out photos / prompts, tiled to fill the batch.

    python benchmarks/bench_cpu_real_size.py [--quick] [--out DIR] [--iters N] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

REAL = {"clip": "vit-b-32", "dinov2": "small"}
QUICK = {"clip": "tiny", "dinov2": "tiny"}
PRECISIONS = ["fp32", "fp16", "int8", "int4"]
ENGINES = ["torch-fp32"] + [f"ort-{p}" for p in PRECISIONS]


# -- child: load one thing, time it, report -------------------------------------------------------
def child(spec: dict) -> None:
    feeds = dict(np.load(spec["inputs"]))
    run, size = (torch_runner if spec["engine"] == "torch-fp32" else ort_runner)(spec, feeds)
    for _ in range(spec["warmup"]):
        run()
    times = []
    for _ in range(spec["iters"]):
        start = time.perf_counter()
        outputs = run()
        times.append((time.perf_counter() - start) * 1e3)
    np.savez(spec["outputs"], **outputs)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through fork + exec.
    peak_kib = next(int(l.split()[1]) for l in Path("/proc/self/status").read_text().splitlines()
                    if l.startswith("VmHWM:"))
    print(json.dumps({"times_ms": times, "size_bytes": size, "peak_rss_mib": peak_kib / 1024}))


def torch_runner(spec: dict, feeds: dict):
    import torch

    from edgefm import registry
    from edgefm.exporters.base import ExportOptions
    from edgefm.manifest import Manifest

    torch.set_num_threads(spec["threads"])
    family = registry.family(spec["family"])
    loaded = family.load(family.resolve(None, spec["variant"], random_weights=True), ExportOptions())
    # Same seed as the export, so the reference must hash to the exported weights.
    assert loaded.weights_sha256 == Manifest.load(spec["exported"]).source["weights_sha256"], "weights differ"
    component = next(c for c in family.components(loaded, ExportOptions()) if c.name == spec["component"])
    tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}
    names = [o.name for o in component.outputs]

    def run():
        with torch.no_grad():
            out = component.module(**tensors)
        return dict(zip(names, (t.numpy() for t in (out if isinstance(out, tuple) else (out,)))))

    # Count only parameters of modules this component calls (CLIP's wrapper holds both towers).
    called = []
    hooks = [m.register_forward_hook(lambda m, *_: called.append(m)) for m in component.module.modules()]
    run()
    for hook in hooks:
        hook.remove()
    params = {id(p): p for m in called for p in m.parameters(recurse=False)}
    return run, sum(p.numel() * p.element_size() for p in params.values())


def ort_runner(spec: dict, feeds: dict):
    import importlib

    from edgefm.manifest import Manifest

    # Open only this component's session (edgefm.load would open every component of the artifact).
    directory = Path(spec["artifact"])
    entry = Manifest.load(directory).components[spec["component"]]
    runtime = importlib.import_module(f"edgefm.runtimes.{entry.runtime}")
    session = runtime.open_session(directory / entry.file, entry, spec["component"], threads=spec["threads"])
    return (lambda: session.run(feeds)), sum((directory / f).stat().st_size for f in entry.files())


# -- parent: build artifacts, prepare inputs, spawn children, write reports --------------------------
def build(family: str, variant: str, root: Path, log) -> dict:
    from edgefm.compile_job import compile_artifact
    from edgefm.export_job import export

    start = time.perf_counter()
    export(family, root / "exported", variant=variant, random_weights=True, overwrite=True, log=log)
    record = {"family": family, "variant": variant, "export_s": time.perf_counter() - start, "compile": {}}
    for precision in PRECISIONS:
        start = time.perf_counter()
        manifest = compile_artifact(root / "exported", "onnxruntime", precision, root / precision,
                                    overwrite=True, allow_below_gate=True, log=log)
        record["compile"][precision] = {"seconds": time.perf_counter() - start, "components": {
            name: {"scheme": e.options["compile"]["scheme"], "passed": e.validation["passed"],
                   "value": e.validation["value"]} for name, e in manifest.components.items()}}
    return record


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
    tokenize = TextTokenizer.from_task(manifest.task, exported)
    return {spec.name: tokenize([prompts[i % len(prompts)] for i in range(batch)])}


def bench(base: dict, work: Path, log):
    """Yield one row per engine on one (component, batch); torch runs first as the cosine reference."""
    from edgefm.compare import cosine_rows

    key = f"{base['family']}-{base['component']}-b{base['batch']}"
    inputs = work / f"{key}.in.npz"
    np.savez(inputs, **make_inputs(Path(base["exported"]), base["component"], base["batch"]))
    reference = None
    for engine in ENGINES:
        log(f"{key} {engine}")
        spec = {**base, "engine": engine, "artifact": str(Path(base["exported"]).parent / engine.split("-")[1]),
                "inputs": str(inputs), "outputs": str(work / f"{key}.{engine}.npz")}
        row = {k: spec[k] for k in ("family", "variant", "component", "engine", "batch")} | measure(spec)
        if "error" not in row:
            got = np.load(spec["outputs"])
            reference = got if engine == "torch-fp32" else reference
        if "error" not in row and reference is not None:
            # mean cosine over rows of the last axis (per embedding / per patch token)
            row["cosine_per_output"] = {n: float(cosine_rows(got[n], reference[n]).mean()) for n in reference.files}
            row["cosine"] = min(row["cosine_per_output"].values())
        yield row


def measure(spec: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or ["exit %d" % done.returncode])[-1]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    times, size = np.asarray(result.pop("times_ms")), result.pop("size_bytes")
    median = float(np.median(times))
    return {**result, "median_ms": median, "p90_ms": float(np.percentile(times, 90)),
            "items_per_s": spec["batch"] * 1e3 / median, "size_mib": size / 2**20}


def machine(threads: int) -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    field = lambda key: next((l.split(":", 1)[1].strip() for l in cpuinfo.splitlines() if l.startswith(key)), "")
    flags = set(field("flags").split())
    return {"cpu": field("model name") or "unknown", "cores": os.cpu_count(), "threads": threads,
            "AVX2": "avx2" in flags, "AVX512": "avx512f" in flags,
            "VNNI": bool(flags & {"avx512_vnni", "avx_vnni"}), "AMX": bool(flags & {"amx_tile", "amx_int8"}),
            **{pkg: version(pkg) for pkg in ("torch", "onnxruntime", "edgefm")}}


def write_markdown(path: Path, info: dict, rows: list, builds: list, args) -> None:
    flags = ", ".join(f"{k} {'yes' if info[k] else 'no'}" for k in ("AVX2", "AVX512", "VNNI", "AMX"))
    lines = [f"# edgefm CPU benchmark{' (quick, tiny presets)' if args.quick else ''}", "",
             f"- CPU: {info['cpu']}, {info['cores']} cores, {info['threads']} threads used; {flags}",
             f"- torch {info['torch']}, onnxruntime {info['onnxruntime']}, edgefm {info['edgefm']}",
             f"- {args.iters} timed runs after {args.warmup} warm-up; inputs: held-out calibration photos / prompts",
             "- latency x: median latency / torch eager median (below 1 is faster); cosine vs torch fp32 "
             "outputs (min over outputs); RSS: peak of a fresh process running only that row", "",
             "| model | component | engine | batch | median ms | p90 ms | items/s | latency x | "
             "peak RSS MiB | size MiB | cosine |", "|" + "---|" * 11]
    torch_ms = {(r["family"], r["component"], r["batch"]): r.get("median_ms")
                for r in rows if r["engine"] == "torch-fp32"}
    for r in rows:
        head = f"| {r['family']} {r['variant']} | {r['component']} | {r['engine']} | {r['batch']} |"
        if "error" in r:
            lines.append(f"{head} failed: {r['error']} |||||||")
            continue
        base = torch_ms.get((r["family"], r["component"], r["batch"]))
        ratio = f"{r['median_ms'] / base:.3g}" if base else "-"
        lines.append(f"{head} {r['median_ms']:.1f} | {r['p90_ms']:.1f} | {r['items_per_s']:.1f} | {ratio} | "
                     f"{r['peak_rss_mib']:.0f} | {r['size_mib']:.1f} | {r.get('cosine', float('nan')):.5f} |")
    lines += ["", "## Build (export, then compile with the accuracy-gate ladder)", "",
              "| model | export s | precision | compile s | component: scheme, gate value, passed |", "|---|---|---|---|---|"]
    for b in builds:
        for precision, c in b["compile"].items():
            comps = "; ".join(f"{n}: {v['scheme']}, {v['value']:.4f}, {'pass' if v['passed'] else 'BELOW GATE'}"
                              for n, v in c["components"].items())
            lines.append(f"| {b['family']} {b['variant']} | {b['export_s']:.0f} | {precision} | "
                         f"{c['seconds']:.0f} | {comps} |")
    path.write_text("\n".join(lines) + "\n")


def plot(path: Path, rows: list, batches: list) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(f"{r['family']}\n{r['component']}" for r in rows))
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4.5), squeeze=False)
    width = 0.8 / len(ENGINES)
    for ax, batch in zip(axes[0], batches):
        for i, engine in enumerate(ENGINES):
            ms = {f"{r['family']}\n{r['component']}": r.get("median_ms", 0) for r in rows
                  if r["engine"] == engine and r["batch"] == batch}
            bars = ax.bar(np.arange(len(groups)) + (i - (len(ENGINES) - 1) / 2) * width,
                          [ms.get(g, 0) for g in groups], width, label=engine)
            ax.bar_label(bars, fmt="%.3g", fontsize=6)
        ax.set_xticks(np.arange(len(groups)), groups, fontsize=8)
        ax.set_title(f"batch {batch}")
        ax.set_ylabel("median latency (ms)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out/cpu-real-size"))
    parser.add_argument("--iters", type=int, default=None, help="timed runs (default 30, --quick 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 5, --quick 1)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--quick", action="store_true", help="tiny presets and few runs: a smoke test")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: one measurement in a fresh process
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))
    import warnings

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from edgefm import registry

    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.onnx export chatter

    args.iters = args.iters or (3 if args.quick else 30)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)
    batches = [int(b) for b in args.batches.split(",")]
    models = QUICK if args.quick else REAL
    out, work = args.out, args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    builds, rows = [], []
    with Progress(TextColumn("{task.description}", style="cyan"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn()) as progress:
        runs = sum(len(registry.family(f).component_names) for f in models) * len(batches) * len(ENGINES)
        task = progress.add_task("", total=len(models) + runs)
        log = lambda message: progress.update(task, description=message[:90])
        for family, variant in models.items():
            exported = out / "artifacts" / family / "exported"
            builds.append(build(family, variant, exported.parent, log))
            progress.advance(task)
            for component in registry.family(family).component_names:
                for batch in batches:
                    base = {"family": family, "variant": variant, "component": component, "batch": batch,
                            "exported": str(exported), "threads": args.threads, "iters": args.iters,
                            "warmup": args.warmup}
                    for row in bench(base, work, log):
                        rows.append(row)
                        progress.advance(task)
        progress.update(task, description="done")
    info = machine(args.threads)
    (out / "results.json").write_text(json.dumps({"machine": info, "iters": args.iters, "warmup": args.warmup,
                                                  "builds": builds, "results": rows}, indent=2))
    write_markdown(out / "results.md", info, rows, builds, args)
    plot(out / "results.png", rows, batches)
    print(f"wrote {out / 'results.json'}, results.md, results.png")


if __name__ == "__main__":
    main()
