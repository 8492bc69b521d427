"""DINOv2 feeds: photos preprocessed at the artifact's resolution."""
from __future__ import annotations

from pathlib import Path

from edgefm.calibration.data import CalibrationData
from edgefm.manifest import Manifest
from edgefm.runtimes.preprocess import preprocess


def feeds(component: str, manifest: Manifest, directory: Path, data: CalibrationData):
    config = manifest.task["preprocess"]
    calib = [{"pixel_values": preprocess([p], config)} for p in data.calib_images]
    return calib, [{"pixel_values": preprocess(data.heldout_images, config)}]


def extra_checks(component, candidate, reference, manifest, directory, data, gates) -> list:
    return []
