"""`edgefm.load(DIR)`: verify the artifact, open one session per component, add task helpers."""
from __future__ import annotations

import importlib
import json
import weakref
from pathlib import Path

from edgefm.errors import ArtifactError, EdgefmError
from edgefm.manifest import ComponentEntry, Manifest
from edgefm.registry import family_module
from edgefm.runtimes.session import Session


class Artifact:
    """An artifact directory with its sessions. Family pipelines subclass this with task helpers."""

    def __init__(self, directory: Path, manifest: Manifest, sessions: dict[str, Session]):
        self.directory = Path(directory)
        self.manifest = manifest
        self.sessions = sessions

    def __getitem__(self, component: str) -> Session:
        return self.sessions[component]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.manifest.family} from {self.directory}: {sorted(self.sessions)}>"


_OPEN: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def open_component(directory: Path, entry: ComponentEntry, name: str, **session_options) -> Session:
    """One component's session, through the runtime module its manifest entry names.

    Sessions of runtimes that can share them (ONNX Runtime: `run` is thread-safe) are shared while
    someone holds them: a compile's reference, its calibration and its end-to-end check each load
    the fp32 export, which for SD 1.5 would otherwise be 4.7 GB apiece."""
    runtime = runtime_module(entry.runtime, name)
    path = Path(directory) / entry.file
    if not getattr(runtime, "SHARED_SESSIONS", False):
        return _opened(runtime, path, entry, name, session_options)
    key = (str(path.resolve()), tuple(sorted(entry.files().items())), name,
           json.dumps(entry.options, sort_keys=True, default=str), repr(sorted(session_options.items())))
    session = _OPEN.get(key)
    if session is None:
        session = _OPEN[key] = _opened(runtime, path, entry, name, session_options)
    return session


def runtime_module(runtime: str, component: str):
    """The edgefm.runtimes module a manifest names: one that opens sessions (`open_session`), nothing else."""
    try:
        module = importlib.import_module(f"edgefm.runtimes.{runtime}")
    except ModuleNotFoundError:
        module = None
    if not callable(getattr(module, "open_session", None)):
        raise ArtifactError(f"{component}: runtime {runtime!r} is not one this edgefm has; upgrade edgefm or "
                            "rebuild the artifact")
    return module


def _opened(runtime, path: Path, entry: ComponentEntry, name: str, session_options: dict) -> Session:
    """The backend's session; a file it cannot open is the artifact's fault, said in one line."""
    try:
        return runtime.open_session(path, entry, name, **session_options)
    except (EdgefmError, TypeError):  # TypeError: an unknown session option, the caller's mistake
        raise
    except Exception as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ArtifactError(f"{name}: {entry.runtime} cannot open {path.name} ({detail}); the file is damaged or was "
                            "not written by edgefm: rebuild the artifact") from exc


def open_sessions(directory: Path, manifest: Manifest, **session_options) -> dict[str, Session]:
    return {name: open_component(directory, entry, name, **session_options)
            for name, entry in manifest.components.items()}


def load(directory, verify: bool = True, **session_options) -> Artifact:
    directory = Path(directory)
    manifest = Manifest.load(directory, verify=verify)
    pipeline = family_module("edgefm.runtimes.pipelines", manifest.family)
    return pipeline.ARTIFACT_CLASS(directory, manifest, open_sessions(directory, manifest, **session_options))
