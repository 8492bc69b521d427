"""CLIP on an artifact: image / text embeddings with the model's own preprocessing, zero-shot labels."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgefm.compare import normalize
from edgefm.runtimes.loader import Artifact
from edgefm.runtimes.preprocess import preprocess
from edgefm.runtimes.tokenizer import TextTokenizer


@dataclass
class ZeroShotResult:
    labels: list[str]
    probs: np.ndarray  # [images, labels]

    @property
    def top1(self) -> list[str]:
        return [self.labels[i] for i in self.probs.argmax(-1)]


class ClipArtifact(Artifact):
    batch_size = 16

    @property
    def tokenizer(self) -> TextTokenizer:
        if not hasattr(self, "_tokenizer"):
            self._tokenizer = TextTokenizer.from_task(self.manifest.task, self.directory)
        return self._tokenizer

    def embed_images(self, images, normalized: bool = True) -> np.ndarray:
        images = list(images)
        chunks = [self["image_encoder"].run({"pixel_values": preprocess(images[i:i + self.batch_size],
                                                                        self.manifest.task["preprocess"])})
                  ["image_embeds"] for i in range(0, len(images), self.batch_size)]
        out = np.concatenate(chunks)
        return normalize(out) if normalized else out

    def embed_texts(self, texts, normalized: bool = True) -> np.ndarray:
        ids = self.tokenizer(texts)
        chunks = [self["text_encoder"].run({"input_ids": ids[i:i + self.batch_size]})["text_embeds"]
                  for i in range(0, len(ids), self.batch_size)]
        out = np.concatenate(chunks)
        return normalize(out) if normalized else out

    def zero_shot(self, images, labels: list[str], template: str = "a photo of {}.") -> ZeroShotResult:
        logits = self.manifest.task["logit_scale"] * self.embed_images(images) @ self.embed_texts(
            [template.format(label) for label in labels]).T
        logits = logits - logits.max(-1, keepdims=True)
        probs = np.exp(logits)
        return ZeroShotResult(list(labels), probs / probs.sum(-1, keepdims=True))


ARTIFACT_CLASS = ClipArtifact
