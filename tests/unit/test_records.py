"""The typed records: the manifest's JSON round-trips unchanged, derived figures are computed (never read back
from an untrusted file), and a malformed record is refused in one line."""
from __future__ import annotations

import json

import pytest
from fakes import RecordingTarget

from edgefm.contract.errors import ArtifactError
from edgefm.contract.manifest import Manifest
from edgefm.contract.records import Check, Validation
from edgefm.jobs.compile import compile_artifact


def _compiled(toy_export, tmp_path, ladder="one-bad-layer"):
    options = RecordingTarget.options_class(ladder=ladder, device="elsewhere")
    out = tmp_path / "c"
    compile_artifact(toy_export, "fake", "int8", out, options=options, log=lambda message: None)
    return out


def test_a_compiled_manifest_round_trips_byte_for_byte(toy_export, tmp_path):
    """Every record the compile writes (checks, attempts, float layers) reads back into the same JSON."""
    out = _compiled(toy_export, tmp_path)
    written = json.loads((out / "manifest.json").read_text())
    manifest = Manifest.load(out)
    assert manifest.components["encoder"].validation.float_layers is not None
    assert manifest.to_json() == written


def test_an_auto_selection_round_trips(toy_export, tmp_path, fake_target):
    from edgefm.jobs.auto import compile_auto

    compile_auto(toy_export, "fake", tmp_path / "auto", iters=2, log=lambda message: None)
    written = json.loads((tmp_path / "auto" / "manifest.json").read_text())
    selection = Manifest.load(tmp_path / "auto").selection
    assert selection.chosen in ("fp32", "int8") and selection.to_json() == written["selection"]


def test_passed_is_computed_from_the_checks_not_read_from_the_file():
    data = {"metric": "cosine", "value": 0.5, "gate": 0.98, "passed": True, "reference": "r", "inputs": "i",
            "checks": [{"metric": "cosine", "value": 0.5, "gate": 0.98, "higher_is_better": True, "passed": True}]}
    validation = Validation.from_json(data)
    assert not validation.passed and not validation["passed"] and not validation.checks[0].passed


def test_unknown_keys_survive_a_round_trip():
    """A newer edgefm's keys stay where they were: reading and saving a manifest changes nothing in it."""
    data = {"metric": "cosine", "value": 0.99, "gate": 0.98, "passed": True, "reference": "r", "inputs": "i",
            "checks": [{"metric": "cosine", "value": 0.99, "gate": 0.98, "higher_is_better": True, "passed": True,
                        "outputs": {"y": {"mean": 0.99}}}], "measured_with": "a stand-in", "from_the_future": [1]}
    assert Validation.from_json(data).to_json() == data


@pytest.mark.parametrize("check, expected", [
    (Check("cosine", 0.99, 0.98), (0.99 - 0.98) / 0.98),
    (Check("rel_max_abs_diff", 0.02, 0.01, higher_is_better=False), -1.0),
    (Check("finite", 0.0, 0.0), 0.0),  # a gate of 0 is not divided by: the margin is the plain gap
    (Check("finite", -0.5, 0.0), -0.5),
])
def test_one_margin_for_every_check(check, expected):
    assert check.margin == pytest.approx(expected)
    assert Validation((check,)).margin == pytest.approx(expected)


def test_a_malformed_record_is_refused_in_one_line(toy_export, tmp_path):
    out = _compiled(toy_export, tmp_path)
    data = json.loads((out / "manifest.json").read_text())
    del data["components"]["encoder"]["validation"]["float_layers"]["kept"]
    (out / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="validation or selection record is malformed.*rebuild the artifact"):
        Manifest.load(out)
