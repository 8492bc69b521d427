"""The recipes of docs/architecture.md, each followed with a toy: a family and a target arrive as plugins (entry
points, no edit to shared code) and compile; a precision is one Precision member plus a column of the gate table,
and the manifest schema and `--precision auto`'s order follow from it."""
from __future__ import annotations

import enum
from importlib.metadata import EntryPoint

import pytest
from fakes import RecordingTarget, ToyFamily, write_export

from edgefm.contract import gates, registry, spec


def test_a_family_and_a_target_from_plugins_compile(monkeypatch, tmp_path):
    """The recipe's way in: entry points in the groups edgefm.families / edgefm.targets, found beside the built-in
    plugins by the real discovery."""
    toy, fake = ToyFamily(), RecordingTarget()
    plugins = {"edgefm.families": [EntryPoint("toy", "fakes:TOY", "edgefm.families")],
               "edgefm.targets": [EntryPoint("fake", "fakes:FAKE", "edgefm.targets")]}
    monkeypatch.setattr(registry, "entry_points", lambda group: plugins.get(group, []))
    monkeypatch.setattr("fakes.TOY", toy, raising=False)
    monkeypatch.setattr("fakes.FAKE", fake, raising=False)
    fake.default = False  # the built-in default target stays the default
    assert {"toy", "dinov2"} <= set(registry.families()) and {"fake", "onnxruntime"} <= set(registry.targets())
    from edgefm.jobs.compile import compile_artifact

    write_export(toy, tmp_path / "exported")
    manifest = compile_artifact(tmp_path / "exported", "fake", "int8", tmp_path / "c", log=lambda message: None,
                                options=RecordingTarget.options_class(device="elsewhere"))
    assert manifest.components["encoder"].target == "fake" and manifest.components["encoder"].validation.passed


@pytest.fixture
def int2(monkeypatch):
    """A toy precision, declared as the recipe says: a Precision member in its place (least precise, last) and a
    column in every row of the gate table."""
    members = {p.name: p.value for p in spec.Precision} | {"INT2": "int2"}
    extended = enum.Enum("Precision", members, type=str)
    extended.parse = classmethod(spec.Precision.parse.__func__)
    monkeypatch.setattr(spec, "Precision", extended)
    monkeypatch.setattr(gates, "GATES", {metric: {**row, "int2": row["int4"]} for metric, row in gates.GATES.items()})
    return extended


def test_a_new_precision_reaches_the_schema_gates_and_auto_order(int2, toy_export, tmp_path):
    import json

    from edgefm.contract.manifest import Manifest
    from edgefm.jobs.auto import precision_order

    assert precision_order()[-1] == "int2" and precision_order()[:2] == ["fp32", "fp16"]
    assert gates.gates_for("int2", ("cosine",)) == {"cosine": gates.GATES["cosine"]["int4"]}
    data = json.loads((toy_export / "manifest.json").read_text())
    data["components"]["encoder"]["precision"] = "int2"
    (toy_export / "manifest.json").write_text(json.dumps(data))
    assert Manifest.load(toy_export).components["encoder"].precision == "int2"


def test_a_precision_the_schema_does_not_know_is_refused(toy_export):
    import json

    from edgefm.contract.errors import ArtifactError
    from edgefm.contract.manifest import Manifest

    data = json.loads((toy_export / "manifest.json").read_text())
    data["components"]["encoder"]["precision"] = "int2"
    (toy_export / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="precision"):
        Manifest.load(toy_export)
