"""Discovery of model families, targets, runtimes and calibration recipes.

No central table: a family is a module in edgefm.exporters that defines FAMILY, a target a module in
edgefm.targets that defines TARGET. Plugins add theirs through the entry-point groups
`edgefm.families` and `edgefm.targets` (each entry point loads the object itself).
"""
from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points

from edgefm.errors import UnknownChoiceError


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


def family(name: str):
    found = families()
    if name not in found:
        raise UnknownChoiceError("family", name, found)
    return found[name]


def target(name: str):
    found = targets()
    if name not in found:
        raise UnknownChoiceError("target", name, found)
    return found[name]


def family_module(package: str, family_name: str):
    """The per-family module of a stage (edgefm.calibration.<family>, edgefm.runtimes.pipelines.<family>)."""
    try:
        return importlib.import_module(f"{package}.{family_name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{package}.{family_name}":
            raise
        raise UnknownChoiceError(f"family in {package}", family_name,
                                 [m.name for m in pkgutil.iter_modules(importlib.import_module(package).__path__)]) from None
