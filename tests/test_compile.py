"""Each precision passes its gate against the fp32 export, re-checked here on inputs the compile never saw."""
from __future__ import annotations

from collections import Counter

import onnx
import pytest
from PIL import Image, ImageOps

import edgefm
from edgefm.contract import registry
from edgefm.contract.compare import cosine_rows
from edgefm.contract.errors import ArtifactError, CalibrationError, GateError, UnknownChoiceError
from edgefm.contract.manifest import Manifest
from edgefm.jobs.compile import compile_artifact
from edgefm.runtimes.preprocess import preprocess
from edgefm.targets.onnxruntime import OnnxRuntimeOptions

PRECISIONS = ["fp32", "fp16", "int8", "int4"]


def _ops(path) -> Counter:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def _mirrored(photos) -> list:
    """Real photos the compile step did not see: mirrored and rotated copies."""
    return [ImageOps.mirror(Image.open(p).convert("RGB")).rotate(7) for p in photos]


@pytest.mark.slow
@pytest.mark.parametrize("target", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("family", ["clip", "dinov2"])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_precision_passes_gate_on_unseen_photos(compiled, clip_exported, dinov2_exported, photos, family, precision,
                                                target):
    directory = compiled(family, precision, target)
    manifest = Manifest.load(directory)
    reference_dir = {"clip": clip_exported, "dinov2": dinov2_exported}[family]
    assert manifest.stage == "compiled" and manifest.parent["path"] == str(reference_dir)
    candidate, reference = edgefm.load(directory), edgefm.load(reference_dir)
    pixels = preprocess(_mirrored(photos), manifest.task["preprocess"])
    gate = registry.family(family).gates("image_encoder", precision)["cosine"]
    for name, entry in manifest.components.items():
        validation = entry.validation
        assert validation["passed"] and not validation["allowed_below_gate"]
        assert {"metric", "value", "gate", "passed"} <= set(validation)
        assert entry.target == target and entry.runtime == target and entry.precision == precision
        feeds = {"pixel_values": pixels} if name == "image_encoder" else {
            "input_ids": candidate.tokenizer(["a mirrored photo of a rocket at night", "two cats on a sofa"])}
        got, ref = candidate[name].run(feeds), reference[name].run(feeds)
        for output in ref:
            assert cosine_rows(got[output], ref[output]).mean() >= gate, (name, output)


def test_clip_records_zero_shot_agreement(compiled):
    manifest = Manifest.load(compiled("clip", "int8"))
    for entry in manifest.components.values():
        checks = {c["metric"]: c for c in entry.validation["checks"]}
        for metric in ("zero_shot_top1_agreement", "text_to_image_top1_agreement"):
            assert checks[metric]["passed"] and checks[metric]["images"] == 20 and checks[metric]["labels"] == 19


def test_graphs_hold_what_the_precision_promises(compiled):
    fp32 = _ops(compiled("dinov2", "fp32") / "image_encoder.onnx")
    assert fp32["SkipLayerNormalization"] > 0  # ONNX Runtime's transformer fusions applied
    assert _ops(compiled("dinov2", "int8") / "image_encoder.onnx")["QuantizeLinear"] > 0
    assert _ops(compiled("dinov2", "int4") / "image_encoder.onnx")["MatMulNBits"] > 0
    fp16 = onnx.load(str(compiled("dinov2", "fp16") / "image_encoder.onnx"))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in fp16.graph.initializer)
    int8 = Manifest.load(compiled("clip", "int8"))
    assert int8.components["image_encoder"].calibration["source"] == "scikit-image sample photos"
    assert int8.components["text_encoder"].calibration["count"] > 0
    assert Manifest.load(compiled("clip", "fp16")).components["text_encoder"].calibration is None


def test_int8_dynamic_and_int4_group_size(clip_exported, tmp_path):
    manifest = compile_artifact(clip_exported, "onnxruntime", "int8", tmp_path / "dyn",
                                options=OnnxRuntimeOptions(int8_mode="dynamic"), log=lambda m: None)
    assert manifest.components["image_encoder"].options["compile"]["int8_mode"] == "dynamic"
    assert _ops(tmp_path / "dyn" / "image_encoder.onnx")["DynamicQuantizeLinear"] > 0
    manifest = compile_artifact(clip_exported, "onnxruntime", "int4", tmp_path / "b16",
                                options=OnnxRuntimeOptions(int4_group_size=16), log=lambda m: None)
    block = onnx.load(str(tmp_path / "b16" / "image_encoder.onnx"))
    sizes = {a.i for n in block.graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "block_size"}
    assert sizes == {16} and manifest.components["image_encoder"].validation["passed"]


@pytest.mark.slow
def test_below_gate_fails_unless_allowed(dinov2_exported, tmp_path, monkeypatch):
    family = registry.family("dinov2")
    gates = type(family).gates
    monkeypatch.setattr(type(family), "gates", lambda self, c, p: {**gates(self, c, p), "cosine": 1.5})  # unreachable
    with pytest.raises(GateError, match="--allow-below-gate"):
        compile_artifact(dinov2_exported, "onnxruntime", "int4", tmp_path / "strict", log=lambda m: None)
    assert not (tmp_path / "strict").exists()
    manifest = compile_artifact(dinov2_exported, "onnxruntime", "int4", tmp_path / "allowed",
                                allow_below_gate=True, log=lambda m: None)
    validation = manifest.components["image_encoder"].validation
    assert not validation["passed"] and validation["allowed_below_gate"]
    assert [a["scheme"] for a in validation["attempts"]][:2] == ["int4-sym-block32", "int4-asym-block32"]


def test_user_calibration_folder(dinov2_exported, tmp_path, photos):
    folder = tmp_path / "my-photos"
    (folder / "sub").mkdir(parents=True)
    for i, path in enumerate(photos[:6]):
        Image.open(path).convert("RGB").resize((300, 200)).save(folder / "sub" / f"{i}.jpg")
    (folder / "notes.txt").write_text("not an image")
    manifest = compile_artifact(dinov2_exported, "onnxruntime", "int8", tmp_path / "out", calib_dir=folder,
                                calib_size=3, log=lambda m: None)
    record = manifest.components["image_encoder"].calibration
    assert record["source"] == str(folder) and record["count"] == 3 and record["heldout_images"] == 1


@pytest.mark.parametrize("setup,message", [
    (lambda d: None, "holds no images"),
    (lambda d: (d / "a.txt").write_text("x"), "holds no images"),
    (lambda d: (d / "broken.png").write_bytes(b"not a png"), "cannot be read"),
])
def test_bad_calibration_folders(dinov2_exported, tmp_path, setup, message):
    folder = tmp_path / "calib"
    folder.mkdir()
    setup(folder)
    with pytest.raises(CalibrationError, match=message):
        compile_artifact(dinov2_exported, "onnxruntime", "int8", tmp_path / "out", calib_dir=folder,
                         log=lambda m: None)
    assert not (tmp_path / "out").exists()


def test_bad_compile_requests(dinov2_exported, compiled, tmp_path):
    with pytest.raises(UnknownChoiceError, match="valid choices: " + ", ".join(sorted(registry.targets()))):
        compile_artifact(dinov2_exported, "tflite", "fp32", tmp_path / "a", log=lambda m: None)
    with pytest.raises(UnknownChoiceError, match="fp16, fp32, fp8, int4, int8"):
        compile_artifact(dinov2_exported, "onnxruntime", "int3", tmp_path / "a", log=lambda m: None)
    with pytest.raises(UnknownChoiceError, match="precision for onnxruntime.*fp16, fp32, int4, int8"):
        compile_artifact(dinov2_exported, "onnxruntime", "fp8", tmp_path / "a", log=lambda m: None)
    with pytest.raises(ArtifactError, match="already compiled"):
        compile_artifact(compiled("dinov2", "fp32"), "onnxruntime", "int8", tmp_path / "a", log=lambda m: None)
    with pytest.raises(ArtifactError, match="no manifest.json"):
        compile_artifact(tmp_path / "no-artifact", "onnxruntime", "int8", tmp_path / "a", log=lambda m: None)


def test_dynamic_resolution_compiles_and_validates_at_two_sizes(dinov2_dynamic, tmp_path):
    from edgefm.calibration.data import load

    recipe = registry.family("dinov2").calibration()
    manifest = Manifest.load(dinov2_dynamic)
    _, heldout = recipe.feeds("image_encoder", manifest, dinov2_dynamic, load())
    assert [f["pixel_values"].shape[2:] for f in heldout] == [(224, 224), (280, 336)]
    compiled_manifest = compile_artifact(dinov2_dynamic, "onnxruntime", "int8", tmp_path / "int8", log=lambda m: None)
    assert compiled_manifest.components["image_encoder"].validation["passed"]
    grid = edgefm.load(tmp_path / "int8").patch_features(load().heldout_images[:1], size=(280, 336))
    assert grid.shape == (1, 20, 24, 64)


def test_clip_token_embeddings_are_quantized(compiled, clip_exported):
    """The text encoder's token table is most of its weights: int8 reads it through a DequantizeLinear, int4
    stores it block-quantized (GatherBlockQuantized), and both weigh well below the fp32 export.

    Tensor bytes, not file sizes: in a tiny graph the node structure is a large share of the file. int4 lands near
    int8 here (0.26 each) because the tiny preset's fp32 norms, biases and position table are a quarter of it."""
    graph = onnx.load(str(compiled("clip", "int8") / "text_encoder.onnx")).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    assert any(n.op_type == "Gather" and n.input[0] in dequantized for n in graph.node)
    assert _ops(compiled("clip", "int4") / "text_encoder.onnx")["GatherBlockQuantized"] > 0
    exported = _tensor_bytes(clip_exported / "text_encoder.onnx")
    for precision in ("int8", "int4"):
        assert _tensor_bytes(compiled("clip", precision) / "text_encoder.onnx") < 0.3 * exported, precision


def _tensor_bytes(path) -> int:
    graph = onnx.load(str(path)).graph
    constants = [a.t for n in graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    return sum(onnx.numpy_helper.to_array(t).nbytes for t in [*graph.initializer, *constants])
