"""`edgefm export`: model -> validated ONNX graphs + assets + manifest, built atomically."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from edgefm.contract import registry
from edgefm.contract.manifest import Manifest, sha256_file
from edgefm.contract.staging import staging_dir

if TYPE_CHECKING:
    from edgefm.exporters.base import ExportOptions


def export(family_name: str, out: Path, model: str | None = None, variant: str | None = None,
           random_weights: bool = False, options: ExportOptions | None = None, overwrite: bool = False,
           log: Callable[[str], None] = print) -> Manifest:
    from edgefm.exporters.base import ExportOptions
    from edgefm.exporters.onnx_export import export_component

    family = registry.family(family_name)
    options = options or ExportOptions()
    family.check_options(options)
    source = family.resolve(model, variant, random_weights)
    inputs = [Path(source.id) if source.kind == "dir" else None, Path(options.lora) if options.lora else None]
    with staging_dir(Path(out), overwrite, inputs, log) as tmp:
        log(f"loading {family.name} from {source.kind} {source.id}")
        loaded = family.load(source, options)
        components = family.components(loaded, options)  # checks options (e.g. resolution) before writing
        task = family.write_assets(loaded, tmp, options)
        assets = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        entries = {}
        for component in components:
            log(f"exporting {component.name} and checking it against torch")
            entries[component.name] = export_component(component, tmp)
        manifest = Manifest(
            family=family.name, variant=source.variant, stage="exported", components=entries, assets=assets,
            task=task, source={"kind": source.kind, "id": source.id, "weights_sha256": loaded.weights_sha256,
                               "random_weights": source.random_weights, "options": vars(options)})
        manifest.save(tmp)
    return manifest
