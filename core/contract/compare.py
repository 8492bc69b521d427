"""Accuracy metrics between an output and its reference (numpy only)."""
from __future__ import annotations

import numpy as np


def _rows(a: np.ndarray) -> np.ndarray:
    """Vectors to compare: the last axis (an embedding or one token's features)."""
    a = np.asarray(a, dtype=np.float64)
    return a.reshape(-1, a.shape[-1]) if a.ndim > 1 else a.reshape(1, -1)


def cosine_rows(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Cosine similarity per vector. Non-finite outputs count as 0 so they always fail a gate."""
    a, b = _rows(out), _rows(ref)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: output {out.shape} vs reference {ref.shape}")
    num = (a * b).sum(-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    cos = np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)
    return np.where(np.isfinite(a).all(-1), cos, 0.0)


def max_abs_diff(out: np.ndarray, ref: np.ndarray) -> float:
    diff = np.abs(np.asarray(out, np.float64) - np.asarray(ref, np.float64))
    return float(np.nan_to_num(diff, nan=np.inf).max()) if diff.size else 0.0


def top1_agreement(logits: np.ndarray, ref_logits: np.ndarray) -> float:
    """Fraction of rows whose argmax matches the reference's argmax."""
    return float((np.argmax(logits, -1) == np.argmax(ref_logits, -1)).mean())


def normalize(x: np.ndarray) -> np.ndarray:
    normalized: np.ndarray = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return normalized


def psnr(got: np.ndarray, ref: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1] (inf when identical)."""
    mse = float(np.mean((np.asarray(got, np.float64) - ref) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))


def mask_iou(got: np.ndarray, ref: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    union = np.logical_or(got, ref).sum()
    return float(np.logical_and(got, ref).sum() / union) if union else 1.0
