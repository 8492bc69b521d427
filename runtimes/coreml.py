"""Core ML session: runs .mlpackage components written by the coreml target (macOS only).

Core ML's runtime ships with Apple's systems; coremltools reaches it through its native module,
which exists only in its macOS wheels. Elsewhere a clear error says so. The package fixes batch at 1
(see targets/coreml.py), so a larger batch runs item by item; token ids go in as int32.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from edgefm.contract.errors import ArtifactError
from edgefm.contract.manifest import ComponentEntry
from edgefm.runtimes.session import Session, batch_items, check_built_sizes

# the distributions that may provide this runtime (the hardware block's versions)
PACKAGES = ["coremltools"]


def unavailable_reason() -> str | None:
    """None where Core ML can run packages, else why not."""
    import importlib.util

    if sys.platform != "darwin":
        return f"Core ML runs only on Apple systems (macOS 14+), not {sys.platform}"
    if importlib.util.find_spec("coremltools") is None:
        return "coremltools is not installed (pip install 'edgefm[coreml]')"
    if importlib.util.find_spec("coremltools.libcoremlpython") is None:
        return "this coremltools build has no Core ML runtime bridge (libcoremlpython); install its macOS wheel"
    return None


def check_package_shapes(name: str, specs, shapes: dict[str, list], feeds: dict[str, np.ndarray]) -> None:
    """Sizes the package was built for (`options.compile.shapes`: fixed, or [lower, upper]), checked with a
    message that names the fix; batch is free (the session loops over it)."""
    check_built_sizes(name, specs, shapes, feeds, "this Core ML package",
                      "feed that size, or compile again (without --fixed-shapes for ranges)")


def package_items(specs, feeds: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """One feed per batch item (packages fix batch at 1), token ids as int32 (Core ML has no int64)."""
    feeds = {k: v.astype(np.int32) if v.dtype == np.int64 else v for k, v in feeds.items()}
    return batch_items(specs, feeds)


# The oldest macOS that runs each deployment target's ops.
MACOS_FOR = {"ios17": (14, 0), "macos14": (14, 0), "ios18": (15, 0), "macos15": (15, 0)}


class CoreMLSession(Session):
    REENTRANT = False  # MLModel.predict is not documented as thread-safe: one prediction at a time

    def __init__(self, path: Path, entry: ComponentEntry, name: str, compute_units: str | None = None,
                 threads: int | None = None):
        """`threads` is accepted for the common session API and ignored: Core ML schedules its own work."""
        reason = unavailable_reason()
        if reason:
            raise ArtifactError(f"{name}: this artifact runs on Core ML: {reason}. Compile for onnxruntime or "
                                "openvino to run it here")
        import platform

        import coremltools as ct

        super().__init__(name, entry.inputs, entry.outputs, entry.options.get("dims"))
        made = entry.options.get("runtime") or entry.options.get("compile", {})  # "compile": artifacts before 0.2
        needs = MACOS_FOR.get(made.get("deployment_target", "ios17"), (14, 0))
        have = tuple(int(x) for x in (platform.mac_ver()[0] or "0").split(".")[:2])
        if have < needs:
            raise ArtifactError(f"{name}: this package targets {made.get('deployment_target')} and needs macOS "
                                f"{needs[0]}+, this Mac runs {platform.mac_ver()[0]}; compile again with "
                                "--deployment-target macos14 (int4: --palettize 4)")
        self.compute_units = compute_units or made.get("compute_units", "ALL")
        self._model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit[self.compute_units])
        self._shapes = made.get("shapes", {})

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_package_shapes(self.name, self.inputs, self._shapes, feeds)
        results = [self._model.predict(item) for item in package_items(self.inputs, feeds)]
        return {s.name: np.concatenate([np.asarray(r[s.name], np.float32) for r in results]) for s in self.outputs}


def open_session(path: Path, entry: ComponentEntry, name: str, **options) -> CoreMLSession:
    return CoreMLSession(path, entry, name, **options)
