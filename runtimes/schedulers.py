"""Diffusion schedulers in numpy, for a text-to-image runtime without torch.

diffusers' schedulers are torch code, and a device app has no torch, so DDIM, Euler and LCM (for
few-step distilled models) are written here from the scheduler_config.json that Stable Diffusion
checkpoints ship. Tests compare every timestep, scaled input and step with diffusers'
DDIMScheduler, EulerDiscreteScheduler and LCMScheduler on the SD 1.5 config.

    scheduler = make_scheduler("euler", config, steps=30)
    latents = noise * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        eps = unet(scheduler.scale_model_input(latents, i), t, ...)
        latents = scheduler.step(eps, i, latents, rng)   # rng: LCM adds fresh noise between steps
"""
from __future__ import annotations

import numpy as np

from edgefm.contract.errors import EdgefmError

SPACINGS = ("leading", "trailing", "linspace")
PREDICTIONS = ("epsilon", "v_prediction", "sample")


def alphas_cumprod(config: dict) -> np.ndarray:
    """The training noise schedule (float32, as diffusers computes it)."""
    count, schedule = config.get("num_train_timesteps", 1000), config.get("beta_schedule", "linear")
    start, end = config.get("beta_start", 0.0001), config.get("beta_end", 0.02)
    if schedule == "linear":
        betas = np.linspace(start, end, count, dtype=np.float32)
    elif schedule == "scaled_linear":
        betas = np.linspace(start ** 0.5, end ** 0.5, count, dtype=np.float32) ** 2
    else:
        raise EdgefmError(f"beta_schedule {schedule!r} is not supported by edgefm's schedulers "
                          "(linear, scaled_linear: what SD 1.5 and SDXL use)")
    return np.cumprod(1.0 - betas, dtype=np.float32)


def _check(config: dict, steps: int) -> None:
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise EdgefmError(f"steps must be an integer >= 1, got {steps!r}")
    count = config.get("num_train_timesteps", 1000)
    if steps > count:
        raise EdgefmError(f"steps ({steps}) cannot exceed the model's {count} training timesteps")
    spacing, prediction = config.get("timestep_spacing", "leading"), config.get("prediction_type", "epsilon")
    if spacing not in SPACINGS:
        raise EdgefmError(f"timestep_spacing {spacing!r} is not supported; one of {', '.join(SPACINGS)}")
    if prediction not in PREDICTIONS:
        raise EdgefmError(f"prediction_type {prediction!r} is not supported; one of {', '.join(PREDICTIONS)}")
    for option in ("trained_betas", "thresholding", "rescale_betas_zero_snr"):
        if config.get(option):
            raise EdgefmError(f"scheduler option {option} is not supported by edgefm's schedulers; unset it")


def _x0_and_eps(prediction: str, output, sample, alpha: float):
    """The denoised sample and the noise, from what the model predicts."""
    beta = 1.0 - alpha
    if prediction == "epsilon":
        return (sample - beta ** 0.5 * output) / alpha ** 0.5, output
    if prediction == "v_prediction":
        return alpha ** 0.5 * sample - beta ** 0.5 * output, alpha ** 0.5 * output + beta ** 0.5 * sample
    return output, (sample - alpha ** 0.5 * output) / beta ** 0.5


def _spaced_timesteps(config: dict, steps: int) -> np.ndarray:
    """diffusers' timestep_spacing (arXiv 2305.08891, table 2), descending; only linspace gives fractions."""
    count, spacing = config.get("num_train_timesteps", 1000), config.get("timestep_spacing", "leading")
    if spacing == "leading":
        return (np.arange(steps) * (count // steps)).round()[::-1] + config.get("steps_offset", 0)
    if spacing == "trailing":
        return np.arange(count, 0, -count / steps).round() - 1
    return np.linspace(0, count - 1, steps, dtype=np.float32)[::-1]


def _final_alpha(config: dict, alphas: np.ndarray) -> float:
    """The alpha the last step lands on (1.0, or the first training alpha when set_alpha_to_one is off)."""
    return 1.0 if config.get("set_alpha_to_one", True) else float(alphas[0])


class DDIM:
    """diffusers' DDIMScheduler with eta = 0 (deterministic)."""

    init_noise_sigma = 1.0

    def __init__(self, config: dict, steps: int):
        _check(config, steps)
        self.config, self.alphas = config, alphas_cumprod(config)
        self.final_alpha = _final_alpha(config, self.alphas)
        self.timesteps = _spaced_timesteps(config, steps).round().astype(np.int64)  # linspace ones get rounded
        self.stride = len(self.alphas) // steps

    def add_noise(self, sample: np.ndarray, noise: np.ndarray, index: int) -> np.ndarray:
        """Image to image: the clean latents noised to the timestep the loop starts at."""
        alpha = float(self.alphas[int(self.timesteps[index])])
        return (alpha ** 0.5 * sample + (1 - alpha) ** 0.5 * noise).astype(np.float32)

    def scale_model_input(self, sample: np.ndarray, index: int) -> np.ndarray:
        return sample

    def step(self, output: np.ndarray, index: int, sample: np.ndarray, rng=None) -> np.ndarray:
        t = int(self.timesteps[index])
        previous = t - self.stride
        alpha = float(self.alphas[t])
        alpha_prev = float(self.alphas[previous]) if previous >= 0 else self.final_alpha
        x0, eps = _x0_and_eps(self.config.get("prediction_type", "epsilon"), output, sample, alpha)
        x0 = _clip(self.config, x0, default=True)
        return (alpha_prev ** 0.5 * x0 + (1.0 - alpha_prev) ** 0.5 * eps).astype(np.float32)


def _clip(config: dict, x0: np.ndarray, default: bool) -> np.ndarray:
    if config.get("clip_sample", default):
        bound = config.get("clip_sample_range", 1.0)
        return np.clip(x0, -bound, bound)
    return x0


class Euler:
    """diffusers' EulerDiscreteScheduler (no churn, linear sigma interpolation, final sigma 0)."""

    def __init__(self, config: dict, steps: int):
        _check(config, steps)
        for flag in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
            if config.get(flag):
                raise EdgefmError(f"{flag} is not supported by edgefm's Euler scheduler; unset it in the config")
        self.config, alphas = config, alphas_cumprod(config)
        self.timesteps = _spaced_timesteps(config, steps).astype(np.float32)
        sigmas = ((1 - alphas) / alphas) ** 0.5
        self.sigmas = np.append(np.interp(self.timesteps, np.arange(len(alphas)), sigmas), 0.0).astype(np.float32)
        top = float(self.sigmas.max())
        leading = config.get("timestep_spacing", "leading") == "leading"
        self.init_noise_sigma = (top ** 2 + 1) ** 0.5 if leading else top

    def add_noise(self, sample: np.ndarray, noise: np.ndarray, index: int) -> np.ndarray:
        return (sample + noise * self.sigmas[index]).astype(np.float32)

    def scale_model_input(self, sample: np.ndarray, index: int) -> np.ndarray:
        return (sample / (float(self.sigmas[index]) ** 2 + 1) ** 0.5).astype(np.float32)

    def step(self, output: np.ndarray, index: int, sample: np.ndarray, rng=None) -> np.ndarray:
        sigma, following = float(self.sigmas[index]), float(self.sigmas[index + 1])
        prediction = self.config.get("prediction_type", "epsilon")
        if prediction == "epsilon":
            x0 = sample - sigma * output
        elif prediction == "v_prediction":
            x0 = output * (-sigma / (sigma ** 2 + 1) ** 0.5) + sample / (sigma ** 2 + 1)
        else:
            x0 = output
        return (sample + (sample - x0) / sigma * (following - sigma)).astype(np.float32)


class LCM:
    """diffusers' LCMScheduler for text to image (strength 1): consistency steps on the distillation
    schedule, with fresh noise between steps drawn from the caller's numpy Generator."""

    init_noise_sigma = 1.0

    def __init__(self, config: dict, steps: int):
        _check(config, steps)
        self.config, self.alphas = config, alphas_cumprod(config)
        original = config.get("original_inference_steps", 50)
        if steps > original:
            raise EdgefmError(f"steps ({steps}) cannot exceed the {original} steps the LCM model was distilled with")
        self.final_alpha = _final_alpha(config, self.alphas)
        distilled = (np.arange(1, original + 1) * (len(self.alphas) // original) - 1)[::-1]
        self.timesteps = distilled[np.floor(np.linspace(0, original, steps, endpoint=False)).astype(np.int64)]

    add_noise = DDIM.add_noise

    def scale_model_input(self, sample: np.ndarray, index: int) -> np.ndarray:
        return sample

    def step(self, output: np.ndarray, index: int, sample: np.ndarray, rng=None) -> np.ndarray:
        t = int(self.timesteps[index])
        last = index == len(self.timesteps) - 1
        previous = t if last else int(self.timesteps[index + 1])
        alpha = float(self.alphas[t])
        alpha_prev = float(self.alphas[previous]) if previous >= 0 else self.final_alpha
        scaled = t * self.config.get("timestep_scaling", 10.0)  # boundary conditions, sigma_data 0.5
        c_skip, c_out = 0.25 / (scaled ** 2 + 0.25), scaled / (scaled ** 2 + 0.25) ** 0.5
        x0, _ = _x0_and_eps(self.config.get("prediction_type", "epsilon"), output, sample, alpha)
        denoised = c_out * _clip(self.config, x0, default=False) + c_skip * sample
        if last:
            return denoised.astype(np.float32)
        if rng is None:
            raise EdgefmError("LCM needs a numpy Generator (rng) for the noise it adds between steps")
        noise = rng.standard_normal(sample.shape, dtype=np.float32)
        return (alpha_prev ** 0.5 * denoised + (1 - alpha_prev) ** 0.5 * noise).astype(np.float32)


SCHEDULERS = {"ddim": DDIM, "euler": Euler, "lcm": LCM}


def make_scheduler(name: str, config: dict, steps: int):
    if name not in SCHEDULERS:
        raise EdgefmError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    return SCHEDULERS[name](config, steps)
