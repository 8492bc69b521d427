"""SAM 2 below fp32: the end-to-end pipeline check every compile runs, its fp32 fallback, and an
independent look at the masks on photos that neither calibration nor the check ever saw."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps
from sam2_reference import iou

import edgefm
from edgefm.contract import registry
from edgefm.contract.errors import GateError
from edgefm.contract.manifest import Manifest

CHECKS = {"image_mask_iou", "image_mask_iou_median", "video_mask_iou", "video_mask_iou_median"}


def _quiet(_message: str) -> None:
    pass


@pytest.mark.slow
@pytest.mark.parametrize("target", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("precision", ["fp16", "int8", "int4"])
def test_quantized_pipelines_pass_their_end_to_end_gates(compiled, sam2_exported, photos, target, precision):
    directory = compiled("sam2", precision, target)
    manifest = Manifest.load(directory)
    record = manifest.pipeline_validation
    gates = registry.family("sam2").pipeline_gates(precision)
    checks = {c["metric"]: c for c in record["checks"]}
    assert record["passed"] and record["precision"] == precision and set(checks) == CHECKS
    for metric, check in checks.items():
        assert check["value"] >= gates[metric.split("_", 1)[1]] and check["masks"] >= 10
    assert min(c["value"] for c in checks.values()) < 1.0  # quantization changed something measurable
    for name, entry in manifest.components.items():
        assert entry.precision == ("fp32" if name in record["kept_fp32"] else precision), name
    # independently: mirrored photos, a fresh click each, the masks users get
    candidate, reference = edgefm.load(directory), edgefm.load(sam2_exported)
    rng, ious = np.random.default_rng(), []
    for photo in photos[:6]:
        image = ImageOps.mirror(ImageOps.exif_transpose(Image.open(photo)).convert("RGB"))
        click = [(rng.random(2) * image.size).tolist()]
        for artifact in (candidate, reference):
            artifact.set_image(image)
        ious += [iou(g, r) for g, r in zip(candidate.predict(click, [1]).masks, reference.predict(click, [1]).masks)]
    assert np.mean(ious) >= gates["mask_iou"]


@pytest.fixture()
def strict_gates(monkeypatch, compiled):
    """Pipeline gates halfway between what the all-int8 ONNX Runtime pipeline reached and 1.0."""
    plain = Manifest.load(compiled("sam2", "int8")).pipeline_validation
    worst = min(c["value"] for c in plain["checks"])
    family = registry.family("sam2")

    def strict(value: float):
        monkeypatch.setattr(type(family), "pipeline_gates",
                            lambda self, precision: {"mask_iou": value, "mask_iou_median": value})
    return strict, (1 + worst) / 2


@pytest.mark.slow
def test_pipeline_below_gate_keeps_components_in_fp32(sam2_exported, strict_gates, tmp_path):
    from edgefm.jobs.compile import compile_artifact

    strict, halfway = strict_gates
    strict(halfway)
    manifest = compile_artifact(sam2_exported, "onnxruntime", "int8", tmp_path / "mixed", log=_quiet)
    record = manifest.pipeline_validation
    assert record["passed"] and record["kept_fp32"]
    assert not record["attempts"][0]["passed"] and record["attempts"][0]["kept_fp32"] == []
    for name, entry in manifest.components.items():
        assert entry.precision == ("fp32" if name in record["kept_fp32"] else "int8"), name
        assert entry.validation["passed"]
    assert min(c["value"] for c in record["checks"]) >= halfway
    loaded = Manifest.load(tmp_path / "mixed")  # every kept file is in place and matches its sha256
    assert loaded.pipeline_validation == record
    assert not (tmp_path / "mixed" / ".work").exists()


@pytest.mark.slow
def test_pipeline_that_cannot_pass_writes_nothing(sam2_exported, strict_gates, tmp_path):
    from edgefm.jobs.compile import compile_artifact

    strict, _ = strict_gates
    strict(1.5)
    with pytest.raises(GateError, match="sam2 pipeline in fp16 stays below its gates even with .* in fp32"):
        compile_artifact(sam2_exported, "onnxruntime", "fp16", tmp_path / "never", log=_quiet)
    assert not (tmp_path / "never").exists() and not list(tmp_path.glob(".never*"))


@pytest.mark.slow
def test_demo_picture_compares_masks_by_precision(sam2_exported, compiled, tmp_path):
    from edgefm.contract import registry

    path, _ = registry.family("sam2").demo_picture(sam2_exported, [compiled("sam2", "fp16"), compiled("sam2", "int8")],
                                                   tmp_path)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (256, 768, 3)
    first, int8 = grid[20:, :256], grid[20:, 512:]
    assert not (first == (255, 40, 40)).all(-1).any()  # the export agrees with itself
    assert (int8 != first).any()


@pytest.mark.slow
def test_validate_reruns_the_end_to_end_check(compiled):
    from edgefm.jobs.validate import validate

    directory = compiled("sam2", "int8", "openvino")
    recorded = Manifest.load(directory).pipeline_validation
    again = validate(directory, log=_quiet).pipeline_validation
    assert again["passed"] and again["kept_fp32"] == recorded["kept_fp32"] and again["precision"] == "int8"
    for mine, theirs in zip(again["checks"], recorded["checks"]):  # same photos, prompts and graphs
        assert mine["metric"] == theirs["metric"] and mine["value"] == pytest.approx(theirs["value"], abs=1e-6)


@pytest.mark.slow
def test_component_below_its_own_gate_is_kept_in_fp32(sam2_exported, monkeypatch, tmp_path):
    """A graph that no int8 scheme gets through its gate no longer fails a SAM 2 compile: it stays
    fp32, with the measured reason, and the pipeline is gated with it."""
    from edgefm.jobs.compile import compile_artifact

    family = registry.family("sam2")
    gates = type(family).gates
    monkeypatch.setattr(type(family), "gates", lambda self, component, precision: {
        **gates(self, component, precision), **({"cosine": 1.5} if (component, precision) == ("memory_encoder", "int8")
                                                else {})})
    manifest = compile_artifact(sam2_exported, "onnxruntime", "int8", tmp_path / "out", log=_quiet)
    record = manifest.pipeline_validation
    assert "memory_encoder in int8 stays below its gate after every scheme" in record["kept_fp32"]["memory_encoder"]
    assert manifest.components["memory_encoder"].precision == "fp32"
    assert manifest.components["image_encoder"].precision == "int8"
    assert record["passed"] and Manifest.load(tmp_path / "out").components["memory_encoder"].validation["passed"]
