"""SAM 2 video tracking from the exported graphs vs transformers' Sam2VideoModel on the tiny preset."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sam2_reference import ReferenceVideo, clip_of, iou

import edgefm
from edgefm.contract.errors import FeedError
from edgefm.runtimes.pipelines.sam2 import bilinear_resize


def _photo(photos, name):
    return next(p for p in photos if p.name == name)


def _random_points(rng, count, width, height):
    return (rng.random((count, 2)) * [width, height]).tolist()


def _assert_matches(results: dict, reference: dict, hw) -> int:
    """Per object: users' masks agree, the median-thresholded masks agree, the logits agree.
    Returns how many objects were visible (something to compare, not only empty masks)."""
    visible = 0
    for obj_id, want_low in reference.items():
        got = results[obj_id]
        want = F.interpolate(torch.from_numpy(want_low)[None, None], size=hw, mode="bilinear",
                             align_corners=False)[0, 0].numpy()
        assert iou(got.mask, want > 0) >= 0.99, obj_id
        median = np.median(want)  # a half-full mask even where the random model covers everything
        if want.min() + 1e-3 < median < want.max() - 1e-3:
            assert iou(bilinear_resize(got.logits, *hw) > median, want > median) >= 0.99, obj_id
        # fp32 parity is ~1e-7; tracked logits of the random tiny model are small (~0.05), so the
        # tolerance has to be tight for the check to mean anything
        np.testing.assert_allclose(got.logits, want_low, atol=1e-5)
        visible += int((want > 0).any())
    return visible


@pytest.mark.parametrize("kind", ["points", "masks"])
def test_video_tracker_matches_transformers(sam2_fp32, sam2_tiny, photos, kind):
    rng = np.random.default_rng()
    clip = clip_of(_photo(photos, "astronaut.png"), 8)
    height, width = clip[0].shape[:2]
    if kind == "points":
        prompts = {1: {"points": _random_points(rng, 1, width, height), "labels": [1]},
                   7: {"points": _random_points(rng, 2, width, height), "labels": [1, 0]}}
    else:  # a rectangle, and an empty mask: an absent object (no-object pointer, occlusion memory)
        y, x = rng.integers(0, 40), rng.integers(0, 60)
        rectangle = np.zeros((height, width), bool)
        rectangle[y:y + 60, x:x + 80] = True
        prompts = {1: {"mask": rectangle}, 7: {"mask": np.zeros((height, width), bool)}}
    artifact = edgefm.load(sam2_fp32)
    reference = ReferenceVideo(sam2_tiny[1].model, clip, artifact.manifest.task)
    for obj_id, prompt in prompts.items():
        reference.add(obj_id, 0, **prompt)
    reference.run(0)
    reference.propagate(0)
    tracker = artifact.video_tracker(num_frames=len(clip))
    visible = 0
    for t, frame in enumerate(clip):
        tracker.add_frame(frame)
        if t == 0:
            for obj_id, prompt in prompts.items():
                tracker.add_prompt(obj_id, **prompt)
        visible += _assert_matches(tracker.track(), reference.logits(t), (height, width))
    assert visible >= 4  # masks to compare, not only empty frames


def _track(artifact, clip, prompts: dict, retrack: bool) -> dict:
    """prompts: {frame: {obj_id: prompt}}. retrack: track the frame first, then add its prompts and
    track again (a correction after seeing the result); otherwise prompt before tracking."""
    tracker, out = artifact.video_tracker(num_frames=len(clip)), {}
    for t, frame in enumerate(clip):
        tracker.add_frame(frame)
        if t in prompts and retrack and t > 0:
            tracker.track()
        for obj_id, prompt in prompts.get(t, {}).items():
            tracker.add_prompt(obj_id, **prompt)
        out[t] = tracker.track()
    return out


def test_video_correction_on_a_tracked_frame_matches_transformers(sam2_exported, sam2_tiny, photos):
    """Clicks added on frame 3 after it was tracked: re-decoded with memory, later frames follow."""
    rng = np.random.default_rng()
    clip = clip_of(_photo(photos, "chelsea.png"), 7)
    height, width = clip[0].shape[:2]
    artifact = edgefm.load(sam2_exported)
    first = {obj_id: {"points": _random_points(rng, 1, width, height), "labels": [1]} for obj_id in (1, 7)}
    fix = {"points": _random_points(rng, 2, width, height), "labels": [1, 0]}
    reference = ReferenceVideo(sam2_tiny[1].model, clip, artifact.manifest.task)
    for obj_id, prompt in first.items():
        reference.add(obj_id, 0, **prompt)
    reference.run(0)
    reference.propagate(0, stop=3)
    reference.add(1, 3, **fix)
    reference.run(3)
    reference.propagate(4)

    corrected = _track(artifact, clip, {0: first, 3: {1: fix}}, retrack=True)
    uncorrected = _track(artifact, clip, {0: first}, retrack=True)
    worst = 0.0
    for t in range(len(clip)):
        _assert_matches(corrected[t], reference.logits(t), (height, width))
        worst = max(worst, *(float(np.abs(corrected[t][o].logits - want).max())
                             for o, want in reference.logits(t).items()))
    # the clicks matter far beyond the parity error (the tiny model's tracked logits are small, ~0.05)
    assert np.abs(uncorrected[3][1].logits - reference.logits(3)[1]).max() > 100 * max(worst, 1e-8)


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


def test_new_object_on_a_later_frame_matches_transformers(sam2_exported, sam2_tiny, photos):
    """Object 9 first prompted on frame 3 while 1 is tracked: its memory starts there."""
    rng = np.random.default_rng()
    clip = clip_of(_photo(photos, "coffee.png"), 7)
    height, width = clip[0].shape[:2]
    artifact = edgefm.load(sam2_exported)
    first = {"points": _random_points(rng, 1, width, height), "labels": [1]}
    late = {"points": _random_points(rng, 2, width, height), "labels": [1, 1]}
    reference = ReferenceVideo(sam2_tiny[1].model, clip, artifact.manifest.task)
    reference.add(1, 0, **first)
    reference.run(0)
    reference.propagate(0, stop=3)
    reference.add(9, 3, **late)
    reference.run(3)
    reference.propagate(4)
    ours = _track(artifact, clip, {0: {1: first}, 3: {9: late}}, retrack=False)
    for t in range(len(clip)):
        assert set(ours[t]) == ({1} if t < 3 else {1, 9})
        _assert_matches(ours[t], reference.logits(t), (height, width))


@pytest.fixture(scope="module")
def sam2_absent(sam2_tiny, tmp_path_factory):
    """The tiny weights with the object score moved just below zero on tracked frames (prompted
    frames stay just above): exported from a local checkpoint dir, as users export their own."""
    import copy

    from edgefm.jobs.export import export

    model = copy.deepcopy(sam2_tiny[1].model)
    with torch.no_grad():
        model.mask_decoder.pred_obj_score_head.proj_out.bias -= OBJECT_SCORE_SHIFT
    work = tmp_path_factory.mktemp("sam2-absent")
    model.save_pretrained(work / "checkpoint")
    export("sam2", work / "artifact", model=str(work / "checkpoint"), log=lambda m: None)
    return model, work / "artifact"


OBJECT_SCORE_SHIFT = 0.0604  # tiny model: ~0.0607 on prompted frames, ~0.0603 on tracked ones


@pytest.mark.slow
def test_objects_judged_absent_match_transformers(sam2_absent, photos):
    """Scores <= 0: masks are -1024, pointers become the no-object pointer, memories get the
    occlusion embedding; the tracker must take the same branch as transformers on every frame."""
    rng = np.random.default_rng()
    model, directory = sam2_absent
    clip = clip_of(_photo(photos, "astronaut.png"), 6)
    height, width = clip[0].shape[:2]
    artifact = edgefm.load(directory)
    prompts = {obj_id: {"points": _random_points(rng, 1, width, height), "labels": [1]} for obj_id in (1, 2)}
    reference = ReferenceVideo(model, clip, artifact.manifest.task)
    for obj_id, prompt in prompts.items():
        reference.add(obj_id, 0, **prompt)
    reference.run(0)
    reference.propagate(0)
    ours = _track(artifact, clip, {0: prompts}, retrack=False)
    absent = present = 0
    for t in range(len(clip)):
        _assert_matches(ours[t], reference.logits(t), (height, width))
        for result in ours[t].values():
            gone = bool((result.logits == -1024).all())
            assert gone == (result.object_score <= 0)
            absent, present = absent + gone, present + (not gone)
    assert absent and present  # both branches taken
