"""CLIP: separate image and text encoders, each returning the projected embedding."""
from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import numpy as np

from edgefm.contract.spec import TensorSpec
from edgefm.exporters.base import (
    Component,
    ExportOptions,
    LoadedModel,
    ModelFamily,
    Source,
    Variant,
    from_pretrained,
    graph_attention,
    pil_image_processor,
    preprocess_config,
    weights_sha256,
)

_TEXT_B = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
               vocab_size=49408, max_position_embeddings=77)
_TEXT_L = dict(_TEXT_B, hidden_size=768, intermediate_size=3072, num_attention_heads=12)
_VISION_B = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 image_size=224, patch_size=32)
_VISION_L = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                 image_size=224, patch_size=14)

VARIANTS = {v.name: v for v in [
    Variant("vit-b-32", "openai/clip-vit-base-patch32",
            dict(text_config=_TEXT_B, vision_config=_VISION_B, projection_dim=512), "OpenAI CLIP ViT-B/32"),
    Variant("vit-b-16", "openai/clip-vit-base-patch16",
            dict(text_config=_TEXT_B, vision_config=dict(_VISION_B, patch_size=16), projection_dim=512),
            "OpenAI CLIP ViT-B/16"),
    Variant("vit-l-14", "openai/clip-vit-large-patch14",
            dict(text_config=_TEXT_L, vision_config=_VISION_L, projection_dim=768), "OpenAI CLIP ViT-L/14"),
    Variant("vit-l-14-336", "openai/clip-vit-large-patch14-336",
            dict(text_config=_TEXT_L, vision_config=dict(_VISION_L, image_size=336), projection_dim=768),
            "OpenAI CLIP ViT-L/14 at 336 px"),
    Variant("tiny", None,
            dict(text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                  vocab_size=514, max_position_embeddings=77),
                 vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                    image_size=224, patch_size=32),
                 projection_dim=32),
            "real CLIPModel class, small config, seeded random weights (offline)"),
]}


def preset_tokenizer(**kwargs):
    """A byte-level CLIP BPE tokenizer with no merges, written here so presets work offline.

    The real CLIP vocabulary cannot be downloaded here; this one has CLIP's special tokens and byte
    alphabet, so it tokenizes any text (one token per character) with the real tokenizer class.
    """
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    alphabet = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": len(alphabet) + i for i, c in enumerate(alphabet)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], **kwargs)


def _wrappers(model):
    """torch modules for the two graphs (defined here so torch is imported only when exporting)."""
    import torch

    class ImageEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            return self.model.get_image_features(pixel_values=pixel_values).pooler_output

    class TextEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            return self.model.get_text_features(input_ids=input_ids).pooler_output

    return ImageEncoder().eval(), TextEncoder().eval()


class ClipFamily(ModelFamily):
    name = "clip"
    title = "CLIP"
    demo_variant, demo_on_every_target = "tiny", True
    description = "CLIP image and text encoders (projected embeddings, zero-shot classification)"
    variants = VARIANTS
    component_names = ("image_encoder", "text_encoder")
    # Zero-shot labels and text-to-image retrieval must not change in fp32/fp16; quantized may flip near-ties.
    gate_metrics = ("cosine", "zero_shot_top1_agreement", "text_to_image_top1_agreement")

    def load(self, source: Source, options: ExportOptions) -> LoadedModel:
        import torch
        import transformers

        if source.random_weights:
            tokenizer = preset_tokenizer()
            config = dict(VARIANTS[source.variant].config)
            config["text_config"] = dict(config["text_config"], bos_token_id=tokenizer.bos_token_id,
                                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            torch.manual_seed(options.seed)
            model = transformers.CLIPModel(transformers.CLIPConfig(**config))
            image_size = config["vision_config"]["image_size"]
            processor = transformers.CLIPProcessor(
                image_processor=pil_image_processor("CLIPImageProcessor", size={"shortest_edge": image_size},
                                                 crop_size={"height": image_size, "width": image_size}),
                tokenizer=tokenizer)
        else:
            model = from_pretrained(transformers.CLIPModel.from_pretrained, source, "CLIP model")
            processor = from_pretrained(partial(transformers.CLIPProcessor.from_pretrained, trust_remote_code=False),
                                        source, "CLIP processor (tokenizer + preprocessor files)")
        model.eval()
        return LoadedModel(model, processor, weights_sha256(model))

    def components(self, loaded: LoadedModel, options: ExportOptions) -> list[Component]:
        config = loaded.model.config
        vision, text = config.vision_config, config.text_config
        image_module, text_module = _wrappers(loaded.model)
        size, context = vision.image_size, text.max_position_embeddings
        eos, bos = text.eos_token_id, text.bos_token_id
        dim = config.projection_dim
        attention = graph_attention(loaded.model)

        def images(rng: np.random.Generator, dims: dict) -> dict:
            return {"pixel_values": rng.standard_normal((dims["batch"], 3, size, size), dtype=np.float32)}

        def token_ids(rng: np.random.Generator, dims: dict) -> dict:
            batch, length = dims["batch"], dims["sequence"]
            ids = rng.integers(0, min(eos, bos), (batch, length), dtype=np.int64)
            ids[:, 0] = bos
            ends = rng.integers(1, length, batch)
            for row, end in enumerate(ends):
                ids[row, end:] = eos  # eos then padding, which CLIP pads with eos
            return {"input_ids": ids}

        image = Component(
            "image_encoder", image_module,
            [TensorSpec("pixel_values", "float32", ("batch", 3, size, size))],
            [TensorSpec("image_embeds", "float32", ("batch", dim))],
            images, {"batch": 2}, [{"batch": 1}, {"batch": 3}], {"batch": {"default": 1}},
            {"model_type": "clip", "num_heads": vision.num_attention_heads, "hidden_size": vision.hidden_size,
             **attention})
        text_component = Component(
            "text_encoder", text_module,
            [TensorSpec("input_ids", "int64", ("batch", "sequence"), (0, text.vocab_size - 1))],
            [TensorSpec("text_embeds", "float32", ("batch", dim))],
            token_ids, {"batch": 2, "sequence": context},
            [{"batch": 1, "sequence": context}, {"batch": 3, "sequence": max(4, context // 4)}],
            {"batch": {"default": 1}, "sequence": {"default": context, "max": context}},
            {"model_type": "clip", "num_heads": text.num_attention_heads, "hidden_size": text.hidden_size, **attention})
        return [image, text_component]

    def write_assets(self, loaded: LoadedModel, out_dir: Path, options: ExportOptions) -> dict:
        loaded.processor.save_pretrained(str(out_dir))
        tokenizer = loaded.processor.tokenizer
        return {"preprocess": preprocess_config(loaded.processor.image_processor),
                "text": {"tokenizer": "tokenizer.json",
                         "context_length": loaded.model.config.text_config.max_position_embeddings,
                         "pad_id": int(tokenizer.pad_token_id)},
                "logit_scale": float(math.exp(loaded.model.logit_scale.item()))}

    def calibration(self):
        from edgefm.calibration.clip import RECIPE

        return RECIPE

    def artifact_class(self):
        from edgefm.runtimes.pipelines.clip import ClipArtifact

        return ClipArtifact

    def tasks(self):
        from edgefm.runtimes.pipelines.clip_tasks import TASKS

        return TASKS


FAMILY = ClipFamily()
