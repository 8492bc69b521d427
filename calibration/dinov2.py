"""DINOv2 feeds: photos preprocessed at the artifact's resolution (and a second one when dynamic).

The task checks measure what users of the features lose, on views of the held-out photos (several
crops and flips of each): retrieval (does each view's nearest neighbour by CLS embedding stay the
same?) and dense matching (does each patch's nearest patch in another view of the same photo stay
the same?). Both compare the compiled encoder with the fp32 export, each embedding its own views.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgefm.calibration.data import CalibrationData
from edgefm.calibration.recipe import CalibrationRecipe, CheckContext
from edgefm.contract.compare import normalize
from edgefm.contract.manifest import Manifest
from edgefm.contract.records import Check
from edgefm.runtimes.preprocess import as_pil, preprocess

# (share of the shorter side kept, crop centre x, crop centre y, mirrored): the first view is the whole photo
VIEWS = [(1.0, 0.5, 0.5, False), (1.0, 0.5, 0.5, True), (0.8, 0.4, 0.4, False), (0.8, 0.6, 0.6, True),
         (0.7, 0.35, 0.65, False), (0.7, 0.65, 0.35, False), (0.6, 0.5, 0.5, False), (0.6, 0.3, 0.7, True)]
TIE = 0.01  # fp32 cosines closer than this are a tie between two neighbours
MAX_PHOTOS = 16  # views of at most this many held-out photos (8 views each) per check


def views(photos: list) -> list:
    """Square crops (and mirror images) of each photo, as PIL images; VIEWS per photo, in photo order."""
    from PIL import ImageOps

    out = []
    for photo in photos:
        image = as_pil(photo)
        for share, cx, cy, mirrored in VIEWS:
            side = share * min(image.size)
            left = min(max(cx * image.width - side / 2, 0), image.width - side)
            top = min(max(cy * image.height - side / 2, 0), image.height - side)
            crop = image.crop((round(left), round(top), round(left + side), round(top + side)))
            out.append(ImageOps.mirror(crop) if mirrored else crop)
    return out


def _features(session, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    outputs = [session.run({"pixel_values": pixels[i:i + 8]}) for i in range(0, len(pixels), 8)]
    return (normalize(np.concatenate([o["cls_embedding"] for o in outputs])),
            normalize(np.concatenate([o["patch_tokens"] for o in outputs])))


def view_similarity(embeddings: np.ndarray) -> np.ndarray:
    """Cosine between every two views (embeddings normalised); a view is never its own neighbour."""
    similarity = embeddings @ embeddings.T
    np.fill_diagonal(similarity, -np.inf)
    return similarity


def patch_similarity(patches: np.ndarray) -> np.ndarray:
    """[photo, other view, patch of the whole view, patch of the other view] cosine between patches."""
    per_photo = patches.reshape(-1, len(VIEWS), *patches.shape[1:])
    return np.stack([np.einsum("pd,vqd->vpq", photo[0], photo[1:]) for photo in per_photo])


def neighbour_agreement(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(tie-aware, exact) share of nearest-neighbour decisions (argmax over the last axis) that agree.

    Tie-aware: the compiled model's pick counts as agreeing when the fp32 model finds it as similar as its
    own pick, within TIE; swapping two neighbours that close costs the user nothing."""
    got_pick, ref_pick = got.argmax(-1)[..., None], ref.argmax(-1)[..., None]
    chosen, best = np.take_along_axis(ref, got_pick, -1), np.take_along_axis(ref, ref_pick, -1)
    return float((chosen >= best - TIE).mean()), float((got_pick == ref_pick).mean())


class Dinov2Recipe(CalibrationRecipe):
    def feeds(self, component: str, manifest: Manifest, directory: Path, data: CalibrationData, cache=None):
        config = manifest.task["preprocess"]
        calib = [{"pixel_values": preprocess([p], config)} for p in data.calib_images]
        heldout = [{"pixel_values": preprocess(data.heldout_images, config)}]
        if manifest.task.get("dynamic_resolution"):  # also hold the graph to its gate at a wider, larger size
            res, patch = manifest.task["resolution"], manifest.task["patch_size"]
            heldout.append({"pixel_values": preprocess(data.heldout_images, config,
                                                       (res + 4 * patch, res + 8 * patch))})
        return calib, heldout

    def extra_checks(self, ctx: CheckContext) -> list[Check]:
        photos = ctx.data.heldout_images[:MAX_PHOTOS]
        pixels = preprocess(views(photos), ctx.manifest.task["preprocess"])
        got_cls, got_patches = _features(ctx.candidate, pixels)
        ref_cls, ref_patches = _features(ctx.reference[ctx.component], pixels)
        knn, knn_exact = neighbour_agreement(view_similarity(got_cls), view_similarity(ref_cls))
        match, match_exact = neighbour_agreement(patch_similarity(got_patches), patch_similarity(ref_patches))
        detail = {"photos": len(photos), "views": len(pixels), "tie": TIE}
        return [Check("cls_knn_agreement", knn, ctx.gates["cls_knn_agreement"], detail={**detail, "exact": knn_exact}),
                Check("patch_match_agreement", match, ctx.gates["patch_match_agreement"],
                      detail={**detail, "exact": match_exact, "patches": int(got_patches.shape[1])})]


RECIPE = Dinov2Recipe()
