"""SAM 2 end to end: a compiled artifact's image predictor and video tracker against the fp32 export's.

Image: every held-out photo with a click (3 masks), a click pair (1 mask) and a box (3 masks).
Video: a clip made by sliding a window over each of the first two held-out photos, two objects
prompted on frame 0 and tracked through memory. Prompts are seeded by photo, so both artifacts
see the same ones. Masks are compared at the original resolution, thresholded at 0 (what users
get) and at the median of the fp32 logits: random-weight models often give near-full masks at 0,
where any two masks overlap; the median makes every comparison a half-full mask.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgefm.contract.cache import CompileCache
from edgefm.contract.compare import mask_iou
from edgefm.contract.manifest import sha256_file
from edgefm.contract.records import Check

CLIP_FRAMES = 8
VIDEO_PHOTOS = 2


def video_clip(photo, frames: int = CLIP_FRAMES) -> list[np.ndarray]:
    """A window of 60% of the photo sliding 2% down and 3% right per frame (a slow pan)."""
    from edgefm.runtimes.preprocess import as_pil

    image = np.asarray(as_pil(photo))
    height, width = image.shape[:2]
    h, w = int(0.6 * height), int(0.6 * width)
    return [image[int((0.1 + 0.02 * t) * height):][:h, int((0.1 + 0.03 * t) * width):][:, :w] for t in range(frames)]


def _image_logits(artifact, photos: list[Path]) -> list[np.ndarray]:
    """Full-resolution logits of every predicted mask."""
    from edgefm.runtimes.pipelines.sam2 import bilinear_resize
    from edgefm.runtimes.preprocess import as_pil

    out = []
    for index, photo in enumerate(photos):
        rng = np.random.default_rng(index)
        image = as_pil(photo)
        height, width = image.height, image.width
        artifact.set_image(image)
        size = np.array([width, height])
        click, pair = rng.random(2) * size, rng.random((2, 2)) * size
        corner = rng.random(2) * size / 2
        predictions = [artifact.predict([click.tolist()], [1]),
                       artifact.predict(pair.tolist(), [1, 0], multimask=False),
                       artifact.predict(box=[*corner, *(corner + size / 3)])]
        out += [mask for p in predictions for mask in bilinear_resize(p.logits, height, width)]
    return out


def _video_logits(artifact, photos: list[Path]) -> list[np.ndarray]:
    """Full-resolution logits per object per frame."""
    from edgefm.runtimes.pipelines.sam2 import bilinear_resize

    out = []
    for index, photo in enumerate(photos):
        rng = np.random.default_rng(1000 + index)
        clip = video_clip(photo)
        height, width = clip[0].shape[:2]
        size = np.array([width, height])
        prompts = {1: ([(rng.random(2) * size).tolist()], [1]), 2: ((rng.random((2, 2)) * size).tolist(), [1, 0])}
        tracker = artifact.video_tracker(num_frames=len(clip))
        for t, frame in enumerate(clip):
            tracker.add_frame(frame)
            if t == 0:
                for obj_id, (points, labels) in prompts.items():
                    tracker.add_prompt(obj_id, points, labels)
            results = tracker.track()
            out += [bilinear_resize(results[obj_id].logits, height, width) for obj_id in prompts]
    return out


def _reference(reference_dir: Path, photos: list[Path], cache: CompileCache) -> dict:
    """The fp32 export's logits, computed once per job (`cache`), export and photo set."""
    from edgefm.runtimes.loader import load

    def compute() -> dict:
        artifact = load(reference_dir, cache=cache)
        return {"image": _image_logits(artifact, photos), "video": _video_logits(artifact, photos[:VIDEO_PHOTOS])}

    key = ("sam2 reference logits", sha256_file(Path(reference_dir) / "manifest.json"), tuple(str(p) for p in photos))
    return cache.get(key, compute)


def pipeline_checks(candidate, reference_dir: Path, data, gates: dict, cache: CompileCache) -> list[Check]:
    """Mean mask IoU of the loaded `candidate` artifact vs the fp32 export, image and video, at
    threshold 0 and at the fp32 median logit."""
    photos = list(data.heldout_images)
    reference = _reference(reference_dir, photos, cache)
    got = {"image": _image_logits(candidate, photos), "video": _video_logits(candidate, photos[:VIDEO_PHOTOS])}
    checks = []
    for kind in ("image", "video"):
        pairs = list(zip(got[kind], reference[kind]))
        at_zero = [mask_iou(g > 0, r > 0) for g, r in pairs]
        at_median = [mask_iou(g > m, r > m) for g, r in pairs for m in [np.median(r)]]
        # empty reference masks (an object judged absent: all -1024) agree trivially; say how many
        empty = sum(int(not (r > 0).any()) for _, r in pairs)
        for metric, values in (("mask_iou", at_zero), ("mask_iou_median", at_median)):
            checks.append(Check(f"{kind}_{metric}", float(np.mean(values)), gates[metric],
                                detail={"min": float(np.min(values)), "masks": len(values), "empty_in_fp32": empty}))
    return checks
