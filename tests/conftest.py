"""Shared artifacts: exported and compiled once per test session on the tiny presets."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # hub lookups fail fast instead of waiting on the network


def _quiet(_message: str) -> None:
    pass


@pytest.fixture(scope="session")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def clip_exported(work):
    from edgefm.export_job import export

    export("clip", work / "clip", variant="tiny", log=_quiet)
    return work / "clip"


@pytest.fixture(scope="session")
def dinov2_exported(work):
    from edgefm.export_job import export

    export("dinov2", work / "dinov2", variant="tiny", log=_quiet)
    return work / "dinov2"


@pytest.fixture(scope="session")
def dinov2_dynamic(work):
    from edgefm.export_job import export
    from edgefm.exporters.base import ExportOptions

    export("dinov2", work / "dinov2-dyn", variant="tiny", options=ExportOptions(dynamic_resolution=True),
           log=_quiet)
    return work / "dinov2-dyn"


@pytest.fixture(scope="session")
def compiled(work, clip_exported, dinov2_exported):
    """compiled(family, precision, target="onnxruntime") -> artifact dir, built on first use."""
    from edgefm.compile_job import compile_artifact

    sources = {"clip": clip_exported, "dinov2": dinov2_exported}
    made = {}

    def get(family: str, precision: str, target: str = "onnxruntime"):
        if (family, precision, target) not in made:
            out = work / f"{family}-{target}-{precision}"
            compile_artifact(sources[family], target, precision, out, log=_quiet)
            made[family, precision, target] = out
        return made[family, precision, target]

    return get


@pytest.fixture(scope="session")
def photos():
    from edgefm.calibration.data import load

    return load().all_images


@pytest.fixture(scope="session")
def sam2_exported(work):
    from edgefm.export_job import export

    export("sam2", work / "sam2", variant="tiny", log=_quiet)
    return work / "sam2"
