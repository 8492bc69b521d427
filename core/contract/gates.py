"""Accuracy gates: one table keyed by metric and precision, with per-family overrides.

Every gate compares a compiled artifact with the fp32 export on held-out real inputs. The task
metrics measure what the model's user would lose; cosine is kept as a secondary check. Every row
holds every precision (tested), so a family never meets a KeyError for a precision it forgot; a
family overrides single cells where its task needs another bar.
"""
from __future__ import annotations

from edgefm.contract import spec  # Precision read at call time: the precisions are declared there, once

GATES: dict[str, dict[str, float]] = {
    # mean cosine per output (secondary): fp16 and int4 weight-only near-lossless, int8 QDQ a bit less
    "cosine": {"fp32": 0.9999, "fp16": 0.999, "int8": 0.98, "fp8": 0.98, "int4": 0.98},
    # DINOv2 retrieval: share of held-out views whose nearest neighbour (CLS embedding) is unchanged
    "cls_knn_agreement": {"fp32": 0.99, "fp16": 0.95, "int8": 0.9, "fp8": 0.9, "int4": 0.9},
    # DINOv2 dense matching: share of patches whose nearest patch in another view of the photo is unchanged
    "patch_match_agreement": {"fp32": 0.99, "fp16": 0.95, "int8": 0.85, "fp8": 0.85, "int4": 0.85},
    # CLIP: share of photos whose zero-shot label is unchanged, and of prompts whose top photo is unchanged
    "zero_shot_top1_agreement": {"fp32": 1.0, "fp16": 1.0, "int8": 0.9, "fp8": 0.9, "int4": 0.9},
    "text_to_image_top1_agreement": {"fp32": 1.0, "fp16": 1.0, "int8": 0.9, "fp8": 0.9, "int4": 0.9},
    # SAM 2 end to end: mean mask IoU of image and video masks (thresholded at 0 and at the fp32 median)
    "mask_iou": {"fp32": 0.99, "fp16": 0.98, "int8": 0.95, "fp8": 0.95, "int4": 0.95},
    "mask_iou_median": {"fp32": 0.99, "fp16": 0.98, "int8": 0.95, "fp8": 0.95, "int4": 0.95},
    # SD: PSNR (dB) of the final images at the default step count: 35 dB no visible change, 30 dB close
    "psnr": {"fp32": 40.0, "fp16": 35.0, "int8": 30.0, "fp8": 30.0, "int4": 30.0},
    # share of finite values (fp16 overflow gives inf / NaN)
    "finite": {"fp32": 1.0, "fp16": 1.0, "int8": 1.0, "fp8": 1.0, "int4": 1.0},
}


def gates_for(precision: str, metrics: tuple[str, ...], overrides: dict[str, dict[str, float]] | None = None
              ) -> dict[str, float]:
    """{metric: gate} for one precision; `overrides` is {metric: {precision: gate}} for the cells a family changes."""
    chosen = spec.Precision.parse(precision).value
    unknown = sorted((set(metrics) | set(overrides or {})) - set(GATES))
    if unknown:
        raise ValueError(f"no gate row for {', '.join(unknown)}; add it to edgefm.contract.gates.GATES")
    return {metric: {**GATES[metric], **(overrides or {}).get(metric, {})}[chosen] for metric in metrics}
