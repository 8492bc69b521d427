"""Stable Diffusion 1.5 and SDXL: text encoder(s), UNet, VAE encoder and VAE decoder as separate graphs.

The families (exporters/sd15.py, exporters/sdxl.py) share everything here. A checkpoint is read
component by component with the diffusers / transformers classes (hub id or a local
save_pretrained() directory of the diffusers layout); `tiny` presets build the same classes with
small configs and seeded random weights. LoRA weights are fused with diffusers' own loader.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from edgefm.contract.errors import EdgefmError
from edgefm.contract.spec import TensorSpec
from edgefm.exporters.base import (
    Component,
    ExportOptions,
    LoadedModel,
    ModelFamily,
    Source,
    from_pretrained,
    weights_sha256,
)
from edgefm.exporters.clip import preset_tokenizer

CONTEXT = 77  # tokens per prompt: SD pipelines always pad to the text encoder's full context
# The checkpoint's scheduler -> the numpy scheduler edgefm runs (runtimes/schedulers.py). PNDM (SD 1.5's
# default) and Euler ancestral are not implemented; DDIM and Euler run the same trained noise schedule.
SCHEDULER_NAMES = {"DDIMScheduler": "ddim", "EulerDiscreteScheduler": "euler", "LCMScheduler": "lcm",
                   "EulerAncestralDiscreteScheduler": "euler", "PNDMScheduler": "ddim"}
DEFAULT_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                     "beta_schedule": "scaled_linear", "clip_sample": False, "set_alpha_to_one": False,
                     "steps_offset": 1, "prediction_type": "epsilon", "timestep_spacing": "leading"}
TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16, 32, 32),
                layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8, sample_size=64)
REAL_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
CLIP_L_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   vocab_size=49408, hidden_act="quick_gelu", projection_dim=768)


def tiny_text(hidden: int, projection_dim: int | None = None) -> dict:
    return dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=3, num_attention_heads=4,
                hidden_act="quick_gelu", projection_dim=projection_dim or hidden)


def _preset_tokenizer(pad: str | None):
    """The offline byte-level tokenizer (514 tokens: fits any text config's vocab_size); SDXL's second
    tokenizer pads with "!" like the real one."""
    return preset_tokenizer(model_max_length=CONTEXT, **({"pad_token": pad} if pad else {}))


class DiffusionFamily(ModelFamily):
    """What SD 1.5 and SDXL share; subclasses name their text encoders and UNet inputs."""

    supports_lora = True
    pipeline_class = ""  # diffusers pipeline class: LoRA loading and the tests' reference
    text_encoders: tuple[str, ...] = ()
    xl = False
    default_guidance = 7.5
    # Every output must stay finite (fp16 overflow in the VAE gives NaN images); the image gate is end to end.
    gate_metrics = ("cosine", "finite")
    # PSNR (dB) of the final images vs the fp32 export's pipeline, same prompts, seeds and steps (the
    # artifact's default step count): 35 dB no visible change (fp16); 30 dB close, like a high-quality JPEG.
    pipeline_gate_metrics = ("psnr",)

    # -- loading --------------------------------------------------------------------------------
    def load(self, source: Source, options: ExportOptions) -> LoadedModel:
        import torch

        modules, tokenizers, scheduler, pipeline_config = (
            self._preset(source, options) if source.random_weights else self._checkpoint(source))
        unet, vae = modules["unet"].config, modules["vae"].config
        if unet.get("time_cond_proj_dim"):
            raise EdgefmError("this UNet embeds the guidance scale (time_cond_proj_dim, e.g. LCM-distilled "
                              "checkpoints); edgefm exports UNets of the base architecture: use the base model "
                              "with an LCM-LoRA (--lora) and the lcm scheduler instead")
        if unet.in_channels != vae.latent_channels:
            raise EdgefmError(f"this UNet takes {unet.in_channels} input channels, not the VAE's {vae.latent_channels} "
                              "latent channels (an inpainting or depth checkpoint?); edgefm exports text-to-image "
                              "UNets only")
        model = torch.nn.ModuleDict(modules).eval()
        if options.lora:
            self._fuse_lora(model, tokenizers, options)
        # --model with a known hub id (e.g. stabilityai/sdxl-turbo) gets that variant's step / guidance defaults
        variant = source.variant or next((v.name for v in self.variants.values() if v.hub_id == source.id), None)
        defaults = self.variants[variant].config.get("defaults") if variant else None
        extra = {"scheduler": scheduler, "pipeline_config": pipeline_config,
                 "defaults": defaults or {"steps": 30, "guidance": self.default_guidance}}
        return LoadedModel(model, tokenizers, weights_sha256(model), extra)

    def _preset(self, source: Source, options: ExportOptions):
        import diffusers
        import torch
        import transformers

        config = self.variants[source.variant].config
        modules, tokenizers = {}, {}
        for index, name in enumerate(self.text_encoders):
            text = config[name]
            tokenizer = _preset_tokenizer("!" if name == "text_encoder_2" else None)
            ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, max_position_embeddings=CONTEXT)
            cls = transformers.CLIPTextModelWithProjection if name == "text_encoder_2" else transformers.CLIPTextModel
            torch.manual_seed(options.seed + index)
            modules[name] = cls(transformers.CLIPTextConfig(**{**text, **ids}))
            tokenizers[name.replace("text_encoder", "tokenizer")] = tokenizer
        torch.manual_seed(options.seed + 10)
        modules["unet"] = diffusers.UNet2DConditionModel(**config["unet"])
        torch.manual_seed(options.seed + 11)
        modules["vae"] = diffusers.AutoencoderKL(**config["vae"])
        return modules, tokenizers, dict(config["scheduler"]), dict(config.get("pipeline", {}))

    def _checkpoint(self, source: Source):
        import diffusers
        import torch
        import transformers

        def part(cls, folder: str, **kwargs):
            return from_pretrained(lambda where: cls.from_pretrained(where, subfolder=folder, **kwargs), source,
                                   f"{folder} of the {self.name} checkpoint")

        # fp32 whatever the checkpoint stores (transformers 5 would otherwise keep SDXL's fp16 text encoders)
        modules, tokenizers = {}, {}
        for name in self.text_encoders:
            cls = transformers.CLIPTextModelWithProjection if name == "text_encoder_2" else transformers.CLIPTextModel
            modules[name] = part(cls, name, dtype=torch.float32)
            folder = name.replace("text_encoder", "tokenizer")
            tokenizers[folder] = part(transformers.CLIPTokenizer, folder)
        modules["unet"] = part(diffusers.UNet2DConditionModel, "unet", torch_dtype=torch.float32)
        modules["vae"] = part(diffusers.AutoencoderKL, "vae", torch_dtype=torch.float32)
        scheduler = from_pretrained(lambda where: diffusers.DDIMScheduler.load_config(where, subfolder="scheduler"),
                                    source, "scheduler config")
        pipeline = from_pretrained(diffusers.DiffusionPipeline.load_config, source, "model_index.json")
        return modules, tokenizers, dict(scheduler), dict(pipeline)

    def _fuse_lora(self, model, tokenizers: dict, options: ExportOptions) -> None:
        """Fuse LoRA weights into the UNet and text encoders with diffusers' loader, then drop the adapters."""
        import diffusers

        path = Path(options.lora)
        if importlib.util.find_spec("peft") is None:
            raise EdgefmError("--lora needs peft (diffusers' LoRA loader uses it): pip install 'edgefm[build]'")
        if not path.exists():
            raise EdgefmError(f"--lora {path}: no such file or directory (a .safetensors file or a folder "
                              "holding pytorch_lora_weights.safetensors)")
        before = weights_sha256(model)
        pipeline = getattr(diffusers, self.pipeline_class)(**self._pipeline_parts(model, tokenizers))
        folder, weight_name = (path, None) if path.is_dir() else (path.parent, path.name)
        try:
            pipeline.load_lora_weights(str(folder), weight_name=weight_name)
            pipeline.fuse_lora(lora_scale=options.lora_scale)
            pipeline.unload_lora_weights()
        except (RuntimeError, ValueError, KeyError, OSError) as exc:
            raise EdgefmError(f"--lora {path} does not match this {self.name} model: "
                              f"{str(exc).splitlines()[0][:300]}") from None
        if weights_sha256(model) == before:
            raise EdgefmError(f"--lora {path} changed no weight of this {self.name} model (no LoRA key matched a "
                              "layer, or --lora-scale is 0); check it was trained for this base model")

    def _pipeline_parts(self, model, tokenizers: dict) -> dict:
        import diffusers

        parts = dict(model.items(), **tokenizers, scheduler=diffusers.DDIMScheduler(**DEFAULT_SCHEDULER))
        if not self.xl:
            parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        return parts

    # -- graphs ---------------------------------------------------------------------------------
    def components(self, loaded: LoadedModel, options: ExportOptions) -> list[Component]:
        model = loaded.model
        unet, vae = model["unet"], model["vae"]
        multiple = 2 ** (len(unet.config.block_out_channels) - 1)  # UNet downsamples: latent sizes divide by it
        scale = 2 ** (len(vae.config.block_out_channels) - 1)  # pixels per latent
        channels, default = unet.config.in_channels, unet.config.sample_size
        latent_dims = {"batch": {"default": 1},
                       "latent_height": {"default": default, "multiple_of": multiple},
                       "latent_width": {"default": default, "multiple_of": multiple}}
        pixel_dims = {"batch": {"default": 1}, "height": {"default": default * scale, "multiple_of": scale},
                      "width": {"default": default * scale, "multiple_of": scale}}
        latent_shape = ("batch", channels, "latent_height", "latent_width")
        pixel_shape = ("batch", 3, "height", "width")
        trace = {"batch": 2, "latent_height": 2 * multiple, "latent_width": 3 * multiple}
        checks = [{"batch": 1, "latent_height": 2 * multiple, "latent_width": 2 * multiple},
                  {"batch": 3, "latent_height": 3 * multiple, "latent_width": 5 * multiple}]
        modules = _wrappers(model, self.xl)
        found = [self._text_component(name, modules[name], model[name], loaded.processor)
                 for name in self.text_encoders]
        unet_inputs = [TensorSpec("sample", "float32", latent_shape), TensorSpec("timestep", "float32", ("batch",)),
                       TensorSpec("encoder_hidden_states", "float32", ("batch", CONTEXT, unet.config.cross_attention_dim))]
        if self.xl:
            pooled = model["text_encoder_2"].config.projection_dim
            unet_inputs += [TensorSpec("text_embeds", "float32", ("batch", pooled)),
                            TensorSpec("time_ids", "float32", ("batch", 6))]
        found.append(Component(
            "unet", modules["unet"], unet_inputs, [TensorSpec("noise_pred", "float32", latent_shape)],
            _unet_inputs(unet_inputs, scale), trace, checks, latent_dims))
        latent = [TensorSpec("latent_mean", "float32", latent_shape), TensorSpec("latent_logvar", "float32", latent_shape)]
        found.append(Component(
            "vae_encoder", modules["vae_encoder"], [TensorSpec("image", "float32", pixel_shape)], latent,
            _pixel_inputs, {"batch": 2, "height": 2 * scale, "width": 3 * scale},
            [{"batch": 1, "height": 2 * scale * multiple, "width": 2 * scale * multiple},
             {"batch": 3, "height": 3 * scale, "width": 5 * scale}], pixel_dims))
        found.append(Component(
            "vae_decoder", modules["vae_decoder"], [TensorSpec("latent", "float32", latent_shape)],
            [TensorSpec("image", "float32", ("batch", 3, "height", "width"))],
            _latent_inputs(vae.config.latent_channels, vae.config.scaling_factor),
            {"batch": 2, "latent_height": 2, "latent_width": 3},
            [{"batch": 1, "latent_height": 2 * multiple, "latent_width": 2 * multiple},
             {"batch": 3, "latent_height": 3, "latent_width": 5}],
            {"batch": {"default": 1}, "latent_height": {"default": default}, "latent_width": {"default": default}}))
        return found

    def _text_component(self, name: str, module, encoder, tokenizers: dict) -> Component:
        tokenizer = tokenizers[name.replace("text_encoder", "tokenizer")]
        config = encoder.config
        outputs = [TensorSpec("hidden_states", "float32", ("batch", CONTEXT, config.hidden_size))]
        if name == "text_encoder_2":
            outputs.append(TensorSpec("text_embeds", "float32", ("batch", config.projection_dim)))
        return Component(
            name, module, [TensorSpec("input_ids", "int64", ("batch", CONTEXT), (0, config.vocab_size - 1))], outputs,
            _token_inputs(tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
                          min(config.vocab_size, tokenizer.bos_token_id)),
            {"batch": 2}, [{"batch": 1}, {"batch": 3}], {"batch": {"default": 1}},
            {"model_type": "clip", "num_heads": config.num_attention_heads, "hidden_size": config.hidden_size})

    # -- assets and gates -----------------------------------------------------------------------
    def write_assets(self, loaded: LoadedModel, out_dir: Path, options: ExportOptions) -> dict:
        model, scheduler = loaded.model, loaded.extra["scheduler"]
        text = {}
        for name in self.text_encoders:
            folder = name.replace("text_encoder", "tokenizer")
            tokenizer = loaded.processor[folder]
            tokenizer.backend_tokenizer.save(str(out_dir / f"{folder}.json"))
            text[name] = {"tokenizer": f"{folder}.json", "context_length": CONTEXT,
                          "pad_id": int(tokenizer.pad_token_id)}
        checkpoint_scheduler = scheduler.get("_class_name", "DDIMScheduler")
        config = {k: v for k, v in scheduler.items() if not k.startswith("_")}
        default = SCHEDULER_NAMES.get(checkpoint_scheduler, "ddim")
        if default == "ddim" and checkpoint_scheduler != "DDIMScheduler":
            config.setdefault("clip_sample", False)  # DDIM's own default (clip x0 to +-1) is not the stand-in's
        (out_dir / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2) + "\n")
        unet, vae = model["unet"].config, model["vae"].config
        scale = 2 ** (len(vae.block_out_channels) - 1)
        return {"text": text, "xl": self.xl, "defaults": loaded.extra["defaults"],
                "scheduler": {"default": default,
                              "checkpoint": checkpoint_scheduler, "config": config},
                "latent_channels": vae.latent_channels, "vae_scale_factor": scale,
                "latent_multiple": 2 ** (len(unet.block_out_channels) - 1),
                "default_size": unet.sample_size * scale, "vae_scaling_factor": float(vae.scaling_factor),
                # only diffusers' SDXL pipelines read force_upcast (AutoencoderKL defaults it to True for any VAE)
                "vae_force_upcast": self.xl and bool(vae.get("force_upcast", False)),
                "force_zeros_for_empty_prompt": bool(
                    loaded.extra["pipeline_config"].get("force_zeros_for_empty_prompt", self.xl)),
                "lora": {"path": str(Path(options.lora).resolve()), "scale": options.lora_scale} if options.lora else None}

    def keep_fp32(self, manifest, precision: str) -> dict[str, str]:
        if precision != "fp16" or not manifest.task["vae_force_upcast"]:
            return {}
        why = ("the SDXL VAE config sets force_upcast: its activations overflow fp16 (NaN / black images), so "
               "diffusers' SDXL pipelines run it in fp32 too; a VAE fixed for fp16 sets force_upcast false")
        return {"vae_encoder": why, "vae_decoder": why}

    def calibration(self):
        from edgefm.calibration.diffusion import RECIPE

        return RECIPE

    def artifact_class(self):
        from edgefm.runtimes.pipelines.diffusion import DiffusionArtifact

        return DiffusionArtifact

    def tasks(self):
        from edgefm.runtimes.pipelines.diffusion_tasks import TASKS

        return TASKS

    def demo_picture(self, exported: Path, compiled: list[Path], out_dir: Path) -> tuple[Path, str]:
        from edgefm.calibration.pictures import image_grid

        return (image_grid(exported, compiled, out_dir / "images-by-precision.png"),
                "Stable Diffusion images by precision (PSNR vs the export's image)")


def _token_inputs(bos: int, eos: int, pad: int, vocab: int):
    def make(rng: np.random.Generator, dims: dict) -> dict:
        ids = np.full((dims["batch"], CONTEXT), pad, np.int64)
        for row in ids:
            end = int(rng.integers(2, CONTEXT))
            row[0], row[1:end], row[end] = bos, rng.integers(0, vocab, end - 1), eos
        return {"input_ids": ids}

    return make


def _unet_inputs(specs: list[TensorSpec], scale: int):
    def make(rng: np.random.Generator, dims: dict) -> dict:
        batch, height, width = dims["batch"], dims["latent_height"], dims["latent_width"]
        feeds = {"sample": rng.standard_normal((batch, specs[0].shape[1], height, width), dtype=np.float32),
                 "timestep": rng.uniform(0, 1000, batch).astype(np.float32),
                 "encoder_hidden_states": rng.standard_normal((batch, *specs[2].shape[1:]), dtype=np.float32)}
        if len(specs) > 3:
            feeds["text_embeds"] = rng.standard_normal((batch, specs[3].shape[1]), dtype=np.float32)
            size = [height * scale, width * scale]
            feeds["time_ids"] = np.tile(np.array(size + [0, 0] + size, np.float32), (batch, 1))
        return feeds

    return make


def _pixel_inputs(rng: np.random.Generator, dims: dict) -> dict:
    return {"image": rng.uniform(-1, 1, (dims["batch"], 3, dims["height"], dims["width"])).astype(np.float32)}


def _latent_inputs(channels: int, scaling_factor: float):
    def make(rng: np.random.Generator, dims: dict) -> dict:
        shape = (dims["batch"], channels, dims["latent_height"], dims["latent_width"])
        return {"latent": (rng.standard_normal(shape, dtype=np.float32) / scaling_factor).astype(np.float32)}

    return make


def _wrappers(model, xl: bool) -> dict:
    """torch modules for each graph (defined here so torch is imported only when exporting)."""
    import torch

    class TextEncoder(torch.nn.Module):
        """SD 1.5: the last hidden state; SDXL: the penultimate one (and the pooled projection for encoder 2)."""

        def __init__(self, encoder, pooled: bool):
            super().__init__()
            self.encoder, self.pooled = encoder, pooled

        def forward(self, input_ids):
            out = self.encoder(input_ids, output_hidden_states=xl)
            hidden = out.hidden_states[-2] if xl else out.last_hidden_state
            return (hidden, out.text_embeds) if self.pooled else hidden

    class UNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unet = model["unet"]

        def forward(self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None):
            added = {"text_embeds": text_embeds, "time_ids": time_ids} if xl else None
            return self.unet(sample, timestep, encoder_hidden_states, added_cond_kwargs=added, return_dict=False)[0]

    class VaeEncoder(torch.nn.Module):
        """The latent distribution, unscaled: latents = (mean + exp(logvar / 2) * noise) * scaling_factor."""

        def __init__(self):
            super().__init__()
            self.vae = model["vae"]

        def forward(self, image):
            dist = self.vae.encode(image).latent_dist
            return dist.mean, dist.logvar

    class VaeDecoder(torch.nn.Module):
        """Feed latents / scaling_factor; the image comes out in [-1, 1]."""

        def __init__(self):
            super().__init__()
            self.vae = model["vae"]

        def forward(self, latent):
            return self.vae.decode(latent, return_dict=False)[0]

    modules = {name: TextEncoder(model[name], name == "text_encoder_2") for name in model if name.startswith("text")}
    modules.update(unet=UNet(), vae_encoder=VaeEncoder(), vae_decoder=VaeDecoder())
    return {name: module.eval() for name, module in modules.items()}
