"""The gate table, and the per-layer search that keeps the fewest layers in float until the gates pass."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from edgefm.cli import main
from edgefm.contract import registry
from edgefm.contract.gates import GATES, gates_for
from edgefm.contract.manifest import Manifest
from edgefm.contract.spec import Precision
from edgefm.jobs.compile import compile_artifact


def test_every_gate_row_holds_every_precision():
    for metric, row in GATES.items():
        assert set(row) == {p.value for p in Precision}, metric


def test_every_family_has_gates_for_every_precision():
    for family in registry.families().values():
        for component in family.component_names:
            for precision in Precision:
                assert family.gates(component, precision.value)["cosine"] == GATES["cosine"][precision.value]


def test_gates_for_refuses_unknown_metrics_and_precisions():
    with pytest.raises(ValueError, match="no gate row for recall"):
        gates_for("int8", ("recall",))
    with pytest.raises(Exception, match="precision"):
        gates_for("int3", ("cosine",))
    assert gates_for("int8", ("mask_iou",), {"mask_iou": {"int8": 0.5}}) == {"mask_iou": 0.5}


@pytest.fixture()
def strict_int8(monkeypatch, request):
    """A cosine gate no scheme of the ladder reaches on the tiny DINOv2 but the graph with every layer in float
    does. ONNX Runtime's rungs reach ~0.9998 and its layers go back to fp32; OpenVINO's layers keep int8 weights
    (float activations), so its ladder is cut to the rung without min/max ranges (0.978) and the gate is 0.99."""
    family = type(registry.family("dinov2"))
    gates = family.gates
    cosine = {"onnxruntime": 0.99995, "openvino": 0.99}[request.param]
    monkeypatch.setattr(family, "gates", lambda self, c, p: {**gates(self, c, p), "cosine": cosine}
                        if p == "int8" else gates(self, c, p))
    if request.param == "openvino":
        target = type(registry.target("openvino"))
        schemes = target.schemes
        monkeypatch.setattr(target, "schemes", lambda self, *a: [s for s in schemes(self, *a)
                                                                  if s.name == "int8-transformer"])
    return request.param


@pytest.mark.slow
@pytest.mark.parametrize("strict_int8", ["onnxruntime", "openvino"], indirect=True)
def test_search_keeps_the_fewest_layers_in_float_that_pass(dinov2_exported, tmp_path, strict_int8):
    manifest = compile_artifact(dinov2_exported, strict_int8, "int8", tmp_path / "out", log=lambda _: None)
    entry = manifest.components["image_encoder"]
    record = entry.validation["float_layers"]
    assert entry.validation["passed"] and entry.options["compile"]["float_layers"] == record["kept"]
    ranked = [layer["name"] for layer in record["ranking"]["layers"]]
    contributions = [layer["contribution"] for layer in record["ranking"]["layers"]]
    assert contributions == sorted(contributions, reverse=True)
    kept = len(record["kept"])
    assert 0 < kept < len(ranked) and record["kept"] == ranked[:kept]
    trials = {t["layers"]: t["passed"] for t in record["trials"]}
    assert trials[kept] and (kept == 1 or trials[kept - 1] is False)  # one fewer fails (0: the ladder's own)
    assert set(record["latency_ms_batch1"]) == {"all_quantized", "chosen"}
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "out"), "--sensitivity", "--plot",
                                       str(tmp_path / "s.png")])
    assert result.exit_code == 0 and "kept in float" in result.output and ranked[0] in result.output
    assert (tmp_path / "s.png").stat().st_size > 1000
    loaded = Manifest.load(tmp_path / "out")  # the restored graph is what the manifest hashes and runs
    assert loaded.components["image_encoder"].options["compile"]["scheme"].endswith(f"+{kept}-float")
    # the written file computes exactly the other layers in reduced precision
    written = SimpleNamespace(out_dir=tmp_path / "out", precision=Precision.INT8)
    still = registry.target(strict_int8).quantized_layers(written, entry.file)
    assert set(still) == set(ranked) - set(record["kept"])
