"""Pictures `edgefm run` tasks draw for people: mask overlays with their prompts, and patch features as
colours beside the image they came from."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

COLORS = np.array([[30, 144, 255], [255, 99, 71], [50, 205, 50], [238, 130, 238], [255, 215, 0]], np.float32)


def overlay(image: Image.Image, masks: list[np.ndarray], points=(), labels=(), box=None) -> Image.Image:
    """The image with each mask tinted in its own colour (50% blend) and the prompt drawn on top."""
    pixels = np.asarray(image.convert("RGB"), np.float32)
    for index, mask in enumerate(masks):
        color = COLORS[index % len(COLORS)]
        pixels[mask] = 0.5 * pixels[mask] + 0.5 * color
    out = Image.fromarray(pixels.round().astype(np.uint8))
    draw = ImageDraw.Draw(out)
    radius = max(3, min(out.size) // 100)
    for (x, y), label in zip(points, labels, strict=True):
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=(0, 255, 0) if label else (255, 0, 0),
                     outline=(255, 255, 255))
    if box is not None:
        draw.rectangle(list(box), outline=(255, 255, 0), width=max(2, radius // 2))
    return out


def pca_rgb(features: np.ndarray) -> tuple[np.ndarray, float]:
    """A [h, w, C] feature grid as [h, w, 3] uint8: its projections on its first three principal components,
    each scaled to 0..255, and the share of the variance those components explain. Similar features get
    similar colours, which is how people look at what a backbone sees."""
    flat = features.reshape(-1, features.shape[-1]).astype(np.float64)
    centered = flat - flat.mean(0)
    _, singular, components = np.linalg.svd(centered, full_matrices=False)
    projected = np.zeros((len(flat), 3))
    projected[:, :min(3, len(components))] = centered @ components[:3].T
    low, high = projected.min(0), projected.max(0)
    scaled = (projected - low) / np.where(high > low, high - low, 1.0)
    variance = float((singular ** 2).sum())
    explained = float((singular[:3] ** 2).sum() / variance) if variance else 0.0
    return (scaled * 255).round().astype(np.uint8).reshape(*features.shape[:-1], 3), explained


def beside(image: Image.Image, grid: np.ndarray) -> Image.Image:
    """The image and a [h, w, 3] uint8 grid stretched to its size (each cell a block), side by side."""
    cells = Image.fromarray(grid).resize(image.size, Image.Resampling.NEAREST)
    picture = Image.new("RGB", (2 * image.width, image.height))
    picture.paste(image.convert("RGB"), (0, 0))
    picture.paste(cells, (image.width, 0))
    return picture
