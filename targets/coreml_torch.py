"""The torch side of the Core ML target: rebuild the export's wrappers, compress them, run them.

coremltools converts torch modules, not ONNX, so the Core ML package comes from the same wrapper
module the ONNX graph was exported from, rebuilt from the manifest's recipe (family, variant or
checkpoint, export options). The weights must hash to the manifest's `weights_sha256`, so the
package and the ONNX graph are two outputs of one model.

Compression happens on the torch side too (coremltools.optimize.torch), and the converter stores
the compressed weights as they are. The compressed wrapper is therefore exactly what the package
holds, and it is what the compile gates on machines without the Core ML runtime (Linux).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import logging
import warnings
from pathlib import Path

import numpy as np

from edgefm.errors import ArtifactError
from edgefm.manifest import Manifest
from edgefm.runtimes.session import Session
from edgefm.targets.base import first_and_last


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


@functools.lru_cache(maxsize=1)  # one model at a time: a real-size SD is several GB
def rebuilt_components(artifact: Path, manifest_sha256: str) -> dict:
    """The export's torch wrappers, {component: Component}, from the manifest's recipe."""
    from edgefm import registry
    from edgefm.exporters.base import ExportOptions, Source

    manifest = Manifest.load(artifact, verify=False)
    family = registry.family(manifest.family)
    recorded = manifest.source
    options = ExportOptions(**recorded.get("options", {}))
    source = Source(recorded["kind"], recorded["id"], manifest.variant)
    loaded = family.load(source, options)
    if loaded.weights_sha256 != recorded["weights_sha256"]:
        raise ArtifactError(f"the model rebuilt from {source.kind} {source.id!r} does not have the weights this "
                            f"export was made from (weights sha256 {loaded.weights_sha256[:12]} vs "
                            f"{recorded['weights_sha256'][:12]} in {artifact}/manifest.json). Core ML converts the "
                            "torch model itself, so compile where the export's checkpoint is unchanged, or "
                            "export again from the checkpoint you have")
    return {component.name: component for component in family.components(loaded, options)}


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


def called_layers(module, example: dict[str, np.ndarray]) -> list[str]:
    """The linear / conv layers the component's forward runs, in call order. A wrapper may hold a whole
    model (CLIP's image encoder holds the text tower too), so module order says nothing about use."""
    import torch

    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    called: list[str] = []
    hooks = [m.register_forward_hook(lambda *_, name=name: called.append(name))
             for name, m in module.named_modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            module(**{k: torch.from_numpy(v) for k, v in example.items()})
    finally:
        for hook in hooks:
            hook.remove()
    return list(dict.fromkeys(called))


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


class TorchWrapperSession(Session):
    """Runs a (compressed) wrapper in the package's compute precision, numpy in and out.

    It stands in for the Core ML runtime where there is none: same weights as the package, fp16
    compute when the package computes in fp16. What it cannot show is Core ML's own kernels (the
    Neural Engine's accumulation, op fusions), which only a Mac measures."""

    REENTRANT = False  # _run may swap self.module / self.dtype (the fp16 fallback) while another run uses them

    def __init__(self, name: str, module, entry, half: bool, compressed: bool):
        import torch

        super().__init__(name, entry.inputs, entry.outputs, entry.options.get("dims"))
        self.dtype = torch.float16 if half else torch.float32
        self.module = copy.deepcopy(module).to(self.dtype) if half else module  # the package's module stays fp32
        self.weights = "the torch wrapper compressed by coremltools.optimize.torch" if compressed else "the torch wrapper"
        self.measured_with = f"{self.weights}, {'fp16' if half else 'fp32'} compute in torch (no Core ML runtime here)"

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        try:
            result = self._forward(feeds)
        except RuntimeError as exc:
            if self.dtype != torch.float16 or "Half" not in str(exc):
                raise
            # A wrapper that makes float32 tensors inside (SAM 2's sine position encodings) cannot run in
            # torch fp16 on the CPU: fall back to the package's fp16-rounded weights with fp32 compute, and say so.
            self.module, self.dtype = self.module.float(), torch.float32
            self.measured_with = (f"{self.weights}, fp16-rounded weights with fp32 compute in torch (its fp16 "
                                  "compute fails on the CPU; no Core ML runtime here)")
            result = self._forward(feeds)
        return {spec.name: value.float().numpy() for spec, value in zip(self.outputs, result)}

    def _forward(self, feeds: dict[str, np.ndarray]):
        import torch

        tensors = {k: torch.from_numpy(v).to(self.dtype) if np.issubdtype(v.dtype, np.floating)
                   else torch.from_numpy(v) for k, v in feeds.items()}
        with torch.no_grad():
            result = self.module(**tensors)
        return result if isinstance(result, (tuple, list)) else (result,)
