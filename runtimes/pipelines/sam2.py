"""SAM 2 on an artifact (numpy only): promptable image segmentation and a streaming video tracker.

Prompts are in original-image pixels (x, y) and are rescaled per axis to the model's S x S input,
as the transformers processor does; masks come back at the original resolution.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from PIL import Image

from edgefm.contract.errors import ArtifactError, FeedError
from edgefm.contract.spec import whole_number
from edgefm.runtimes.loader import Artifact
from edgefm.runtimes.preprocess import as_pil

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


class Prediction(NamedTuple):
    masks: np.ndarray  # bool [K, H, W] at the original image resolution
    scores: np.ndarray  # float32 [K] predicted IoU
    logits: np.ndarray  # float32 [K, S/4, S/4] low-res logits (can go back in as mask_input)


def pixels(image, config: dict) -> tuple[np.ndarray, tuple[int, int]]:
    """Image -> float32 [1, 3, S, S] (plain resize, no crop or pad) and the original (height, width)."""
    pil = as_pil(image)
    size = config["size"]
    resized = pil.resize((size, size), resample=_RESAMPLE[config.get("resample", "bilinear")])
    array = np.asarray(resized, np.float32).transpose(2, 0, 1) * np.float32(config["rescale"])
    mean = np.asarray(config["mean"], np.float32).reshape(3, 1, 1)
    std = np.asarray(config["std"], np.float32).reshape(3, 1, 1)
    return ((array - mean) / std)[None].astype(np.float32), (pil.height, pil.width)


def bilinear_resize(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """== torch F.interpolate(mode="bilinear", align_corners=False, antialias=False) on the last two axes."""
    def axis(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        i0 = np.floor(src).astype(np.int64)
        return i0, np.minimum(i0 + 1, n_in - 1), (src - i0).astype(np.float32)

    y0, y1, wy = axis(x.shape[-2], height)
    x0, x1, wx = axis(x.shape[-1], width)
    rows = x[..., y0, :] * (1 - wy)[:, None] + x[..., y1, :] * wy[:, None]
    return (rows[..., x0] * (1 - wx) + rows[..., x1] * wx).astype(np.float32)


def resize_antialiased(x: np.ndarray, size: int) -> np.ndarray:
    """[H, W] -> [size, size]: Pillow's bilinear resize is the (triangle) filter of torch's
    F.interpolate(mode="bilinear", antialias=True), which transformers uses for mask prompts."""
    return np.asarray(Image.fromarray(np.asarray(x, np.float32)).resize((size, size), Image.Resampling.BILINEAR),
                      np.float32)


def select_masks(masks, iou, pointers, multimask: bool, decoder: dict):
    """transformers' token choice on the all-token decoder outputs (rows = prompts / objects).

    multimask: tokens 1-3 (all returned, the best one's pointer); single: token 0 unless its
    stability score is low, then the best of 1-3 (dynamic multimask); the pointer stays token 0's.
    """
    rows = np.arange(len(iou))
    best = iou[:, 1:].argmax(-1) + 1
    if multimask:
        return masks[:, 1:], iou[:, 1:], pointers[rows, best], best - 1
    if not decoder.get("dynamic_multimask_via_stability", True):
        return masks[:, :1], iou[:, :1], pointers[:, 0], np.zeros(len(iou), np.int64)
    first = masks[:, 0].reshape(len(iou), -1)
    delta = decoder["stability_delta"]
    inter, union = (first > delta).sum(-1), (first > -delta).sum(-1)
    stable = np.where(union > 0, inter / np.maximum(union, 1), 1.0) >= decoder["stability_thresh"]
    chosen = np.where(stable, 0, best)
    return masks[rows, chosen][:, None], iou[rows, chosen][:, None], pointers[:, 0], np.zeros(len(iou), np.int64)


def _numbers(value, what: str, example: str) -> np.ndarray:
    """Finite real numbers; strings, None, bools and ragged lists are refused, not converted."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):
        array = None
    if array is None or array.dtype.kind not in "iuf":
        raise FeedError(f"{what} must be numbers like {example}, got {value!r}")
    if not np.isfinite(array).all():
        raise FeedError(f"{what} must be finite numbers like {example}, got {value!r}")
    return array.astype(np.float64)


def _check_inside(xy: np.ndarray, what: str, width: int, height: int) -> None:
    outside = (xy[:, 0] < 0) | (xy[:, 0] > width) | (xy[:, 1] < 0) | (xy[:, 1] > height)
    if outside.any():
        raise FeedError(f"{what} {xy[outside][0].tolist()} is outside the image ({width}x{height} pixels); "
                        "coordinates are (x, y) in pixels of the original image")


def encode_prompt(points, labels, box, has_mask: bool, hw: tuple[int, int], size: int):
    """User prompt -> decoder point_coords [1, N, 2] float32 (model pixels) and point_labels [1, N] int64.

    Token layout as transformers: points, then box corners (labels 2, 3); the graph appends the
    padding point. A mask alone gets one not-a-point (label -1), as Sam2Model does.
    """
    height, width = hw
    coords, codes = [], []
    if (points is None) != (labels is None):
        raise FeedError("points and labels go together: give both (one label per point: 1 foreground, 0 background)")
    if points is not None:
        xy = _numbers(points, "points", "[[x, y], ...]")
        if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) == 0:
            raise FeedError(f"points must have shape [N, 2] like [[x, y], ...], got shape {list(xy.shape)}")
        codes_in = np.asarray(labels)
        if codes_in.dtype.kind not in "iub":
            raise FeedError(f"labels must be integers (1 foreground, 0 background), got dtype {codes_in.dtype}")
        if codes_in.ndim != 1 or len(codes_in) != len(xy):
            raise FeedError(f"got {codes_in.size} labels for {len(xy)} points; give exactly one label per point")
        if not np.isin(codes_in, (0, 1)).all():
            raise FeedError(f"labels must be 1 (foreground) or 0 (background), got {codes_in.tolist()}")
        _check_inside(xy, "point", width, height)
        coords.append(xy)
        codes += codes_in.astype(np.int64).tolist()
    if box is not None:
        corners = _numbers(box, "box", "[x1, y1, x2, y2]")
        if corners.shape != (4,):
            raise FeedError(f"box must be 4 numbers [x1, y1, x2, y2], got shape {list(corners.shape)}")
        corners = corners.reshape(2, 2)
        if (corners[0] > corners[1]).any():
            raise FeedError(f"box {box} needs x1 <= x2 and y1 <= y2 ([x1, y1, x2, y2], top-left then bottom-right)")
        _check_inside(corners, "box corner", width, height)
        coords.append(corners)
        codes += [2, 3]
    if not coords:
        if not has_mask:
            raise FeedError("empty prompt: give points (with labels), a box, or mask_input")
        coords, codes = [np.zeros((1, 2))], [-1]
    xy = np.concatenate(coords) * np.array([size / width, size / height])  # per axis, like the processor
    return xy[None].astype(np.float32), np.asarray(codes, np.int64)[None]


def check_mask_input(mask_input, low: int) -> np.ndarray:
    """Previous low-res logits [low, low] (or [1, low, low]) -> decoder mask_input [1, 1, low, low]."""
    if not isinstance(mask_input, np.ndarray) or mask_input.dtype.kind != "f":
        raise FeedError(f"mask_input must be a float numpy array of low-res logits [{low}, {low}] (e.g. a previous "
                        f"prediction's .logits[i]), got {type(mask_input).__name__} "
                        f"{getattr(mask_input, 'dtype', '')}")
    if mask_input.size != low * low or mask_input.shape[-2:] != (low, low):
        raise FeedError(f"mask_input must have shape [{low}, {low}], got {list(mask_input.shape)}")
    if not np.isfinite(mask_input).all():
        raise FeedError("mask_input holds NaN or infinite values; pass finite logits "
                        "(a previous prediction's .logits[i])")
    return mask_input.reshape(1, 1, low, low).astype(np.float32)


class Sam2Artifact(Artifact):
    _image = None  # (decoder features, original (height, width)) of the image set last

    @property
    def task(self) -> dict:
        return self.manifest.task

    def encode(self, image) -> tuple[dict, tuple[int, int]]:
        """Run the image encoder once: all five feature maps and the original (height, width)."""
        pixel_values, hw = pixels(image, self.task["preprocess"])
        return self["image_encoder"].run({"pixel_values": pixel_values}), hw

    def set_image(self, image) -> None:
        """Encode one image (path, PIL image or HxWx3 uint8 array); predict() then prompts it."""
        self._image = self.encode(image)

    def decode(self, features: dict, image_embed: np.ndarray, coords, codes, mask_input=None) -> dict:
        low = self.task["low_res_size"]
        has = mask_input is not None
        return self["mask_decoder"].run({
            "image_embed": image_embed, "feat_s0": features["feat_s0"], "feat_s1": features["feat_s1"],
            "point_coords": coords, "point_labels": codes,
            "mask_input": mask_input if has else np.zeros((1, 1, low, low), np.float32),
            "has_mask_input": np.array([float(has)], np.float32)})

    def predict(self, points=None, labels=None, box=None, mask_input=None, multimask: bool = True) -> Prediction:
        """Masks for one prompt on the image given to set_image().

        points [[x, y], ...] with labels [1 foreground / 0 background, ...], box [x1, y1, x2, y2]
        (original-image pixels), mask_input: low-res logits of an earlier prediction. multimask
        returns 3 candidates (best for ambiguous single clicks), otherwise 1.
        """
        if self._image is None:
            raise FeedError("no image: call set_image(image) before predict()")
        features, hw = self._image
        low = self.task["low_res_size"]
        mask = None if mask_input is None else check_mask_input(mask_input, low)
        coords, codes = encode_prompt(points, labels, box, mask is not None, hw, self.task["image_size"])
        out = self.decode(features, features["image_embed"], coords, codes, mask)
        masks, scores, _, _ = select_masks(out["masks"], out["iou_scores"], out["object_pointers"], multimask,
                                           self.task["decoder"])
        logits = masks[0]
        full = bilinear_resize(logits, *hw) > self.task["mask_threshold"]
        return Prediction(full, scores[0].astype(np.float32), logits.astype(np.float32))

    def video_tracker(self, num_frames: int | None = None) -> VideoTracker:
        """A new streaming video tracker over this artifact's graphs (see VideoTracker)."""
        return VideoTracker(self, num_frames)


def bf16_round(x: np.ndarray) -> np.ndarray:
    """float32 -> nearest-even bfloat16 -> float32, exactly torch's .to(bfloat16).float(): transformers
    stores memories in bf16, and the tracker must see the same values to follow it."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.view(np.float32)


class TrackResult(NamedTuple):
    mask: np.ndarray  # bool [H, W] at the original frame resolution
    logits: np.ndarray  # float32 [S/4, S/4] low-res logits (-1024 where the object is judged absent)
    object_score: float  # > 0: the object is visible in this frame


class VideoTracker:
    """Streaming SAM 2 tracking with the exported graphs, following transformers' Sam2VideoModel.

    Per frame: add_frame(image), then add_prompt(obj_id, ...) for new objects or corrections, then
    track() -> {obj_id: TrackResult}. Each object keeps its own memory bank: every prompted frame
    plus the last num_maskmem - 1 tracked frames, and up to max_object_pointers object pointers.
    `num_frames` (a whole video known in advance) caps the pointer window as transformers does offline.
    """

    def __init__(self, artifact: Sam2Artifact, num_frames: int | None = None):
        valid = whole_number(num_frames) and num_frames >= 1
        if num_frames is not None and not valid:
            raise FeedError(f"num_frames {num_frames!r} must be the video's length, a whole number >= 1, or None "
                            "for a stream of unknown length")
        self.artifact, self.task = artifact, artifact.task
        self.video = self.task["video"]
        limit = self.video["max_object_pointers"]
        self.max_pointers = min(int(num_frames), limit) if num_frames else limit
        pointer_file = artifact.manifest.asset_path(artifact.directory, self.video["no_object_pointer"])
        try:  # np.load never unpickles (allow_pickle=False); a file that is no float array is refused
            self.no_pointer = np.load(pointer_file).astype(np.float32)
        except (OSError, ValueError, TypeError, AttributeError, MemoryError) as exc:
            raise ArtifactError(f"cannot read {pointer_file.name} ({str(exc)[:200]}); rebuild the artifact") from None
        self.frame, self.features, self.hw = -1, None, None
        self.objects: dict = {}  # obj_id -> {"cond": {t: out}, "noncond": {t: out}, "tracked": set()}
        self.pending: dict = {}  # obj_id -> prompt for the current frame

    def add_frame(self, image) -> int:
        self.features, self.hw = self.artifact.encode(image)
        self.frame += 1
        self.pending = {}
        keep = self.frame - max(self.video["num_maskmem"], self.max_pointers)
        for state in self.objects.values():  # tracked frames older than both windows are never read again
            for t in [t for t in state["noncond"] if t < keep]:
                del state["noncond"][t]
        return self.frame

    def add_prompt(self, obj_id, points=None, labels=None, box=None, mask=None) -> None:
        """Prompt one object on the current frame: points + labels and/or a box, or a mask [H, W]."""
        if self.features is None:
            raise FeedError("no frame yet: call add_frame(image) before add_prompt()")
        size = self.task["image_size"]
        if mask is not None:
            if points is not None or box is not None:
                raise FeedError("give an object either points/box or a mask on one frame, not both")
            array = np.asarray(mask)
            if array.shape != self.hw or array.dtype.kind not in "bf":
                raise FeedError(f"mask must be a bool or float array of the frame's shape {list(self.hw)}, "
                                f"got {array.dtype} {list(array.shape)}")
            if not np.isfinite(array).all():
                raise FeedError("mask holds NaN or infinite values; pass a bool mask or finite floats (> 0: object)")
            self.pending[obj_id] = ("mask", resize_antialiased(array.astype(np.float32), size)[None, None])
        else:
            coords, codes = encode_prompt(points, labels, box, False, self.hw, size)
            self.pending[obj_id] = ("points", (coords, codes))
        self.objects.setdefault(obj_id, {"cond": {}, "noncond": {}, "tracked": set()})

    def track(self) -> dict:
        if self.features is None:
            raise FeedError("no frame yet: call add_frame(image) before track()")
        t, results, encode = self.frame, {}, []
        for obj_id, state in self.objects.items():
            prompt = self.pending.pop(obj_id, None)
            if prompt is None and not state["cond"] and not state["noncond"]:
                continue  # prompted on an earlier frame that was never tracked: nothing to follow
            if prompt is None and t in state["cond"]:
                out = state["cond"][t]  # prompted on this frame and unchanged since
            else:
                init = prompt is not None and t not in state["tracked"]  # corrections on tracked frames are not
                out = self._mask_output(prompt[1]) if prompt and prompt[0] == "mask" else \
                    self._decode(state, init, prompt[1] if prompt else None)
                out["from_prompt"] = prompt is not None
                (state["cond"] if init else state["noncond"])[t] = out
                if not init:
                    state["tracked"].add(t)
                encode.append(out)
            results[obj_id] = TrackResult(bilinear_resize(out["low"], *self.hw)[0, 0] > self.task["mask_threshold"],
                                          out["low"][0, 0], float(out["score"][0, 0]))
        self._encode_memories(encode)
        return results

    def _decode(self, state: dict, init: bool, prompt) -> dict:
        feats, video = self.features, self.video
        pix = feats["image_embed"] if init else self._condition(state)
        coords, codes = prompt if prompt is not None else (np.zeros((1, 1, 2), np.float32), np.full((1, 1), -1))
        count = 0 if prompt is None else codes.shape[1]
        multimask = (video["multimask_output_in_sam"] and (init or video["multimask_output_for_tracking"])
                     and video["multimask_min_pt_num"] <= count <= video["multimask_max_pt_num"])
        out = self.artifact.decode(feats, pix, coords, codes.astype(np.int64))
        masks, scores, pointer, best = select_masks(out["masks"], out["iou_scores"], out["object_pointers"],
                                                    multimask, self.task["decoder"])
        low = masks[:, best[0]:best[0] + 1] if multimask else masks  # video keeps the best candidate only
        score = out["object_score_logits"]
        present = score > 0
        low = np.where(present[:, :, None, None], low, np.float32(video["no_object_score"])).astype(np.float32)
        pointer = np.where(present, pointer, self.no_pointer).astype(np.float32)
        size = self.task["image_size"]
        return {"low": low, "high": bilinear_resize(low, size, size), "score": score, "pointer": pointer}

    def _mask_output(self, mask: np.ndarray) -> dict:
        """A mask prompt is taken as the output; the decoder only supplies the object pointer."""
        prompt = self.artifact["mask_prompt"].run({"mask": mask})
        mask_input, high = prompt["mask_input"], prompt["high_res_masks"]
        low = resize_antialiased(high[0, 0], self.task["low_res_size"])[None, None]
        feats = self.features
        out = self.artifact.decode(feats, feats["vision_feat"], np.zeros((1, 1, 2), np.float32),
                                   np.full((1, 1), -1, np.int64), mask_input)
        _, _, pointer, _ = select_masks(out["masks"], out["iou_scores"], out["object_pointers"], True,
                                        self.task["decoder"])
        present = bool((mask > 0).any())  # presence from the mask, not the decoder's score
        return {"low": low, "high": high, "score": np.full((1, 1), 10.0 if present else -10.0, np.float32),
                "pointer": (pointer if present else self.no_pointer).astype(np.float32)}

    def _condition(self, state: dict) -> np.ndarray:
        """The current frame's features attended over this object's memories and pointers."""
        t, video = self.frame, self.video
        cond = self._closest_cond(state["cond"])
        memories = [(0, out) for out in cond.values()]
        memories += [(k, state["noncond"][t - k]) for k in range(video["num_maskmem"] - 1, 0, -1)
                     if t - k in state["noncond"]]
        pointers = [(t - f, out) for f, out in state["cond"].items() if f <= t]
        pointers += [(d, state["noncond"][t - d]) for d in range(1, self.max_pointers)
                     if t - d >= 0 and t - d in state["noncond"]]
        feats = self.features
        return self.artifact["memory_attention"].run({
            "vision_feat": feats["vision_feat"], "vision_pos": feats["vision_pos"],
            "memory": np.stack([o["maskmem"] for _, o in memories], 1),
            "memory_pos": np.stack([o["maskmem_pos"] for _, o in memories], 1),
            "memory_tpos_index": np.array([k - 1 for k, _ in memories], np.int64),
            "object_pointers": np.stack([o["pointer"] for _, o in pointers], 1),
            "pointer_tpos": np.array([d / max(self.max_pointers - 1, 1) for d, _ in pointers], np.float32),
        })["pix_feat"]

    def _closest_cond(self, cond: dict) -> dict:
        """transformers' _select_closest_cond_frames (all of them unless max_cond_frame_num caps it)."""
        limit, t = self.video["max_cond_frame_num"], self.frame
        if limit == -1 or len(cond) <= limit:
            return cond
        chosen = [f for f in (max((f for f in cond if f < t), default=None),
                              min((f for f in cond if f >= t), default=None)) if f is not None]
        chosen += sorted((f for f in cond if f not in chosen), key=lambda f: abs(f - t))[:limit - len(chosen)]
        return {f: cond[f] for f in chosen}

    def _encode_memories(self, outs: list[dict]) -> None:
        if not outs:
            return
        feats = self.features
        # transformers encodes a frame's objects in one batch and binarizes all of them when any
        # came from a prompt; followed here so memories match it.
        from_prompt = float(any(o["from_prompt"] for o in outs))
        encoded = self.artifact["memory_encoder"].run({
            "vision_feat": np.repeat(feats["vision_feat"], len(outs), 0),
            "high_res_mask": np.concatenate([o["high"] for o in outs]),
            "object_score_logits": np.concatenate([o["score"] for o in outs]).astype(np.float32),
            "is_mask_from_pts": np.full(len(outs), from_prompt, np.float32)})
        for i, out in enumerate(outs):
            out["maskmem"] = bf16_round(encoded["maskmem_features"][i:i + 1])
            out["maskmem_pos"] = encoded["maskmem_pos_enc"][i:i + 1]
