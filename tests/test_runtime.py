"""The runtime: feed checks, refusal of bad artifacts, and task helpers vs the transformers pipeline."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import edgefm
from edgefm.contract import registry
from edgefm.contract.errors import ArtifactError, FeedError
from edgefm.exporters.base import ExportOptions
from edgefm.runtimes.preprocess import preprocess


def _loaded(family: str, variant: str = "tiny"):
    fam = registry.family(family)
    return fam.load(fam.resolve(None, variant), ExportOptions())


@pytest.mark.parametrize("feeds,message", [
    ({"pixels": np.zeros((1, 3, 224, 224), np.float32)}, r"unknown inputs \['pixels'\], missing inputs \['pixel_values'\]"),
    ({"pixel_values": np.zeros((1, 3, 224, 224), np.float64)}, r"dtype float64; convert with .astype\(np.float32\)"),
    ({"pixel_values": np.zeros((3, 224, 224), np.float32)}, "got 3 dimensions"),
    ({"pixel_values": np.zeros((1, 3, 225, 224), np.float32)}, "axis 2 must be 224"),
    ({"pixel_values": np.zeros((0, 3, 224, 224), np.float32)}, "batch .* must be at least 1"),
    ({"pixel_values": [[0.0]]}, "must be a numpy array"),
])
def test_feed_checks_name_the_input_and_spec(dinov2_exported, feeds, message):
    session = edgefm.load(dinov2_exported)["image_encoder"]
    with pytest.raises(FeedError, match=message) as info:
        session.run(feeds)
    assert "pixel_values: float32[batch, 3, 224, 224]" in str(info.value)


def test_symbolic_dim_rules(dinov2_dynamic, clip_exported):
    session = edgefm.load(dinov2_dynamic)["image_encoder"]
    with pytest.raises(FeedError, match="height=230; it must be a multiple of 14"):
        session.run({"pixel_values": np.zeros((1, 3, 230, 224), np.float32)})
    text = edgefm.load(clip_exported)["text_encoder"]
    with pytest.raises(FeedError, match="at most 77"):
        text.run({"input_ids": np.zeros((1, 78), np.int64)})


@pytest.mark.parametrize("damage,message", [
    (lambda d: (d / "image_encoder.onnx").unlink(), "missing image_encoder.onnx"),
    (lambda d: open(d / "image_encoder.onnx", "ab").write(b"\0"), "does not match the sha256"),
    (lambda d: open(d / "preprocessor_config.json", "a").write(" "), "does not match the sha256"),
    (lambda d: (d / "manifest.json").write_text("{not json"), "not a valid edgefm manifest"),
    (lambda d: (d / "manifest.json").unlink(), "no manifest.json"),
])
def test_damaged_artifacts_are_refused_at_load(dinov2_exported, tmp_path, damage, message):
    copy = tmp_path / "art"
    shutil.copytree(dinov2_exported, copy)
    damage(copy)
    with pytest.raises(ArtifactError, match=message):
        edgefm.load(copy)


def test_newer_manifest_format_is_refused(dinov2_exported, tmp_path):
    copy = tmp_path / "art"
    shutil.copytree(dinov2_exported, copy)
    data = json.loads((copy / "manifest.json").read_text())
    data["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="upgrade edgefm"):
        edgefm.load(copy)


@pytest.mark.parametrize("target", ["onnxruntime", "openvino"])
def test_runtime_imports_no_torch(compiled, photos, target):
    code = ("import sys, edgefm; a = edgefm.load(sys.argv[1]); "
            "r = a.zero_shot(sys.argv[2:], ['a cat', 'a rocket']); print(r.top1); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code, str(compiled("clip", "int8", target)), *map(str, photos[:3])],
                   check=True)


@pytest.mark.parametrize("family,processor", [("clip", "CLIPImageProcessor"), ("dinov2", "BitImageProcessor")])
def test_preprocessing_matches_transformers(family, processor, clip_exported, dinov2_exported, photos):
    manifest = edgefm.load({"clip": clip_exported, "dinov2": dinov2_exported}[family]).manifest
    hf = transformers.AutoImageProcessor.from_pretrained({"clip": clip_exported, "dinov2": dinov2_exported}[family])
    images = [Image.open(p).convert("RGB") for p in photos[:6]]
    expected = np.asarray(hf(images=images, return_tensors="np")["pixel_values"])
    np.testing.assert_allclose(preprocess(images, manifest.task["preprocess"]), expected, atol=1e-5)


def test_clip_pipeline_matches_transformers(clip_exported, photos):
    artifact = edgefm.load(clip_exported)
    loaded = _loaded("clip")
    labels = ["a cat", "a rocket", "an astronaut", "coffee"]
    prompts = [f"a photo of {label}." for label in labels]
    images = [Image.open(p).convert("RGB") for p in photos[:5]]
    inputs = loaded.processor(text=prompts, images=images, return_tensors="pt", padding="max_length",
                              max_length=77, truncation=True)
    assert np.array_equal(artifact.tokenizer(prompts), inputs["input_ids"].numpy())
    with torch.no_grad():
        out = loaded.model(**inputs)
    result = artifact.zero_shot(images, labels)
    np.testing.assert_allclose(result.probs, out.logits_per_image.softmax(-1).numpy(), atol=1e-4)
    np.testing.assert_allclose(artifact.embed_texts(prompts, normalized=False), out.text_embeds.numpy() *
                               np.linalg.norm(artifact.embed_texts(prompts, normalized=False), axis=-1, keepdims=True),
                               atol=1e-4)
    assert result.top1 == [labels[i] for i in out.logits_per_image.argmax(-1).tolist()]


def test_dinov2_pipeline_matches_transformers(dinov2_exported, photos):
    artifact = edgefm.load(dinov2_exported)
    loaded = _loaded("dinov2")
    images = [Image.open(p).convert("RGB") for p in photos[:3]]
    with torch.no_grad():
        out = loaded.model(**loaded.processor(images=images, return_tensors="pt"))
    np.testing.assert_allclose(artifact.embed(images), out.pooler_output.numpy(), atol=1e-4)
    grid = artifact.patch_features(images)
    assert grid.shape == (3, 16, 16, 64)
    np.testing.assert_allclose(grid.reshape(3, 256, 64), out.last_hidden_state[:, 1:].numpy(), atol=1e-4)


def test_dinov2_dynamic_pipeline_sizes(dinov2_dynamic, photos):
    artifact = edgefm.load(dinov2_dynamic)
    assert artifact.patch_features(photos[:2], size=(154, 280)).shape == (2, 11, 20, 64)
    with pytest.raises(FeedError, match="multiple of 14"):
        artifact.embed(photos[:1], size=(150, 150))


def test_bad_images_are_explained(dinov2_exported, tmp_path):
    artifact = edgefm.load(dinov2_exported)
    (tmp_path / "x.png").write_text("no")
    with pytest.raises(FeedError, match="cannot read image"):
        artifact.embed([tmp_path / "x.png"])
    with pytest.raises(FeedError, match="uint8"):
        artifact.embed([np.zeros((10, 10, 3), np.float32)])
    with pytest.raises(FeedError, match="no images"):
        artifact.embed([])


def test_sessions_are_shared_while_held_and_big_graphs_release_memory(dinov2_exported, monkeypatch):
    from edgefm.runtimes import onnxruntime as ort_runtime

    first, again = edgefm.load(dinov2_exported), edgefm.load(dinov2_exported)
    assert again["image_encoder"] is first["image_encoder"]  # one copy of the weights in memory
    assert edgefm.load(dinov2_exported, threads=1)["image_encoder"] is not first["image_encoder"]
    assert first["image_encoder"]._session.get_session_options().enable_cpu_mem_arena  # small graph: arena kept
    monkeypatch.setattr(ort_runtime, "ARENA_MAX_MIB", 0)
    big = edgefm.load(dinov2_exported, threads=3)["image_encoder"]  # options no other test uses: a new session
    assert not big._session.get_session_options().enable_cpu_mem_arena
    forced = edgefm.load(dinov2_exported, memory_arena=True)["image_encoder"]
    assert forced._session.get_session_options().enable_cpu_mem_arena
