"""For targets that convert torch modules, not ONNX: the export's wrappers rebuilt from its manifest.

The wrappers come from the manifest's recipe (family, variant or checkpoint, export options), and their
weights must hash to the manifest's `weights_sha256`, so what the target writes and the ONNX graph are
two outputs of one model.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgefm.contract.cache import CompileCache
from edgefm.contract.errors import ArtifactError
from edgefm.contract.manifest import Manifest


def rebuilt_components(artifact: Path, manifest_sha256: str, cache: CompileCache) -> dict:
    """The export's torch wrappers, {component: Component}, from the manifest's recipe; built once per compile
    (`cache`, the job's)."""
    return cache.get(("torch wrappers", str(artifact), manifest_sha256), lambda: _rebuilt(artifact))


def _rebuilt(artifact: Path) -> dict:
    from edgefm.contract import registry
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
                            f"{recorded['weights_sha256'][:12]} in {artifact}/manifest.json). This target converts "
                            "the torch model itself, so compile where the export's checkpoint is unchanged, or "
                            "export again from the checkpoint you have")
    return {component.name: component for component in family.components(loaded, options)}



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
