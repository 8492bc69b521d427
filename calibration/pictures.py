"""Pictures of what each precision changes in a task's output (`edgefm demo`): masks and generated images,
one tile per artifact beside the fp32 export's. They live with the calibration data because they draw on
its sample photos."""
from __future__ import annotations

from pathlib import Path


def mask_grid(exported: Path, directories: list[Path], path: Path) -> Path:
    """One click on a sample photo through a segmentation export and each artifact compiled from it: a tile
    per artifact, its mask tinted blue and red where it differs from the export's mask.

    The random tiny weights give near-full masks at the users' threshold 0, so every tile is
    thresholded at the median of the export's logits instead: the picture then shows where each
    precision moves the mask boundary (the figure the compile step gates as *_mask_iou_median)."""
    import numpy as np
    from PIL import Image, ImageDraw

    import edgefm
    from edgefm.calibration.data import load
    from edgefm.contract.compare import mask_iou
    from edgefm.runtimes.pipelines.pictures import overlay
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


def image_grid(exported: Path, directories: list[Path], path: Path, prompt: str = "a photo of an astronaut",
               seed: int = 0) -> Path:
    """One prompt and seed through a text-to-image export and each artifact compiled from it: a tile per
    artifact with its PSNR against the export's image (random tiny weights draw abstract images)."""
    from PIL import Image, ImageDraw

    import edgefm
    from edgefm.contract.compare import psnr
    from edgefm.runtimes.pipelines.diffusion import to_pil

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
