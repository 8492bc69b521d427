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


def _exported(family: str):
    """A session fixture: the family's tiny preset exported once, to work/<family>."""
    @pytest.fixture(scope="session", name=f"{family}_exported")
    def exported(work):
        from edgefm.jobs.export import export

        export(family, work / family, variant="tiny", log=_quiet)
        return work / family

    return exported


clip_exported, dinov2_exported, sam2_exported, sd15_exported, sdxl_exported = (
    _exported(family) for family in ("clip", "dinov2", "sam2", "sd15", "sdxl"))


@pytest.fixture(scope="session")
def dinov2_dynamic(work):
    from edgefm.exporters.base import ExportOptions
    from edgefm.jobs.export import export

    export("dinov2", work / "dinov2-dyn", variant="tiny", options=ExportOptions(dynamic_resolution=True),
           log=_quiet)
    return work / "dinov2-dyn"


@pytest.fixture(scope="session")
def compiled(work, request):
    """compiled(family, precision, target="onnxruntime") -> artifact dir, built on first use."""
    from edgefm.jobs.compile import compile_artifact

    made = {}

    def get(family: str, precision: str, target: str = "onnxruntime"):
        if (family, precision, target) not in made:
            out = work / f"{family}-{target}-{precision}"
            compile_artifact(request.getfixturevalue(f"{family}_exported"), target, precision, out, log=_quiet)
            made[family, precision, target] = out
        return made[family, precision, target]

    return get


@pytest.fixture(scope="session")
def photos():
    from edgefm.calibration.data import load

    return load().all_images


@pytest.fixture(scope="session")
def sam2_tiny():
    """(family, loaded torch model) of the SAM 2 tiny preset: the weights sam2_exported was made from."""
    from edgefm.contract import registry
    from edgefm.exporters.base import ExportOptions

    family = registry.family("sam2")
    return family, family.load(family.resolve(None, "tiny"), ExportOptions())


@pytest.fixture(scope="session", params=["onnxruntime-export", "openvino-fp32"])
def sam2_fp32(request, sam2_exported, compiled):
    """The SAM 2 pipelines must match transformers in fp32 on both targets."""
    return sam2_exported if request.param == "onnxruntime-export" else compiled("sam2", "fp32", "openvino")


@pytest.fixture(scope="session")
def diffusers_tiny():
    """diffusers_tiny(family) -> (family, loaded torch modules and tokenizers): the weights *_exported came from."""
    from edgefm.contract import registry
    from edgefm.exporters.base import ExportOptions

    made = {}

    def get(name: str):
        if name not in made:
            family = registry.family(name)
            made[name] = family, family.load(family.resolve(None, "tiny"), ExportOptions())
        return made[name]

    return get
