"""DINOv2 (distilled ViT-S/B/L/14, ViT-g/14, with or without registers): CLS embedding + patch tokens."""
from __future__ import annotations

from functools import partial
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
    Variant,
    from_pretrained,
    graph_attention,
    pil_image_processor,
    preprocess_config,
    weights_sha256,
)

PATCH = 14
_COMMON = dict(image_size=518, patch_size=PATCH, mlp_ratio=4, layerscale_value=1.0)
_SIZES = {
    "small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16),
    "giant": dict(hidden_size=1536, num_hidden_layers=40, num_attention_heads=24, use_swiglu_ffn=True),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4),
}
_LETTER = {"small": "S", "base": "B", "large": "L", "giant": "g"}


def _variants():
    found = []
    for size, arch in _SIZES.items():
        for registers in (False, True):
            name = size + ("-reg" if registers else "")
            config = dict(_COMMON, **arch, **({"num_register_tokens": 4} if registers else {}))
            if size == "tiny":
                hub, text = None, "real DINOv2 class, small config, seeded random weights (offline)"
            else:
                hub = f"facebook/dinov2-{'with-registers-' if registers else ''}{size}"
                text = f"distilled ViT-{_LETTER[size]}/14{' with registers' if registers else ''}"
            found.append(Variant(name, hub, config, text))
    return {v.name: v for v in found}


VARIANTS = _variants()


def _image_processor():
    return pil_image_processor("BitImageProcessor", size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                               image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], do_convert_rgb=True)


def _wrapper(model):
    import torch

    skip = 1 + getattr(model.config, "num_register_tokens", 0)  # CLS + register tokens

    class Dinov2Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            # the model's own forward without its attention mask: while exporting, transformers materializes an
            # all-zero bidirectional mask (it cannot see that nothing is padded) and adds it before every Softmax,
            # a [batch, heads, tokens, tokens] Add per layer that ONNX Runtime's optimizer keeps
            hidden = self.model.encoder(self.model.embeddings(pixel_values)).last_hidden_state
            hidden = self.model.layernorm(hidden)
            return hidden[:, 0], hidden[:, skip:]

    return Dinov2Encoder().eval()


class Dinov2Family(ModelFamily):
    name = "dinov2"
    title = "DINOv2"
    demo_variant, demo_on_every_target = "tiny", True
    description = "DINOv2 image features: CLS embedding and patch tokens (fixed or dynamic resolution)"
    variants = VARIANTS
    component_names = ("image_encoder",)
    supports_resolution = True
    # what users of the features lose: retrieval (CLS nearest neighbours) and dense matching (patches)
    gate_metrics = ("cosine", "cls_knn_agreement", "patch_match_agreement")

    def load(self, source: Source, options: ExportOptions) -> LoadedModel:
        import torch
        import transformers

        if source.random_weights:
            config = VARIANTS[source.variant].config
            torch.manual_seed(options.seed)
            if "num_register_tokens" in config:
                model = transformers.Dinov2WithRegistersModel(transformers.Dinov2WithRegistersConfig(**config))
            else:
                model = transformers.Dinov2Model(transformers.Dinov2Config(**config))
            processor = _image_processor()
        else:
            model = from_pretrained(partial(transformers.AutoModel.from_pretrained, trust_remote_code=False), source,
                                    "DINOv2 model")
            if model.config.model_type not in ("dinov2", "dinov2_with_registers"):
                raise EdgefmError(f"{source.id} is a {model.config.model_type!r} checkpoint, not DINOv2")
            # never run a checkpoint's own code (transformers would ask on a terminal; edgefm says no)
            processor = from_pretrained(partial(transformers.AutoImageProcessor.from_pretrained,
                                                trust_remote_code=False),
                                        source, "DINOv2 image processor (preprocessor_config.json)")
        model.eval()
        return LoadedModel(model, processor, weights_sha256(model))

    def resolution(self, loaded: LoadedModel, options: ExportOptions) -> int:
        resolution = options.resolution or loaded.processor.crop_size["height"]
        if resolution % PATCH or resolution < PATCH:
            raise EdgefmError(f"--resolution {resolution} must be a positive multiple of {PATCH} "
                              f"(e.g. 224 or 518)")
        return resolution

    def components(self, loaded: LoadedModel, options: ExportOptions) -> list[Component]:
        config = loaded.model.config
        res = self.resolution(loaded, options)
        if options.dynamic_resolution and config.model_type == "dinov2_with_registers":
            # Its position embeddings are resized with antialiased bicubic interpolation, which the
            # ONNX exporter only emits for fixed sizes; a dynamic graph would be wrong at other sizes.
            raise EdgefmError("--dynamic-resolution is not supported for DINOv2 with registers (its antialiased "
                              "position-embedding interpolation exports only at a fixed size); export one "
                              "artifact per --resolution instead")
        hidden = config.hidden_size
        arch = {"model_type": "vit", "num_heads": config.num_attention_heads, "hidden_size": hidden,
                **graph_attention(loaded.model)}

        def images(rng: np.random.Generator, dims: dict) -> dict:
            shape = (dims["batch"], 3, dims.get("height", res), dims.get("width", res))
            return {"pixel_values": rng.standard_normal(shape, dtype=np.float32)}

        if options.dynamic_resolution:
            pixels, patches = ("batch", 3, "height", "width"), "patches"
            step = {"default": res, "multiple_of": PATCH}
            dims = {"batch": {"default": 1}, "height": step, "width": step}
            # trace non-square so height and width stay independent symbols
            trace = {"batch": 2, "height": res, "width": res + PATCH}
            wide = res + 4 * PATCH
            checks = [{"batch": 1, "height": res, "width": res}, {"batch": 2, "height": res, "width": wide},
                      {"batch": 3, "height": wide, "width": res - 2 * PATCH if res > 2 * PATCH else res}]
        else:
            pixels, patches = ("batch", 3, res, res), (res // PATCH) ** 2
            dims, trace = {"batch": {"default": 1}}, {"batch": 2}
            checks = [{"batch": 1}, {"batch": 3}]
        return [Component(
            "image_encoder", _wrapper(loaded.model),
            [TensorSpec("pixel_values", "float32", pixels)],
            [TensorSpec("cls_embedding", "float32", ("batch", hidden)),
             TensorSpec("patch_tokens", "float32", ("batch", patches, hidden))],
            images, trace, checks, dims, arch)]

    def write_assets(self, loaded: LoadedModel, out_dir: Path, options: ExportOptions) -> dict:
        loaded.processor.save_pretrained(str(out_dir))
        preprocess = preprocess_config(loaded.processor)
        res = self.resolution(loaded, options)
        if preprocess["crop"] != [res, res]:  # keep the checkpoint's resize / crop ratio
            preprocess["resize_shortest_edge"] = round(preprocess["resize_shortest_edge"] * res / preprocess["crop"][0])
            preprocess["crop"] = [res, res]
        return {"preprocess": preprocess, "patch_size": PATCH, "resolution": res,
                "dynamic_resolution": options.dynamic_resolution,
                "num_register_tokens": getattr(loaded.model.config, "num_register_tokens", 0)}

    def calibration(self):
        from edgefm.calibration.dinov2 import RECIPE

        return RECIPE

    def artifact_class(self):
        from edgefm.runtimes.pipelines.dinov2 import Dinov2Artifact

        return Dinov2Artifact

    def tasks(self):
        from edgefm.runtimes.pipelines.dinov2_tasks import TASKS

        return TASKS


FAMILY = Dinov2Family()
