"""Text tokenisation for the runtime with the `tokenizers` library (no torch, no transformers)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgefm.errors import FeedError


class TextTokenizer:
    """Pads / truncates to the model's context length, as the transformers processor does."""

    def __init__(self, path: Path, context_length: int, pad_id: int):
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.enable_truncation(max_length=context_length)
        self._tokenizer.enable_padding(pad_id=pad_id, length=context_length)

    @classmethod
    def from_task(cls, task: dict, directory: Path) -> "TextTokenizer":
        """The tokenizer an artifact's manifest `task.text` block describes."""
        text = task["text"]
        return cls(Path(directory) / text["tokenizer"], text["context_length"], text["pad_id"])

    def __call__(self, texts) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise FeedError("texts must be a non-empty list of strings")
        encodings = self._tokenizer.encode_batch(texts)
        return np.asarray([e.ids for e in encodings], dtype=np.int64)
