"""`edgefm.load(DIR)`: verify the artifact, open one session per component, add task helpers."""
from __future__ import annotations

import json
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from edgefm.contract import registry
from edgefm.contract.errors import ArtifactError, EdgefmError
from edgefm.contract.manifest import ComponentEntry, Manifest
from edgefm.runtimes.session import Session

if TYPE_CHECKING:
    from edgefm.contract.cache import CompileCache


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


# Sessions someone still holds, by file and options: two `edgefm.load` of one artifact keep one copy of its
# weights. Weak values: it keeps nothing alive, so nothing in it outlives its last holder; how long a job's
# sessions live is decided by the job's CompileCache, not here.
_LIVE: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def open_component(directory: Path, entry: ComponentEntry, name: str, cache: CompileCache | None = None,
                   **session_options) -> Session:
    """One component's session, through the runtime module its manifest entry names.

    Sessions of runtimes that can share them (ONNX Runtime: `run` is thread-safe) are shared while someone
    holds them; with a `cache` (a job's CompileCache) they are also held by it until the job ends: a compile's
    reference, its calibration and its end-to-end check each load the fp32 export, which for SD 1.5 would
    otherwise be 4.7 GB apiece."""
    runtime = registry.runtime(entry.runtime, name)
    path = Path(directory) / entry.file
    if not getattr(runtime, "SHARED_SESSIONS", False):
        return _opened(runtime, path, entry, name, session_options)
    key = (str(path.resolve()), tuple(sorted(entry.files().items())), name,
           json.dumps(entry.options, sort_keys=True, default=str), repr(sorted(session_options.items())))

    def shared() -> Session:
        session = _LIVE.get(key)
        if session is None:
            session = _LIVE[key] = _opened(runtime, path, entry, name, session_options)
        return session

    return shared() if cache is None else cache.get(("session", *key), shared)


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


def open_sessions(directory: Path, manifest: Manifest, cache: CompileCache | None = None,
                  **session_options) -> dict[str, Session]:
    return {name: open_component(directory, entry, name, cache, **session_options)
            for name, entry in manifest.components.items()}


def load(directory, verify: bool = True, cache: CompileCache | None = None, **session_options) -> Artifact:
    """The artifact in `directory` as its family's Artifact class; `cache`: a job's CompileCache to share
    sessions through (see open_component)."""
    from edgefm.contract import registry

    directory = Path(directory)
    manifest = Manifest.load(directory, verify=verify)
    artifact_class = registry.family(manifest.family).artifact_class()
    return artifact_class(directory, manifest, open_sessions(directory, manifest, cache, **session_options))
