"""The command line as a user meets it."""
from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from edgefm.cli import main
from edgefm.jobs.auto import TIE


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_help_imports_nothing_heavy():
    code = ("import sys; from edgefm.cli import main; "
            "sys.argv = ['edgefm', '--help']\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'numpy', 'onnxruntime', 'onnx', 'transformers') if m in sys.modules]\n"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_models_lists_families_variants_and_components():
    result = _run("models")
    assert result.exit_code == 0
    for text in ("clip", "dinov2", "openai/clip-vit-base-patch32", "facebook/dinov2-with-registers-giant",
                 "tiny", "image_encoder", "text_encoder"):
        assert text in result.output


def test_errors_are_one_clear_line(tmp_path):
    result = _run("export", "resnet", "--variant", "tiny", "-o", tmp_path / "x")
    assert result.exit_code == 2 and "valid choices: clip, dinov2" in result.output
    assert "Traceback" not in result.output
    result = _run("compile", tmp_path, "--precision", "fp6", "-o", tmp_path / "y")
    assert result.exit_code == 2 and "unknown precision 'fp6'; valid choices: fp16, fp32, fp8, int4, int8" in result.output
    result = _run("compile", tmp_path, "--precision", "fp8", "-o", tmp_path / "y")  # fp8 is TensorRT's
    assert result.exit_code == 2 and "precision for onnxruntime 'fp8'; valid choices: fp16, fp32, int4, int8" in result.output
    result = _run("compile", tmp_path / "no-artifact", "-o", tmp_path / "y")
    assert result.exit_code == 2 and "no manifest.json" in result.output


def test_build_validate_inspect(tmp_path, clip_exported, monkeypatch):
    from edgefm.contract import registry

    result = _run("build", "dinov2", "--variant", "tiny", "--precision", "int8", "-o", tmp_path / "b")
    assert result.exit_code == 0, result.output
    compiled = tmp_path / "b" / "onnxruntime-int8"
    assert (compiled / "manifest.json").is_file() and (tmp_path / "b" / "exported" / "manifest.json").is_file()
    result = _run("validate", compiled)
    assert result.exit_code == 0 and "pass" in result.output, result.output
    gates = type(registry.family("dinov2")).gates
    monkeypatch.setattr(type(registry.family("dinov2")), "gates", lambda self, c, p: {**gates(self, c, p), "cosine": 1.5})
    result = _run("validate", compiled)  # a gate it cannot reach: reported, exit 1
    assert result.exit_code == 1 and "FAIL" in result.output
    monkeypatch.undo()
    result = _run("validate", tmp_path / "b" / "exported")  # exported vs torch, rebuilt from the preset
    assert result.exit_code == 0 and "pass" in result.output, result.output
    result = _run("validate", compiled, "--against", clip_exported)
    assert result.exit_code == 2 and "is not a reference" in result.output
    result = _run("inspect", compiled)
    assert result.exit_code == 0 and "pixel_values" in result.output and "qdq" in result.output
    assert json.loads(_run("inspect", compiled, "--json").output)["stage"] == "compiled"


def test_allow_below_gate_sets_exit_code(tmp_path, dinov2_exported, monkeypatch):
    from edgefm.contract import registry

    gates = type(registry.family("dinov2")).gates
    monkeypatch.setattr(type(registry.family("dinov2")), "gates", lambda self, c, p: {**gates(self, c, p), "cosine": 1.5})
    result = _run("compile", dinov2_exported, "--precision", "fp16", "-o", tmp_path / "a")
    assert result.exit_code == 2 and "--allow-below-gate" in result.output
    result = _run("compile", dinov2_exported, "--precision", "fp16", "--allow-below-gate", "-o", tmp_path / "b")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["components"]["image_encoder"]["validation"]["allowed_below_gate"] is True


def test_compile_flags_that_do_not_fit_are_refused(dinov2_exported, tmp_path):
    result = _run("compile", dinov2_exported, "--precision", "auto", "--allow-below-gate", "-o", tmp_path / "a")
    assert result.exit_code == 2 and "does not combine with --precision auto" in result.output
    result = _run("compile", dinov2_exported, "--target", "onnxruntime", "--device", "GPU", "-o", tmp_path / "b")
    assert result.exit_code == 2 and "--device do(es) not apply to target onnxruntime" in result.output
    result = _run("compile", dinov2_exported, "--objective", "size", "-o", tmp_path / "c")
    assert result.exit_code == 2 and "--objective applies to --precision auto only" in result.output
    result = _run("build", "dinov2", "--variant", "tiny", "--int4-ratio", "2", "--target", "openvino",
                  "-o", tmp_path / "d")
    assert result.exit_code == 2 and "int4 ratio 2.0 must be in" in result.output
    for name in "abcd":
        assert not (tmp_path / name).exists()


def test_target_auto_refuses_what_belongs_to_one_target(dinov2_exported, tmp_path):
    result = _run("compile", dinov2_exported, "--target", "auto", "--int8-mode", "dynamic", "-o", tmp_path / "a")
    assert result.exit_code == 2 and "--int8-mode belong to one target" in result.output
    result = _run("compile", dinov2_exported, "--target", "auto", "--precision", "int8", "-o", tmp_path / "b")
    assert result.exit_code == 2 and "--target auto chooses the precision too" in result.output
    result = _run("compile", dinov2_exported, "--target", "auto", "--allow-below-gate", "-o", tmp_path / "c")
    assert result.exit_code == 2 and "does not combine with --target auto" in result.output
    assert not any((tmp_path / name).exists() for name in "abc")


def test_compile_auto_from_the_command_line(dinov2_exported, tmp_path):
    result = _run("compile", dinov2_exported, "--precision", "auto", "--objective", "size", "-o", tmp_path / "auto")
    assert result.exit_code == 0, result.output
    selection = json.loads((tmp_path / "auto" / "manifest.json").read_text())["selection"]
    sizes = {c["precision"]: c["size_mib"] for c in selection["candidates"] if c["passed"]}
    assert selection["objective"] == "size" and sizes[selection["chosen"]] <= min(sizes.values()) * (1 + TIE)
    assert "--precision auto" in _run("inspect", tmp_path / "auto").output
