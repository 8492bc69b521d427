"""OpenVINO artifacts: IR files in the manifest, the compute precision they were validated in, same task API."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

import edgefm
from edgefm.contract.errors import ArtifactError, EdgefmError
from edgefm.contract.manifest import Manifest
from edgefm.jobs.compile import compile_artifact, target_options
from edgefm.targets.openvino import OpenVinoOptions


def _quiet(_message):
    pass


def test_ir_files_are_listed_and_verified(compiled, tmp_path):
    directory = tmp_path / "copy"
    shutil.copytree(compiled("dinov2", "int8", "openvino"), directory)
    entry = Manifest.load(directory).components["image_encoder"]
    assert entry.file == "image_encoder.xml" and list(entry.data_files) == ["image_encoder.bin"]
    assert entry.calibration["count"] > 0 and entry.options["compile"]["device"] == "CPU"
    (directory / "image_encoder.bin").write_bytes((directory / "image_encoder.bin").read_bytes()[:-4])
    with pytest.raises(ArtifactError, match="image_encoder.bin does not match the sha256"):
        edgefm.load(directory)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8", "int4"])
def test_sessions_compute_in_the_recorded_precision(compiled, precision):
    # OpenVINO's CPU plugin computes in bf16 by default on CPUs that have it; only fp16 and int8 (the ops int8
    # leaves in float) may use that, each with an f32 rung after it.
    entry = Manifest.load(compiled("clip", precision, "openvino")).components["image_encoder"]
    recorded = entry.options["compile"]["inference_precision"]
    assert recorded == "f32" or (precision in ("fp16", "int8") and recorded in ("bf16", "f16"))
    session = edgefm.load(compiled("clip", precision, "openvino"))["image_encoder"]
    assert session._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == recorded


def test_task_helpers_match_onnxruntime(compiled, photos):
    labels = ["a cat", "a rocket", "a coffee cup"]
    ov, ort = edgefm.load(compiled("clip", "fp32", "openvino")), edgefm.load(compiled("clip", "fp32"))
    np.testing.assert_allclose(ov.zero_shot(photos[:4], labels).probs, ort.zero_shot(photos[:4], labels).probs,
                               atol=1e-4)
    ov, ort = edgefm.load(compiled("dinov2", "fp32", "openvino")), edgefm.load(compiled("dinov2", "fp32"))
    np.testing.assert_allclose(ov.embed(photos[:3]), ort.embed(photos[:3]), atol=1e-4)


def test_validate_reruns_the_gates(compiled):
    from edgefm.jobs.validate import validate

    manifest = validate(compiled("clip", "int8", "openvino"), log=_quiet)
    assert all(e.validation["passed"] and e.validation["reference"] == "fp32 export (ONNX Runtime)"
               for e in manifest.components.values())


def test_dynamic_resolution(dinov2_dynamic, tmp_path, photos):
    compile_artifact(dinov2_dynamic, "openvino", "int8", tmp_path / "ov", log=_quiet)
    ov, reference = edgefm.load(tmp_path / "ov"), edgefm.load(dinov2_dynamic)
    for size in [(224, 224), (280, 336)]:
        got, ref = ov.patch_features(photos[:1], size=size), reference.patch_features(photos[:1], size=size)
        assert got.shape == ref.shape == (1, size[0] // 14, size[1] // 14, 64)
        cos = (got * ref).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(ref, axis=-1)
        assert cos.mean() >= 0.98


def test_devices_the_machine_lacks_are_refused(dinov2_exported, compiled, tmp_path):
    with pytest.raises(EdgefmError, match=r"OpenVINO device 'NOSUCH' is not on this machine; it sees \['CPU'"):
        compile_artifact(dinov2_exported, "openvino", "fp32", tmp_path / "a", options=OpenVinoOptions(device="NOSUCH"),
                         log=_quiet)
    assert not (tmp_path / "a").exists()
    with pytest.raises(ArtifactError, match="device 'NOSUCH' is not on this machine"):
        edgefm.load(compiled("dinov2", "fp32", "openvino"), device="NOSUCH")


def test_options_are_checked_per_target():
    assert target_options("openvino", int4_group_size=64, device=None) == OpenVinoOptions(int4_group_size=64)
    with pytest.raises(EdgefmError, match="--device do.* not apply to target onnxruntime"):
        target_options("onnxruntime", device="CPU")
    with pytest.raises(EdgefmError, match="int4 ratio 1.5 must be in"):
        target_options("openvino", int4_ratio=1.5)
    with pytest.raises(EdgefmError, match="power of two"):
        target_options("openvino", int4_group_size=48)


@pytest.mark.parametrize("reduced", ["bf16", "f32"])
def test_int8_ladder_tries_reduced_float_compute_first_where_the_cpu_has_it(monkeypatch, reduced):
    from edgefm.contract.spec import Precision
    from edgefm.targets import openvino

    monkeypatch.setattr(openvino, "_reduced_precision", lambda device: reduced)
    ladder = openvino.OpenVinoTarget().schemes(Precision.INT8, OpenVinoOptions())
    computes = [scheme.params["inference_precision"] for scheme in ladder]
    if reduced == "f32":
        assert set(computes) == {"f32"}
    else:  # the first rung again in bf16, then the f32 ladder unchanged
        assert computes[0] == "bf16" and set(computes[1:]) == {"f32"}
        assert ladder[0].name == f"{ladder[1].name}-bf16-compute"
        assert {k: v for k, v in ladder[0].params.items() if k != "inference_precision"} == \
            {k: v for k, v in ladder[1].params.items() if k != "inference_precision"}
