"""DINOv2 feeds: photos preprocessed at the artifact's resolution (and a second one when dynamic)."""
from __future__ import annotations

from pathlib import Path

from edgefm.calibration.data import CalibrationData
from edgefm.manifest import Manifest
from edgefm.runtimes.preprocess import preprocess


def feeds(component: str, manifest: Manifest, directory: Path, data: CalibrationData):
    config = manifest.task["preprocess"]
    calib = [{"pixel_values": preprocess([p], config)} for p in data.calib_images]
    heldout = [{"pixel_values": preprocess(data.heldout_images, config)}]
    if manifest.task.get("dynamic_resolution"):  # also hold the graph to its gate at a wider, larger size
        res, patch = manifest.task["resolution"], manifest.task["patch_size"]
        heldout.append({"pixel_values": preprocess(data.heldout_images, config, (res + 4 * patch, res + 8 * patch))})
    return calib, heldout


def extra_checks(component, candidate, reference, manifest, directory, data, gates) -> list:
    return []
