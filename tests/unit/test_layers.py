"""The package's layers, checked on every module's imports (at any depth, lazy ones included).

Bottom to top: contract < runtimes < calibration < exporters, targets < bench < jobs < matrix < cli. A module
may import its own layer and the ones below; plugins (runtimes, calibration, exporters, targets) never import
bench, jobs, matrix or cli; nothing under runtimes imports torch or transformers unless it declares
`NEEDS_TORCH = True` (the runtimes that are torch by design)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# the package-dir mapping of pyproject.toml: edgefm is core/, its plugin packages are top-level folders
FOLDERS = {"core": "edgefm", "runtimes": "edgefm.runtimes", "calibration": "edgefm.calibration",
           "exporters": "edgefm.exporters", "targets": "edgefm.targets"}
LAYERS = {"contract": 0, "runtimes": 1, "calibration": 2, "exporters": 3, "targets": 3, "bench": 4, "jobs": 5,
          "matrix": 6, "cli": 7}
PLUGINS = ("runtimes", "calibration", "exporters", "targets")
TORCH = ("torch", "transformers", "diffusers")


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            found[".".join((package, *parts)).removesuffix(".__init__")] = path
    return found


def layer_of(module: str) -> str | None:
    """The layer of an edgefm module; None for the root package (`edgefm`: version and lazy API only)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def imports(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import statement of the file, however deep."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from edgefm import jobs` imports the subpackage: count each name as a module when it is one
            found += [(node.lineno, f"{base}.{alias.name}" if base == "edgefm" else base) for alias in node.names]
    return found


def violations() -> list[str]:
    found = []
    for module, path in modules().items():
        mine = layer_of(module)
        declares_torch = "NEEDS_TORCH = True" in path.read_text()
        for line, imported in imports(module, path):
            where = f"{path.relative_to(ROOT)}:{line} imports {imported}"
            top = imported.split(".")[0]
            if mine == "runtimes" and top in TORCH and not declares_torch:
                found.append(f"{where}: runtimes run without torch (declare NEEDS_TORCH = True if it is by design)")
            theirs = layer_of(imported) if top == "edgefm" else None
            if mine is None or theirs is None:
                continue
            if mine in PLUGINS and theirs in ("bench", "jobs", "matrix", "cli"):
                found.append(f"{where}: plugins may import the contract and other plugins, not {theirs}")
            elif LAYERS[theirs] > LAYERS[mine]:
                found.append(f"{where}: {mine} sits below {theirs}")
    return found


def test_no_import_goes_up_a_layer():
    assert violations() == []


@pytest.mark.parametrize("source, expected", [
    ("from edgefm.jobs.validate import validate\n", "plugins may import the contract"),
    ("def f():\n    import torch\n", "runtimes run without torch"),
    ("from ..jobs import compile\n", "plugins may import the contract"),
])
def test_the_check_sees_lazy_and_relative_imports(tmp_path, monkeypatch, source, expected):
    """A planted violation inside runtimes/ is found (so the test above can fail)."""
    planted = ROOT / "runtimes" / "_planted_layer_probe.py"
    real = modules()
    monkeypatch.setattr(f"{__name__}.modules", lambda: {**real, "edgefm.runtimes._planted_layer_probe": planted})
    planted.write_text(source)
    try:
        assert any(expected in v and "_planted_layer_probe" in v for v in violations())
    finally:
        planted.unlink()


def test_contract_imports_nothing_above_it():
    """The contract is what plugins build on: it names no layer above it, not even lazily."""
    contract = {m: p for m, p in modules().items() if layer_of(m) == "contract"}
    assert contract
    above = [f"{m}: {i}" for m, p in contract.items() for _, i in imports(m, p)
             if i.startswith("edgefm.") and layer_of(i) not in ("contract", None)]
    assert above == []
