"""What `edgefm matrix` keeps in its --out folder, keyed so that a re-run redoes nothing it already has.

    OUT/.edgefm-matrix              marks the folder as a matrix's (nothing else in OUT is ever replaced)
    OUT/exports/KEY/ + KEY.json     an export and its record (where it ran, seconds, measured peak memory)
    OUT/builds/KEY/ + KEY.json      a compiled artifact; KEY = the export's weights sha256 + export options +
                                    target + precision + target options + edgefm version
    OUT/devices/KIND/KEY/ + .json   an artifact after its on-device step on workers of that device kind
    OUT/results/KIND/KEY.validate.json, KEY.bench-SETTINGS.json   what validation and benchmark measured there
    OUT/report.json, .md, .html + PNGs
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from edgefm import __version__
from edgefm.contract.errors import ArtifactError, EdgefmError
from edgefm.contract.manifest import sha256_file
from edgefm.contract.staging import staging_dir, write_file_atomically

MARK = ".edgefm-matrix"


def digest(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def source_files_sha256(model: str | None) -> dict | None:
    """A local checkpoint folder's files by content: a changed checkpoint gets a new export key."""
    if model is None or not Path(model).is_dir():
        return None
    root = Path(model)
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def export_key(model) -> str:
    return digest({"family": model.family, "variant": model.variant, "model": model.model,
                   "random_weights": model.random_weights, "resolution": model.resolution,
                   "files": source_files_sha256(model.model), "edgefm": __version__})


def build_key(exported_manifest, target: str, precision: str, options: dict) -> str:
    source = exported_manifest.source
    return digest({"weights_sha256": source["weights_sha256"], "export_options": source["options"],
                   "family": exported_manifest.family, "variant": exported_manifest.variant,
                   "components": sorted(exported_manifest.components), "target": target, "precision": precision,
                   "options": options, "edgefm": __version__})


class Store:
    def __init__(self, out: Path):
        self.out = Path(out)

    def claim(self) -> None:
        """Use OUT if it is new, empty or a matrix's own folder; refuse anything else before any work."""
        if self.out.exists() and not self.out.is_dir():
            raise EdgefmError(f"--out {self.out} is a file; give a folder for the matrix's outputs")
        if self.out.is_dir() and any(self.out.iterdir()) and not (self.out / MARK).is_file():
            raise EdgefmError(f"--out {self.out} holds files that are not an edgefm matrix's; choose a new or empty "
                              "folder (a matrix's own folder is reused: what it holds is not built again)")
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / MARK).write_text("edgefm matrix outputs: builds are reused by key on a re-run\n")

    def artifact_dir(self, kind: str, key: str, device: str | None = None) -> Path:
        return self.out / kind / key if device is None else self.out / "devices" / device / key

    def result_path(self, device: str, key: str, what: str) -> Path:
        return self.out / "results" / device / f"{key}.{what}.json"

    def has_artifact(self, directory: Path):
        """The stored artifact's manifest when it is complete and every file hashes as recorded, else None."""
        from edgefm.contract.manifest import Manifest

        if not (directory / "manifest.json").is_file() or not directory.with_suffix(".json").is_file():
            return None
        try:
            return Manifest.load(directory)
        except ArtifactError:
            return None  # damaged since: built again into a fresh folder name by the caller's key

    def save_artifact(self, directory: Path, files: bytes, record: dict):
        """Unpack a worker's artifact into place atomically and verify it; then its record beside it."""
        from edgefm.matrix.tasks import unpack

        with staging_dir(directory, overwrite=directory.exists(), log=lambda message: None) as tmp:
            manifest = unpack(files, tmp)
        write_json(directory.with_suffix(".json"), record)
        return manifest

    def read_json(self, path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None


def write_json(path: Path, data: dict) -> None:
    """Written whole or not at all: a matrix interrupted mid-write leaves no record that looks complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomically(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=str) + "\n"))
