"""The image files edgefm reads (calibration folders, `edgefm run` inputs, video frame folders): one list."""
from __future__ import annotations

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
