"""Discovery of model families and targets.

No central table: a family is a module in edgefm.exporters that defines FAMILY, a target a module in
edgefm.targets that defines TARGET. Plugins add theirs through the entry-point groups
`edgefm.families` and `edgefm.targets` (each entry point loads the object itself). Everything else a
family provides is asked of its object (`calibration()`, `artifact_class()`, `gates()`), never found by
module name.
"""
from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any

from edgefm.contract.errors import ArtifactError, EdgefmError, UnknownChoiceError


def _discover(package: str, attribute: str, group: str) -> dict:
    found = {}
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        module = importlib.import_module(f"{package}.{info.name}")
        obj = getattr(module, attribute, None)
        if obj is not None:
            found[obj.name] = obj
    for ep in entry_points(group=group):
        obj = ep.load()
        found[obj.name] = obj
    return found


def families() -> dict:
    return _discover("edgefm.exporters", "FAMILY", "edgefm.families")


def targets() -> dict:
    return _discover("edgefm.targets", "TARGET", "edgefm.targets")


def family(name: str) -> Any:
    found = families()
    if name not in found:
        raise UnknownChoiceError("family", name, found)
    return found[name]


def target(name: str) -> Any:
    found = targets()
    if name not in found:
        raise UnknownChoiceError("target", name, found)
    return found[name]


def runtime(name: str, where: str) -> ModuleType:
    """The edgefm.runtimes module a manifest names (`where`, for the error): one that opens sessions
    (`open_session`), nothing else. Found by name like every plugin, so the contract imports no runtime."""
    try:
        module = importlib.import_module(f"edgefm.runtimes.{name}")
    except ModuleNotFoundError:
        module = None
    if module is None or not callable(getattr(module, "open_session", None)):
        raise ArtifactError(f"{where}: runtime {name!r} is not one this edgefm has; upgrade edgefm or rebuild the "
                            "artifact")
    return module


def default_target():
    """The target `--target` means when not given: the one that says it runs wherever edgefm installs."""
    chosen = [t for t in targets().values() if t.default]
    if len(chosen) != 1:
        raise EdgefmError(f"exactly one target must set default = True; these do: {[t.name for t in chosen]}")
    return chosen[0]
