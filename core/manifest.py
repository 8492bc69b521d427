"""The manifest: the one contract between stages (export -> compile -> runtime).

Every stage reads a manifest and writes one, so stages can run on different machines.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgefm.errors import ArtifactError
from edgefm.spec import TensorSpec

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


def sha256_file(path: Path) -> str:
    """Content hash of a file, or of a package directory (Core ML's .mlpackage): its files' paths and bytes."""
    path = Path(path)
    digest = hashlib.sha256()
    # a package's hidden files (Finder's .DS_Store) are not part of it
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def disk_bytes(path: Path) -> int:
    """Size of a file, or of everything in a package directory."""
    path = Path(path)
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


@dataclass
class ComponentEntry:
    file: str
    sha256: str
    runtime: str  # which edgefm.runtimes module loads the file
    target: str | None  # None for an exported (not yet compiled) graph
    precision: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    validation: dict | None = None
    calibration: dict | None = None
    data_files: dict[str, str] = field(default_factory=dict)  # ONNX external data: name -> sha256
    options: dict = field(default_factory=dict)  # how it was made (typed options, as JSON)

    def to_json(self) -> dict:
        data = asdict(self)
        data["inputs"] = [s.to_json() for s in self.inputs]
        data["outputs"] = [s.to_json() for s in self.outputs]
        return data

    @classmethod
    def from_json(cls, data: dict) -> "ComponentEntry":
        data = dict(data)
        data["inputs"] = [TensorSpec.from_json(s) for s in data["inputs"]]
        data["outputs"] = [TensorSpec.from_json(s) for s in data["outputs"]]
        return cls(**data)

    def files(self) -> dict[str, str]:
        return {self.file: self.sha256, **self.data_files}

    def size_mib(self, directory: Path) -> float:
        """On-disk size of the component's files in the artifact `directory`."""
        return sum(disk_bytes(Path(directory) / name) for name in self.files()) / 2**20


@dataclass
class Manifest:
    family: str
    variant: str | None
    source: dict  # {"kind": preset|hub|dir, "id": ..., "weights_sha256": ...}
    stage: str  # "exported" or "compiled"
    components: dict[str, ComponentEntry]
    assets: dict[str, str] = field(default_factory=dict)  # tokenizer / preprocessor files -> sha256
    task: dict = field(default_factory=dict)  # what the runtime pipelines need (preprocessing, labels)
    parent: dict | None = None  # the artifact a compiled one was made from
    selection: dict | None = None  # how `--precision auto` chose this precision: every candidate's figures
    pipeline_validation: dict | None = None  # end-to-end task check of a compiled artifact (families that have one)
    edgefm_version: str = ""
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict:
        data = asdict(self)
        data["components"] = {k: v.to_json() for k, v in self.components.items()}
        return data

    def save(self, directory: Path) -> Path:
        from edgefm import __version__

        self.edgefm_version = __version__
        path = Path(directory) / MANIFEST_NAME
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: Path, verify: bool = True) -> "Manifest":
        directory = Path(directory)
        path = directory / MANIFEST_NAME
        if not path.is_file():
            raise ArtifactError(f"{directory} is not an edgefm artifact: no {MANIFEST_NAME} "
                                "(make one with `edgefm export` or `edgefm build`)")
        try:
            data = json.loads(path.read_text())
            data["components"] = {k: ComponentEntry.from_json(v) for k, v in data["components"].items()}
            manifest = cls(**data)
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(f"{path} is not a valid edgefm manifest ({exc}); rebuild the artifact") from None
        if manifest.format_version > FORMAT_VERSION:
            raise ArtifactError(f"{path} has format {manifest.format_version}, newer than this edgefm "
                                f"understands ({FORMAT_VERSION}); upgrade edgefm")
        if verify:
            manifest.verify_files(directory)
        return manifest

    def verify_files(self, directory: Path) -> None:
        expected = dict(self.assets)
        for entry in self.components.values():
            expected.update(entry.files())
        for name, digest in expected.items():
            path = Path(directory) / name
            if not path.exists():
                raise ArtifactError(f"artifact {directory} is missing {name}, listed in its manifest; "
                                    "copy the whole directory or rebuild it")
            if sha256_file(path) != digest:
                raise ArtifactError(f"artifact {directory}: {name} does not match the sha256 in its "
                                    "manifest (changed or corrupt); rebuild it or copy it again")

    def summary(self) -> dict:
        """What `edgefm inspect` shows first."""
        return {"family": self.family, "variant": self.variant, "stage": self.stage,
                "source": self.source.get("id"), "edgefm_version": self.edgefm_version}
