"""Export the peer graphs with Hugging Face Optimum (optimum-onnx). Runs inside the peer venv.

optimum-onnx 0.1.0 needs transformers < 4.58 while edgefm needs transformers 5, so bench_peers.py
creates a separate venv for this script and passes it model directories saved by transformers 5
(they load unchanged in 4.57).

    python optimum_export.py CLIP_DIR DINOV2_DIR OUT_DIR
"""
import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"

from optimum.exporters.onnx import main_export  # noqa: E402
from optimum.exporters.onnx.model_configs import MetaCLIP2OnnxConfig  # noqa: E402
from transformers import AutoConfig  # noqa: E402

clip_dir, dinov2_dir, out = sys.argv[1:4]
main_export(dinov2_dir, output=f"{out}/dinov2", task="feature-extraction", library_name="transformers")
# Optimum's CLIP config exports one graph that needs images and text together; the split config it ships
# for MetaCLIP 2 (same architecture) gives a vision graph and a text graph, like edgefm's components.
config = AutoConfig.from_pretrained(clip_dir)
for part, vision in (("image_encoder", True), ("text_encoder", False)):
    onnx_config = MetaCLIP2OnnxConfig(config, task="feature-extraction", variant="split", vision_model=vision)
    main_export(clip_dir, output=f"{out}/clip-{part}", task="feature-extraction", library_name="transformers",
                custom_onnx_configs={"model": onnx_config})
