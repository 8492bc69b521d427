"""`edgefm validate`: re-run an artifact's accuracy checks and report (the manifest is not rewritten)."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from edgefm.contract import registry
from edgefm.contract.errors import ArtifactError, EdgefmError
from edgefm.contract.manifest import Manifest, recorded_parent
from edgefm.contract.records import PipelineValidation


def validate(artifact: Path, against: Path | None = None, calib_dir: Path | None = None,
             log: Callable[[str], None] = print) -> Manifest:
    manifest = Manifest.load(artifact)
    if against is None and manifest.stage == "exported":
        return _against_torch(Path(artifact), manifest, log)
    reference_dir = Path(against) if against else recorded_parent(Path(artifact), manifest)
    if not (reference_dir / "manifest.json").is_file():
        raise ArtifactError(f"reference artifact {reference_dir} not found; pass --against EXPORTED_DIR")
    if reference_dir.resolve() == Path(artifact).resolve():
        raise ArtifactError(f"--against {against} is the artifact itself; compare with the export it was made from")
    return _against_artifact(Path(artifact), manifest, reference_dir, calib_dir, log)


def _against_artifact(artifact: Path, manifest: Manifest, reference_dir: Path, calib_dir: Path | None,
                     log: Callable[[str], None]) -> Manifest:
    from edgefm.calibration.data import load as load_calibration
    from edgefm.calibration.recipe import CheckContext
    from edgefm.contract.cache import CompileCache
    from edgefm.jobs.validation import validate_component
    from edgefm.runtimes.loader import load, open_sessions

    reference = Manifest.load(reference_dir)
    if reference.stage != "exported":  # a compiled reference (a copy of the artifact itself, say) proves nothing
        raise ArtifactError(f"{reference_dir} is a compiled artifact; compare with the fp32 export: --against "
                            "EXPORTED_DIR")
    if set(reference.components) != set(manifest.components) or reference.family != manifest.family:
        raise ArtifactError(f"{reference_dir} ({reference.family}: {sorted(reference.components)}) is not a "
                            f"reference for {artifact} ({manifest.family}: {sorted(manifest.components)})")
    recorded = (manifest.parent or {}).get("calibration", {})
    data = load_calibration(calib_dir or recorded.get("dir"), recorded.get("size"), recorded.get("prompts"))
    family = registry.family(manifest.family)
    recipe = family.calibration()
    cache = CompileCache()  # this check's: the export's and the artifact's sessions, captured feeds
    references = open_sessions(reference_dir, reference, cache)
    candidates = open_sessions(artifact, manifest, cache)
    entries = {}
    for name, entry in manifest.components.items():
        log(f"validating {name} against {reference_dir}")
        _, heldout = recipe.feeds(name, reference, reference_dir, data, cache)
        checked = CheckContext(name, candidates[name], references, reference, reference_dir, data,
                               family.gates(name, entry.precision), cache)
        entries[name] = dataclasses.replace(entry, validation=validate_component(recipe, checked, heldout))
    pipeline = manifest.pipeline_validation
    if pipeline:
        log(f"validating the {manifest.family} pipeline end to end against {reference_dir}")
        checks = recipe.pipeline_checks(load(artifact, cache=cache), reference_dir, data,
                                        family.pipeline_gates(pipeline.precision), cache)
        pipeline = PipelineValidation(tuple(checks), pipeline.precision, pipeline.reference, pipeline.inputs,
                                      pipeline.kept_fp32)
    return dataclasses.replace(manifest, components=entries, pipeline_validation=pipeline)


def _against_torch(artifact: Path, manifest: Manifest, log: Callable[[str], None]) -> Manifest:
    from edgefm.exporters.base import ExportOptions, Source
    from edgefm.exporters.onnx_export import validate_against_torch

    family = registry.family(manifest.family)
    recorded = manifest.source
    source = Source(recorded["kind"], recorded["id"], manifest.variant)
    options = ExportOptions(**recorded.get("options", {}))
    log(f"rebuilding the torch model from {source.kind} {source.id}")
    loaded = family.load(source, options)
    if loaded.weights_sha256 != recorded["weights_sha256"]:
        raise EdgefmError(f"the weights at {source.id} differ from those {artifact} was exported from "
                          "(sha256 mismatch); re-export, or validate against an artifact with --against")
    entries = {}
    for component in family.components(loaded, options):
        log(f"validating {component.name} against torch")
        entry = manifest.components[component.name]
        entries[component.name] = dataclasses.replace(
            entry, validation=validate_against_torch(component, artifact / entry.file, entry))
    return dataclasses.replace(manifest, components=entries)
