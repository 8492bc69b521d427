"""Stable Diffusion XL base (and SDXL-Turbo, the same architecture distilled for 1-4 steps)."""
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

_TE1, _TE2, _POOLED, _TIME = 32, 64, 32, 8  # tiny text widths, pooled projection, time-id embedding width
TINY = dict(
    text_encoder=tiny_text(_TE1), text_encoder_2=tiny_text(_TE2, projection_dim=_POOLED),
    # cross attention sees both encoders' hidden states side by side; the added embedding sees the
    # pooled text projection and six time ids, each embedded in addition_time_embed_dim
    unet=dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
              down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
              transformer_layers_per_block=(1, 2), attention_head_dim=(2, 4), use_linear_projection=True,
              addition_embed_type="text_time", addition_time_embed_dim=_TIME,
              projection_class_embeddings_input_dim=6 * _TIME + _POOLED, cross_attention_dim=_TE1 + _TE2,
              norm_num_groups=32),
    vae=dict(TINY_VAE, scaling_factor=0.13025, force_upcast=True),
    scheduler=dict(DEFAULT_SCHEDULER, _class_name="EulerDiscreteScheduler"),
    pipeline=dict(force_zeros_for_empty_prompt=True))
REAL = dict(
    text_encoder=CLIP_L_TEXT,
    text_encoder_2=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                        vocab_size=49408, hidden_act="gelu", projection_dim=1280),
    unet=dict(sample_size=128, layers_per_block=2, block_out_channels=(320, 640, 1280),
              down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
              up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
              transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
              addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
              cross_attention_dim=2048),
    vae=dict(REAL_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True),
    scheduler=dict(DEFAULT_SCHEDULER, _class_name="EulerDiscreteScheduler"),
    pipeline=dict(force_zeros_for_empty_prompt=True))


class StableDiffusionXL(DiffusionFamily):
    name = "sdxl"
    title = "SDXL"
    description = "SDXL: two CLIP text encoders (penultimate states + pooled), UNet with time ids, VAE; numpy text-to-image"
    variants = {v.name: v for v in [
        Variant("base-1.0", "stabilityai/stable-diffusion-xl-base-1.0", REAL, "SDXL base 1.0 (1024 px)"),
        Variant("turbo", "stabilityai/sdxl-turbo", dict(REAL, defaults={"steps": 1, "guidance": 0.0}),
                "SDXL-Turbo: SDXL distilled for 1-4 steps, no guidance"),
        Variant("tiny", None, TINY, "real diffusers/transformers classes, small configs, seeded random weights (offline)"),
    ]}
    component_names = ("text_encoder", "text_encoder_2", "unet", "vae_encoder", "vae_decoder")
    text_encoders = ("text_encoder", "text_encoder_2")
    pipeline_class = "StableDiffusionXLPipeline"
    xl = True
    default_guidance = 5.0


FAMILY = StableDiffusionXL()
