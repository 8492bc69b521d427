"""Stable Diffusion feeds and checks: the recipe of both diffusion families (sd15, sdxl).

Text encoders calibrate on prompts. The UNet sees what it sees in use: its inputs are captured
from the fp32 export's own text-to-image loop, at every step of a schedule spread over the noise
levels, with the artifact's default guidance (a batch of [negative, positive]; Turbo: positive
only); the VAE decoder gets the final latents of
those runs and the VAE encoder the photos. End to end, the compiled artifact's images are compared
with the fp32 export's (same prompts, seeds and steps) by PSNR.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgefm.calibration.data import CalibrationData
from edgefm.calibration.recipe import CalibrationRecipe, CheckContext
from edgefm.contract.cache import CompileCache
from edgefm.contract.compare import psnr
from edgefm.contract.manifest import Manifest, sha256_file
from edgefm.contract.records import Check

CAPTURE_STEPS = 4  # UNet inputs per prompt: timesteps spread over the whole schedule
CALIB_PROMPTS = 8  # prompts the UNet is calibrated on (fewer with --calib-size)
CHECK_PROMPTS = 3  # held-out prompts for validation and the end-to-end image check
# The end-to-end check runs the full loop, where UNet errors compound step after step, at the artifact's
# default step count; None means that default (a real-size CPU benchmark may set fewer: recorded and printed).
CHECK_STEPS: int | None = None


class _Recorder:
    """Wraps a session and keeps a copy of every feed it runs."""

    def __init__(self, session, kept: list):
        self._session, self._kept = session, kept

    def run(self, feeds):
        self._kept.append({k: np.array(v) for k, v in feeds.items()})
        return self._session.run(feeds)


def _key(directory: Path) -> str:
    return sha256_file(Path(directory) / "manifest.json")


def _capture(directory: Path, prompts: list[str], seed: int, cache: CompileCache) -> dict:
    """UNet feeds and final latents of the fp32 export's loop over `prompts`, one prompt at a time (once per
    job: `cache`)."""
    from edgefm.runtimes.loader import load

    def compute() -> dict:
        artifact = load(directory, cache=cache)
        unet_feeds, decoder_feeds = [], []
        artifact.sessions["unet"] = _Recorder(artifact["unet"], unet_feeds)
        artifact.sessions["vae_decoder"] = _Recorder(artifact["vae_decoder"], decoder_feeds)
        for index, prompt in enumerate(prompts):
            artifact.generate(prompt, steps=CAPTURE_STEPS, seed=seed + index)
        return {"unet": unet_feeds, "vae_decoder": decoder_feeds}

    return cache.get(("sd capture", _key(directory), tuple(prompts), seed), compute)


def _photos(images: list[Path], size: int) -> list[dict]:
    from edgefm.runtimes.pipelines.diffusion import vae_pixels

    return [{"image": vae_pixels(path, size, size)} for path in images]


def _images(artifact, prompts: list[str], steps: int) -> np.ndarray:
    return np.concatenate([artifact.generate(p, steps=steps, seed=2000 + i) for i, p in enumerate(prompts)])


class DiffusionRecipe(CalibrationRecipe):
    def feeds(self, component: str, manifest: Manifest, directory: Path, data: CalibrationData,
              cache: CompileCache | None = None):
        """(calibration feeds, held-out feeds) for one component."""
        from edgefm.runtimes.tokenizer import TextTokenizer

        cache = CompileCache() if cache is None else cache
        calib_prompts, held_prompts = data.calib_prompts[:CALIB_PROMPTS], data.heldout_prompts[:CHECK_PROMPTS]
        if component.startswith("text_encoder"):
            text = manifest.task["text"][component]
            tokenize = TextTokenizer.from_manifest(manifest, directory, text)
            return [{"input_ids": tokenize([p])} for p in data.calib_prompts], [{"input_ids": tokenize(held_prompts)}]
        if component == "vae_encoder":
            size = manifest.task["default_size"]
            return _photos(data.calib_images, size), _photos(data.heldout_images, size)
        return (_capture(directory, calib_prompts, 0, cache)[component],
                _capture(directory, held_prompts, 1000, cache)[component])

    def extra_checks(self, ctx: CheckContext) -> list[Check]:
        """Every output finite: fp16 overflow (the SDXL VAE's known failure) gives inf / NaN, i.e. black images."""
        _, heldout = self.feeds(ctx.component, ctx.manifest, ctx.directory, ctx.data, ctx.cache)
        finite = total = 0
        for feed in heldout:
            for value in ctx.candidate.run(feed).values():
                finite, total = finite + int(np.isfinite(value).sum()), total + value.size
        return [Check("finite", finite / total, ctx.gates["finite"], detail={"values": total})]

    def pipeline_checks(self, candidate, reference_dir: Path, data: CalibrationData, gates: dict,
                        cache: CompileCache | None = None) -> list[Check]:
        """Image PSNR of the loaded `candidate` artifact vs the fp32 export on held-out prompts (same seeds,
        steps, guidance and scheduler)."""
        from edgefm.runtimes.loader import load

        cache = CompileCache() if cache is None else cache
        prompts = data.heldout_prompts[:CHECK_PROMPTS]
        default = candidate.settings()["steps"]
        steps = CHECK_STEPS or default
        ref = cache.get(("sd reference images", _key(reference_dir), tuple(prompts), steps),
                        lambda: _images(load(reference_dir, cache=cache), prompts, steps))
        got = _images(candidate, prompts, steps)
        values = [min(psnr(g, r), 100.0) for g, r in zip(got, ref)]  # identical images: cap inf at 100 dB
        finite = bool(np.isfinite(got).all())
        reduced = {"note": f"at {steps} of the default {default} steps"} if steps != default else {}
        return [Check("psnr", float(np.mean(values)) if finite else 0.0, gates["psnr"],
                      detail={"min": float(np.min(values)), "images": len(values), "steps": steps,
                              "default_steps": default, "all_finite": finite, **reduced})]


RECIPE = DiffusionRecipe()
