"""The diffusers pipelines edgefm's Stable Diffusion artifacts are compared with, built from the same torch modules."""
from __future__ import annotations

import diffusers
import numpy as np


def reference_pipeline(family, loaded, scheduler_class: str, scheduler_config: dict):
    parts = dict(loaded.model.items(), **loaded.processor,
                 scheduler=getattr(diffusers, scheduler_class).from_config(scheduler_config))
    if family.xl:
        parts["force_zeros_for_empty_prompt"] = True
    else:
        parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline = getattr(diffusers, family.pipeline_class)(**parts)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def psnr(got: np.ndarray, ref: np.ndarray) -> float:
    """Written here, not imported from edgefm, so the parity tests do not rely on the code under test."""
    mse = float(np.mean((got.astype(np.float64) - ref.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)
