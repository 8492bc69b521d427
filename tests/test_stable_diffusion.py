"""Stable Diffusion 1.5 / SDXL: graphs, the numpy pipeline against diffusers' pipelines, LoRA fusion,
large-model (external data) export, and clear errors for bad requests."""
from __future__ import annotations

import dataclasses

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image
from sd_reference import psnr, reference_pipeline

import edgefm
from edgefm.contract import registry
from edgefm.contract.errors import EdgefmError
from edgefm.contract.manifest import Manifest
from edgefm.exporters.base import ExportOptions

PARITY_DB = 35.0  # the bar: the edgefm pipeline vs the diffusers pipeline, fp32, tiny


def test_graphs_and_task(sd15_exported, sdxl_exported):
    sd15, sdxl = Manifest.load(sd15_exported), Manifest.load(sdxl_exported)
    assert list(sd15.components) == ["text_encoder", "unet", "vae_encoder", "vae_decoder"]
    assert list(sdxl.components) == ["text_encoder", "text_encoder_2", "unet", "vae_encoder", "vae_decoder"]
    unet = {s.name: s for s in sdxl.components["unet"].inputs}
    assert set(unet) == {"sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"}
    assert unet["sample"].shape == ("batch", 4, "latent_height", "latent_width")
    assert unet["encoder_hidden_states"].shape == ("batch", 77, 96)  # both text encoders side by side
    assert sdxl.components["unet"].options["dims"]["latent_height"]["multiple_of"] == 2
    assert [s.name for s in sdxl.components["text_encoder_2"].outputs] == ["hidden_states", "text_embeds"]
    assert sdxl.task["force_zeros_for_empty_prompt"] and sdxl.task["vae_force_upcast"]
    assert sd15.task["scheduler"]["default"] == "ddim" and sdxl.task["scheduler"]["default"] == "euler"
    for manifest, directory in ((sd15, sd15_exported), (sdxl, sdxl_exported)):
        assert all(e.validation["passed"] for e in manifest.components.values())
        assert all((directory / text["tokenizer"]).is_file() for text in manifest.task["text"].values())
    assert sdxl.task["text"]["text_encoder_2"]["pad_id"] != sdxl.task["text"]["text_encoder"]["pad_id"]  # "!" vs eos


CASES = [("sd15", "DDIMScheduler", "ddim"), ("sd15", "EulerDiscreteScheduler", "euler"),
         ("sdxl", "EulerDiscreteScheduler", "euler"), ("sdxl", "DDIMScheduler", "ddim")]


@pytest.mark.parametrize("family_name,scheduler_class,scheduler", CASES)
@pytest.mark.parametrize("negative", [None, "blurry, low quality"])
def test_pipeline_matches_diffusers(request, diffusers_tiny, family_name, scheduler_class, scheduler, negative):
    """Same prompt, guidance and initial latents: the numpy loop over ONNX graphs draws diffusers' image.
    SDXL without a negative prompt conditions on zeros; with one, on its encoding."""
    artifact = edgefm.load(request.getfixturevalue(f"{family_name}_exported"))
    family, loaded = diffusers_tiny(family_name)
    pipeline = reference_pipeline(family, loaded, scheduler_class, artifact.task["scheduler"]["config"])
    seed = int(np.random.default_rng().integers(1 << 30))  # fresh each run, in the failure message
    rng = np.random.default_rng(seed)
    height, width, steps = 64, 96, int(rng.integers(3, 7))  # not square: SDXL's time ids are (height, width)
    latents = rng.standard_normal((1, 4, height // 8, width // 8), dtype=np.float32)
    prompt = f"a photo of {rng.choice(['a cat', 'a rocket', 'the moon', 'two horses'])}"
    ref = pipeline(prompt, negative_prompt=negative, num_inference_steps=steps, guidance_scale=7.5, height=height,
                   width=width, latents=torch.from_numpy(latents), output_type="np").images
    got = artifact.generate(prompt, negative, steps=steps, guidance=7.5, height=height, width=width,
                            scheduler=scheduler, latents=latents)
    assert got.shape == ref.shape == (1, height, width, 3)
    assert psnr(got, ref) >= PARITY_DB, f"seed {seed}"
    if family_name == "sdxl" and negative is None:  # the test can fail: "" instead of zeros is another image
        wrong = artifact.generate(prompt, "", steps=steps, guidance=7.5, height=height, width=width,
                                  scheduler=scheduler, latents=latents)
        assert psnr(wrong, ref) < PARITY_DB, f"seed {seed}"


def test_no_guidance_matches_diffusers(sdxl_exported, diffusers_tiny):
    """guidance <= 1 (SDXL-Turbo's setting): one UNet batch, no negative branch, like diffusers."""
    artifact = edgefm.load(sdxl_exported)
    family, loaded = diffusers_tiny("sdxl")
    config = dict(artifact.task["scheduler"]["config"], timestep_spacing="trailing")
    pipeline = reference_pipeline(family, loaded, "EulerDiscreteScheduler", config)
    latents = np.random.default_rng().standard_normal((2, 4, 8, 8), dtype=np.float32)
    prompts = ["a photo of a cat", "a painting of the moon"]
    ref = pipeline(prompts, num_inference_steps=1, guidance_scale=0.0, latents=torch.from_numpy(latents),
                   height=64, width=64, output_type="np").images
    artifact.task["scheduler"]["config"] = config
    got = artifact.generate(prompts, steps=1, guidance=0.0, latents=latents)
    assert psnr(got, ref) >= PARITY_DB


@pytest.mark.parametrize("scheduler_class,scheduler", [("DDIMScheduler", "ddim"), ("EulerDiscreteScheduler", "euler")])
def test_image_to_image_matches_diffusers(sd15_exported, diffusers_tiny, photos, monkeypatch, scheduler_class,
                                          scheduler):
    """diffusers draws the VAE sample and the added noise from torch; both are patched to edgefm's numpy draws.
    The photo is neither square nor the model's size: both keep its size rounded down to the model's step."""
    artifact = edgefm.load(sd15_exported)
    family, loaded = diffusers_tiny("sd15")
    parts = dict(loaded.model.items(), **loaded.processor, safety_checker=None, feature_extractor=None,
                 requires_safety_checker=False,
                 scheduler=getattr(diffusers, scheduler_class).from_config(artifact.task["scheduler"]["config"]))
    pipeline = diffusers.StableDiffusionImg2ImgPipeline(**parts)
    pipeline.set_progress_bar_config(disable=True)
    image = Image.open(photos[1]).convert("RGB").resize((100, 70))  # -> 96 x 64 (multiples of 16)
    seed = int(np.random.default_rng().integers(1 << 30))
    rng = np.random.default_rng(seed)
    noise, vae_noise = (rng.standard_normal((1, 4, 8, 12), dtype=np.float32) for _ in range(2))
    queue = [vae_noise, noise]  # diffusers samples the VAE first, then the noise; edgefm the other way round

    def numpy_randn(shape, generator=None, device=None, dtype=None, layout=None):
        return torch.from_numpy(queue.pop(0)).reshape(shape)

    monkeypatch.setattr(diffusers.models.autoencoders.vae, "randn_tensor", numpy_randn)
    monkeypatch.setattr(diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img, "randn_tensor",
                        numpy_randn)
    ref = pipeline("a photo of a cat", image=image.resize((96, 64)), strength=0.6, num_inference_steps=5,
                   guidance_scale=7.5, output_type="np").images
    got = artifact.generate("a photo of a cat", image=image, strength=0.6, steps=5, guidance=7.5, seed=seed,
                            scheduler=scheduler)
    assert not queue and got.shape == ref.shape == (1, 64, 96, 3) and psnr(got, ref) >= PARITY_DB, f"seed {seed}"


@pytest.mark.slow
def test_seeds_reproduce_across_runtimes(sd15_exported, compiled):
    export = edgefm.load(sd15_exported)
    first, again = export.generate("a cat", steps=3, seed=11), export.generate("a cat", steps=3, seed=11)
    assert np.array_equal(first, again)
    assert psnr(export.generate("a cat", steps=3, seed=12), first) < 30  # another seed, another image
    openvino = edgefm.load(compiled("sd15", "fp32", "openvino")).generate("a cat", steps=3, seed=11)
    assert psnr(openvino, first) >= 40.0
    # LCM adds fresh noise between steps: it comes from the same seeded generator
    lcm = [export.generate("a cat", steps=4, guidance=1.0, scheduler="lcm", seed=s) for s in (11, 11, 12)]
    assert np.array_equal(lcm[0], lcm[1]) and psnr(lcm[2], lcm[0]) < 30


@pytest.mark.parametrize("request_kwargs,message", [
    ({"prompt": []}, "non-empty list"),
    ({"prompt": "a cat", "steps": 0}, "steps must be an integer >= 1"),
    ({"prompt": "a cat", "height": 60}, "height 60 must be a positive multiple of 16"),
    ({"prompt": "a cat", "width": 72}, "width 72 must be a positive multiple of 16"),
    ({"prompt": ["a", "b", "c"], "negative_prompt": ["x", "y"]}, "one negative prompt or one per prompt"),
    ({"prompt": "a cat", "latents": np.zeros((1, 4, 4, 4), np.float32)}, "latents must be float32 [1, 4, 8, 8]"),
    ({"prompt": "a cat", "scheduler": "pndm"}, "unknown scheduler 'pndm'"),
    ({"prompt": "a cat", "image": np.zeros((64, 64, 3), np.uint8), "strength": 0.0}, "strength must be in (0, 1]"),
    ({"prompt": "a cat", "image": np.zeros((64, 64, 3), np.uint8), "strength": 0.1, "steps": 5}, "no step to run"),
])
def test_bad_requests_say_what_is_wrong(sd15_exported, request_kwargs, message):
    with pytest.raises(EdgefmError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        edgefm.load(sd15_exported).generate(**request_kwargs)


def _write_lora(family_name: str, folder, seed: int = 0):
    """A random LoRA on the tiny UNet's attention, saved the way trainers save them; returns the
    model with the adapter still active (the unfused reference). alpha == rank: the diffusers file
    format stores no alpha, and loaders assume alpha == rank."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    family = registry.family(family_name)
    loaded = family.load(family.resolve(None, "tiny"), ExportOptions())
    unet = loaded.model["unet"]
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(seed)
    for name, param in unet.named_parameters():
        if "lora_B" in name:  # peft starts B at zero (a no-op adapter)
            param.data = torch.randn(param.shape, generator=generator) * 0.2
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    getattr(diffusers, family.pipeline_class).save_lora_weights(str(folder), unet_lora_layers=layers,
                                                                safe_serialization=True)
    return family, loaded


def _unet_out(unet, feeds: dict, **kwargs) -> np.ndarray:
    with torch.no_grad():
        return unet(torch.from_numpy(feeds["sample"]), torch.from_numpy(feeds["timestep"]),
                    torch.from_numpy(feeds["encoder_hidden_states"]), return_dict=False, **kwargs)[0].numpy()


def test_lora_is_fused_at_its_scale(tmp_path):
    family, with_adapter = _write_lora("sd15", tmp_path)
    options = ExportOptions(lora=str(tmp_path / "pytorch_lora_weights.safetensors"), lora_scale=0.7)
    fused = family.load(family.resolve(None, "tiny"), options)
    base = family.load(family.resolve(None, "tiny"), ExportOptions())
    assert not any("lora" in name for name, _ in fused.model.named_parameters())  # plain modules again
    unet = next(c for c in family.components(fused, options) if c.name == "unet")
    feeds = unet.make_inputs(np.random.default_rng(), {"batch": 2, "latent_height": 8, "latent_width": 8})
    got = _unet_out(fused.model["unet"], feeds)
    want = _unet_out(with_adapter.model["unet"], feeds, cross_attention_kwargs={"scale": 0.7})
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    assert np.abs(got - _unet_out(base.model["unet"], feeds)).max() > 1e-3  # the LoRA changed the model
    assert fused.weights_sha256 != base.weights_sha256
    task = family.write_assets(fused, tmp_path, options)
    assert task["lora"]["scale"] == 0.7 and task["lora"]["path"].endswith("pytorch_lora_weights.safetensors")


def test_lora_that_does_not_match_is_refused(tmp_path):
    _write_lora("sdxl", tmp_path / "xl")
    family = registry.family("sd15")
    with pytest.raises(EdgefmError, match="does not match this sd15 model"):
        family.load(family.resolve(None, "tiny"), ExportOptions(lora=str(tmp_path / "xl")))
    with pytest.raises(EdgefmError, match="no such file"):
        family.load(family.resolve(None, "tiny"), ExportOptions(lora=str(tmp_path / "missing.safetensors")))
    _write_lora("sd15", tmp_path / "sd15")
    with pytest.raises(EdgefmError, match="changed no weight"):
        family.load(family.resolve(None, "tiny"), ExportOptions(lora=str(tmp_path / "sd15"), lora_scale=0.0))
    with pytest.raises(EdgefmError, match="--lora applies to the diffusion families"):
        registry.family("clip").check_options(ExportOptions(lora=str(tmp_path / "sd15")))


@pytest.mark.slow
def test_large_graphs_export_with_external_data(tmp_path, diffusers_tiny, monkeypatch):
    """Past protobuf's 2 GB a graph keeps its weights in `<name>.onnx.data`; forced here on the tiny VAE decoder."""
    from edgefm.exporters import onnx_export
    from edgefm.runtimes.onnxruntime import OnnxRuntimeSession

    family, loaded = diffusers_tiny("sd15")
    decoder = next(c for c in family.components(loaded, ExportOptions()) if c.name == "vae_decoder")
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 0)
    entry = onnx_export.export_component(decoder, tmp_path)
    assert list(entry.data_files) == ["vae_decoder.onnx.data"] and entry.validation["passed"]
    assert (tmp_path / "vae_decoder.onnx.data").stat().st_size > (tmp_path / "vae_decoder.onnx").stat().st_size
    feeds = decoder.make_inputs(np.random.default_rng(), {"batch": 1, "latent_height": 4, "latent_width": 6})
    got = OnnxRuntimeSession(tmp_path / "vae_decoder.onnx", entry, "vae_decoder").run(feeds)["image"]
    with torch.no_grad():
        want = decoder.module(torch.from_numpy(feeds["latent"])).numpy()
    assert got.shape == (1, 3, 32, 48) and np.abs(got - want).max() <= 1e-3 * np.abs(want).max()
    # ONNX Runtime's Python fusions would hold ~5 copies of such weights: graphs with external data skip them
    from edgefm.contract.spec import Precision
    from edgefm.targets.onnxruntime import TARGET, OnnxRuntimeOptions

    assert [s.name for s in TARGET.schemes(Precision.FP32, OnnxRuntimeOptions(), entry)] == ["unfused"]
    inline = dataclasses.replace(entry, data_files={})
    assert [s.name for s in TARGET.schemes(Precision.FP32, OnnxRuntimeOptions(), inline)] == ["fused", "unfused"]


def test_local_checkpoint_directory_exports(tmp_path, diffusers_tiny):
    """A diffusers-layout save_pretrained() folder loads component by component, with its scheduler config."""
    family, loaded = diffusers_tiny("sdxl")
    pipeline = reference_pipeline(family, loaded, "EulerDiscreteScheduler",
                                  dict(loaded.extra["scheduler"], timestep_spacing="trailing"))
    pipeline.save_pretrained(tmp_path / "checkpoint")
    from_dir = family.load(family.resolve(str(tmp_path / "checkpoint"), None), ExportOptions())
    assert from_dir.weights_sha256 == loaded.weights_sha256
    assert from_dir.extra["scheduler"]["timestep_spacing"] == "trailing"
    assert from_dir.extra["pipeline_config"]["force_zeros_for_empty_prompt"] is True
    with pytest.raises(EdgefmError, match="could not load the text_encoder"):
        family.load(family.resolve(str(tmp_path), None), ExportOptions())


def test_cli_draws_the_pipeline_image(sd15_exported, tmp_path):
    from click.testing import CliRunner

    from edgefm.cli import main

    out = tmp_path / "pictures" / "cat.png"
    result = CliRunner().invoke(main, ["run", str(sd15_exported), "--prompt", "a photo of a cat", "--steps", "3",
                                       "--seed", "5", "--guidance", "6", "-o", str(out)])
    assert result.exit_code == 0, result.output
    want = edgefm.load(sd15_exported).generate("a photo of a cat", steps=3, seed=5, guidance=6.0)
    assert np.array_equal(np.asarray(Image.open(out)), (want[0] * 255).round().astype(np.uint8))
    assert "3 steps with ddim" in result.output
    bad = tmp_path / "bad.png"
    for args, message in [(["--height", "100"], "multiple of 16"), (["--steps", "0"], "0 is not in the range x>=1"),
                          (["--point", "3,4"], "SAM 2 options")]:
        result = CliRunner().invoke(main, ["run", str(sd15_exported), "--prompt", "x", *args, "-o", str(bad)])
        assert result.exit_code == 2 and message in result.output and not bad.exists()


def test_text_to_image_runtime_imports_no_torch(sd15_exported):
    import subprocess
    import sys

    code = ("import sys, edgefm; edgefm.load(sys.argv[1]).generate('a cat', steps=2); "
            "heavy = [m for m in ('torch', 'transformers', 'diffusers') if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code, str(sd15_exported)], check=True)


def test_cli_prompt_on_another_family_is_refused(clip_exported, tmp_path):
    from click.testing import CliRunner

    from edgefm.cli import main

    result = CliRunner().invoke(main, ["run", str(clip_exported), "--prompt", "x", "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "Stable Diffusion 1.5 / SDXL artifacts" in result.output
