"""Stable Diffusion 1.5 (and checkpoints of its architecture, e.g. fine-tunes, with LCM-LoRA for few steps)."""
from __future__ import annotations

from edgefm.exporters.base import Variant
from edgefm.exporters.stable_diffusion import (
    CLIP_L_TEXT,
    DEFAULT_SCHEDULER,
    REAL_VAE,
    TINY_VAE,
    DiffusionFamily,
    tiny_text,
)

TINY = dict(
    text_encoder=tiny_text(32),
    unet=dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
              down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
              cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32),
    vae=dict(TINY_VAE, scaling_factor=0.18215),
    scheduler=dict(DEFAULT_SCHEDULER, _class_name="DDIMScheduler"))
# diffusers' UNet2DConditionModel defaults are SD 1.5's UNet except the text width (CLIP ViT-L/14: 768).
REAL = dict(text_encoder=CLIP_L_TEXT, unet=dict(sample_size=64, cross_attention_dim=768),
            vae=dict(REAL_VAE, scaling_factor=0.18215), scheduler=dict(DEFAULT_SCHEDULER, _class_name="PNDMScheduler"))


class StableDiffusion15(DiffusionFamily):
    name = "sd15"
    title = "Stable Diffusion 1.5"
    demo_variant = "tiny"
    description = "Stable Diffusion 1.5: CLIP text encoder, UNet, VAE encoder/decoder; numpy text-to-image"
    variants = {v.name: v for v in [
        Variant("v1-5", "stable-diffusion-v1-5/stable-diffusion-v1-5", REAL, "Stable Diffusion 1.5 (512 px)"),
        Variant("tiny", None, TINY, "real diffusers/transformers classes, small configs, seeded random weights (offline)"),
    ]}
    component_names = ("text_encoder", "unet", "vae_encoder", "vae_decoder")
    text_encoders = ("text_encoder",)
    pipeline_class = "StableDiffusionPipeline"


FAMILY = StableDiffusion15()
