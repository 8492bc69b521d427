"""Image preprocessing in numpy + Pillow, driven by the manifest's `task.preprocess` block.

Reimplemented (not imported from transformers) because the runtime must not need torch or
transformers; tests check it against the transformers image processors on the same photos.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from edgefm.contract.errors import FeedError

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
             "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}
# Pillow's convert("RGB") clips these at 255 (a 16-bit photo turns near-white); they are scaled to 8 bits instead.
# "I" is 32-bit, but older Pillow versions load 16-bit PNGs as "I", so it is read as 16-bit too (0..65535).
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_FIX = "pass a path, a PIL image or an HxW / HxWx3 / HxWx4 uint8 (or uint16) array"


def as_pil(image) -> Image.Image:
    """A path, a PIL image (any mode), or an HxW / HxWx3 / HxWx4 uint8 or uint16 array -> an RGB image.

    Transparency is composited onto white, as transformers' convert_to_rgb does.
    """
    if isinstance(image, (str, Path)):
        try:
            with Image.open(image) as opened:
                opened.load()
        except (OSError, ValueError, Image.DecompressionBombError) as exc:  # OSError covers unknown formats too
            raise FeedError(f"cannot read image {image}: {exc}") from None
        return _to_rgb(opened, f"image {image}")
    if isinstance(image, Image.Image):
        return _to_rgb(image, "PIL image")
    if isinstance(image, np.ndarray):
        return _to_rgb(_from_array(image), "image array")
    raise FeedError(f"unsupported image type {type(image).__name__}; {_FIX}")


def as_image_list(images) -> list:
    """Images as a list; one image (a path, PIL image or HxW / HxWxC array) is a list of one.

    Iterating one image would be silently wrong: a path by character, an array by row.
    An N x H x W x C array is N images.
    """
    if isinstance(images, (str, Path, bytes, Image.Image)) or (isinstance(images, np.ndarray) and images.ndim < 4):
        images = [images]
    try:
        images = list(images)
    except TypeError:
        raise FeedError(f"unsupported image type {type(images).__name__}; {_FIX}, or a list of them") from None
    if not images:
        raise FeedError("no images given; pass a list of one or more images")
    return images


def _from_array(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)) or 0 in array.shape:
        raise FeedError(f"an image array must be HxW, HxWx3 or HxWx4, got shape {list(array.shape)}")
    if array.dtype.kind == "f":  # [0, 1] or [0, 255]? guessing would be silently wrong for one of them
        raise FeedError(f"image arrays must be uint8 (or uint16), got {array.dtype}; convert it, e.g. "
                        "(x * 255).round().astype(np.uint8) for values in [0, 1]")
    if array.dtype.kind != "u" or array.dtype.itemsize > 2:
        raise FeedError(f"image arrays must be uint8 (or uint16), got {array.dtype}")
    if array.dtype.itemsize == 2:
        array = _to_8bit(array)
    return Image.fromarray(np.ascontiguousarray(array))  # uint8: L, RGB or RGBA by shape


def _to_8bit(values: np.ndarray) -> np.ndarray:
    """16-bit values -> 8-bit: v / 257 maps 0..65535 onto 0..255 exactly (an 8-bit v saved as 16-bit is v * 257)."""
    return np.round(values.astype(np.float64) / 257).astype(np.uint8)


def _to_rgb(image: Image.Image, what: str) -> Image.Image:
    if 0 in image.size:
        raise FeedError(f"{what} has no pixels ({image.width}x{image.height})")
    if image.mode in _SIXTEEN_BIT:
        image = _sixteen_to_8bit(image, what)
    elif image.mode == "F":
        image = _float_to_8bit(image, what)
    elif image.mode == "LAB":
        image = _lab_to_rgb(image)
    try:
        if image.mode == "La":  # premultiplied alpha converts only to LA
            image = image.convert("LA")
        if "A" in image.getbands() or "a" in image.getbands() or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")
            return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
        return image.convert("RGB")
    except ValueError as exc:
        raise FeedError(f"cannot convert {what} (mode {image.mode}) to RGB: {exc}; convert it to RGB first") from None


def _sixteen_to_8bit(image: Image.Image, what: str) -> Image.Image:
    values = np.asarray(image)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise FeedError(f"{what} (mode {image.mode}) holds {values.min()}..{values.max()}; a mode I image is read "
                        "as 16-bit (0..65535): scale it to that range or convert it to 8-bit ('L' / 'RGB') first")
    gray = Image.fromarray(_to_8bit(values))
    transparent = image.info.get("transparency")  # a 16-bit PNG's tRNS: one grey value
    if isinstance(transparent, int):
        gray.putalpha(Image.fromarray(np.where(values == transparent, 0, 255).astype(np.uint8)))
    return gray


def _float_to_8bit(image: Image.Image, what: str) -> Image.Image:
    values = np.asarray(image, np.float64)
    if not np.isfinite(values).all():
        raise FeedError(f"{what} (mode F) holds NaN or infinite values; it must hold finite values in [0, 1]")
    if values.min() < 0 or values.max() > 1:
        raise FeedError(f"{what} (mode F) must hold values in [0, 1], got {values.min():g}..{values.max():g}; "
                        "scale it to [0, 1] or convert it to 8-bit ('L') first")
    return Image.fromarray(np.round(values * 255).astype(np.uint8))


def _lab_to_rgb(image: Image.Image) -> Image.Image:
    # CIELAB needs colour management: convert("RGB") is only right in some Pillow versions; ImageCms is in all
    # Pillow wheels (LittleCMS), and a build without it refuses rather than guessing.
    try:
        from PIL import ImageCms
    except ImportError as exc:
        raise FeedError(f"a LAB image needs Pillow's ImageCms (LittleCMS), unavailable here ({exc}); convert it "
                        "to RGB first") from None
    lab, srgb = ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB")
    return ImageCms.applyTransform(image, ImageCms.buildTransform(lab, srgb, "LAB", "RGB"))


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
    for image in as_image_list(images):
        pil = _resize_shortest(as_pil(image), shortest, _RESAMPLE[config.get("resample", "bicubic")])
        array = np.asarray(_center_crop(pil, crop_h, crop_w), np.float32).transpose(2, 0, 1)
        batch.append((array * np.float32(config.get("rescale", 1 / 255)) - mean) / std)
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
