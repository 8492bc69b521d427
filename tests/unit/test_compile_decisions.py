"""What the compile job decides, on the toy export with the fake target: which scheme it keeps, which layers go
back to float, which components go back to fp32 for the end-to-end gate, and when it refuses."""
from __future__ import annotations

import pytest
from fakes import RecordingTarget, ToyFamily, ToyPipelineFamily, register, write_export

from edgefm.contract.errors import GateError
from edgefm.jobs.compile import compile_artifact
from edgefm.targets.base import flag_fields


def _quiet(message: str) -> None:
    pass


def _compile(export, out, ladder, **kwargs):
    """The compile's own records: the on-device step (which re-gates on the device) stays for elsewhere."""
    options = RecordingTarget.options_class(ladder=ladder, device="elsewhere")
    return compile_artifact(export, "fake", "int8", out, options=options, log=_quiet, **kwargs)


def test_the_ladder_keeps_the_first_scheme_that_passes(toy_export, tmp_path):
    entry = _compile(toy_export, tmp_path / "c", "coarse-then-fine").components["encoder"]
    assert [(a.scheme, a.passed) for a in entry.validation.attempts] == [("coarse", False), ("fine", True)]
    assert entry.options["compile"]["scheme"] == "fine" and entry.validation.passed
    assert entry.validation.allowed_below_gate is False and entry.validation.float_layers is None


def test_the_search_puts_back_in_float_only_the_layer_that_breaks_the_gate(toy_export, tmp_path):
    validation = _compile(toy_export, tmp_path / "c", "one-bad-layer").components["encoder"].validation
    assert validation.passed and validation.float_layers.kept == ("layer2",)
    ranking = [layer["name"] for layer in validation.float_layers.ranking["layers"]]
    assert ranking[0] == "layer2" and set(ranking) == {"layer1", "layer2"}
    assert [t["layers"] for t in validation.float_layers.trials] == [1]
    assert [a.scheme for a in validation.attempts] == ["bad", "bad+1-float"]
    assert set(validation.float_layers.latency_ms_batch1) == {"all_quantized", "chosen"}  # ONNX Runtime runs here


def test_below_every_gate_the_compile_refuses_and_writes_nothing(toy_export, tmp_path):
    with pytest.raises(GateError, match="stays below its gate after every scheme.*--allow-below-gate"):
        _compile(toy_export, tmp_path / "c", "hopeless")
    assert not (tmp_path / "c").exists()
    kept = _compile(toy_export, tmp_path / "kept", "hopeless", allow_below_gate=True).components["encoder"]
    assert not kept.validation.passed and kept.validation.allowed_below_gate is True


def _pipeline(monkeypatch, tmp_path, noise: dict[str, float]):
    target = RecordingTarget(noise_per_component=noise)
    register(monkeypatch, families=[ToyFamily(), ToyPipelineFamily()], targets=[target])
    write_export(ToyPipelineFamily(), tmp_path / "exported")
    return _compile(tmp_path / "exported", tmp_path / f"c-{len(list(tmp_path.iterdir()))}", "per-component")


def test_the_pipeline_falls_back_to_fp32_for_the_component_that_matters(monkeypatch, tmp_path):
    """Each component passes its own int8 gate; chained they miss the stricter end-to-end gate, and putting the
    noisier one back in fp32 is what passes it."""
    manifest = _pipeline(monkeypatch, tmp_path, {"encoder": 0.002, "head": 0.06})
    pipeline = manifest.pipeline_validation
    assert pipeline.passed and list(pipeline.kept_fp32) == ["head"]
    assert manifest.components["head"].precision == "fp32" and manifest.components["encoder"].precision == "int8"
    assert [(a.kept_fp32, a.passed) for a in pipeline.fallbacks] == [((), False), (("encoder",), False),
                                                                    (("head",), True)]
    assert all(e.validation.passed for e in manifest.components.values())


def test_a_pipeline_that_passes_keeps_every_component_quantized(monkeypatch, tmp_path):
    manifest = _pipeline(monkeypatch, tmp_path, {"encoder": 0.001, "head": 0.001})
    assert manifest.pipeline_validation.passed and not manifest.pipeline_validation.kept_fp32
    assert {e.precision for e in manifest.components.values()} == {"int8"}


def test_the_target_flags_come_from_its_options(fake_target):
    from edgefm.cli.flags import target_flags

    assert set(flag_fields(RecordingTarget.options_class)) == {"ladder", "device"}
    assert {"ladder", "device"} <= set(target_flags()) and set(target_flags(on_device=True)) == {"device"}
