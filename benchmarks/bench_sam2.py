"""SAM 2.1 at real size (random weights from the real config): edgefm vs PyTorch eager, side by side.

Image encoder latency, mask decoder latency per prompt, and end-to-end video fps (encoder + memory
attention + decoder + memory encoder per frame) over a clip of frames cut from a sample photo, for
torch eager (and bf16 autocast where the CPU has bf16) and for edgefm artifacts on ONNX Runtime and OpenVINO
in every precision, with each
artifact's size and the end-to-end mask IoU against the fp32 export that its compile step measured
(and which components it kept in fp32 to pass). One process, engines in turn.

    python benchmarks/bench_sam2.py [--variant hiera-tiny] [--engines onnxruntime-fp32,openvino-int8,...]
                                    [--out DIR] [--frames N] [--iters N] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from bench_common import bar_panels, median_ms

ENGINES = [(target, precision) for target in ("onnxruntime", "openvino") for precision in ("fp32", "fp16", "int8", "int4")]


def clip_frames(count: int, size: tuple[int, int]) -> list[np.ndarray]:
    """A window sliding across a real photo: the object moves a little each frame."""
    from PIL import Image

    from edgefm.calibration.data import load

    photo = np.asarray(Image.open(load().all_images[0]).convert("RGB").resize((size[1] + 8 * count, size[0] + 4 * count)))
    return [photo[4 * t:4 * t + size[0], 8 * t:8 * t + size[1]] for t in range(count)]


def decoder_feeds(artifact, frame, point) -> dict:
    """The mask decoder's inputs for one click, from the fp32 encoder: the same feeds for every engine."""
    from edgefm.runtimes.pipelines.sam2 import encode_prompt

    features, hw = artifact.encode(frame)
    coords, codes = encode_prompt([point], [1], None, False, hw, artifact.task["image_size"])
    low = artifact.task["low_res_size"]
    return {"image_embed": features["image_embed"], "feat_s0": features["feat_s0"], "feat_s1": features["feat_s1"],
            "point_coords": coords, "point_labels": codes, "mask_input": np.zeros((1, 1, low, low), np.float32),
            "has_mask_input": np.zeros(1, np.float32)}


def bench_edgefm(directory: Path, frames: list, point: list, iters: int, threads: int) -> dict:
    """Encoder and decoder: the graphs alone on the same inputs as torch; video: the whole tracker loop."""
    import edgefm
    from edgefm.runtimes.pipelines.sam2 import pixels

    artifact = edgefm.load(directory, threads=threads)
    pixel_values = pixels(frames[0], artifact.task["preprocess"])[0]
    encoder = median_ms(lambda: artifact["image_encoder"].run({"pixel_values": pixel_values}), iters)
    feeds = decoder_feeds(artifact, frames[0], point)
    decoder = median_ms(lambda: artifact["mask_decoder"].run(feeds), iters)
    tracker = artifact.video_tracker(num_frames=len(frames))
    start = time.perf_counter()
    for index, frame in enumerate(frames):
        tracker.add_frame(frame)
        if index == 0:
            tracker.add_prompt(1, points=[point], labels=[1])
        tracker.track()
    return {"encoder_ms": encoder, "decoder_ms": decoder, "video_fps": len(frames) / (time.perf_counter() - start)}


def bench_torch(variant: str, exported: Path, frames: list, point: list, iters: int, threads: int,
                bf16: bool = False) -> dict:
    """The same weights (same seed) in transformers: the export's torch wrappers, and Sam2VideoModel's own loop;
    with `bf16`, all of it under bf16 autocast (PyTorch's own bf16 path on CPUs with AVX512-BF16 / AMX)."""
    import torch
    import transformers

    import edgefm
    from edgefm.contract import registry
    from edgefm.exporters.base import ExportOptions
    from edgefm.runtimes.pipelines.sam2 import pixels

    torch.set_num_threads(threads)
    family = registry.family("sam2")
    loaded = family.load(family.resolve(None, variant, random_weights=True), ExportOptions())
    modules = {c.name: c.module for c in family.components(loaded, ExportOptions())}
    artifact = edgefm.load(exported)
    task = artifact.task
    pixel_values = torch.from_numpy(pixels(frames[0], task["preprocess"])[0])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        encoder = median_ms(lambda: modules["image_encoder"](pixel_values), iters)
        feeds = {k: torch.from_numpy(v) for k, v in decoder_feeds(artifact, frames[0], point).items()}
        decoder = median_ms(lambda: modules["mask_decoder"](**feeds), iters)
        height, width = frames[0].shape[:2]
        start = time.perf_counter()  # the processor's work (resize, normalise) is inside the timing, as for edgefm
        video = torch.from_numpy(np.concatenate([pixels(f, task["preprocess"])[0] for f in frames]))
        session = transformers.Sam2VideoInferenceSession(video=video, video_height=height, video_width=width,
                                                         dtype=torch.float32)
        size = task["image_size"]
        session.add_point_inputs(session.obj_id_to_idx(1), 0, {
            "point_coords": torch.tensor([[point]], dtype=torch.float32)[None] * torch.tensor([size / width, size / height]),
            "point_labels": torch.tensor([[[1]]], dtype=torch.int32)})
        session.obj_with_new_inputs = [1]
        loaded.model(inference_session=session, frame_idx=0)
        for _ in loaded.model.propagate_in_video_iterator(session, start_frame_idx=0):
            pass
        fps = len(frames) / (time.perf_counter() - start)
    return {"encoder_ms": encoder, "decoder_ms": decoder, "video_fps": fps}


def write_report(out: Path, report: dict) -> None:
    from edgefm.bench.hardware import summary_lines

    rows = report["rows"]
    torch_row = next(r for r in rows if r["engine"] == "torch-eager")
    lines = [f"# SAM 2.1 {report['variant']}: edgefm vs PyTorch eager", "", *summary_lines(report["hardware"]),
             f"- encoder and decoder: the graph (edgefm) or the same torch wrapper (torch) alone on identical "
             f"inputs, median of {report['iters']} runs after a warm-up; video: {report['frames']} frames of "
             f"{report['frame_size'][1]}x{report['frame_size'][0]} with one point on frame 0, wall time of the whole "
             "loop including preprocessing (edgefm's VideoTracker vs transformers' Sam2VideoModel propagation)", "",
             "- end-to-end IoU: mean mask IoU vs the fp32 export measured by the compile step (held-out photos and "
             "clips; image / video, masks at logit 0 and at the fp32 logits' median), and the components it kept "
             "in fp32 to pass its gates", "",
             "| engine | encoder ms | decoder ms / prompt | video fps | encoder speed-up vs torch | "
             "video speed-up vs torch | size MiB | image IoU (0 / median) | video IoU (0 / median) | kept fp32 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        iou = r.get("end_to_end")
        accuracy = (f"{iou['image_mask_iou']:.4f} / {iou['image_mask_iou_median']:.4f} | "
                    f"{iou['video_mask_iou']:.4f} / {iou['video_mask_iou_median']:.4f}") if iou else "- | -"
        size = f"{r['size_mib']:.1f}" if "size_mib" in r else "-"
        lines.append(f"| {r['engine']} | {r['encoder_ms']:.1f} | {r['decoder_ms']:.2f} | {r['video_fps']:.3f} | "
                     f"{torch_row['encoder_ms'] / r['encoder_ms']:.2f}x | {r['video_fps'] / torch_row['video_fps']:.2f}x | "
                     f"{size} | {accuracy} | {', '.join(r.get('kept_fp32', [])) or '-'} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")

    bar_panels(rows, [("encoder_ms", "image encoder ms (lower is better)"),
                      ("decoder_ms", "decoder ms per prompt (lower is better)"), ("video_fps", "video fps (higher is better)")],
               f"SAM 2.1 {report['variant']} (random weights), {report['hardware']['cpu']}", out / "results.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="hiera-tiny")
    parser.add_argument("--out", type=Path, default=Path("bench-out/sam2"))
    parser.add_argument("--engines", default=",".join(f"{t}-{p}" for t, p in ENGINES),
                        help="target-precision pairs to compile and time (default: all)")
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--quick", action="store_true", help="the tiny preset (checks the script, not speed)")
    args = parser.parse_args()
    from edgefm.bench import hardware
    from edgefm.jobs.compile import compile_artifact
    from edgefm.jobs.export import export

    variant = "tiny" if args.quick else args.variant
    out = args.out.resolve()
    export("sam2", out / "exported", variant=variant, random_weights=not args.quick, overwrite=True)
    frames, point = clip_frames(args.frames, (480, 640)), [320, 240]
    info = hardware.describe(args.threads, ["onnxruntime", "openvino"])
    rows = [{"engine": "torch-eager", **bench_torch(variant, out / "exported", frames, point, args.iters, args.threads)}]
    if hardware.has_bf16(info["isa"]):  # elsewhere torch emulates bf16, slower than fp32: not a peer anyone runs
        rows.append({"engine": "torch-bf16-autocast", **bench_torch(variant, out / "exported", frames, point,
                                                                      args.iters, args.threads, bf16=True)})
    print(rows, flush=True)
    for target, precision in (engine.rsplit("-", 1) for engine in args.engines.split(",")):
        directory = out / f"{target}-{precision}"
        manifest = compile_artifact(out / "exported", target, precision, directory, overwrite=True,
                                    allow_below_gate=True)
        pipeline = manifest.pipeline_validation
        passed = pipeline["passed"] and all(e.validation["passed"] for e in manifest.components.values())
        rows.append({"engine": f"edgefm-{target}-{precision}" + ("" if passed else " (below gate)"),
                     "size_mib": sum(e.size_mib(directory) for e in manifest.components.values()),
                     "end_to_end": {c["metric"]: c["value"] for c in pipeline["checks"]},
                     "kept_fp32": pipeline["kept_fp32"],
                     **bench_edgefm(directory, frames, point, args.iters, args.threads)})
        print(rows[-1], flush=True)
    report = {"variant": variant, "frames": args.frames, "frame_size": [480, 640], "iters": args.iters,
              "hardware": info, "rows": rows}
    write_report(out, report)
    print(f"wrote {out / 'results.md'}, results.json, results.png")


if __name__ == "__main__":
    main()
