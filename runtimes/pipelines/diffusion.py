"""Text to image (and image to image) over a Stable Diffusion artifact, in numpy: no torch on the device.

The loop is diffusers' StableDiffusionPipeline / StableDiffusionXLPipeline: prompts through the
text encoder(s) (SDXL: penultimate hidden states side by side, the pooled embedding and six time
ids), classifier-free guidance as one batch of [negative, positive], the scheduler stepping the
latents, and the VAE decoder. Noise comes from a numpy Generator seeded by `seed`, so a seed gives
the same noise on every runtime and precision (the same image up to what the precision changes),
but not diffusers' torch noise: pass `latents=` to start from the same noise as another implementation.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from edgefm.contract.errors import FeedError
from edgefm.contract.spec import whole_number
from edgefm.runtimes.loader import Artifact
from edgefm.runtimes.preprocess import as_pil
from edgefm.runtimes.schedulers import SCHEDULERS, make_scheduler
from edgefm.runtimes.tokenizer import TextTokenizer


def _prompts(value, what: str) -> list[str]:
    prompts = [value] if isinstance(value, str) else list(value) if value is not None else []
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise FeedError(f"{what} must be a string or a non-empty list of strings, got {value!r}")
    return prompts


def _finite(value, name: str, example: str) -> float:
    """A real number that is not NaN / inf (bools and strings are refused, not converted)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value):
        raise FeedError(f"{name} {value!r} is not a finite number; pass e.g. --{name} {example}")
    return float(value)


def _seed(seed) -> int:
    """numpy's generator takes whole numbers >= 0; it raises a bare ValueError on -1."""
    if not whole_number(seed) or seed < 0:
        raise FeedError(f"seed must be a whole number >= 0, got {seed!r}; pass e.g. --seed 0")
    return int(seed)


def _strength(strength) -> float:
    strength = _finite(strength, "strength", "0.8")
    if not 0 < strength <= 1:
        raise FeedError(f"strength must be in (0, 1], got {strength} (1: ignore the image's content); pass e.g. "
                        "--strength 0.8")
    return strength


def vae_pixels(image, height: int, width: int) -> np.ndarray:
    """An image -> the VAE encoder's input [1, 3, height, width] in [-1, 1] (Lanczos resize, as diffusers)."""
    pil = as_pil(image).resize((width, height), Image.Resampling.LANCZOS)
    return (np.asarray(pil, np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None]


def _check_latents(latents, shape: tuple) -> None:
    if latents is None:
        return
    if not isinstance(latents, np.ndarray) or latents.shape != shape or latents.dtype != np.float32:
        raise FeedError(f"latents must be float32 {list(shape)} (a numpy array), got {type(latents).__name__} "
                        f"{getattr(latents, 'dtype', '')}{list(getattr(latents, 'shape', []))}")
    if not np.isfinite(latents).all():
        raise FeedError("latents hold NaN or infinite values; pass finite starting noise (e.g. standard normal)")


def to_pil(images: np.ndarray) -> list[Image.Image]:
    """[N, H, W, 3] floats in [0, 1] -> PIL images (rounded like diffusers' numpy_to_pil)."""
    return [Image.fromarray((image * 255).round().astype(np.uint8)) for image in images]


class DiffusionArtifact(Artifact):
    @property
    def task(self) -> dict:
        return self.manifest.task

    def tokenizer(self, encoder: str) -> TextTokenizer:
        if not hasattr(self, "_tokenizers"):
            self._tokenizers = {name: TextTokenizer.from_manifest(self.manifest, self.directory, text)
                                for name, text in self.task["text"].items()}
        return self._tokenizers[encoder]

    # -- conditioning ---------------------------------------------------------------------------
    def encode_prompts(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """(encoder_hidden_states [N, 77, D], pooled text embeds [N, P] for SDXL else None)."""
        hidden, pooled = [], None
        for name in self.task["text"]:
            out = self[name].run({"input_ids": self.tokenizer(name)(prompts)})
            hidden.append(out["hidden_states"])
            pooled = out.get("text_embeds", pooled)
        return np.concatenate(hidden, -1), pooled

    def _negative(self, negative: list[str] | None, like: tuple[np.ndarray, np.ndarray | None]):
        # SDXL with no negative prompt conditions on zeros, not on the encoding of "" (force_zeros_for_empty_prompt)
        if negative is None and self.task["force_zeros_for_empty_prompt"]:
            return tuple(None if x is None else np.zeros_like(x) for x in like)
        return self.encode_prompts(negative or [""] * len(like[0]))

    def _unet_feeds(self, positive, negative, guided: bool, height: int, width: int) -> dict:
        pick = (lambda n, p: np.concatenate([n, p])) if guided else (lambda n, p: p)
        feeds = {"encoder_hidden_states": pick(negative[0], positive[0])}
        if self.task["xl"]:
            feeds["text_embeds"] = pick(negative[1], positive[1])
            time_ids = np.array([height, width, 0, 0, height, width], np.float32)  # original size, crop, target
            feeds["time_ids"] = np.tile(time_ids, (len(feeds["text_embeds"]), 1))
        return feeds

    # -- checks ---------------------------------------------------------------------------------
    def _size(self, height: int | None, width: int | None, image=None) -> tuple[int, int]:
        """The requested size; by default the model's, or with a start image its size rounded down to the step."""
        default, step = self.task["default_size"], self.task["vae_scale_factor"] * self.task["latent_multiple"]
        if image is not None:
            image = as_pil(image)
            height = max(image.height // step, 1) * step if height is None else height
            width = max(image.width // step, 1) * step if width is None else width
        height, width = default if height is None else height, default if width is None else width
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, (int, np.integer)) or value < step or value % step:
                raise FeedError(f"{name} {value!r} must be a positive multiple of {step} for this model "
                                f"(VAE factor {self.task['vae_scale_factor']} x UNet downsampling "
                                f"{self.task['latent_multiple']}), e.g. {default}")
        return int(height), int(width)

    def settings(self, steps: int | None = None, guidance: float | None = None, scheduler: str | None = None) -> dict:
        """Steps, guidance and scheduler as asked, the artifact's defaults for what is not given."""
        defaults = self.task["defaults"]
        steps = defaults["steps"] if steps is None else steps
        if not whole_number(steps) or steps < 1:
            raise FeedError(f"steps must be an integer >= 1, got {steps!r}; pass e.g. --steps {defaults['steps']}")
        guidance = _finite(defaults["guidance"] if guidance is None else guidance, "guidance", defaults["guidance"])
        return {"steps": int(steps), "guidance": guidance, "scheduler": scheduler or self.task["scheduler"]["default"]}

    def _scheduler(self, name: str, steps: int):
        if name not in SCHEDULERS:
            raise FeedError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
        return make_scheduler(name, self.task["scheduler"]["config"], steps)

    # -- generation -----------------------------------------------------------------------------
    def generate(self, prompt, negative_prompt=None, steps: int | None = None, guidance: float | None = None,
                 seed: int = 0, height: int | None = None, width: int | None = None, scheduler: str | None = None,
                 latents: np.ndarray | None = None, image=None, strength: float = 0.8,
                 progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Images [N, H, W, 3] as float32 in [0, 1], one per prompt.

        `image` (a path, PIL image or uint8 array) turns this into image to image: it is encoded (at its
        own size rounded down to the model's step unless height / width are given), noised to
        `strength` (0 < strength <= 1) and denoised in the last steps * strength steps."""
        prompts = _prompts(prompt, "prompt")
        negatives = None if negative_prompt is None else _prompts(negative_prompt, "negative_prompt")
        if negatives is not None and len(negatives) not in (1, len(prompts)):
            raise FeedError(f"give one negative prompt or one per prompt ({len(prompts)}), got {len(negatives)}")
        negatives = negatives * len(prompts) if negatives is not None and len(negatives) == 1 else negatives
        chosen = self.settings(steps, guidance, scheduler)
        steps, guidance, scheduler = chosen["steps"], chosen["guidance"], chosen["scheduler"]
        seed, strength = _seed(seed), _strength(strength)
        height, width = self._size(height, width, image)
        sampler = self._scheduler(scheduler, steps)
        rng = np.random.default_rng(seed)
        shape = (len(prompts), self.task["latent_channels"], height // self.task["vae_scale_factor"],
                 width // self.task["vae_scale_factor"])
        _check_latents(latents, shape)
        noise = rng.standard_normal(shape, dtype=np.float32) if latents is None else latents
        start = 0
        if image is None:
            latents = noise * np.float32(sampler.init_noise_sigma)
        else:
            start = steps - min(int(steps * strength), steps)
            if start == steps:
                raise FeedError(f"strength {strength} with {steps} steps leaves no step to run; raise either")
            latents = sampler.add_noise(self.encode_image(image, height, width, rng, len(prompts)), noise, start)

        positive = self.encode_prompts(prompts)
        guided = guidance > 1.0  # diffusers' rule: guidance <= 1 runs the positive prompts only
        negative = self._negative(negatives, positive) if guided else positive
        feeds = self._unet_feeds(positive, negative, guided, height, width)
        total = len(sampler.timesteps) - start
        for done, index in enumerate(range(start, len(sampler.timesteps))):
            batch = np.concatenate([latents, latents]) if guided else latents
            timestep = np.full(len(batch), sampler.timesteps[index], np.float32)
            out = self["unet"].run({"sample": sampler.scale_model_input(batch, index), "timestep": timestep, **feeds})
            pred = out["noise_pred"]
            if guided:
                uncond, cond = np.split(pred, 2)
                pred = uncond + np.float32(guidance) * (cond - uncond)
            latents = sampler.step(pred, index, latents, rng)
            if progress:
                progress(done + 1, total)
        return self.decode(latents)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Latents -> images [N, H, W, 3] in [0, 1]."""
        scaled = (latents / np.float32(self.task["vae_scaling_factor"])).astype(np.float32)
        image = self["vae_decoder"].run({"latent": scaled})["image"]
        return np.clip(image / 2 + 0.5, 0.0, 1.0).transpose(0, 2, 3, 1).astype(np.float32)

    def encode_image(self, image, height: int, width: int, rng: np.random.Generator, count: int = 1) -> np.ndarray:
        """An image -> scaled latents [count, C, h, w]: encoded once, sampled `count` times from the VAE's
        latent distribution."""
        out = self["vae_encoder"].run({"image": vae_pixels(image, height, width)})
        mean, std = (np.repeat(x, count, 0) for x in (out["latent_mean"], np.exp(0.5 * out["latent_logvar"])))
        sample = mean + std * rng.standard_normal(std.shape, dtype=np.float32)
        return (sample * np.float32(self.task["vae_scaling_factor"])).astype(np.float32)
