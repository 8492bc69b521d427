"""DINOv2 on an artifact: global (CLS) embeddings and patch feature grids."""
from __future__ import annotations

import numpy as np

from edgefm.contract.errors import FeedError
from edgefm.runtimes.loader import Artifact
from edgefm.runtimes.preprocess import as_image_list, preprocess


class Dinov2Artifact(Artifact):
    def _run(self, images, size):
        if size is not None and not (isinstance(size, (tuple, list)) and len(size) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
            raise FeedError(f"size must be (height, width) in whole pixels, e.g. (448, 644); got {size!r}")
        pixels = preprocess(as_image_list(images), self.manifest.task["preprocess"], size)
        return self["image_encoder"].run({"pixel_values": pixels}), pixels.shape[-2:]

    def embed(self, images, size: tuple[int, int] | None = None) -> np.ndarray:
        """CLS embeddings [N, D]. `size` (height, width) only for dynamic-resolution artifacts."""
        return self._run(images, size)[0]["cls_embedding"]

    def patch_features(self, images, size: tuple[int, int] | None = None) -> np.ndarray:
        """Patch tokens as a grid [N, H/patch, W/patch, D]."""
        outputs, (height, width) = self._run(images, size)
        patch = self.manifest.task["patch_size"]
        tokens = outputs["patch_tokens"]
        return tokens.reshape(tokens.shape[0], height // patch, width // patch, tokens.shape[-1])
