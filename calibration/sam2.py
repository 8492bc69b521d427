"""SAM 2 feeds: photos for the image encoder; every other graph gets feeds captured from the fp32
export on those photos (encoder features, a few random clicks, the resulting masks and memories),
so calibration and validation see the activations the graphs see in use."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgefm.calibration import sam2_pipeline
from edgefm.calibration.data import CalibrationData
from edgefm.calibration.recipe import CalibrationRecipe, CheckContext
from edgefm.calibration.sam2_pipeline import mask_iou
from edgefm.contract.cache import CompileCache
from edgefm.contract.manifest import Manifest
from edgefm.contract.records import Check


def _capture(manifest: Manifest, directory: Path, image: Path, seed: int, cache: CompileCache) -> dict:
    """One photo through the fp32 graphs: {component: feed}, computed once per job (`cache`)."""
    key = ("sam2 capture", str(Path(directory).resolve()), manifest.source.get("weights_sha256"), image, seed)
    return cache.get(key, lambda: _run_capture(manifest, directory, image, seed, cache))


def _run_capture(manifest: Manifest, directory: Path, image: Path, seed: int, cache: CompileCache) -> dict:
    from edgefm.runtimes.loader import open_sessions
    from edgefm.runtimes.pipelines.sam2 import bilinear_resize, pixels

    sessions, task = open_sessions(directory, manifest, cache=cache), manifest.task
    size, low = task["image_size"], task["low_res_size"]
    rng = np.random.default_rng(seed)
    pixel_values, _ = pixels(image, task["preprocess"])
    enc = sessions["image_encoder"].run({"pixel_values": pixel_values})
    count = int(rng.integers(1, 4))
    labels = rng.integers(0, 2, (1, count)).astype(np.int64)
    labels[0, 0] = 1  # at least one foreground click
    decoder = {"image_embed": enc["image_embed"], "feat_s0": enc["feat_s0"], "feat_s1": enc["feat_s1"],
               "point_coords": (rng.random((1, count, 2)) * size).astype(np.float32), "point_labels": labels,
               "mask_input": np.zeros((1, 1, low, low), np.float32), "has_mask_input": np.zeros(1, np.float32)}
    out = sessions["mask_decoder"].run(decoder)
    best = int(out["iou_scores"][0, 1:].argmax()) + 1
    high = bilinear_resize(out["masks"][:, best:best + 1], size, size)
    memory = {"vision_feat": enc["vision_feat"], "high_res_mask": high,
              "object_score_logits": out["object_score_logits"], "is_mask_from_pts": np.ones(1, np.float32)}
    entry = sessions["memory_encoder"].run(memory)
    return {"image_encoder": {"pixel_values": pixel_values}, "mask_decoder": decoder,
            "memory_encoder": memory, "mask_prompt": {"mask": (high > 0).astype(np.float32)},
            "_enc": enc, "_memory": entry, "_pointer": out["object_pointers"][:, best]}


def _attention_feed(current: dict, previous: dict, max_pointers: int) -> dict:
    """The current photo conditioned on its own memory (as a prompted frame) and the previous one."""
    mems = [current["_memory"], previous["_memory"]]
    return {"vision_feat": current["_enc"]["vision_feat"], "vision_pos": current["_enc"]["vision_pos"],
            "memory": np.stack([m["maskmem_features"] for m in mems], 1),
            "memory_pos": np.stack([m["maskmem_pos_enc"] for m in mems], 1),
            "memory_tpos_index": np.array([-1, 0], np.int64),
            "object_pointers": np.stack([current["_pointer"], previous["_pointer"]], 1),
            "pointer_tpos": np.array([0.0, 1.0 / max(max_pointers - 1, 1)], np.float32)}


def _feeds_for(component: str, manifest: Manifest, directory: Path, images: list[Path], offset: int,
               cache: CompileCache) -> list[dict]:
    captured = [_capture(manifest, directory, p, offset + i, cache) for i, p in enumerate(images)]
    if component != "memory_attention":
        return [c[component] for c in captured]
    pointers = manifest.task["video"]["max_object_pointers"]
    return [_attention_feed(c, captured[i - 1], pointers) for i, c in enumerate(captured)]


class Sam2Recipe(CalibrationRecipe):
    def feeds(self, component: str, manifest: Manifest, directory: Path, data: CalibrationData,
              cache: CompileCache | None = None):
        """(calibration feeds, held-out feeds), batch 1 each."""
        cache = CompileCache() if cache is None else cache
        return (_feeds_for(component, manifest, directory, data.calib_images, 0, cache),
                _feeds_for(component, manifest, directory, data.heldout_images, 1000, cache))

    def extra_checks(self, ctx: CheckContext) -> list[Check]:
        """Mask IoU of the compiled decoder vs the fp32 one, every mask token, on held-out photos."""
        if ctx.component != "mask_decoder":
            return []
        _, heldout = self.feeds(ctx.component, ctx.manifest, ctx.directory, ctx.data, ctx.cache)
        ious = []
        for feed in heldout:
            got, ref = ctx.candidate.run(feed)["masks"] > 0, ctx.reference[ctx.component].run(feed)["masks"] > 0
            ious += [mask_iou(g, r) for g, r in zip(got.reshape(-1, *got.shape[2:]), ref.reshape(-1, *ref.shape[2:]))]
        return [Check("mask_iou", float(np.mean(ious)), ctx.gates["mask_iou"],
                      detail={"min": float(np.min(ious)), "masks": len(ious)})]

    def pipeline_checks(self, candidate, reference_dir: Path, data: CalibrationData, gates: dict,
                        cache: CompileCache | None = None) -> list[Check]:
        return sam2_pipeline.pipeline_checks(candidate, reference_dir, data, gates,
                                             CompileCache() if cache is None else cache)


RECIPE = Sam2Recipe()
