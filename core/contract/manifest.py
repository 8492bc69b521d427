"""The manifest: the one contract between stages (export -> compile -> runtime).

Every stage reads a manifest and writes one, so stages can run on different machines.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path, PureWindowsPath
from typing import Any, NoReturn

from edgefm.contract.errors import ArtifactError
from edgefm.contract.records import PipelineValidation, Selection, Validation
from edgefm.contract.spec import TensorSpec

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


def sha256_file(path: Path) -> str:
    """Content hash of a file, or of a package directory (Core ML's .mlpackage): its files' paths and bytes."""
    path = Path(path)
    digest = hashlib.sha256()
    # every file counts, hidden ones too: a runtime may read any of them (ONNX external data can be a dot-file)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def inside(directory: Path, name: str) -> Path:
    """`directory / name`, refused unless it stays inside `directory`: a plain name (no folder, no `..`, not
    absolute) and no symlink, here or within a package folder, that leads out."""
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name or PureWindowsPath(name).drive:
        raise ArtifactError(f"the manifest names {name!r}, which is not a plain path inside the artifact folder; "
                            "refusing it (an artifact may only use its own files)")
    root = Path(directory).resolve()
    path = Path(directory) / name
    inner = [path, *path.rglob("*")] if path.is_dir() else [path]
    for item in inner:
        try:
            leaves = not item.resolve(strict=False).is_relative_to(root)
        except (OSError, RuntimeError) as exc:  # a symlink loop, a name the file system refuses
            raise ArtifactError(f"{item} cannot be resolved ({exc}); refusing it") from None
        if leaves:
            raise ArtifactError(f"{item} is a link that leads out of the artifact folder {directory}; "
                                "refusing it (an artifact may only use its own files)")
    return path


def _not_json(constant: str) -> NoReturn:
    raise ValueError(f"{constant} is not a JSON value")


def check_schema(data: object, path: Path) -> None:
    """The manifest's types and values, against manifest.schema.json (shipped with edgefm), as one line."""
    import jsonschema

    version = data.get("format_version") if isinstance(data, dict) else None
    if isinstance(version, (int, float)) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise ArtifactError(f"{path} has format {version}, newer than this edgefm understands "
                            f"({FORMAT_VERSION}); upgrade edgefm")
    from edgefm.contract import spec  # read at call time: the precisions are declared there, once

    error = jsonschema.exceptions.best_match(_validator(tuple(p.value for p in spec.Precision)).iter_errors(data))
    if error is not None:
        field_path = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        # escaped: names in an untrusted manifest may hold line breaks, and the error is one line
        where = json.dumps(f"{field_path}: {error.message[:200]}", ensure_ascii=False)[1:-1]
        raise ArtifactError(f"{path}: field {where}; this is not a manifest edgefm wrote (rebuild the artifact or "
                            "fix the field)")


@lru_cache(maxsize=2)
def _validator(precisions: tuple[str, ...]) -> Any:
    from jsonschema import Draft202012Validator, validators

    schema = json.loads((Path(__file__).parent / "manifest.schema.json").read_text())
    schema["$defs"]["component"]["properties"]["precision"]["enum"] = list(precisions)
    # JSON Schema counts 2.0 as an integer; a shape or format_version of 2.0 is not one edgefm wrote
    strict = Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda checker, value: isinstance(value, int) and not isinstance(value, bool))
    return validators.extend(Draft202012Validator, type_checker=strict)(schema)


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
    validation: Validation | None = None
    calibration: dict | None = None
    data_files: dict[str, str] = field(default_factory=dict)  # ONNX external data: name -> sha256
    options: dict = field(default_factory=dict)  # how it was made (typed options, as JSON)

    def to_json(self) -> dict:
        data = asdict(replace(self, validation=None))
        data["validation"] = self.validation.to_json() if self.validation else None
        data["inputs"] = [s.to_json() for s in self.inputs]
        data["outputs"] = [s.to_json() for s in self.outputs]
        return data

    @classmethod
    def from_json(cls, data: dict) -> ComponentEntry:
        data = dict(data)
        data["inputs"] = [TensorSpec.from_json(s) for s in data["inputs"]]
        data["outputs"] = [TensorSpec.from_json(s) for s in data["outputs"]]
        data["validation"] = Validation.from_json(data["validation"]) if data.get("validation") else None
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
    selection: Selection | None = None  # how `--precision auto` chose this precision: every candidate's figures
    pipeline_validation: PipelineValidation | None = None  # end-to-end task check of a compiled artifact (families that have one)
    edgefm_version: str = ""
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict:
        data = asdict(replace(self, components={}, selection=None, pipeline_validation=None))
        data["components"] = {k: v.to_json() for k, v in self.components.items()}
        data["selection"] = self.selection.to_json() if self.selection else None
        data["pipeline_validation"] = self.pipeline_validation.to_json() if self.pipeline_validation else None
        return data

    @classmethod
    def from_json(cls, data: dict, path: Path) -> Manifest:
        """The manifest of schema-checked JSON; a record the schema lets through but that does not parse (a
        hand-edited check without a value, say) is the artifact's fault, said in one line."""
        data = dict(data)
        try:
            data["components"] = {k: ComponentEntry.from_json(v) for k, v in data["components"].items()}
            if data.get("selection"):
                data["selection"] = Selection.from_json(data["selection"])
            if data.get("pipeline_validation"):
                data["pipeline_validation"] = PipelineValidation.from_json(data["pipeline_validation"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArtifactError(f"{path}: a validation or selection record is malformed ({type(exc).__name__}: "
                                f"{exc}); rebuild the artifact") from None
        return cls(**data)

    def save(self, directory: Path) -> Path:
        from edgefm import __version__

        self.edgefm_version = __version__
        path = Path(directory) / MANIFEST_NAME
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: Path, verify: bool = True) -> Manifest:
        """Read and check a manifest: its schema and names always, every file's confinement and hash when `verify`.

        A manifest is untrusted input (artifacts are passed around), so nothing it names is opened before
        this passes."""
        directory = Path(directory)
        path = directory / MANIFEST_NAME
        if not path.is_file():
            raise ArtifactError(f"{directory} is not an edgefm artifact: no {MANIFEST_NAME} "
                                "(make one with `edgefm export` or `edgefm build`)")
        inside(directory, MANIFEST_NAME)
        try:
            data = json.loads(path.read_text(), parse_constant=_not_json)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ArtifactError(f"{path} is not a valid edgefm manifest (not JSON: {exc}); rebuild the "
                                "artifact") from None
        check_schema(data, path)
        manifest = cls.from_json(data, path)
        manifest.check_consistency(path)
        for name in manifest.listed_files():
            inside(directory, name)
        if verify:
            manifest.verify_files(directory)
        return manifest

    def listed_files(self) -> dict[str, str]:
        """Every file of the artifact (assets, graphs, their data files) -> sha256."""
        listed = dict(self.assets)
        for entry in self.components.values():
            listed.update(entry.files())
        return listed

    def asset_path(self, directory: Path, name: str) -> Path:
        """A file the task block names (a tokenizer, a saved tensor): only a listed, hashed asset is opened."""
        if name not in self.assets:
            raise ArtifactError(f"{directory}: the manifest's task names {name!r}, which is not one of its assets; "
                                "rebuild the artifact")
        return inside(directory, name)

    def check_consistency(self, path: Path) -> None:
        """What the schema cannot say: the family exists and has these components, the runtimes exist, stages
        match targets."""
        from edgefm.contract import registry

        family = registry.families().get(self.family)
        if family is None:
            raise ArtifactError(f"{path}: family {self.family!r} is not one this edgefm knows "
                                f"({', '.join(sorted(registry.families()))}); upgrade edgefm or install its plugin")
        unknown = sorted(set(self.components) - set(family.component_names))
        if unknown:
            raise ArtifactError(f"{path}: components {unknown} are not part of family {self.family} "
                                f"({', '.join(family.component_names)}); rebuild the artifact")
        for name, entry in self.components.items():
            registry.runtime(entry.runtime, f"{path}: components.{name}")
            for spec in entry.inputs + entry.outputs:
                if spec.range is not None and spec.range[0] > spec.range[1]:
                    raise ArtifactError(f"{path}: components.{name} {spec.name}.range {list(spec.range)} is empty "
                                        "(min > max); rebuild the artifact")
            if (entry.target is None) != (self.stage == "exported"):
                raise ArtifactError(f"{path}: components.{name}.target is {entry.target!r} in a {self.stage} "
                                    "artifact (exported graphs have none, compiled ones name theirs); rebuild it")

    def verify_files(self, directory: Path) -> None:
        """Every file the artifact holds is listed and hashed (`load` has confined every name before).

        Files the manifest does not list are refused too: an ONNX graph can read any file next to it as
        external data, and such a file would change outputs without any hash noticing."""
        directory = Path(directory)
        expected = self.listed_files()
        for name, digest in expected.items():
            path = directory / name  # confined by `load`, which calls this
            if not path.exists():
                raise ArtifactError(f"artifact {directory} is missing {name}, listed in its manifest; "
                                    "copy the whole directory or rebuild it")
            if sha256_file(path) != digest:
                raise ArtifactError(f"artifact {directory}: {name} does not match the sha256 in its "
                                    "manifest (changed or corrupt); rebuild it or copy it again")
        unlisted = sorted(p.name for p in directory.iterdir() if p.name not in expected and p.name != MANIFEST_NAME)
        if unlisted:
            raise ArtifactError(f"artifact {directory} holds {', '.join(unlisted)}, which its manifest does not list "
                                "(a graph could read it unhashed); move it out of the artifact folder")

    def summary(self) -> dict:
        """What `edgefm inspect` shows first."""
        return {"family": self.family, "variant": self.variant, "stage": self.stage,
                "source": self.source.get("id"), "edgefm_version": self.edgefm_version}


def recorded_parent(artifact: Path, manifest: Manifest) -> Path:
    """The export `artifact` was compiled from, refused when it changed since (its manifest sha256 differs):
    gating against another model would pass or fail for the wrong reason."""
    parent = manifest.parent or {}
    path = Path(parent.get("path", ""))
    recorded = parent.get("manifest_sha256")
    if not recorded:
        raise ArtifactError(f"{artifact} records no sha256 of the export it was compiled from, so that export "
                            "cannot be recognised; pass --against EXPORTED_DIR")
    if (path / MANIFEST_NAME).is_file() and sha256_file(path / MANIFEST_NAME) != recorded:
        raise ArtifactError(f"the export {path} changed since {artifact} was compiled from it (its manifest sha256 "
                            "differs from the one recorded); recompile, or compare anyway with --against DIR")
    return path
