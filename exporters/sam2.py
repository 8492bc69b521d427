"""SAM 2 / 2.1 (transformers Sam2VideoModel): image encoder, prompt + mask decoder, and the video memory graphs.

One Sam2VideoModel serves image and video: its weights are a superset of Sam2Model's and the image
graphs are the same. Five graphs, each with fully dynamic batch:
  image_encoder    pixels -> decoder feature maps, image embedding, raw features + position encoding (memory path)
  mask_decoder     prompt encoder + mask decoder, all 4 mask tokens and ungated object pointers; the
                   token selection and object-presence gating are numpy (the runtime), as they differ by path
  memory_encoder   (features, mask logits, object score) -> one memory-bank entry
  memory_attention conditions a frame on M memories and P object pointers (both dynamic)
  mask_prompt      binary mask -> decoder mask input and the logits SAM 2 substitutes for a mask prompt
"""
from __future__ import annotations

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
    weights_sha256,
)

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
NO_OBJECT_POINTER = "no_object_pointer.npy"


def _hiera(embed: int, heads: int, blocks: list, global_blocks: list, background: list,
           windows=(8, 4, 14, 7)) -> dict:
    """A real SAM 2.1 config (the rest of Sam2VideoConfig's defaults are the released values)."""
    backbone = dict(model_type="sam2_hiera_det_model", hidden_size=embed, num_attention_heads=heads,
                    blocks_per_stage=blocks, embed_dim_per_stage=[embed * k for k in (1, 2, 4, 8)],
                    num_attention_heads_per_stage=[heads * k for k in (1, 2, 4, 8)],
                    window_size_per_stage=list(windows), global_attention_blocks=global_blocks,
                    window_positional_embedding_background_size=background)
    return dict(vision_config=dict(backbone_config=backbone, backbone_channel_list=[embed * k for k in (8, 4, 2, 1)]))


# Tiny preset: S=128, width 128. Constraints found while sizing it: S % 16 == 0, S/4 divisible by the
# first window size; the feature sizes, prompt size and RoPE sizes are not derived from one another, so
# they are kept consistent here; the memory encoder's 64 output channels are hard-coded upstream.
_S, _HID = 128, 128
_TINY = dict(
    vision_config=dict(
        backbone_config=dict(
            model_type="sam2_hiera_det_model", hidden_size=16, num_attention_heads=1, image_size=[_S, _S],
            blocks_per_stage=[1, 1, 2, 1], embed_dim_per_stage=[16, 32, 64, 128],
            num_attention_heads_per_stage=[1, 1, 2, 2], window_size_per_stage=[8, 4, 4, 2],
            global_attention_blocks=[3], window_positional_embedding_background_size=[7, 7]),
        backbone_channel_list=[128, 64, 32, 16],
        backbone_feature_sizes=[[_S // 4] * 2, [_S // 8] * 2, [_S // 16] * 2], fpn_hidden_size=_HID),
    prompt_encoder_config=dict(hidden_size=_HID, image_size=_S, patch_size=16),
    mask_decoder_config=dict(hidden_size=_HID, mlp_dim=256, num_hidden_layers=2, num_attention_heads=8,
                             iou_head_hidden_dim=64),
    image_size=_S, num_maskmem=7, max_object_pointers_in_encoder=16,
    memory_attention_hidden_size=_HID, memory_attention_num_layers=2, memory_attention_feed_forward_hidden_size=256,
    memory_attention_rope_feat_sizes=[_S // 16, _S // 16], memory_encoder_hidden_size=_HID,
    memory_encoder_output_channels=64, mask_downsampler_embed_dim=_HID, memory_fuser_embed_dim=_HID,
    memory_fuser_intermediate_dim=256)

VARIANTS = {v.name: v for v in [
    Variant("hiera-tiny", "facebook/sam2.1-hiera-tiny", _hiera(96, 1, [1, 2, 7, 2], [5, 7, 9], [7, 7]),
            "SAM 2.1 Hiera-T, 1024 px"),
    Variant("hiera-small", "facebook/sam2.1-hiera-small", _hiera(96, 1, [1, 2, 11, 2], [7, 10, 13], [7, 7]),
            "SAM 2.1 Hiera-S, 1024 px"),
    Variant("hiera-base-plus", "facebook/sam2.1-hiera-base-plus",
            _hiera(112, 2, [2, 3, 16, 3], [12, 16, 20], [14, 14]), "SAM 2.1 Hiera-B+, 1024 px"),
    Variant("hiera-large", "facebook/sam2.1-hiera-large",
            _hiera(144, 2, [2, 6, 36, 4], [23, 33, 43], [7, 7], windows=(8, 4, 16, 8)), "SAM 2.1 Hiera-L, 1024 px"),
    Variant("tiny", None, _TINY, "real Sam2VideoModel class, 128 px config, seeded random weights (offline)"),
]}


def _randomize_zero_inits(model, seed: int) -> None:
    """Random init leaves no_memory_embedding, no_object_pointer, temporal encodings, the occlusion
    embedding and the fuser scale at (near) zero, which would let parity tests pass with those paths
    broken: give every such parameter a random value."""
    import torch

    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.abs().max() < 1e-4:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)


def _wrappers(model) -> dict:
    """torch modules for the five graphs (defined here so torch is imported only when exporting)."""
    import torch
    from transformers.models.sam2_video.modeling_sam2_video import get_1d_sine_pe

    config = model.config

    class ImageEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, pixel_values):
            vision = self.m.vision_encoder(pixel_values, return_dict=True)
            f0, f1, top = vision.fpn_hidden_states  # strides 4, 8, 16 (the stride-32 level is dropped by the FPN)
            # image_embed: image mode and first prompted frame; vision_feat/pos: what the memory path conditions
            return (self.m.mask_decoder.conv_s0(f0), self.m.mask_decoder.conv_s1(f1),
                    top + self.m.no_memory_embedding.view(1, -1, 1, 1), top, vision.fpn_position_encoding[2])

    class MaskDecoder(torch.nn.Module):
        """Sam2MaskDecoder.forward up to the multimask slice: all 4 tokens, selection done by the runtime.

        The prompt encoder appends SAM's (0,0)/-1 padding point itself, which is what transformers feeds
        for points only, and equals the not-a-point token it appends after box corners (labels 2, 3).
        """

        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, image_embed, feat_s0, feat_s1, point_coords, point_labels, mask_input, has_mask_input):
            m, dec = self.m, self.m.mask_decoder
            batch = image_embed.shape[0]
            sparse, _ = m.prompt_encoder(point_coords[:, None], point_labels[:, None], None, None)
            has = has_mask_input.view(-1, 1, 1, 1)
            dense = has * m.prompt_encoder.mask_embed(mask_input) \
                + (1 - has) * m.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
            pos = m.get_image_wide_positional_embeddings().expand(batch, -1, -1, -1)
            out_tokens = torch.cat([dec.obj_score_token.weight, dec.iou_token.weight, dec.mask_tokens.weight], 0)
            tokens = torch.cat([out_tokens.expand(batch, 1, -1, -1), sparse], dim=2)
            point_emb, img = dec.transformer(point_embeddings=tokens, image_embeddings=image_embed + dense,
                                             image_positional_embeddings=pos, attention_similarity=None)
            channels, height, width = image_embed.shape[1:]
            img = img.transpose(2, 3).reshape(batch, channels, height, width)
            up = dec.activation(dec.upscale_layer_norm(dec.upscale_conv1(img) + feat_s1))
            up = dec.activation(dec.upscale_conv2(up) + feat_s0)
            mask_tokens = point_emb[:, 0, 2:2 + dec.num_mask_tokens]
            hyper = torch.stack([mlp(mask_tokens[:, i]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], 1)
            masks = (hyper @ up.flatten(2)).reshape(batch, -1, up.shape[2], up.shape[3])
            iou = dec.iou_prediction_head(point_emb[:, 0, 1])
            score = dec.pred_obj_score_head(point_emb[:, 0, 0])
            # ungated: mask-prompt frames gate by the mask, not by this score (the runtime gates)
            return masks, iou, score, m.object_pointer_proj(mask_tokens)

    class MemoryEncoder(torch.nn.Module):
        """= Sam2VideoModel._encode_new_memory, except the bf16 storage rounding (done exactly in numpy:
        inside the graph its rounding flips would dominate the ORT-vs-torch difference)."""

        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, vision_feat, high_res_mask, object_score_logits, is_mask_from_pts):
            flag = is_mask_from_pts.view(-1, 1, 1, 1)  # prompted frames binarize, tracked frames use sigmoid
            mask = flag * (high_res_mask > 0).to(high_res_mask.dtype) + (1 - flag) * torch.sigmoid(high_res_mask)
            mask = mask * config.sigmoid_scale_for_mem_enc + config.sigmoid_bias_for_mem_enc
            features, pos = self.m.memory_encoder(vision_feat, mask)
            absent = 1 - (object_score_logits > 0).to(features.dtype)[..., None, None]
            features = features + absent * self.m.occlusion_spatial_embedding_parameter[..., None, None]
            return features, pos.expand(features.shape[0], -1, -1, -1)

    class MemoryAttention(torch.nn.Module):
        """Everything in _prepare_memory_conditioned_features after the (numpy) choice of frames.

        memory_tpos_index[m] = temporal offset - 1 (prompted frames: -1, the last row);
        pointer_tpos[p] = temporal offset / (max pointers - 1). RoPE is real-valued upstream (cos/sin).
        """

        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, vision_feat, vision_pos, memory, memory_pos, memory_tpos_index, object_pointers,
                    pointer_tpos):
            m = self.m
            batch, channels, height, width = vision_feat.shape
            dim = m.mem_dim
            tpos = m.memory_temporal_positional_encoding[memory_tpos_index]  # [M,1,1,dim]
            mem = memory.permute(1, 3, 4, 0, 2).reshape(-1, batch, dim)
            mem_pos = (memory_pos.permute(1, 3, 4, 0, 2) + tpos.reshape(-1, 1, 1, 1, dim)).reshape(-1, batch, dim)
            pointers = object_pointers.transpose(0, 1)  # [P,B,C]
            pointer_pos = m.temporal_positional_encoding_projection_layer(get_1d_sine_pe(pointer_tpos, dim=channels))
            pointer_pos = pointer_pos[:, None].expand(-1, batch, dim)
            splits = channels // dim  # each pointer becomes C/64 tokens of the memory width
            if splits > 1:
                pointers = pointers.reshape(-1, batch, splits, dim).permute(0, 2, 1, 3).flatten(0, 1)
                pointer_pos = pointer_pos[:, None].expand(-1, splits, -1, -1).flatten(0, 1)  # repeat_interleave, in ops Core ML converts
            out = m.memory_attention(
                current_vision_features=vision_feat.flatten(2).permute(2, 0, 1),
                current_vision_position_embeddings=vision_pos.flatten(2).permute(2, 0, 1),
                memory=torch.cat([mem, pointers], 0), memory_posision_embeddings=torch.cat([mem_pos, pointer_pos], 0),
                num_object_pointer_tokens=pointers.shape[0])
            # [1,B,HW,C]: transformers squeezes dim 1, which is only right for B == 1
            return out[0].transpose(1, 2).reshape(batch, channels, height, width)

    class MaskPrompt(torch.nn.Module):
        """_use_mask_as_output around the decoder: mask [B,1,S,S] in [0,1] -> (decoder mask_input,
        high-res logits). Its low-res logits (an antialiased downsample) are computed by the runtime:
        OpenVINO's Resize ignores antialias, which moved mask edges by a low-res pixel."""

        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, mask):
            return self.m.mask_downsample(mask), mask * 20.0 - 10.0

    return {name: cls().eval() for name, cls in [("image_encoder", ImageEncoder), ("mask_decoder", MaskDecoder),
                                                 ("memory_encoder", MemoryEncoder),
                                                 ("memory_attention", MemoryAttention), ("mask_prompt", MaskPrompt)]}


def sizes(config) -> dict:
    """Image size, embedding grid, widths: everything the graph shapes follow from."""
    size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
    hidden = config.mask_decoder_config.hidden_size
    return {"S": size, "grid": size // 16, "low": size // 4, "hidden": hidden,
            "mem": config.memory_encoder_output_channels}


class Sam2Family(ModelFamily):
    name = "sam2"
    title = "SAM 2"
    demo_variant = "tiny"
    description = "SAM 2.1 promptable segmentation: image encoder, prompt+mask decoder, video memory graphs"
    variants = VARIANTS
    component_names = ("image_encoder", "mask_decoder", "memory_encoder", "memory_attention", "mask_prompt")
    gate_metrics = ("cosine",)
    # masks are what users see: thresholded logits must agree (one decoder call; end to end is stricter)
    component_gate_metrics = {"mask_decoder": ("cosine", "mask_iou")}
    gate_overrides = {"mask_iou": {"int8": 0.9, "fp8": 0.9, "int4": 0.9}}
    # mean mask IoU of the compiled image predictor and video tracker vs the fp32 export's, with masks
    # thresholded at 0 (what users get) and at the fp32 logits' median (a half-full mask in every case)
    pipeline_gate_metrics = ("mask_iou", "mask_iou_median")

    def load(self, source: Source, options: ExportOptions) -> LoadedModel:
        import torch
        import transformers

        if source.random_weights:
            torch.manual_seed(options.seed)
            model = transformers.Sam2VideoModel(transformers.Sam2VideoConfig(**VARIANTS[source.variant].config))
            _randomize_zero_inits(model, options.seed)
        else:
            # The released transformers checkpoints hold the video model (a superset of the image model);
            # a checkpoint without the memory weights would export random memory graphs, so refuse it.
            model, info = from_pretrained(
                lambda name: transformers.Sam2VideoModel.from_pretrained(name, output_loading_info=True),
                source, "SAM 2 model (a transformers Sam2VideoModel checkpoint)")
            if info["missing_keys"]:
                missing = sorted(info["missing_keys"])
                raise EdgefmError(f"{source.id} lacks {len(missing)} Sam2VideoModel weights (e.g. {missing[0]}); "
                                  "export a full SAM 2 video checkpoint such as facebook/sam2.1-hiera-tiny")
        model.eval()
        return LoadedModel(model, None, weights_sha256(model))

    def components(self, loaded: LoadedModel, options: ExportOptions) -> list[Component]:
        config = loaded.model.config
        dims = sizes(config)
        size, grid, low, hidden, mem = dims["S"], dims["grid"], dims["low"], dims["hidden"], dims["mem"]
        modules = _wrappers(loaded.model)
        def feat(channels, side):  # a batch of feature maps
            return ("batch", channels, side, side)

        embed = TensorSpec("image_embed", "float32", feat(hidden, grid))
        s0 = TensorSpec("feat_s0", "float32", feat(hidden // 8, low))
        s1 = TensorSpec("feat_s1", "float32", feat(hidden // 4, size // 8))
        vision_feat = TensorSpec("vision_feat", "float32", feat(hidden, grid))
        vision_pos = TensorSpec("vision_pos", "float32", feat(hidden, grid))
        low_mask = ("batch", 1, low, low)
        batch_rule = {"batch": {"default": 1}}

        def normal(rng, *shape):
            return rng.standard_normal(shape, dtype=np.float32)

        def pixels(rng, d):
            return {"pixel_values": normal(rng, d["batch"], 3, size, size)}

        def prompts(rng, d):
            b, n = d["batch"], d["points"]
            return {"image_embed": normal(rng, b, hidden, grid, grid), "feat_s0": normal(rng, b, hidden // 8, low, low),
                    "feat_s1": normal(rng, b, hidden // 4, size // 8, size // 8),
                    "point_coords": (rng.random((b, n, 2)) * size).astype(np.float32),
                    "point_labels": rng.integers(-1, 4, (b, n)).astype(np.int64),
                    "mask_input": normal(rng, b, 1, low, low),
                    "has_mask_input": rng.integers(0, 2, b).astype(np.float32)}

        def memories_in(rng, d):
            b = d["batch"]
            return {"vision_feat": normal(rng, b, hidden, grid, grid), "high_res_mask": 4 * normal(rng, b, 1, size, size),
                    "object_score_logits": normal(rng, b, 1),
                    "is_mask_from_pts": rng.integers(0, 2, b).astype(np.float32)}

        def attention_in(rng, d):
            b, m, p = d["batch"], d["memories"], d["pointers"]
            return {"vision_feat": normal(rng, b, hidden, grid, grid), "vision_pos": normal(rng, b, hidden, grid, grid),
                    "memory": normal(rng, b, m, mem, grid, grid), "memory_pos": normal(rng, b, m, mem, grid, grid),
                    "memory_tpos_index": rng.integers(-1, config.num_maskmem - 1, m).astype(np.int64),
                    "object_pointers": normal(rng, b, p, hidden),
                    "pointer_tpos": rng.random(p).astype(np.float32)}

        def binary_masks(rng, d):
            masks = np.zeros((d["batch"], 1, size, size), np.float32)
            for row in masks:  # a random rectangle per row: realistic edges for the antialiased resize
                y0, x0 = rng.integers(0, size // 2, 2)
                y1, x1 = rng.integers(size // 2, size + 1, 2)
                row[0, y0:y1, x0:x1] = 1
            return {"mask": masks}

        return [
            Component("image_encoder", modules["image_encoder"],
                      [TensorSpec("pixel_values", "float32", ("batch", 3, size, size))],
                      [s0, s1, embed, vision_feat, vision_pos],
                      pixels, {"batch": 2}, [{"batch": 1}, {"batch": 3}], batch_rule),
            Component("mask_decoder", modules["mask_decoder"],
                      [embed, s0, s1, TensorSpec("point_coords", "float32", ("batch", "points", 2)),
                       # -1 not a point, 0 negative, 1 positive, 2 / 3 box corners (SAM 2's point_embed rows)
                       TensorSpec("point_labels", "int64", ("batch", "points"), (-1, 3)),
                       TensorSpec("mask_input", "float32", low_mask),
                       TensorSpec("has_mask_input", "float32", ("batch",))],
                      [TensorSpec("masks", "float32", ("batch", 4, low, low)),
                       TensorSpec("iou_scores", "float32", ("batch", 4)),
                       TensorSpec("object_score_logits", "float32", ("batch", 1)),
                       TensorSpec("object_pointers", "float32", ("batch", 4, hidden))],
                      prompts, {"batch": 2, "points": 3},
                      [{"batch": 1, "points": 1}, {"batch": 3, "points": 5}],
                      {**batch_rule, "points": {"default": 1}}),
            Component("memory_encoder", modules["memory_encoder"],
                      [vision_feat, TensorSpec("high_res_mask", "float32", ("batch", 1, size, size)),
                       TensorSpec("object_score_logits", "float32", ("batch", 1)),
                       TensorSpec("is_mask_from_pts", "float32", ("batch",))],
                      [TensorSpec("maskmem_features", "float32", feat(mem, grid)),
                       TensorSpec("maskmem_pos_enc", "float32", feat(mem, grid))],
                      memories_in, {"batch": 2}, [{"batch": 1}, {"batch": 3}], batch_rule),
            Component("memory_attention", modules["memory_attention"],
                      [vision_feat, vision_pos,
                       TensorSpec("memory", "float32", ("batch", "memories", mem, grid, grid)),
                       TensorSpec("memory_pos", "float32", ("batch", "memories", mem, grid, grid)),
                       # temporal offset - 1 with offsets 0..num_maskmem-1 (see MemoryAttention)
                       TensorSpec("memory_tpos_index", "int64", ("memories",), (-1, config.num_maskmem - 2)),
                       TensorSpec("object_pointers", "float32", ("batch", "pointers", hidden)),
                       TensorSpec("pointer_tpos", "float32", ("pointers",))],
                      [TensorSpec("pix_feat", "float32", feat(hidden, grid))],
                      attention_in, {"batch": 2, "memories": 3, "pointers": 4},
                      [{"batch": 1, "memories": 1, "pointers": 1}, {"batch": 2, "memories": 7, "pointers": 16}],
                      {**batch_rule, "memories": {"default": 1}, "pointers": {"default": 1}}),
            Component("mask_prompt", modules["mask_prompt"],
                      [TensorSpec("mask", "float32", ("batch", 1, size, size))],
                      [TensorSpec("mask_input", "float32", low_mask),
                       TensorSpec("high_res_masks", "float32", ("batch", 1, size, size))],
                      binary_masks, {"batch": 2}, [{"batch": 1}, {"batch": 3}], batch_rule),
        ]

    def write_assets(self, loaded: LoadedModel, out_dir: Path, options: ExportOptions) -> dict:
        config = loaded.model.config
        dims = sizes(config)
        np.save(out_dir / NO_OBJECT_POINTER, loaded.model.no_object_pointer.detach().numpy().astype(np.float32))
        decoder = config.mask_decoder_config
        # transformers' Sam2 processors: plain resize to S x S (bilinear), /255, ImageNet mean/std
        return {"preprocess": {"size": dims["S"], "resample": "bilinear", "rescale": 1 / 255,
                               "mean": IMAGENET_MEAN, "std": IMAGENET_STD},
                "image_size": dims["S"], "low_res_size": dims["low"], "mask_threshold": 0.0,
                "decoder": {"dynamic_multimask_via_stability": bool(decoder.dynamic_multimask_via_stability),
                            "stability_delta": float(decoder.dynamic_multimask_stability_delta),
                            "stability_thresh": float(decoder.dynamic_multimask_stability_thresh)},
                "video": {"num_maskmem": int(config.num_maskmem),
                          "max_object_pointers": int(config.max_object_pointers_in_encoder),
                          "max_cond_frame_num": int(config.max_cond_frame_num),
                          "multimask_output_in_sam": bool(config.multimask_output_in_sam),
                          "multimask_min_pt_num": int(config.multimask_min_pt_num),
                          "multimask_max_pt_num": int(config.multimask_max_pt_num),
                          "multimask_output_for_tracking": bool(config.multimask_output_for_tracking),
                          "no_object_score": -1024.0, "no_object_pointer": NO_OBJECT_POINTER}}

    def calibration(self):
        from edgefm.calibration.sam2 import RECIPE

        return RECIPE

    def artifact_class(self):
        from edgefm.runtimes.pipelines.sam2 import Sam2Artifact

        return Sam2Artifact

    def tasks(self):
        from edgefm.runtimes.pipelines.sam2_tasks import TASKS

        return TASKS

    def demo_picture(self, exported: Path, compiled: list[Path], out_dir: Path) -> tuple[Path, str]:
        from edgefm.calibration.pictures import mask_grid

        return (mask_grid(exported, compiled, out_dir / "masks-by-precision.png"),
                "SAM 2 masks by precision (red: differs from the export's mask)")


FAMILY = Sam2Family()
