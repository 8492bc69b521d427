"""Export the peer graphs with Hugging Face optimum-intel (OpenVINO IR) in fp32/fp16/int8/int4. Runs in the peer venv.

optimum-intel 2.2.0 pins transformers < 5.6 (and optimum 2.3) while edgefm runs transformers 5.24, so it gets its
own venv (torch 2.13 CPU; its torchvision requirement must be uninstalled there, as PyPI's torchvision is a CUDA
build that breaks `import torchvision` next to CPU torch). fp32/fp16 are exported from torch; int8 is optimum-intel's
static post-training quantization (OVQuantizer + OVQuantizationConfig, calibrated on CALIB_NPZ) and int4 its default
4-bit weight compression (OVWeightQuantizationConfig(bits=4)), both applied to the fp32 IR.
Prints one JSON line: versions, seconds per export, input/output names per graph.

    python optimum_intel_export.py CLIP_DIR DINOV2_DIR CALIB_NPZ OUT_DIR

CALIB_NPZ holds pixel_values (CLIP-preprocessed), dinov2_pixel_values and input_ids, one calibration item per row.
"""
import json
import os
import sys
import time
from importlib.metadata import version

os.environ["HF_HUB_OFFLINE"] = "1"
stdout = os.dup(1)
os.dup2(2, 1)  # the libraries print progress to stdout; keep it for the JSON line alone

import nncf  # noqa: E402
import numpy as np  # noqa: E402
from optimum.exporters.openvino import export_from_model  # noqa: E402
from optimum.exporters.openvino.model_configs import (  # noqa: E402
    CLIPTextWithProjectionOpenVINOConfig,
    CLIPVisionModelOpenVINOConfig,
    ViTOpenVINOConfig,
)
from optimum.intel import (  # noqa: E402
    OVConfig,
    OVModelForFeatureExtraction,
    OVQuantizationConfig,
    OVQuantizer,
    OVWeightQuantizationConfig,
)
from transformers import AutoConfig, AutoModel, CLIPTextModelWithProjection, CLIPVisionModelWithProjection  # noqa: E402


# optimum-intel's transformers CLIP config exports one graph needing images and text together (its split is for
# open_clip checkpoints only), so each tower is exported from its *WithProjection model with a config giving
# only the embeddings, like edgefm's components.
class ImageEmbeds(CLIPVisionModelOpenVINOConfig):
    outputs = property(lambda self: {"image_embeds": {0: "batch_size"}})


class TextEmbeds(CLIPTextWithProjectionOpenVINOConfig):
    outputs = property(lambda self: {"text_embeds": {0: "batch_size"}})


clip_dir, dinov2_dir, calib_npz, out = sys.argv[1:5]
calib = np.load(calib_npz)
dinov2 = AutoModel.from_pretrained(dinov2_dir)
# optimum-intel 2.x refuses model_type "dinov2" (listed as formerly supported via optimum-onnx only); exporting it
# as a custom architecture with ViT's config (pixel_values -> last_hidden_state) needs another model type name.
dinov2.config.export_model_type = "dinov2-custom"
projection = AutoConfig.from_pretrained(clip_dir).projection_dim
graphs = {  # name: (torch model, export config, calibration input)
    "dinov2": (dinov2, ViTOpenVINOConfig, "dinov2_pixel_values"),  # DINOv2's own normalisation
    # the towers' own configs default projection_dim to 512; the CLIP config holds the real one
    "clip-image_encoder": (CLIPVisionModelWithProjection.from_pretrained(clip_dir, projection_dim=projection),
                           ImageEmbeds, "pixel_values"),
    "clip-text_encoder": (CLIPTextModelWithProjection.from_pretrained(clip_dir, projection_dim=projection),
                          TextEmbeds, "input_ids"),
}
seconds, inputs, outputs, errors = {}, {}, {}, {}
for name, (model, export_config, feed) in graphs.items():
    for precision in ("fp32", "fp16"):
        start = time.perf_counter()
        export_from_model(model, f"{out}/{name}/{precision}", task="feature-extraction",
                          ov_config=OVConfig(dtype=precision),  # fp32: keep fp32 weights; fp16: compress them
                          custom_export_configs={"model": export_config(model.config, task="feature-extraction")})
        seconds[f"{name}/{precision}"] = time.perf_counter() - start
    samples = [{feed.removeprefix("dinov2_"): calib[feed][i:i + 1]} for i in range(len(calib[feed]))]
    for precision, config in (("int8", OVQuantizationConfig()), ("int4", OVWeightQuantizationConfig(bits=4))):
        start = time.perf_counter()
        ov_model = OVModelForFeatureExtraction.from_pretrained(f"{out}/{name}/fp32", compile=False)
        try:  # e.g. the tiny presets' 64-wide layers cannot take int4's default group of 128: that row fails alone
            OVQuantizer(ov_model).quantize(calibration_dataset=nncf.Dataset(samples) if precision == "int8" else None,
                                           ov_config=OVConfig(quantization_config=config),
                                           save_directory=f"{out}/{name}/{precision}")
        except Exception as exc:  # noqa: BLE001 (recorded, and the benchmark row says it failed)
            errors[f"{name}/{precision}"] = f"{type(exc).__name__}: {exc}"
        seconds[f"{name}/{precision}"] = time.perf_counter() - start
    inputs[name] = [p.get_any_name() for p in ov_model.model.inputs]
    outputs[name] = [p.get_any_name() for p in ov_model.model.outputs]

versions = {p: version(p) for p in ("optimum-intel", "optimum", "transformers", "openvino", "nncf")}
report = {"versions": versions, "seconds": seconds, "inputs": inputs, "outputs": outputs, "errors": errors}
os.write(stdout, (json.dumps(report) + "\n").encode())
