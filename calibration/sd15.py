"""Stable Diffusion 1.5 feeds and checks: shared with the other diffusion family (calibration/diffusion.py)."""
from edgefm.calibration.diffusion import extra_checks, feeds, pipeline_checks  # noqa: F401
