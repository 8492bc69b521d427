"""CLIP on an artifact: image / text embeddings with the model's own preprocessing, zero-shot labels."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgefm.contract.compare import normalize
from edgefm.contract.errors import FeedError
from edgefm.runtimes.loader import Artifact
from edgefm.runtimes.preprocess import as_image_list, preprocess
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
            self._tokenizer = TextTokenizer.from_manifest(self.manifest, self.directory)
        return self._tokenizer

    def embed_images(self, images, normalized: bool = True) -> np.ndarray:
        images = as_image_list(images)
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
        labels = _labels(labels)
        texts = _fill(template, labels)
        logits = self.manifest.task["logit_scale"] * self.embed_images(images) @ self.embed_texts(texts).T
        logits = logits - logits.max(-1, keepdims=True)
        probs = np.exp(logits)
        return ZeroShotResult(labels, probs / probs.sum(-1, keepdims=True))


def _labels(labels) -> list[str]:
    """At least two non-empty strings. A bare string would be iterated as its characters."""
    if isinstance(labels, str):
        raise FeedError(f"labels must be a list of labels like ['cat', 'dog'], got the single string {labels!r}")
    try:
        labels = list(labels)
    except TypeError:
        raise FeedError(f"labels must be a list of labels like ['cat', 'dog'], got {labels!r}") from None
    for index, label in enumerate(labels):
        if not isinstance(label, str) or not label.strip():
            raise FeedError(f"label {index} is {label!r}; every label must be non-empty text, like ['cat', 'dog']")
    if len(labels) < 2:
        raise FeedError(f"zero-shot needs at least 2 labels to choose between, got {labels}; e.g. ['cat', 'dog']")
    return labels


def _fill(template, labels: list[str]) -> list[str]:
    """Each label put in the template's {}."""
    if isinstance(template, str) and "{}" in template:
        try:
            return [template.format(label) for label in labels]
        except (IndexError, KeyError, ValueError):  # other {fields} in it
            pass
    raise FeedError(f"template must be text with {{}} where the label goes, like 'a photo of {{}}.', got {template!r}")
