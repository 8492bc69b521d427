"""Stable Diffusion below fp32: every compile gates the images end to end (PSNR vs the fp32 export),
keeps what breaks them in fp32, and never ships a VAE that overflows fp16."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sd_reference import psnr, reference_pipeline

import edgefm
from edgefm.contract import registry
from edgefm.contract.manifest import Manifest

# prompts and seeds neither calibration nor the compile's own check used
FRESH = [("a watercolor of a lighthouse", 77), ("an old red car", 78), ("a bowl of fruit", 79),
         ("a dog on the beach", 80), ("neon city at night", 81), ("a snowy mountain", 82)]


def _quiet(_message: str) -> None:
    pass


@pytest.mark.slow
@pytest.mark.parametrize("target", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("precision", ["fp16", "int8", "int4"])
def test_sd15_images_pass_their_end_to_end_gate(compiled, sd15_exported, target, precision):
    directory = compiled("sd15", precision, target)
    manifest = Manifest.load(directory)
    record = manifest.pipeline_validation
    gate = registry.family("sd15").pipeline_gates(precision)["psnr"]
    (check,) = record["checks"]
    assert record["passed"] and check["metric"] == "psnr" and gate <= check["value"] < 100  # changed, within gate
    assert check["all_finite"] and check["images"] >= 2
    for name, entry in manifest.components.items():
        assert entry.precision == ("fp32" if name in record["kept_fp32"] else precision), name
        assert {c["metric"] for c in entry.validation["checks"]} == {"cosine", "finite"}
    # independently, on prompts and seeds the compile never saw
    candidate, reference = edgefm.load(directory), edgefm.load(sd15_exported)
    values = [psnr(candidate.generate(p, steps=8, seed=s), reference.generate(p, steps=8, seed=s)) for p, s in FRESH]
    assert np.mean(values) >= gate


@pytest.mark.slow
def test_sdxl_fp16_keeps_the_vae_in_fp32_as_its_config_asks(compiled):
    manifest = Manifest.load(compiled("sdxl", "fp16"))
    record = manifest.pipeline_validation
    assert set(record["kept_fp32"]) == {"vae_encoder", "vae_decoder"}
    assert "force_upcast" in record["kept_fp32"]["vae_decoder"]
    assert manifest.components["unet"].precision == "fp16" and record["passed"]


@pytest.mark.slow
@pytest.mark.parametrize("target", ["onnxruntime", "openvino"])
def test_sdxl_int8_passes_its_end_to_end_gate(compiled, target):
    record = Manifest.load(compiled("sdxl", "int8", target)).pipeline_validation
    assert record["passed"] and record["checks"][0]["value"] >= registry.family("sdxl").pipeline_gates("int8")["psnr"]


@pytest.fixture(scope="module")
def overflowing_vae_checkpoint(tmp_path_factory, diffusers_tiny):
    """A local SD 1.5 checkpoint whose VAE decoder is fine in fp32 but overflows fp16 (activations
    past 65504 after conv_in, the way the real SDXL VAE does); SD 1.5 pipelines never upcast the VAE."""
    import copy

    family, loaded = diffusers_tiny("sd15")
    model = copy.deepcopy(loaded.model)
    decoder = model["vae"].decoder
    with torch.no_grad():
        decoder.conv_in.weight.mul_(3e4)
        decoder.conv_in.bias.mul_(3e4)
    folder = tmp_path_factory.mktemp("overflow") / "checkpoint"
    pipeline = reference_pipeline(family, type(loaded)(model, loaded.processor, "", loaded.extra), "DDIMScheduler",
                                  loaded.extra["scheduler"])
    pipeline.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_fp16_overflow_is_detected_and_the_vae_kept_in_fp32(overflowing_vae_checkpoint, tmp_path):
    from edgefm.jobs.compile import compile_artifact
    from edgefm.jobs.export import export

    exported = export("sd15", tmp_path / "exported", model=str(overflowing_vae_checkpoint), log=_quiet)
    assert exported.source["kind"] == "dir" and not exported.task["vae_force_upcast"]
    latent = np.random.default_rng().standard_normal((1, 4, 8, 8)).astype(np.float32) / 0.18215
    assert np.isfinite(edgefm.load(tmp_path / "exported")["vae_decoder"].run({"latent": latent})["image"]).all()
    manifest = compile_artifact(tmp_path / "exported", "onnxruntime", "fp16", tmp_path / "fp16", log=_quiet)
    record = manifest.pipeline_validation
    assert "vae_decoder" in record["kept_fp32"] and "finite 0.00000" in record["kept_fp32"]["vae_decoder"]
    assert manifest.components["vae_decoder"].precision == "fp32" and manifest.components["unet"].precision == "fp16"
    assert record["passed"] and record["checks"][0]["all_finite"]
    images = edgefm.load(tmp_path / "fp16").generate("a cat", steps=3)
    assert np.isfinite(images).all()


@pytest.mark.slow
def test_validate_reruns_the_image_check(compiled):
    from edgefm.jobs.validate import validate

    directory = compiled("sd15", "int8")
    recorded = Manifest.load(directory).pipeline_validation
    again = validate(directory, log=_quiet).pipeline_validation
    assert again["passed"] and again["checks"][0]["value"] == pytest.approx(recorded["checks"][0]["value"], abs=1e-6)
