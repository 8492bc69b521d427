"""Image preprocessing in numpy + Pillow, driven by the manifest's `task.preprocess` block.

Reimplemented (not imported from transformers) because the runtime must not need torch or
transformers; tests check it against the transformers image processors on the same photos.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from edgefm.errors import FeedError

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
             "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


def as_pil(image) -> Image.Image:
    """Accept a path, a PIL image, or an HxWx3 uint8 array."""
    if isinstance(image, (str, Path)):
        try:
            with Image.open(image) as opened:
                return opened.convert("RGB")
        except OSError as exc:
            raise FeedError(f"cannot read image {image}: {exc}") from None
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
            raise FeedError(f"an image array must be HxW or HxWx3 uint8, got {image.dtype}{list(image.shape)}")
        return Image.fromarray(image).convert("RGB")
    raise FeedError(f"unsupported image type {type(image).__name__}; pass a path, a PIL image or a uint8 array")


def preprocess(images, config: dict, size: tuple[int, int] | None = None) -> np.ndarray:
    """Resize the shortest edge, centre-crop, rescale and normalise -> float32 [N, 3, H, W].

    `size` overrides the crop (height, width) for artifacts exported with dynamic resolution; the
    resize then scales with it, keeping the model's resize/crop ratio.
    """
    crop_h, crop_w = config["crop"]
    shortest = config["resize_shortest_edge"]
    if size is not None:
        shortest = round(shortest * max(size) / max(crop_h, crop_w))
        crop_h, crop_w = size
    mean = np.asarray(config["mean"], np.float32).reshape(3, 1, 1)
    std = np.asarray(config["std"], np.float32).reshape(3, 1, 1)
    batch = []
    for image in images:
        pil = _resize_shortest(as_pil(image), shortest, _RESAMPLE[config.get("resample", "bicubic")])
        array = np.asarray(_center_crop(pil, crop_h, crop_w), np.float32).transpose(2, 0, 1)
        batch.append((array * np.float32(config.get("rescale", 1 / 255)) - mean) / std)
    if not batch:
        raise FeedError("no images given")
    return np.stack(batch).astype(np.float32)


def _resize_shortest(image: Image.Image, shortest: int, resample) -> Image.Image:
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_short, new_long = shortest, int(shortest * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    return image.resize((new_w, new_h), resample=resample)


def _center_crop(image: Image.Image, crop_h: int, crop_w: int) -> Image.Image:
    width, height = image.size
    if width < crop_w or height < crop_h:  # pad like transformers does for small images
        canvas = Image.new("RGB", (max(width, crop_w), max(height, crop_h)))
        canvas.paste(image, ((canvas.width - width) // 2, (canvas.height - height) // 2))
        image, width, height = canvas, canvas.width, canvas.height
    top, left = int((height - crop_h) / 2.0), int((width - crop_w) / 2.0)
    return image.crop((left, top, left + crop_w, top + crop_h))
