"""The main job, fully offline: tiny presets -> ONNX -> every target and precision, validated and timed."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

DEMO_MODELS = [("clip", "tiny"), ("dinov2", "tiny"), ("sam2", "tiny"), ("sd15", "tiny")]
DEMO_TARGETS = ["onnxruntime", "openvino"]
DEMO_PRECISIONS = ["fp32", "fp16", "int8", "int4"]
# Targets whose artifacts run elsewhere (Core ML on Apple systems, TensorRT engines on NVIDIA GPUs): the
# table shows their static checks and the accuracy gated here (docs/coreml-notes.md, docs/tensorrt-notes.md),
# and a latency only where they run. Two families keep it short.
DEMO_ELSEWHERE = {"coreml": ["fp16", "int8", "int4"], "tensorrt": ["fp16", "int8", "fp8"]}
DEMO_ELSEWHERE_FAMILIES = ("clip", "dinov2")


def run_demo(out: Path, log: Callable[[str], None] = print):
    from edgefm import registry
    from edgefm.bench import artifact_latencies
    from edgefm.compile_job import compile_artifact
    from edgefm.export_job import export

    rows, latencies = [], {}
    for family, variant in DEMO_MODELS:
        exported = out / family / "exported"
        rows.append((exported, export(family, exported, variant=variant, overwrite=True, log=log)))
        latencies.update(artifact_latencies(exported))
        for target in DEMO_TARGETS:
            for precision in DEMO_PRECISIONS:
                compiled = out / family / f"{target}-{precision}"
                # keep below-gate results so the table shows them; the command still exits non-zero
                rows.append((compiled, compile_artifact(exported, target, precision, compiled,
                                                        allow_below_gate=True, overwrite=True, log=log)))
                latencies.update(artifact_latencies(compiled))
        for target, precisions in DEMO_ELSEWHERE.items() if family in DEMO_ELSEWHERE_FAMILIES else ():
            for precision in precisions:
                compiled = out / family / f"{target}-{precision}"
                rows.append((compiled, compile_artifact(exported, target, precision, compiled,
                                                        allow_below_gate=True, overwrite=True, log=log)))
                if registry.target(target).cannot_run_here() is None:
                    latencies.update(artifact_latencies(compiled))
    return rows, latencies


def sam2_mask_grid(exported: Path, directories: list[Path], path: Path) -> Path:
    """One click on a sample photo through the SAM 2 export and each compiled SAM 2 artifact: a tile
    per artifact, its mask tinted blue and red where it differs from the export's mask.

    The random tiny weights give near-full masks at the users' threshold 0, so every tile is
    thresholded at the median of the export's logits instead: the picture then shows where each
    precision moves the mask boundary (the figure the compile step gates as *_mask_iou_median)."""
    import numpy as np
    from PIL import Image, ImageDraw

    import edgefm
    from edgefm.calibration.data import load
    from edgefm.calibration.sam2_pipeline import mask_iou
    from edgefm.run_job import overlay
    from edgefm.runtimes.pipelines.sam2 import bilinear_resize

    photo = next(p for p in load().all_images if p.name == "astronaut.png")
    image = Image.open(photo).convert("RGB").resize((256, 256))
    click = [[128.0, 100.0]]
    tiles, want, threshold = [], None, None
    for directory in [exported, *directories]:
        artifact = edgefm.load(directory)
        artifact.set_image(image)
        logits = bilinear_resize(artifact.predict(click, [1], multimask=False).logits, 256, 256)[0]
        if want is None:
            threshold = np.median(logits)
            want = logits > threshold
        mask = logits > threshold
        tile = np.asarray(overlay(image, [mask], click, [1])).copy()
        tile[mask != want] = (255, 40, 40)
        tile = Image.fromarray(tile)
        draw = ImageDraw.Draw(tile)
        draw.rectangle([0, 0, 255, 16], fill=(0, 0, 0))
        draw.text((4, 3), f"{directory.name}  IoU {mask_iou(mask, want):.3f}", fill=(255, 255, 0))
        tiles.append(tile)
    return _grid(tiles, path)


def sd_image_grid(exported: Path, directories: list[Path], path: Path, prompt: str = "a photo of an astronaut",
                  seed: int = 0) -> Path:
    """One prompt and seed through the Stable Diffusion export and each compiled artifact: a tile per
    artifact with its PSNR against the export's image (random tiny weights draw abstract images)."""
    from PIL import Image, ImageDraw

    import edgefm
    from edgefm.compare import psnr
    from edgefm.runtimes.diffusion import to_pil

    tiles, want = [], None
    for directory in [exported, *directories]:
        image = edgefm.load(directory).generate(prompt, seed=seed)
        want = image if want is None else want
        tile = to_pil(image)[0].resize((256, 256), Image.Resampling.NEAREST)
        draw = ImageDraw.Draw(tile)
        draw.rectangle([0, 0, 255, 16], fill=(0, 0, 0))
        draw.text((4, 3), f"{directory.name}  PSNR {min(psnr(image, want), 99.9):.1f} dB", fill=(255, 255, 0))
        tiles.append(tile)
    return _grid(tiles, path)


def _grid(tiles: list, path: Path, columns: int = 3) -> Path:
    from PIL import Image

    grid = Image.new("RGB", (256 * columns, 256 * -(-len(tiles) // columns)))
    for index, tile in enumerate(tiles):
        grid.paste(tile, (256 * (index % columns), 256 * (index // columns)))
    grid.save(path)
    return path
