"""Stable Diffusion feeds and checks (shared by calibration/sd15.py and calibration/sdxl.py).

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
from edgefm.compare import psnr
from edgefm.manifest import Manifest, sha256_file
from edgefm.spec import Check

CAPTURE_STEPS = 4  # UNet inputs per prompt: timesteps spread over the whole schedule
CALIB_PROMPTS = 8  # prompts the UNet is calibrated on (fewer with --calib-size)
CHECK_PROMPTS = 3  # held-out prompts for validation and the end-to-end image check
# The end-to-end check runs the full loop, where UNet errors compound step after step, at the artifact's
# default step count; None means that default (a real-size CPU benchmark may set fewer: recorded and printed).
CHECK_STEPS: int | None = None
_CACHE: dict = {}


class _Recorder:
    """Wraps a session and keeps a copy of every feed it runs."""

    def __init__(self, session, kept: list):
        self._session, self._kept = session, kept

    def run(self, feeds):
        self._kept.append({k: np.array(v) for k, v in feeds.items()})
        return self._session.run(feeds)


def _key(directory: Path) -> str:
    return sha256_file(Path(directory) / "manifest.json")


def _capture(directory: Path, prompts: list[str], seed: int) -> dict:
    """UNet feeds and final latents of the fp32 export's loop over `prompts`, one prompt at a time."""
    import edgefm

    key = (_key(directory), tuple(prompts), seed)
    if key not in _CACHE:
        if len(_CACHE) > 4:
            _CACHE.clear()
        artifact = edgefm.load(directory)
        unet_feeds, decoder_feeds = [], []
        artifact.sessions["unet"] = _Recorder(artifact["unet"], unet_feeds)
        artifact.sessions["vae_decoder"] = _Recorder(artifact["vae_decoder"], decoder_feeds)
        for index, prompt in enumerate(prompts):
            artifact.generate(prompt, steps=CAPTURE_STEPS, seed=seed + index)
        _CACHE[key] = {"unet": unet_feeds, "vae_decoder": decoder_feeds}
    return _CACHE[key]


def _photos(images: list[Path], size: int) -> list[dict]:
    from edgefm.runtimes.diffusion import vae_pixels

    return [{"image": vae_pixels(path, size, size)} for path in images]


def feeds(component: str, manifest: Manifest, directory: Path, data: CalibrationData):
    """(calibration feeds, held-out feeds) for one component."""
    from edgefm.runtimes.tokenizer import TextTokenizer

    calib_prompts, held_prompts = data.calib_prompts[:CALIB_PROMPTS], data.heldout_prompts[:CHECK_PROMPTS]
    if component.startswith("text_encoder"):
        text = manifest.task["text"][component]
        tokenize = TextTokenizer.from_manifest(manifest, directory, text)
        return [{"input_ids": tokenize([p])} for p in data.calib_prompts], [{"input_ids": tokenize(held_prompts)}]
    if component == "vae_encoder":
        size = manifest.task["default_size"]
        return _photos(data.calib_images, size), _photos(data.heldout_images, size)
    return (_capture(directory, calib_prompts, 0)[component], _capture(directory, held_prompts, 1000)[component])


def extra_checks(component, candidate, reference, manifest, directory, data, gates) -> list[Check]:
    """Every output finite: fp16 overflow (the SDXL VAE's known failure) gives inf / NaN, i.e. black images."""
    _, heldout = feeds(component, manifest, directory, data)
    finite = total = 0
    for feed in heldout:
        for value in candidate.run(feed).values():
            finite, total = finite + int(np.isfinite(value).sum()), total + value.size
    return [Check("finite", finite / total, gates["finite"], detail={"values": total})]


def _images(artifact, prompts: list[str], steps: int) -> np.ndarray:
    return np.concatenate([artifact.generate(p, steps=steps, seed=2000 + i) for i, p in enumerate(prompts)])


def pipeline_checks(candidate, reference_dir: Path, data, gates: dict) -> list[Check]:
    """Image PSNR of the loaded `candidate` artifact vs the fp32 export on held-out prompts (same seeds,
    steps, guidance and scheduler)."""
    import edgefm

    prompts = data.heldout_prompts[:CHECK_PROMPTS]
    default = candidate.settings()["steps"]
    steps = CHECK_STEPS or default
    key = ("images", _key(reference_dir), tuple(prompts), steps)
    if key not in _CACHE:
        _CACHE[key] = _images(edgefm.load(reference_dir), prompts, steps)
    got, ref = _images(candidate, prompts, steps), _CACHE[key]
    values = [min(psnr(g, r), 100.0) for g, r in zip(got, ref)]  # identical images: cap inf at 100 dB
    finite = bool(np.isfinite(got).all())
    reduced = {"note": f"at {steps} of the default {default} steps"} if steps != default else {}
    return [Check("psnr", float(np.mean(values)) if finite else 0.0, gates["psnr"],
                  detail={"min": float(np.min(values)), "images": len(values), "steps": steps,
                          "default_steps": default, "all_finite": finite, **reduced})]
