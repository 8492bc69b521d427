"""Stable Diffusion 1.5 at real size (random weights from the real config): edgefm vs PyTorch eager, side by side.

Per engine: one denoising step (the UNet at batch 2, classifier-free guidance, 512x512 px = 64x64
latents), one VAE decode, the peak resident memory of a fresh process that loads the graph and runs
it, the artifact's size, and what its compile step measured: UNet cosine vs the fp32 export and the
images' PSNR vs the fp32 export's pipeline (with the components kept in fp32 to pass). Torch runs
XX
`--quick` uses the tiny preset and also times the whole text-to-image loop against diffusers'
StableDiffusionPipeline.

    python benchmarks/bench_sd.py [--engines onnxruntime-fp32,openvino-int8,...] [--out DIR] [--iters N] [--quick]
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
from bench_common import bar_panels, median_ms

REAL_ENGINES = "onnxruntime-fp32,onnxruntime-int8,openvino-fp32,openvino-fp16,openvino-int8"
ALL_ENGINES = ",".join(f"{t}-{p}" for t in ("onnxruntime", "openvino") for p in ("fp32", "fp16", "int8", "int4"))
PROMPT, STEPS = "a photo of an astronaut riding a horse", 20


def torch_worker(variant: str, iters: int, threads: int, bf16: bool) -> dict:
    """Runs in its own process (peak memory is its own): the export's torch modules, same seed, same shapes; with
    `bf16`, under bf16 autocast (PyTorch's own bf16 path on CPUs with AVX512-BF16 / AMX)."""
    import torch

    from edgefm.bench.timing import peak_rss_mib
    from edgefm.contract import registry
    from edgefm.exporters.base import ExportOptions

    torch.set_num_threads(threads)
    family = registry.family("sd15")
    loaded = family.load(family.resolve(None, variant, random_weights=variant != "tiny"), ExportOptions())
    unet, vae = loaded.model["unet"], loaded.model["vae"]
    size = unet.config.sample_size
    rng = np.random.default_rng(0)
    sample = torch.from_numpy(rng.standard_normal((2, 4, size, size), dtype=np.float32))
    timestep = torch.full((2,), 500.0)
    text = torch.from_numpy(rng.standard_normal((2, 77, unet.config.cross_attention_dim), dtype=np.float32))
    latent = sample[:1] / vae.config.scaling_factor
    row = {"engine": "torch-bf16-autocast" if bf16 else "torch-eager"}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        row["step_ms"] = median_ms(lambda: unet(sample, timestep, text), iters)
        row["decode_ms"] = median_ms(lambda: vae.decode(latent), iters)
    row["peak_rss_mib"] = peak_rss_mib()
    return row


def torch_text_to_image_s(variant: str, threads: int) -> float:
    """The diffusers pipeline end to end (tiny only): same weights, scheduler, steps and guidance as edgefm's loop."""
    import diffusers
    import torch

    from edgefm.contract import registry
    from edgefm.exporters.base import ExportOptions

    torch.set_num_threads(threads)
    family = registry.family("sd15")
    loaded = family.load(family.resolve(None, variant), ExportOptions())
    pipeline = diffusers.StableDiffusionPipeline(**family._pipeline_parts(loaded.model, loaded.processor))
    pipeline.set_progress_bar_config(disable=True)
    run = lambda: pipeline(PROMPT, num_inference_steps=STEPS, output_type="np")  # noqa: E731
    run()
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def in_subprocess(*args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"torch worker failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_engine(directory: Path, iters: int, threads: int, quick: bool) -> dict:
    """Step and decode timed by `edgefm bench`'s worker (a fresh process each, peak memory included)."""
    import edgefm
    from edgefm.bench.runner import in_fresh_process
    from edgefm.contract.manifest import Manifest

    def job(component: str, batch: int) -> dict:
        return in_fresh_process(dict(directory=str(directory), component=component, batch=batch, warmup=1,
                                     iters=iters, threads=threads))

    step, decode = job("unet", 2), job("vae_decoder", 1)
    manifest = Manifest.load(directory)
    pipeline = manifest.pipeline_validation
    row = {"step_ms": step["median_ms"], "decode_ms": decode["median_ms"],
           "peak_rss_mib": max(step["peak_rss_mib"], decode["peak_rss_mib"]),
           "size_mib": sum(e.size_mib(directory) for e in manifest.components.values()),
           "unet_size_mib": manifest.components["unet"].size_mib(directory),
           "unet_cosine": manifest.components["unet"].validation["checks"][0]["value"],
           "unet_precision": manifest.components["unet"].precision,
           "psnr_db": pipeline["checks"][0]["value"], "kept_fp32": pipeline["kept_fp32"]}
    if quick:
        artifact = edgefm.load(directory, threads=threads)
        artifact.generate(PROMPT, steps=STEPS)
        start = time.perf_counter()
        artifact.generate(PROMPT, steps=STEPS)
        row["text_to_image_s"] = time.perf_counter() - start
    return row


# At real size on a CPU every UNet call takes seconds: the compile's capture and image check run fewer
# prompts and steps (calibration/diffusion.py's constants; recorded in the report).
REAL_CHECK = {"CALIB_PROMPTS": 2, "CHECK_PROMPTS": 1, "CHECK_STEPS": 4}
# Export and every compile run as the `edgefm` command in a process of their own, which reports its peak
# RSS: the memory is then each job's own (a process that exported a 3.4 GB UNet keeps a fragmented heap).
CHILD = """
import atexit, json, os, sys
from edgefm.bench.timing import peak_rss_mib
from edgefm.calibration import diffusion
for name, value in json.loads(os.environ["EDGEFM_BENCH_CHECK"]).items():
    setattr(diffusion, name, value)
atexit.register(lambda: print("PEAK_RSS_MIB", peak_rss_mib(), file=sys.stderr))
from edgefm.cli import main
sys.argv = ["edgefm", *sys.argv[1:]]
main()
"""


def edgefm_job(check: dict, *args: str) -> dict:
    """Run `edgefm ARGS` in a fresh process: {"seconds", "peak_rss_mib"} or {"error"}."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True,
                          env={**os.environ, "EDGEFM_BENCH_CHECK": json.dumps(check)})
    peak = [float(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("PEAK_RSS_MIB")]
    written = (Path(args[args.index("-o") + 1]) / "manifest.json").is_file()
    if not written or not peak:
        why = "killed (out of memory?)" if done.returncode < 0 else done.stderr.strip().splitlines()[-1:]
        return {"error": f"edgefm {' '.join(args[:2])} exit {done.returncode}: {why}"}
    return {"seconds": time.perf_counter() - start, "peak_rss_mib": peak[-1]}


def write_report(out: Path, report: dict) -> None:
    from edgefm.bench.hardware import summary_lines

    rows = report["rows"]
    torch_row = rows[0]
    quick = "text_to_image_s" in torch_row
    lines = [f"# Stable Diffusion 1.5 {report['variant']}: edgefm vs PyTorch eager", "", *summary_lines(report["hardware"]),
             f"- step: the UNet at batch 2 (guidance) on {report['latent']}x{report['latent']} latents; decode: the VAE "
             f"decoder at batch 1; median of {report['iters']} runs after a warm-up, each engine in a fresh process "
             "(peak RSS is that process's high-water mark)",
             f"- export (all four graphs, checked against torch): {report['export']['seconds']:.0f} s, peak RSS "
             f"{report['export']['peak_rss_mib']:.0f} MiB, UNet files {', '.join(report['export']['unet_files'])}; "
             "compile: the `edgefm compile` process, end-to-end check included",
             "- UNet cosine: the compile step's held-out UNet feeds vs the fp32 export; PSNR: the compiled pipeline's "
             f"images vs the fp32 export's (same prompts, seeds, steps); compile check settings: {report['check']}", ""]
    head = ("| engine | step ms | step speed-up vs torch | decode ms | peak RSS MiB | size MiB | UNet | UNet cosine "
            "| PSNR dB | kept fp32 | compile s | compile peak RSS MiB |")
    if quick:
        head += f" text to image s ({STEPS} steps) |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        cells = [r["engine"], f"{r['step_ms']:.1f}", f"{torch_row['step_ms'] / r['step_ms']:.2f}x", f"{r['decode_ms']:.1f}",
                 f"{r['peak_rss_mib']:.0f}", f"{r['size_mib']:.1f}" if "size_mib" in r else "-",
                 r.get("unet_precision", "fp32"), f"{r['unet_cosine']:.5f}" if "unet_cosine" in r else "-",
                 f"{r['psnr_db']:.1f}" if "psnr_db" in r else "-", ", ".join(r.get("kept_fp32", [])) or "-",
                 f"{r['compile_s']:.0f}" if "compile_s" in r else "-",
                 f"{r['compile_peak_rss_mib']:.0f}" if "compile_peak_rss_mib" in r else "-"]
        if quick:
            cells.append(f"{r['text_to_image_s']:.2f}" if "text_to_image_s" in r else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [f"- failed: {failure}" for failure in report["failed"]]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")

    bar_panels(rows, [("step_ms", "UNet step ms, batch 2 (lower is better)"),
                      ("decode_ms", "VAE decode ms (lower is better)"), ("peak_rss_mib", "peak RSS MiB (lower is better)")],
               f"Stable Diffusion 1.5 {report['variant']} (random weights), {report['hardware']['cpu']}",
               out / "results.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench-out/sd15"))
    parser.add_argument("--engines", help=f"target-precision pairs (default: {REAL_ENGINES}; --quick: all)")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--quick", action="store_true", help="the tiny preset (checks the script, not speed)")
    parser.add_argument("--reuse-export", action="store_true", help="keep OUT/exported from an earlier run")
    args = parser.parse_args()
    from edgefm.bench import hardware
    from edgefm.calibration import diffusion
    from edgefm.contract.manifest import Manifest

    variant = "tiny" if args.quick else "v1-5"
    check = {} if args.quick else REAL_CHECK
    out = args.out.resolve()
    if args.reuse_export and (out / "exported" / "manifest.json").is_file():
        exported = json.loads((out / "results.json").read_text())["export"]
    else:
        exported = edgefm_job(check, "export", "sd15", "--variant", variant,
                              *([] if args.quick else ["--random-weights"]), "-o", str(out / "exported"), "--overwrite")
    if "error" in exported:
        raise SystemExit(exported["error"])
    exported["unet_files"] = sorted(Manifest.load(out / "exported").components["unet"].files())
    print(f"export: {exported}", flush=True)
    info = hardware.describe(args.threads, ["onnxruntime", "openvino"])
    rows = [in_subprocess(variant, str(args.iters), str(args.threads), "fp32")]
    if args.quick:
        rows[0]["text_to_image_s"] = torch_text_to_image_s(variant, args.threads)
    if hardware.has_bf16(info["isa"]):  # elsewhere torch emulates bf16, slower than fp32: not a peer anyone runs
        rows.append(in_subprocess(variant, str(args.iters), str(args.threads), "bf16"))
    print(rows, flush=True)
    settings = {name: getattr(diffusion, name) for name in ("CALIB_PROMPTS", "CHECK_PROMPTS", "CHECK_STEPS",
                                                             "CAPTURE_STEPS")}
    report = {"variant": variant, "latent": 8 if args.quick else 64, "iters": args.iters, "check": {**settings, **check},
              "export": exported, "hardware": info,
              "rows": rows, "failed": []}
    for engine in (args.engines or (ALL_ENGINES if args.quick else REAL_ENGINES)).split(","):
        target, precision = engine.rsplit("-", 1)
        directory = out / engine
        job = edgefm_job(check, "compile", str(out / "exported"), "--target", target, "--precision", precision,
                         "--allow-below-gate", "-o", str(directory), "--overwrite")
        if "error" in job:
            report["failed"].append(job["error"])
        else:
            rows.append({"engine": f"edgefm-{engine}", "compile_s": job["seconds"],
                         "compile_peak_rss_mib": job["peak_rss_mib"],
                         **bench_engine(directory, args.iters, args.threads, args.quick)})
        print(rows[-1] if "error" not in job else job, flush=True)
        write_report(out, report)  # after every engine: a long run that dies late keeps what it measured
    print(f"wrote {out / 'results.md'}, results.json, results.png")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        variant, iters, threads, compute = sys.argv[2:6]
        print(json.dumps(torch_worker(variant, int(iters), int(threads), compute == "bf16")))
    else:
        main()
