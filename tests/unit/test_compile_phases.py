"""Every entry point runs the same compile job: the same calls of the target, in the same order.

`edgefm compile`, `edgefm build`, `edgefm demo`, `--precision auto` and the matrix's compile + on-device tasks
each compile the toy export with the recording target; what the target was asked is compared call by call."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from fakes import ToyFamily, write_export

from edgefm.cli import main

# coarse fails its gate, fine passes; then the artifact files, then the on-device step (this machine is the device)
PHASES = ["check_options", "schemes int8", "compile encoder coarse", "static_checks", "validation_session",
          "compile encoder fine", "static_checks", "validation_session", "artifact_files", "device_unavailable",
          "on_device"]


def _cli(*args) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def _fake_export(monkeypatch):
    """`edgefm export` of the toy family (the real one needs torch): the export writes the toy artifact."""
    monkeypatch.setattr("edgefm.jobs.export.export", lambda family, out, **kwargs: write_export(ToyFamily(), out))


def test_compile_runs_every_phase(fake_target, toy_export, tmp_path):
    _cli("compile", toy_export, "--target", "fake", "--precision", "int8", "-o", tmp_path / "c")
    assert fake_target.calls == PHASES


def test_build_runs_the_phases_of_compile(fake_target, tmp_path, monkeypatch):
    """The bug this job fixed: `edgefm build` skipped the on-device step that `edgefm compile` ran."""
    _fake_export(monkeypatch)
    _cli("build", "toy", "--target", "fake", "--precision", "int8", "-o", tmp_path / "b")
    assert fake_target.calls == PHASES
    assert (tmp_path / "b" / "fake-int8" / "manifest.json").is_file()


def test_demo_runs_the_phases_of_compile(fake_target, tmp_path, monkeypatch):
    from edgefm.jobs.demo import run_demo

    _fake_export(monkeypatch)
    rows, _ = run_demo(tmp_path / "demo", log=lambda message: None)
    assert [m.stage for _, m in rows] == ["exported", "compiled"]
    assert fake_target.calls == PHASES


def test_auto_runs_the_phases_of_compile_per_candidate(fake_target, toy_export, tmp_path):
    from edgefm.jobs.auto import compile_auto

    manifest = compile_auto(toy_export, "fake", tmp_path / "auto", iters=2, log=lambda message: None)
    fp32 = ["check_options", "schemes fp32", "compile encoder exact", "static_checks", "validation_session",
            "artifact_files", "device_unavailable", "on_device"]
    assert fake_target.calls == fp32 + PHASES
    assert [c.precision for c in manifest.selection.candidates] == ["fp32", "int8"]
    assert all(c.passed for c in manifest.selection.candidates)


def test_the_matrix_tasks_run_the_phases_of_compile(fake_target, toy_export, tmp_path):
    """The matrix compiles with the on-device step deferred, then runs it as its own task on the device kind the
    spec names: the same calls but the device check (that task is placed on the device)."""
    from edgefm.matrix.tasks import STEPS

    job = {"target": "fake", "precision": "int8", "options": {}}
    STEPS["compile"](job, {"exported": toy_export}, tmp_path / "compiled")
    assert fake_target.calls == PHASES[:-2]
    STEPS["on_device"](job, {"exported": toy_export, "compiled": tmp_path / "compiled"}, tmp_path / "finished")
    assert fake_target.calls == [p for p in PHASES if p != "device_unavailable"]


def test_a_device_elsewhere_leaves_the_step_with_how_to_run_it(fake_target, toy_export, tmp_path):
    output = _cli("compile", toy_export, "--target", "fake", "--precision", "int8", "--device", "elsewhere",
                  "-o", tmp_path / "c")
    assert fake_target.calls == PHASES[:-1]
    assert "the fake device is elsewhere" in output and f"edgefm engine {tmp_path / 'c'}" in output.replace("\n", "")


def test_engine_runs_the_step_of_the_artifacts_target(fake_target, toy_export, tmp_path):
    _cli("compile", toy_export, "--target", "fake", "--precision", "int8", "--device", "elsewhere",
         "-o", tmp_path / "c")
    fake_target.calls.clear()
    _cli("engine", tmp_path / "c")
    assert fake_target.calls == ["on_device"]


@pytest.mark.parametrize("flags, message", [
    (["--precision", "auto", "--allow-below-gate"], "--allow-below-gate does not combine with --precision auto"),
    (["--precision", "int8", "--objective", "size"], "--objective applies to --precision auto only"),
    (["--target", "auto", "--ladder", "hopeless"], "--ladder belong to one target"),
    (["--target", "auto", "--precision", "int8"], "--target auto chooses the precision too"),
])
def test_flag_combinations_are_refused_before_any_work(fake_target, toy_export, tmp_path, flags, message):
    result = CliRunner().invoke(main, ["compile", str(toy_export), *flags, "-o", str(tmp_path / "c")])
    assert result.exit_code == 2 and message in result.output, result.output
    assert fake_target.calls == [] and not Path(tmp_path / "c").exists()
