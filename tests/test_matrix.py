"""`edgefm matrix` on a local Ray instance the tests start (2 CPUs): rows, a killed worker, re-runs, spec errors."""
from __future__ import annotations

import io
import json
import os
import signal
import tarfile
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgefm.cli import main
from edgefm.contract.errors import ArtifactError
from edgefm.contract.manifest import Manifest
from edgefm.matrix.spec import SpecError, load_spec

TINY_SPEC = """\
batch_sizes = [1, 2]
iters = 3
warmup = 1

[[model]]
family = "dinov2"
variant = "tiny"

[[target]]
name = "onnxruntime"
precisions = ["fp32", "int8"]

[[target]]
name = "openvino"
precisions = ["fp32"]
devices = ["local"]
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def ray_local():
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # as edgefm's own instance: loopback only
    ray = pytest.importorskip("ray", reason="edgefm matrix needs Ray: pip install 'edgefm[matrix]'")
    ray.init(num_cpus=2, resources={"edgefm-device:local": 1}, include_dashboard=False,
             object_store_memory=512 * 2**20, log_to_driver=False)
    assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
    yield ray
    ray.shutdown()


def run(spec: Path, out: Path) -> dict:
    from edgefm.matrix.driver import run_matrix

    return run_matrix(load_spec(spec), out)


def kill_first(marks: Path, step: str, killed: list, stop: threading.Event) -> None:
    """SIGKILL the first worker process running `step` once its attempt is marked (so its retry can count it), as
    the OOM killer or a lost node would. Marks: RAY_TEMP/edgefm-attempts/RUN/STEP-KEY.N, holding the pid."""
    import psutil

    while not stop.is_set() and not killed:
        for mark in marks.glob(f"*/{step}-*.1"):
            try:
                pid = int(mark.read_text())  # empty for an instant while the mark is written
                running = (psutil.Process(pid).cmdline() or [""])[0].startswith(f"ray::edgefm-{step}")
            except (psutil.Error, ValueError):
                continue
            if running:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
        time.sleep(0.02)


def stored_files(out: Path) -> dict:
    return {p: p.stat().st_mtime_ns for kind in ("exports", "builds", "devices", "results")
            for p in (out / kind).rglob("*") if p.is_file()}


def test_tiny_spec_survives_a_killed_worker_and_a_rerun_builds_nothing(ray_local, tmp_path):
    spec = write(tmp_path / "matrix.toml", TINY_SPEC)
    out = tmp_path / "out"
    killed, stop = [], threading.Event()
    marks = Path(ray_local.get_runtime_context().get_temp_dir()) / "edgefm-attempts"
    killer = threading.Thread(target=kill_first, args=(marks, "compile", killed, stop))
    killer.start()
    try:
        report = run(spec, out)
    finally:
        stop.set()
        killer.join()
    assert killed, "no compile task was seen running, so none was killed"
    rows = {(r["target"], r["precision"], r["device"]): r for r in report["rows"]}
    assert set(rows) == {("onnxruntime", "fp32", "any"), ("onnxruntime", "int8", "any"), ("openvino", "fp32", "local")}
    for row in rows.values():
        assert row["status"] == "ok", row["error"]
        assert row["latency_ms"] > 0 and row["items_per_s"] > 0 and row["size_mib"] > 0 and row["peak_rss_mib"] > 0
        assert row["task_metric"]["passed"] and row["hardware"]["cpu"] and row["worker"] in report["workers"]
        assert {b["batch"] for b in row["bench"]} == {1, 2}
        assert all(stage["built"] for stage in row["stages"].values())
    assert rows["onnxruntime", "int8", "any"]["size_mib"] < rows["onnxruntime", "fp32", "any"]["size_mib"]
    assert report["counts"]["retried"] >= 1 and report["counts"]["failed"] == 0 and not report["errors"]
    for name in ("report.json", "report.md", "report.html", "latency.png"):
        assert (out / name).stat().st_size > 0
    html = (out / "report.html").read_text()
    assert html.count("<tr") >= len(rows) + 1

    before = stored_files(out)
    builds = {p.name for p in (out / "builds").iterdir() if p.is_dir()}
    again = run(spec, out)
    assert again["counts"]["tasks_run"] == 0 and again["counts"]["tasks_reused"] == 1 + 3 + 3 * 2
    assert stored_files(out) == before, "a re-run rewrote stored outputs"
    assert [r["status"] for r in again["rows"]] == ["ok"] * 3
    assert not any(s["built"] for r in again["rows"] for s in r["stages"].values())

    write(spec, TINY_SPEC.replace('precisions = ["fp32"]', 'precisions = ["fp32", "fp16"]'))
    more = run(spec, out)
    assert more["counts"]["tasks_run"] == 3  # the new precision's compile, validation and benchmark only
    assert len({p.name for p in (out / "builds").iterdir() if p.is_dir()} - builds) == 1
    assert all(stored_files(out)[path] == mtime for path, mtime in before.items())


def test_a_device_kind_no_worker_offers_is_refused_with_its_line(ray_local, tmp_path):
    spec = write(tmp_path / "matrix.toml", TINY_SPEC.replace('devices = ["local"]', 'devices = ["jetson-orin"]'))
    with pytest.raises(SpecError, match=r"matrix.toml:16: device kind 'jetson-orin' is offered by no worker "
                                        r"\(workers offer: local\)"):
        run(spec, tmp_path / "out")
    assert not (tmp_path / "out" / "exports").exists()


def test_a_model_larger_than_every_worker_is_refused_with_its_line(ray_local, tmp_path):
    spec = write(tmp_path / "matrix.toml",
                 TINY_SPEC.replace('variant = "tiny"\n', 'variant = "tiny"\nmemory_gb = 4096\n'))
    with pytest.raises(SpecError, match=r"matrix.toml:5: dinov2 tiny needs 4096 GiB"):
        run(spec, tmp_path / "out")


def test_a_target_that_needs_a_gpu_on_its_device_is_refused_without_one(ray_local, tmp_path):
    spec = write(tmp_path / "matrix.toml", TINY_SPEC.replace('name = "openvino"', 'name = "tensorrt"')
                 .replace('precisions = ["fp32"]', 'precisions = ["fp16"]'))
    with pytest.raises(SpecError, match=r"matrix.toml:16: tensorrt needs \{'GPU': 1\} on its device, and no worker "
                                        r"of kind 'local' offers it"):
        run(spec, tmp_path / "out")


@pytest.mark.parametrize("change, line, message", [
    (('family = "dinov2"', 'family = "dinov3"'), 6, "unknown family 'dinov3'"),
    (('variant = "tiny"', 'variant = "huge"'), 7, "unknown dinov2 variant 'huge'"),
    (('name = "openvino"', 'name = "tensorrtx"'), 14, "unknown target 'tensorrtx'"),
    (('precisions = ["fp32"]', 'precisions = ["fp64"]'), 15, "target openvino builds no precision 'fp64'"),
    (('iters = 3', 'iters = 0'), 2, "iters must be an integer >= 1"),
    (('[[target]]\nname = "onnxruntime"', '[[target]]\nname = "onnxruntime"\ndevice = ["x"]'), 11,
     "unknown key 'device' in [[target]]"),
    (('devices = ["local"]', 'devices = ["two words"]'), 16, "devices must be a list of device kinds"),
    (('devices = ["local"]', 'options = { no_such_option = 1 }'), 16, "options: --no-such-option do(es) not apply"),
])
def test_spec_errors_name_their_line(tmp_path, change, line, message):
    spec = write(tmp_path / "matrix.toml", TINY_SPEC.replace(*change))
    with pytest.raises(SpecError) as caught:
        load_spec(spec)
    assert str(caught.value).startswith(f"{spec}:{line}: ") and message in str(caught.value)


def test_the_cli_prints_a_spec_error_on_one_line_before_starting_ray(tmp_path):
    spec = write(tmp_path / "matrix.toml", TINY_SPEC.replace('"int8"', '"int3"'))
    result = CliRunner().invoke(main, ["matrix", str(spec), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "matrix.toml:11: target onnxruntime builds no precision 'int3'" \
        in result.output
    assert not (tmp_path / "out").exists()


def test_an_output_folder_that_is_not_a_matrix_is_refused(tmp_path):
    from edgefm.contract.errors import EdgefmError
    from edgefm.matrix.store import Store

    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(EdgefmError, match="holds files that are not an edgefm matrix's"):
        Store(tmp_path).claim()
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_an_artifact_tar_cannot_write_outside_its_folder(tmp_path):
    from edgefm.matrix.tasks import unpack

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        data = b"owned"
        member = tarfile.TarInfo("../escaped.txt")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    with pytest.raises(ArtifactError, match="did not unpack"):
        unpack(buffer.getvalue(), tmp_path / "in")
    assert not (tmp_path / "escaped.txt").exists()


def test_a_tampered_artifact_fails_its_hashes_when_it_arrives(dinov2_exported, tmp_path):
    import shutil

    from edgefm.matrix.tasks import pack, unpack

    copy = tmp_path / "copy"
    shutil.copytree(dinov2_exported, copy)
    onnx_file = next(copy.glob("*.onnx"))
    onnx_file.write_bytes(onnx_file.read_bytes()[:-1] + b"\0")
    with pytest.raises(ArtifactError):
        unpack(pack(copy), tmp_path / "arrived")


def test_the_command_starts_its_own_ray_instance_and_shows_each_task(tmp_path):
    import subprocess
    import sys

    pytest.importorskip("ray", reason="edgefm matrix needs Ray: pip install 'edgefm[matrix]'")
    spec = write(tmp_path / "matrix.toml", TINY_SPEC.split("[[target]]")[0] + '[[target]]\nname = "openvino"\n'
                 'precisions = ["int8"]\ndevices = ["box"]\n')
    done = subprocess.run([sys.executable, "-m", "edgefm.cli", "matrix", str(spec), "-o", str(tmp_path / "out"),
                           "--device-kind", "box"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for step in ("export", "compile", "validate", "bench"):
        assert f"done {step} dinov2 tiny" in done.stderr
    assert "rows 1; tasks run 4, reused 0, failed 0" in done.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [(r["target"], r["precision"], r["device"], r["status"]) for r in report["rows"]] == [
        ("openvino", "int8", "box", "ok")]


def test_ctrl_c_cancels_every_task_and_leaves_nothing_half_written(tmp_path):
    import subprocess
    import sys

    psutil = pytest.importorskip("psutil")
    pytest.importorskip("ray", reason="edgefm matrix needs Ray: pip install 'edgefm[matrix]'")
    spec = write(tmp_path / "matrix.toml", TINY_SPEC.replace('devices = ["local"]', ""))
    out = tmp_path / "out"
    matrix = subprocess.Popen([sys.executable, "-m", "edgefm.cli", "matrix", str(spec), "-o", str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not any((p.info["cmdline"] or [""])[0].startswith("ray::edgefm-compile")
                      for p in psutil.process_iter(["cmdline"])):
            assert time.monotonic() < deadline and matrix.poll() is None, "no compile task started"
            time.sleep(0.05)
        matrix.send_signal(signal.SIGINT)
        _, stderr = matrix.communicate(timeout=120)
    finally:
        matrix.kill()
    assert matrix.returncode == 2 and "interrupted:" in stderr and "cancelled" in stderr
    time.sleep(2)
    assert not [p for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [""])[0].startswith("ray::edgefm")]
    assert not [p for p in out.rglob("*") if ".partial-" in p.name or ".edgefm-lock" in p.name]
    for kept in [p for kind in ("exports", "builds") for p in (out / kind).glob("*") if p.is_dir()]:
        Manifest.load(kept)  # what finished before Ctrl-C is complete and verifies
