"""edgefm's numpy schedulers against diffusers' on the configs SD 1.5 and SDXL ship, every step."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgefm.contract.errors import EdgefmError
from edgefm.runtimes.schedulers import make_scheduler

diffusers = pytest.importorskip("diffusers")

SD15 = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "steps_offset": 1, "set_alpha_to_one": False, "clip_sample": False, "prediction_type": "epsilon",
        "timestep_spacing": "leading"}
REFERENCE = {"ddim": diffusers.DDIMScheduler, "euler": diffusers.EulerDiscreteScheduler, "lcm": diffusers.LCMScheduler}


CASES = [(name, spacing, prediction, steps) for name in ("ddim", "euler")
         for spacing in ("leading", "trailing", "linspace") for prediction in ("epsilon", "v_prediction")
         for steps in (1, 4, 30)]
CASES += [("lcm", "leading", prediction, steps) for prediction in ("epsilon", "v_prediction") for steps in (1, 2, 4, 8)]


@pytest.mark.parametrize("name,spacing,prediction,steps", CASES)
def test_scheduler_matches_diffusers(name, spacing, prediction, steps, monkeypatch):
    config = {**SD15, "timestep_spacing": spacing, "prediction_type": prediction}
    ours = make_scheduler(name, config, steps)
    theirs = REFERENCE[name].from_config(config)
    theirs.set_timesteps(steps)
    seed = int(np.random.default_rng().integers(1 << 30))
    ours_noise, their_noise = np.random.default_rng(seed), np.random.default_rng(seed)  # LCM: the same noise
    monkeypatch.setattr("diffusers.schedulers.scheduling_lcm.randn_tensor", lambda shape, **kwargs: torch.from_numpy(
        their_noise.standard_normal(tuple(shape), dtype=np.float32)))
    np.testing.assert_allclose(ours.timesteps, theirs.timesteps.numpy(), rtol=1e-6)
    assert ours.init_noise_sigma == pytest.approx(float(theirs.init_noise_sigma), rel=1e-5)
    rng = np.random.default_rng()
    sample = rng.standard_normal((2, 4, 8, 8)).astype(np.float32) * ours.init_noise_sigma
    expected = torch.from_numpy(sample.copy())
    for index, t in enumerate(theirs.timesteps):
        output = rng.standard_normal(sample.shape).astype(np.float32)
        _close(ours.scale_model_input(sample, index), theirs.scale_model_input(expected, t).numpy())
        expected = theirs.step(torch.from_numpy(output), t, expected).prev_sample
        sample = ours.step(output, index, sample, ours_noise)
        _close(sample, expected.numpy())


@pytest.mark.parametrize("name", ["ddim", "euler", "lcm"])
@pytest.mark.parametrize("start", [0, 2, 3])
def test_add_noise_matches_diffusers(name, start):
    """Image to image: clean latents noised to the step the loop starts at (diffusers' begin index)."""
    ours, theirs = make_scheduler(name, SD15, 4), REFERENCE[name].from_config(SD15)
    theirs.set_timesteps(4)
    if hasattr(theirs, "set_begin_index"):
        theirs.set_begin_index(start)
    rng = np.random.default_rng()
    sample, noise = (rng.standard_normal((1, 4, 8, 8)).astype(np.float32) for _ in range(2))
    want = theirs.add_noise(torch.from_numpy(sample), torch.from_numpy(noise), theirs.timesteps[start:start + 1])
    _close(ours.add_noise(sample, noise, start), want.numpy())


def _close(got: np.ndarray, want: np.ndarray) -> None:
    """float32 agreement relative to the tensor's scale (elements near 0 come from cancellation)."""
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.abs(want).max()))


@pytest.mark.parametrize("name,config,steps,message", [
    ("heun", SD15, 4, "unknown scheduler 'heun'; choose one of ddim, euler, lcm"),
    ("lcm", SD15, 60, "cannot exceed the 50 steps the LCM model was distilled with"),
    ("ddim", SD15, 0, "steps must be an integer >= 1"),
    ("euler", SD15, 1001, "cannot exceed the model's 1000 training timesteps"),
    ("ddim", {**SD15, "beta_schedule": "squaredcos_cap_v2"}, 4, "beta_schedule 'squaredcos_cap_v2' is not supported"),
    ("euler", {**SD15, "use_karras_sigmas": True}, 4, "use_karras_sigmas is not supported"),
    ("ddim", {**SD15, "rescale_betas_zero_snr": True}, 4, "rescale_betas_zero_snr is not supported"),
    ("euler", {**SD15, "timestep_spacing": "random"}, 4, "timestep_spacing 'random' is not supported"),
])
def test_bad_scheduler_settings_are_explained(name, config, steps, message):
    with pytest.raises(EdgefmError, match=message):
        make_scheduler(name, config, steps)


def test_lcm_refuses_to_invent_noise():
    scheduler = make_scheduler("lcm", SD15, 4)
    sample = np.zeros((1, 4, 8, 8), np.float32)
    with pytest.raises(EdgefmError, match="needs a numpy Generator"):
        scheduler.step(sample, 0, sample)
    assert scheduler.step(sample, 3, sample).shape == sample.shape  # the last step adds none
