"""Text tokenisation for the runtime with the `tokenizers` library (no torch, no transformers)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgefm.contract.errors import ArtifactError, FeedError


class TextTokenizer:
    """Pads / truncates to the model's context length, as the transformers processor does."""

    def __init__(self, path: Path, context_length: int, pad_id: int):
        from tokenizers import Tokenizer

        try:
            self._tokenizer = Tokenizer.from_file(str(path))
            self._tokenizer.enable_truncation(max_length=context_length)
            self._tokenizer.enable_padding(pad_id=pad_id, length=context_length)
        except Exception as exc:  # tokenizers raises its own bare Exception for a file it cannot parse
            raise ArtifactError(f"cannot read the tokenizer {Path(path).name} ({str(exc)[:200]}); rebuild the "
                                "artifact") from None

    @classmethod
    def from_manifest(cls, manifest, directory: Path, text: dict | None = None) -> TextTokenizer:
        """The tokenizer a `task.text` block of the artifact's manifest describes (default: `task["text"]`);
        its file must be one of the artifact's hashed assets."""
        text = text or manifest.task["text"]
        return cls(manifest.asset_path(directory, text["tokenizer"]), text["context_length"], text["pad_id"])

    def __call__(self, texts) -> np.ndarray:
        try:
            listed = [texts] if isinstance(texts, str) else list(texts)
        except TypeError:  # not iterable
            listed = []
        if not listed or not all(isinstance(t, str) for t in listed):
            raise FeedError(f"texts must be a string or a non-empty list of strings, got {texts!r}")
        texts = listed
        encodings = self._tokenizer.encode_batch(texts)
        return np.asarray([e.ids for e in encodings], dtype=np.int64)
