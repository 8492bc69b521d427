"""Plugins describe themselves: shared code asks them instead of naming them."""
from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from edgefm.targets.base import option

ROOT = Path(__file__).resolve().parents[1]
SHARED = sorted((ROOT / "core").glob("*.py")) + [ROOT / "runtimes" / "session.py", ROOT / "runtimes" / "loader.py"]


def _concrete_names() -> set[str]:
    """Every registered family and target, the runtimes they write for, and the SDK modules targets need."""
    from edgefm.contract import registry

    targets = registry.targets().values()
    names = set(registry.families()) | {t.name for t in targets} | {t.runtime for t in targets}
    names |= {module.split(".")[0] for t in targets for module in t.requires}
    return names - {"torch", "onnx"}  # the exporter's own tools, which shared code may use (torch: hardware's GEMMs)


def _code_text(tree: ast.AST):
    """(line, text) of every identifier, attribute, import and string in the code, docstrings left out."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value
        elif isinstance(node, ast.Name):
            yield node.lineno, node.id
        elif isinstance(node, ast.Attribute):
            yield node.lineno, node.attr
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            yield node.lineno, node.name
        elif isinstance(node, ast.arg):
            yield node.lineno, node.arg
        elif isinstance(node, ast.ImportFrom):
            yield node.lineno, " ".join([node.module or ""] + [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            yield node.lineno, " ".join(a.name for a in node.names)


def _named_plugins(source: str, names: set[str]) -> list[tuple[int, str, str]]:
    """(line, the name, the text) of each place the code names one of `names`."""
    word = re.compile(r"(?<![a-z0-9])(" + "|".join(sorted(map(re.escape, names), key=len, reverse=True)) +
                      r")(?![a-z0-9])", re.IGNORECASE)
    return [(line, hit.group(0), text) for line, text in _code_text(ast.parse(source))
            for hit in word.finditer(text.replace("_", " ").replace(".", " "))]


def test_shared_modules_name_no_concrete_target_or_family():
    names = _concrete_names()
    assert {"onnxruntime", "openvino", "clip", "dinov2"} <= names  # the scan looks for real names
    found = [f"{path.relative_to(ROOT)}:{line}: {name!r} in {text[:70]!r}"
             for path in SHARED for line, name, text in _named_plugins(path.read_text(), names)]
    assert not found, "shared code names a plugin; ask the plugin instead:\n" + "\n".join(sorted(set(found)))


def test_the_name_scan_catches_a_named_plugin():
    code = ('"""Docs may name onnxruntime."""\nimport edgefm.targets.openvino\nif target == "TensorRT":\n'
            '    sam2_mask_grid()\n# a comment may name clip\n')
    hits = _named_plugins(code, _concrete_names())
    assert sorted((line, name.lower()) for line, name, _ in hits) == [(2, "openvino"), (3, "tensorrt"), (4, "sam2")]


@dataclasses.dataclass(frozen=True)
class _ToyOptions:
    sharpness: int = option(3, "How sharp the toy is.", kind=int, minimum=1, precisions=("int8",))
    colour: str = option("red", "The toy's colour.", choices=("red", "blue"), on_device=True)
    quiet: bool = option(False, "Say nothing.", kind=bool)
    unflagged: int = 0  # a setting with no command-line flag


def _toy_target():
    from edgefm.contract.spec import Precision
    from edgefm.targets.base import Target

    class ToyTarget(Target):
        name = "toy"
        runtime = "onnxruntime"
        precisions = (Precision.FP32, Precision.INT8)
        options_class = _ToyOptions

    return ToyTarget()


@pytest.fixture
def with_toy_target(monkeypatch):
    from edgefm.contract import registry

    real = registry.targets
    monkeypatch.setattr(registry, "targets", lambda: {**real(), "toy": _toy_target()})
    yield


def _params(command: click.Command) -> dict[str, click.Parameter]:
    return {p.name: p for p in command.get_params(click.Context(command))}


def test_cli_flags_come_from_the_targets_options(with_toy_target):
    from edgefm.cli.flags import TargetFlagsCommand, target_flags

    compile_like = TargetFlagsCommand("x", params=[click.Option(["--target"])])
    params = _params(compile_like)
    assert {"sharpness", "colour", "quiet"} <= set(params) and "unflagged" not in params
    assert isinstance(params["sharpness"].type, click.IntRange) and params["sharpness"].type.min == 1
    assert list(params["colour"].type.choices) == ["red", "blue"] and params["quiet"].is_flag
    assert "toy (int8): How sharp the toy is. (default 3)" in params["sharpness"].help
    assert set(target_flags(on_device=True)) >= {"colour"} and "sharpness" not in target_flags(on_device=True)
    on_device = _params(TargetFlagsCommand("y", on_device=True))
    assert "colour" in on_device and "sharpness" not in on_device
    # every real target's declared options are flags too
    from edgefm.contract import registry
    from edgefm.targets.base import flag_fields

    for target in registry.targets().values():
        assert set(flag_fields(target.options_class)) <= set(params), target.name


def test_flag_values_reach_the_options_dataclass(with_toy_target):
    from edgefm.cli.flags import TargetFlagsCommand, split_flags

    seen = {}
    command = TargetFlagsCommand("x", params=[click.Option(["--target"])], callback=lambda **kw: seen.update(kw))
    result = CliRunner().invoke(command, ["--target", "toy", "--sharpness", "5", "--colour", "blue", "--quiet"])
    assert result.exit_code == 0, result.output
    common, flags = split_flags(seen)
    assert common == {"target": "toy"}
    given = {k: v for k, v in flags.items() if v is not None}
    assert _ToyOptions(**given) == _ToyOptions(sharpness=5, colour="blue", quiet=True)
    bad = CliRunner().invoke(command, ["--target", "toy", "--sharpness", "0"])
    assert bad.exit_code == 2 and "--sharpness" in bad.output


def test_a_target_without_an_on_device_step_says_so(compiled):
    from edgefm.cli import main

    artifact = compiled("dinov2", "fp32")
    for command in (["engine", str(artifact)], ["plan", str(artifact)]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2 and "have no on-device step" in result.output, result.output


def test_targets_lists_every_registered_target():
    from edgefm.cli import main
    from edgefm.contract import registry

    result = CliRunner().invoke(main, ["targets"])
    assert result.exit_code == 0, result.output
    for name in registry.targets():
        assert name in result.output


def test_sessions_are_context_managers(compiled):
    import edgefm

    artifact = edgefm.load(compiled("dinov2", "fp32"))
    closed = []
    session = artifact["image_encoder"]
    session.close = lambda: closed.append(True)
    with session as same:
        assert same is session
    assert closed == [True]


def test_runtime_settings_are_written_by_the_target(compiled):
    """The runtime reads how to run a file from the manifest (`options.runtime`), which the target wrote."""
    from edgefm.contract.manifest import Manifest

    openvino = Manifest.load(compiled("dinov2", "fp16", "openvino")).components["image_encoder"].options
    assert openvino["runtime"] == {"device": "CPU", "inference_precision": openvino["compile"]["inference_precision"]}
    assert Manifest.load(compiled("dinov2", "fp16")).components["image_encoder"].options["runtime"] == {}
