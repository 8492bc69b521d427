"""CLIP feeds: photos for the image encoder, prompts for the text encoder; zero-shot agreement check."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgefm.calibration.data import CalibrationData
from edgefm.calibration.recipe import CalibrationRecipe, CheckContext
from edgefm.contract.compare import normalize, top1_agreement
from edgefm.contract.manifest import Manifest
from edgefm.contract.records import Check
from edgefm.runtimes.preprocess import preprocess
from edgefm.runtimes.tokenizer import TextTokenizer


def _pixels(images, manifest: Manifest) -> np.ndarray:
    return preprocess(images, manifest.task["preprocess"])


class ClipRecipe(CalibrationRecipe):
    def feeds(self, component: str, manifest: Manifest, directory: Path, data: CalibrationData, cache=None):
        """(calibration feeds of batch 1, held-out feeds) for one component."""
        if component == "image_encoder":
            calib = [{"pixel_values": _pixels([p], manifest)} for p in data.calib_images]
            return calib, [{"pixel_values": _pixels(data.heldout_images, manifest)}]
        tokenize = TextTokenizer.from_manifest(manifest, directory)
        calib = [{"input_ids": tokenize([p])} for p in data.calib_prompts]
        return calib, [{"input_ids": tokenize(data.heldout_prompts)}]

    def extra_checks(self, ctx: CheckContext) -> list[Check]:
        """Zero-shot top-1 over the photos (does each photo keep its label?) and text-to-image retrieval top-1
        (does each label prompt keep its best photo?).

        The other encoder stays the fp32 reference, so the figures belong to this component alone.
        """
        data, gates = ctx.data, ctx.gates
        pixels = {"pixel_values": _pixels(data.all_images, ctx.manifest)}
        tokenize = TextTokenizer.from_manifest(ctx.manifest, ctx.directory)
        ids = {"input_ids": tokenize([f"a photo of {label}." for label in data.labels])}
        ref_images = normalize(ctx.reference["image_encoder"].run(pixels)["image_embeds"])
        ref_texts = normalize(ctx.reference["text_encoder"].run(ids)["text_embeds"])
        if ctx.component == "image_encoder":
            got = normalize(ctx.candidate.run(pixels)["image_embeds"]) @ ref_texts.T
        else:
            got = ref_images @ normalize(ctx.candidate.run(ids)["text_embeds"]).T
        ref = ref_images @ ref_texts.T
        detail = {"images": len(data.all_images), "labels": len(data.labels)}
        return [Check("zero_shot_top1_agreement", top1_agreement(got, ref), gates["zero_shot_top1_agreement"],
                      detail=detail),
                Check("text_to_image_top1_agreement", top1_agreement(got.T, ref.T),
                      gates["text_to_image_top1_agreement"], detail=detail)]


RECIPE = ClipRecipe()
