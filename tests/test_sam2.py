"""SAM 2 on the tiny preset: graphs vs torch, the image predictor vs transformers Sam2Model, prompt errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from PIL import Image

import edgefm
from edgefm import registry
from edgefm.errors import FeedError
from edgefm.exporters.base import ExportOptions
from edgefm.exporters.sam2 import VARIANTS
from edgefm.manifest import Manifest
from edgefm.runtimes.pipelines.sam2 import bilinear_resize, pixels

COMPONENTS = ("image_encoder", "mask_decoder", "memory_encoder", "memory_attention", "mask_prompt")


@pytest.fixture(scope="module")
def tiny():
    fam = registry.family("sam2")
    return fam, fam.load(fam.resolve(None, "tiny"), ExportOptions())


@pytest.fixture(scope="module")
def hf_image_model(tiny):
    """transformers' image model with the video model's weights (a strict subset of them)."""
    config = transformers.Sam2Config(**{k: VARIANTS["tiny"].config[k] for k in
                                        ("vision_config", "prompt_encoder_config", "mask_decoder_config")})
    model = transformers.Sam2Model(config)
    result = model.load_state_dict(tiny[1].model.state_dict(), strict=False)
    assert not result.missing_keys
    return model.eval()


@pytest.fixture(scope="module", params=["onnxruntime-export", "openvino-fp32"])
def fp32_artifact(request, sam2_exported, tmp_path_factory):
    """The pipelines must match transformers in fp32 on both targets."""
    if request.param == "onnxruntime-export":
        return sam2_exported
    from edgefm.compile_job import compile_artifact

    out = tmp_path_factory.mktemp("sam2-ov") / "fp32"
    compile_artifact(sam2_exported, "openvino", "fp32", out, log=lambda m: None)
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


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
def test_graphs_match_torch_on_fresh_inputs(sam2_exported, tiny, name, dims):
    family, loaded = tiny
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


def test_image_predictor_matches_transformers(fp32_artifact, hf_image_model, photos):
    rng = np.random.default_rng()
    artifact = edgefm.load(fp32_artifact)
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
    from edgefm.compile_job import compile_artifact

    manifest = compile_artifact(sam2_exported, "onnxruntime", "fp32", tmp_path / "fp32", log=lambda m: None)
    assert tuple(manifest.components) == COMPONENTS
    for entry in manifest.components.values():
        assert entry.validation["passed"]
    checks = {c["metric"]: c for c in manifest.components["mask_decoder"].validation["checks"]}
    assert checks["mask_iou"]["value"] >= 0.99 and checks["mask_iou"]["masks"] > 0
    artifact = edgefm.load(tmp_path / "fp32")
    artifact.set_image(np.full((64, 96, 3), 128, np.uint8))
    assert artifact.predict(box=[10, 10, 60, 50]).masks.shape == (3, 64, 96)


def _clip(photo, frames: int):
    """A short clip: a 120x160 window sliding over a real photo."""
    image = np.asarray(Image.open(photo).convert("RGB"))
    return [image[40 + 5 * t:160 + 5 * t, 30 + 7 * t:190 + 7 * t] for t in range(frames)]


def _hf_video(model, clip, task, prompts):
    """transformers Sam2VideoModel on the same pixels: prompts on frame 0, then propagation (offline).

    prompts: {obj_id: (points, labels)} or {obj_id: mask [H, W] bool}."""
    height, width = clip[0].shape[:2]
    pixel_values = np.concatenate([pixels(f, task["preprocess"])[0] for f in clip])
    session = transformers.Sam2VideoInferenceSession(video=torch.from_numpy(pixel_values), video_height=height,
                                                     video_width=width, dtype=torch.float32)
    size = task["image_size"]
    for obj_id, prompt in prompts.items():
        if isinstance(prompt, np.ndarray):
            session.add_mask_inputs(session.obj_id_to_idx(obj_id), 0, torch.from_numpy(prompt.astype(np.float32))[None, None])
            continue
        points, labels = prompt
        coords = torch.tensor(points, dtype=torch.float32) * torch.tensor([size / width, size / height])
        session.add_point_inputs(session.obj_id_to_idx(obj_id), 0, {
            "point_coords": coords[None, None], "point_labels": torch.tensor(labels, dtype=torch.int32)[None, None]})
    session.obj_with_new_inputs = list(prompts)
    with torch.no_grad():
        results = {0: model(inference_session=session, frame_idx=0)}
        for out in model.propagate_in_video_iterator(session, start_frame_idx=0):
            results[out.frame_idx] = out
    return results


@pytest.mark.parametrize("kind", ["points", "masks"])
def test_video_tracker_matches_transformers(fp32_artifact, tiny, photos, kind):
    rng = np.random.default_rng()
    clip = _clip(next(p for p in photos if p.name == "astronaut.png"), 8)
    height, width = clip[0].shape[:2]
    if kind == "points":
        prompts = {1: ((rng.random((1, 2)) * [width, height]).tolist(), [1]),
                   7: ((rng.random((2, 2)) * [width, height]).tolist(), [1, 0])}
    else:  # a rectangle, and an empty mask: an absent object (no-object pointer, occlusion memory)
        y, x = rng.integers(0, 40), rng.integers(0, 60)
        rectangle = np.zeros((height, width), bool)
        rectangle[y:y + 60, x:x + 80] = True
        prompts = {1: rectangle, 7: np.zeros((height, width), bool)}
    artifact = edgefm.load(fp32_artifact)
    reference = _hf_video(tiny[1].model, clip, artifact.manifest.task, prompts)
    tracker = artifact.video_tracker(num_frames=len(clip))
    visible = 0
    for t, frame in enumerate(clip):
        tracker.add_frame(frame)
        if t == 0:
            for obj_id, prompt in prompts.items():
                if kind == "masks":
                    tracker.add_prompt(obj_id, mask=prompt)
                else:
                    tracker.add_prompt(obj_id, *prompt)
        results = tracker.track()
        ref = reference[t]
        for row, obj_id in enumerate(ref.object_ids):
            want = F.interpolate(ref.pred_masks[row:row + 1], size=(height, width), mode="bilinear",
                                 align_corners=False)[0, 0].numpy()
            got = results[obj_id]
            assert iou(got.mask, want > 0) >= 0.99, (t, obj_id)
            median = np.median(want)  # a half-full mask even where the random model covers everything
            if want.min() + 1e-3 < median < want.max() - 1e-3:
                ours = bilinear_resize(got.logits, height, width)
                assert iou(ours > median, want > median) >= 0.99, (t, obj_id)
            # fp32 parity is ~1e-7; tracked logits of the random tiny model are small (~0.05), so the
            # tolerance has to be tight for the check to mean anything
            np.testing.assert_allclose(got.logits, ref.pred_masks[row, 0].numpy(), atol=1e-5)
            visible += int((want > 0).any())
    assert visible >= 4  # masks to compare, not only empty frames


def test_tracker_errors_are_explained(sam2_exported):
    tracker = edgefm.load(sam2_exported).video_tracker()
    with pytest.raises(FeedError, match="call add_frame"):
        tracker.add_prompt(1, [[1, 1]], [1])
    tracker.add_frame(np.zeros((50, 60, 3), np.uint8))
    with pytest.raises(FeedError, match="outside the image"):
        tracker.add_prompt(1, [[70, 10]], [1])
    with pytest.raises(FeedError, match="not both"):
        tracker.add_prompt(1, [[10, 10]], [1], mask=np.ones((50, 60), bool))
    with pytest.raises(FeedError, match=r"frame's shape \[50, 60\]"):
        tracker.add_prompt(1, mask=np.ones((60, 50), bool))


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


def test_video_correction_on_a_tracked_frame_matches_transformers(sam2_exported, tiny, photos):
    """Clicks added on frame 3 after it was tracked: re-decoded with memory, later frames follow."""
    rng = np.random.default_rng()
    clip = _clip(next(p for p in photos if p.name == "chelsea.png"), 7)
    height, width = clip[0].shape[:2]
    task = edgefm.load(sam2_exported).manifest.task
    size = task["image_size"]
    first = {1: (rng.random((1, 2)) * [width, height]).tolist(), 7: (rng.random((1, 2)) * [width, height]).tolist()}
    fix = (rng.random((2, 2)) * [width, height]).tolist()
    pixel_values = np.concatenate([pixels(f, task["preprocess"])[0] for f in clip])
    session = transformers.Sam2VideoInferenceSession(video=torch.from_numpy(pixel_values), video_height=height,
                                                     video_width=width, dtype=torch.float32)

    def add(obj_id, frame, points, labels):
        coords = torch.tensor(points, dtype=torch.float32) * torch.tensor([size / width, size / height])
        session.add_point_inputs(session.obj_id_to_idx(obj_id), frame, {
            "point_coords": coords[None, None], "point_labels": torch.tensor(labels, dtype=torch.int32)[None, None]})
        session.obj_with_new_inputs = list(dict.fromkeys(session.obj_with_new_inputs + [obj_id]))

    model, reference = tiny[1].model, {}
    with torch.no_grad():
        for obj_id, points in first.items():
            add(obj_id, 0, points, [1])
        reference[0] = model(inference_session=session, frame_idx=0)
        for out in model.propagate_in_video_iterator(session, start_frame_idx=0):
            reference[out.frame_idx] = out
            if out.frame_idx == 3:
                break
        add(1, 3, fix, [1, 0])
        reference[3] = model(inference_session=session, frame_idx=3)
        for out in model.propagate_in_video_iterator(session, start_frame_idx=4):
            reference[out.frame_idx] = out

    def run(correct: bool) -> dict:
        tracker, logits = edgefm.load(sam2_exported).video_tracker(num_frames=len(clip)), {}
        for t, frame in enumerate(clip):
            tracker.add_frame(frame)
            if t == 0:
                for obj_id, points in first.items():
                    tracker.add_prompt(obj_id, points, [1])
            results = tracker.track()
            if t == 3 and correct:
                tracker.add_prompt(1, fix, [1, 0])
                results = tracker.track()
            logits[t] = {obj_id: r.logits for obj_id, r in results.items()}
        return logits

    corrected, uncorrected = run(True), run(False)
    worst = 0.0
    for t, ref in reference.items():
        for row, obj_id in enumerate(ref.object_ids):
            np.testing.assert_allclose(corrected[t][obj_id], ref.pred_masks[row, 0].numpy(), atol=1e-5)
            worst = max(worst, float(np.abs(corrected[t][obj_id] - ref.pred_masks[row, 0].numpy()).max()))
    # the clicks matter far beyond the parity error (the tiny model's tracked logits are small, ~0.05)
    assert np.abs(uncorrected[3][1] - reference[3].pred_masks[0, 0].numpy()).max() > 100 * max(worst, 1e-8)
