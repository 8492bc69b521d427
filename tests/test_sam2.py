"""SAM 2 on the tiny preset: graphs vs torch, the image predictor vs transformers Sam2Model, prompt errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from sam2_reference import iou

import edgefm
from edgefm.contract.errors import FeedError
from edgefm.contract.manifest import Manifest
from edgefm.exporters.base import ExportOptions
from edgefm.exporters.sam2 import VARIANTS
from edgefm.runtimes.pipelines.sam2 import bilinear_resize, pixels

COMPONENTS = ("image_encoder", "mask_decoder", "memory_encoder", "memory_attention", "mask_prompt")


@pytest.fixture(scope="module")
def hf_image_model(sam2_tiny):
    """transformers' image model with the video model's weights (a strict subset of them)."""
    config = transformers.Sam2Config(**{k: VARIANTS["tiny"].config[k] for k in
                                        ("vision_config", "prompt_encoder_config", "mask_decoder_config")})
    model = transformers.Sam2Model(config)
    result = model.load_state_dict(sam2_tiny[1].model.state_dict(), strict=False)
    assert not result.missing_keys
    return model.eval()


def test_manifest_has_every_graph_with_symbolic_dims(sam2_exported):
    manifest = Manifest.load(sam2_exported)
    assert manifest.family == "sam2" and tuple(manifest.components) == COMPONENTS
    for entry in manifest.components.values():
        assert entry.validation["passed"] and entry.validation["reference"] == "torch fp32"
    decoder = manifest.components["mask_decoder"]
    assert decoder.inputs[3].shape == ("batch", "points", 2) and decoder.inputs[4].dtype == "int64"
    attention = manifest.components["memory_attention"]
    assert attention.inputs[2].shape == ("batch", "memories", 64, 8, 8)
    assert attention.inputs[5].shape == ("batch", "pointers", 128)
    video = manifest.task["video"]
    assert (video["num_maskmem"], video["max_object_pointers"], manifest.task["image_size"]) == (7, 16, 128)
    pointer = np.load(sam2_exported / video["no_object_pointer"])
    assert pointer.shape == (1, 128) and np.abs(pointer).max() > 0  # randomised, so parity exercises it


@pytest.mark.parametrize("name,dims", [
    ("image_encoder", {"batch": 2}),
    ("mask_decoder", {"batch": 2, "points": 4}),
    ("memory_encoder", {"batch": 2}),
    ("memory_attention", {"batch": 1, "memories": 5, "pointers": 9}),
    ("mask_prompt", {"batch": 2}),
])
def test_graphs_match_torch_on_fresh_inputs(sam2_exported, sam2_tiny, name, dims):
    family, loaded = sam2_tiny
    component = next(c for c in family.components(loaded, ExportOptions()) if c.name == name)
    feeds = component.make_inputs(np.random.default_rng(), dims)
    got = edgefm.load(sam2_exported)[name].run(feeds)
    with torch.no_grad():
        ref = component.module(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    ref = ref if isinstance(ref, tuple) else (ref,)  # one-output graphs return a tensor
    for spec, expected in zip(component.outputs, ref):
        np.testing.assert_allclose(got[spec.name], expected.numpy(), atol=1e-4, rtol=1e-4)


def _reference(model, pixel_values, hw, points=None, labels=None, box=None, mask=None, multimask=True):
    """transformers Sam2Model on the same pixels, prompts scaled per axis as its processor does."""
    height, width = hw
    scale = torch.tensor([128 / width, 128 / height])
    kwargs = {}
    if points is not None:
        kwargs["input_points"] = (torch.tensor(points, dtype=torch.float32) * scale)[None, None]
        kwargs["input_labels"] = torch.tensor(labels)[None, None]
    if box is not None:
        kwargs["input_boxes"] = (torch.tensor(box, dtype=torch.float32).reshape(2, 2) * scale).reshape(1, 1, 4)
    if mask is not None:
        kwargs["input_masks"] = torch.from_numpy(mask)[None, None]
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(pixel_values), multimask_output=multimask, **kwargs)
    logits = out.pred_masks[0, 0]
    full = F.interpolate(logits[None], size=hw, mode="bilinear", align_corners=False)[0]  # post_process_masks
    return full.numpy(), out.iou_scores[0, 0].numpy(), logits.numpy()


def _check(prediction, reference, count):
    """Masks as users get them (logits > 0) and at each reference mask's median logit: random tiny
    weights often give near-full masks at 0, the median makes every comparison a half-full mask."""
    full, scores, logits = reference
    assert prediction.masks.shape == full.shape and prediction.masks.dtype == bool and len(full) == count
    ours = bilinear_resize(prediction.logits, *full.shape[1:])
    for got, got_logits, want in zip(prediction.masks, ours, full):
        assert iou(got, want > 0) >= 0.99
        median = np.median(want)
        assert iou(got_logits > median, want > median) >= 0.99
    np.testing.assert_allclose(prediction.scores, scores, atol=1e-5)
    np.testing.assert_allclose(prediction.logits, logits, atol=1e-4)  # fp32 parity is ~1e-7


def test_image_predictor_matches_transformers(sam2_fp32, hf_image_model, photos):
    rng = np.random.default_rng()
    artifact = edgefm.load(sam2_fp32)
    for photo in rng.choice(photos, 2, replace=False):
        artifact.set_image(photo)
        pixel_values, hw = pixels(photo, artifact.manifest.task["preprocess"])
        height, width = hw
        count = int(rng.integers(1, 4))
        points = (rng.random((count, 2)) * [width, height]).tolist()
        labels = [1] + rng.integers(0, 2, count - 1).tolist()
        x0, y0 = rng.random(2) * [width / 2, height / 2]
        box = [x0, y0, x0 + width / 3, y0 + height / 3]
        for multimask in (True, False):
            _check(artifact.predict(points, labels, multimask=multimask),
                   _reference(hf_image_model, pixel_values, hw, points, labels, multimask=multimask), 3 if multimask else 1)
        _check(artifact.predict(box=box), _reference(hf_image_model, pixel_values, hw, box=box), 3)
        _check(artifact.predict(points[:1], [1], box=box, multimask=False),
               _reference(hf_image_model, pixel_values, hw, points[:1], [1], box=box, multimask=False), 1)
        previous = artifact.predict(points, labels).logits[0]
        _check(artifact.predict(points, labels, mask_input=previous),
               _reference(hf_image_model, pixel_values, hw, points, labels, mask=previous), 3)
        _check(artifact.predict(mask_input=previous), _reference(hf_image_model, pixel_values, hw, mask=previous), 3)


def test_image_predictor_detects_a_changed_model(sam2_exported, hf_image_model, photos):
    """The parity check can fail: perturb one decoder weight in the reference and it must disagree."""
    artifact = edgefm.load(sam2_exported)
    artifact.set_image(photos[0])
    pixel_values, hw = pixels(photos[0], artifact.manifest.task["preprocess"])
    points = [[hw[1] / 2, hw[0] / 2]]
    weight = hf_image_model.mask_decoder.iou_prediction_head.proj_out.bias
    with torch.no_grad():
        weight += 0.5
    try:
        with pytest.raises(AssertionError):
            _check(artifact.predict(points, [1]), _reference(hf_image_model, pixel_values, hw, points, [1]), 3)
    finally:
        with torch.no_grad():
            weight -= 0.5


def test_masks_come_back_at_the_original_resolution(sam2_exported):
    artifact = edgefm.load(sam2_exported)
    image = np.random.default_rng().integers(0, 255, (90, 210, 3), dtype=np.uint8)
    artifact.set_image(Image.fromarray(image))
    result = artifact.predict([[200, 10], [5, 85]], [1, 0], multimask=False)
    assert result.masks.shape == (1, 90, 210) and result.scores.shape == (1,) and result.logits.shape == (1, 32, 32)
    assert np.array_equal(result.masks[0], bilinear_resize(result.logits, 90, 210)[0] > 0)


@pytest.mark.parametrize("kwargs,message", [
    ({}, "empty prompt: give points"),
    ({"points": [[10, 10]]}, "points and labels go together"),
    ({"points": [[10, 10], [20, 20]], "labels": [1]}, "got 1 labels for 2 points"),
    ({"points": [[10, 10]], "labels": [1, 0]}, "got 2 labels for 1 points"),
    ({"points": [[10, 500]], "labels": [1]}, r"point \[10.0, 500.0\] is outside the image \(300x200 pixels\)"),
    ({"points": [[-1, 5]], "labels": [1]}, "outside the image"),
    ({"points": [10, 10], "labels": [1]}, r"points must have shape \[N, 2\]"),
    ({"points": [["a", "b"]], "labels": [1]}, "points must be numbers"),
    ({"points": [[10, 10]], "labels": [1.0]}, "labels must be integers"),
    ({"points": [[10, 10]], "labels": [3]}, "labels must be 1 .foreground. or 0"),
    ({"box": [10, 10, 400, 50]}, "box corner .* is outside the image"),
    ({"box": [50, 10, 10, 50]}, "x1 <= x2"),
    ({"box": [1, 2, 3]}, "box must be 4 numbers"),
    ({"mask_input": np.zeros((32, 32), np.int64)}, "mask_input must be a float numpy array"),
    ({"mask_input": np.zeros((64, 64), np.float32)}, r"mask_input must have shape \[32, 32\]"),
])
def test_bad_prompts_are_explained(sam2_exported, kwargs, message):
    artifact = edgefm.load(sam2_exported)
    with pytest.raises(FeedError, match="call set_image"):
        artifact.predict([[1, 1]], [1])
    artifact.set_image(np.zeros((200, 300, 3), np.uint8))
    with pytest.raises(FeedError, match=message):
        artifact.predict(**kwargs)


def test_compile_fp32_keeps_masks(sam2_exported, tmp_path):
    from edgefm.jobs.compile import compile_artifact

    manifest = compile_artifact(sam2_exported, "onnxruntime", "fp32", tmp_path / "fp32", log=lambda m: None)
    assert tuple(manifest.components) == COMPONENTS
    for entry in manifest.components.values():
        assert entry.validation["passed"]
    checks = {c["metric"]: c for c in manifest.components["mask_decoder"].validation["checks"]}
    assert checks["mask_iou"]["value"] >= 0.99 and checks["mask_iou"]["masks"] > 0
    artifact = edgefm.load(tmp_path / "fp32")
    artifact.set_image(np.full((64, 96, 3), 128, np.uint8))
    assert artifact.predict(box=[10, 10, 60, 50]).masks.shape == (3, 64, 96)


@pytest.mark.parametrize("shape,size", [((128, 128), 32), ((120, 160), 128), ((97, 211), 64)])
def test_mask_resizes_match_torch(shape, size):
    from edgefm.runtimes.pipelines.sam2 import resize_antialiased

    x = np.random.default_rng().standard_normal(shape).astype(np.float32)
    want = F.interpolate(torch.from_numpy(x)[None, None], size=(size, size), mode="bilinear", align_corners=False,
                         antialias=True)[0, 0].numpy()
    np.testing.assert_allclose(resize_antialiased(x, size), want, atol=1e-5)
    want = F.interpolate(torch.from_numpy(x)[None, None], size=(size, 2 * size), mode="bilinear",
                         align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(bilinear_resize(x, size, 2 * size), want, atol=1e-5)


def _complex_rope(theta: float, calls: list):
    """SAM 2's original rotary encoding (sam2/modeling/position_encoding.py): axial frequencies as unit
    complex numbers multiplied into (even, odd) pairs. It does not export (ONNX has no complex
    tensors); here it replaces transformers' real-valued cos/sin form to prove the two are equal."""
    def apply(q, k, cos, sin, num_k_exclude_rope=0, repeat_freqs_k=False):
        calls.append(k.shape[-2])
        dim, side = q.shape[-1], int(round(q.shape[-2] ** 0.5))
        t = torch.arange(side * side, dtype=torch.float32)
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 4)[: dim // 4].float() / dim))
        angles = torch.cat([torch.outer(t % side, freqs), torch.outer(torch.div(t, side, rounding_mode="floor"),
                                                                      freqs)], -1)
        cis = torch.polar(torch.ones_like(angles), angles)

        def rotate(x, cis):
            pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2).contiguous())
            return torch.view_as_real(pairs * cis).flatten(-2)

        rotated = k.shape[-2] - num_k_exclude_rope
        k_rot = k[..., :rotated, :]
        if rotated:
            k_rot = rotate(k_rot, cis.repeat(rotated // cis.shape[0], 1) if repeat_freqs_k else cis)
        return rotate(q, cis).type_as(q), torch.cat([k_rot.type_as(k), k[..., rotated:, :]], -2)
    return apply


def test_exported_memory_attention_equals_the_complex_rope_original(sam2_exported, sam2_tiny, monkeypatch):
    """The graph (real-valued RoPE) against torch running SAM 2's complex-number RoPE, object
    pointers (excluded from RoPE) included, on fresh inputs."""
    from transformers.models.sam2_video import modeling_sam2_video

    family, loaded = sam2_tiny
    component = next(c for c in family.components(loaded, ExportOptions()) if c.name == "memory_attention")
    feeds = component.make_inputs(np.random.default_rng(), {"batch": 1, "memories": 3, "pointers": 4})
    with torch.no_grad():
        real = component.module(**{k: torch.from_numpy(v) for k, v in feeds.items()}).numpy()
        calls: list = []
        monkeypatch.setattr(modeling_sam2_video, "apply_rotary_pos_emb_2d",
                            _complex_rope(loaded.model.config.rope_parameters["rope_theta"], calls))
        original = component.module(**{k: torch.from_numpy(v) for k, v in feeds.items()}).numpy()
    assert calls  # the complex form really ran (self- and cross-attention of every layer)
    np.testing.assert_allclose(real, original, atol=1e-5, rtol=1e-5)
    got = edgefm.load(sam2_exported)["memory_attention"].run(feeds)["pix_feat"]
    np.testing.assert_allclose(got, original, atol=1e-4, rtol=1e-4)
