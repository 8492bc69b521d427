"""The torch side of the Core ML target: compress the export's wrappers (rebuilt by torch_rebuild.py).

coremltools converts torch modules, not ONNX, so the Core ML package comes from the same wrapper
module the ONNX graph was exported from (targets/torch_rebuild.py).

Compression happens on the torch side too (coremltools.optimize.torch), and the converter stores
the compressed weights as they are. The compressed wrapper is therefore exactly what the package
holds, and it is what the compile gates on machines without the Core ML runtime (Linux).
"""
from __future__ import annotations

import contextlib
import logging
import warnings

import numpy as np

from edgefm.targets.base import first_and_last
from edgefm.targets.torch_rebuild import called_layers


@contextlib.contextmanager
def quiet_coremltools():
    """coremltools warns on import (untested torch version, no macOS runtime) and per conversion."""
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def compressed_module(component, params: dict):
    """The component's wrapper with the scheme's weight compression applied (a copy when compressed)."""
    from coremltools.optimize.torch.palettization import PostTrainingPalettizer, PostTrainingPalettizerConfig
    from coremltools.optimize.torch.quantization import PostTrainingQuantizer, PostTrainingQuantizerConfig

    module = component.module.eval()
    kind = params.get("weights", "float")
    if kind == "float":
        return module
    if kind == "palettize":
        config = PostTrainingPalettizerConfig.from_dict(
            {"global_config": {"n_bits": params["bits"], "granularity": "per_tensor"}})
        with quiet_coremltools():
            return PostTrainingPalettizer(module, config).compress()  # compress() works on a copy
    block = {"block_size": params["block_size"]} if params["granularity"] == "per_block" else {}
    layers = called_layers(module, component.make_inputs(np.random.default_rng(0), component.trace_dims))
    config = PostTrainingQuantizerConfig.from_dict({
        "global_config": {"weight_dtype": kind, "granularity": params["granularity"],
                          "quantization_scheme": params.get("mode", "symmetric"), **block},
        # the first and last layers the component runs (patch embedding, projection), the usual ones kept in float
        "module_name_configs": {name: None for name in first_and_last(layers)} if params.get("ends_float") else {}})
    with quiet_coremltools():
        return PostTrainingQuantizer(module, config).compress()  # compress() works on a copy


def compressed_weight_elements(module, example: dict[str, np.ndarray]) -> int:
    """Weight elements that coremltools.optimize.torch compressed (it marks each such module with a
    `_COREML_/weight/compression_type` buffer) and that reach the component's outputs: what the package
    must store compressed. Reaching is decided by autograd, since the converter drops layers whose
    results go nowhere (SDXL's text encoder runs its last layer but outputs the penultimate one)."""
    import torch

    marked = sorted({name.rsplit("._COREML_", 1)[0] for name, _ in module.named_buffers()
                     if name.endswith("_COREML_/weight/compression_type")})
    weights = [module.get_submodule(name).weight for name in marked]
    if not weights:
        return 0
    for weight in weights:
        weight.requires_grad_(True)
    try:
        with torch.enable_grad():
            result = module(**{k: torch.from_numpy(v) for k, v in example.items()})
            result = result if isinstance(result, (tuple, list)) else (result,)
            total = sum(r.float().sum() for r in result if r.requires_grad)
            grads = torch.autograd.grad(total, weights, allow_unused=True) if torch.is_tensor(total) else []
    finally:
        for weight in weights:
            weight.requires_grad_(False)
    return sum(w.numel() for w, g in zip(weights, grads) if g is not None)
