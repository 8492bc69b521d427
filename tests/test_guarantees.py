"""The README's guarantees, attacked: confinement, hashing, outputs that never destroy inputs, provenance,
the manifest schema and one-line errors. Each attack has its negative control (the same step, done right,
works), so a test fails if the guarantee breaks or if the control stops working."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edgefm
from edgefm.cli import main
from edgefm.contract.errors import ArtifactError, EdgefmError
from edgefm.contract.manifest import Manifest, sha256_file


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _fingerprint(folder: Path) -> dict:
    """Every file under `folder` -> sha256: what "nothing was touched" means."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _copy(source: Path, where: Path) -> Path:
    shutil.copytree(source, where)
    return where


def _edit(artifact: Path, change) -> None:
    data = json.loads((artifact / "manifest.json").read_text())
    change(data)
    (artifact / "manifest.json").write_text(json.dumps(data))


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return result.output


# --- confinement --------------------------------------------------------------------------------------------------

def _retarget_asset(data, name):
    digest = data["assets"].pop("preprocessor_config.json")
    data["assets"][name] = digest


@pytest.mark.parametrize("change", [
    lambda d: d["components"]["image_encoder"].update(file="../outside.onnx"),
    lambda d: d["components"]["image_encoder"].update(file="/tmp/outside.onnx"),
    lambda d: d["components"]["image_encoder"]["data_files"].update({"../w.bin": "0" * 64}),
    lambda d: _retarget_asset(d, "../../payload/evil.txt"),
    lambda d: _retarget_asset(d, "sub/evil.txt"),
    lambda d: _retarget_asset(d, ".."),
], ids=["file-dotdot", "file-absolute", "data-file-dotdot", "asset-dotdot", "asset-subfolder", "asset-parent"])
def test_paths_outside_the_artifact_are_refused_even_unverified(dinov2_exported, tmp_path, change):
    art = _copy(dinov2_exported, tmp_path / "art")
    edgefm.load(art)  # control
    _edit(art, change)
    for verify in (True, False):
        with pytest.raises(ArtifactError, match="not a plain path inside the artifact|field"):
            Manifest.load(art, verify=verify)


def test_a_symlink_out_of_the_folder_is_refused_even_with_matching_hash(dinov2_exported, tmp_path):
    art = _copy(dinov2_exported, tmp_path / "art")
    outside = tmp_path / "outside.json"
    shutil.move(art / "preprocessor_config.json", outside)
    (art / "preprocessor_config.json").symlink_to(outside)  # same bytes, so the sha256 matches
    with pytest.raises(ArtifactError, match="link that leads out of the artifact folder"):
        edgefm.load(art)
    (art / "preprocessor_config.json").unlink()  # control: the real file back in place loads
    shutil.copy(outside, art / "preprocessor_config.json")
    edgefm.load(art)


def test_every_file_in_the_folder_is_listed_and_hashed(dinov2_exported, tmp_path, photos):
    """An ONNX graph can read external data from any file next to it: an unlisted file is refused, and a
    listed external-data file is hashed (changing it is caught)."""
    import onnx

    art = _copy(dinov2_exported, tmp_path / "art")
    model = onnx.load(str(art / "image_encoder.onnx"))
    onnx.save(model, str(art / "image_encoder.onnx"), save_as_external_data=True, location="image_encoder.onnx.data")
    expected = edgefm.load(dinov2_exported).embed(photos[:1])
    _edit(art, lambda d: d["components"]["image_encoder"].update(sha256=sha256_file(art / "image_encoder.onnx")))
    with pytest.raises(ArtifactError, match="holds image_encoder.onnx.data, which its manifest does not list"):
        edgefm.load(art)
    _edit(art, lambda d: d["components"]["image_encoder"]["data_files"].update(
        {"image_encoder.onnx.data": sha256_file(art / "image_encoder.onnx.data")}))
    np.testing.assert_allclose(edgefm.load(art).embed(photos[:1]), expected, atol=1e-5)  # control: listed, it runs
    with open(art / "image_encoder.onnx.data", "r+b") as f:
        f.seek(64)
        f.write(b"\x7f" * 16)
    with pytest.raises(ArtifactError, match="image_encoder.onnx.data does not match the sha256"):
        edgefm.load(art)


def test_external_data_pointing_out_of_the_folder_is_refused(dinov2_exported, tmp_path):
    import onnx

    art = _copy(dinov2_exported, tmp_path / "art")
    model = onnx.load(str(art / "image_encoder.onnx"))
    onnx.save(model, str(tmp_path / "m.onnx"), save_as_external_data=True, location="w.bin")
    model = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../w.bin"
    onnx.save(model, str(art / "image_encoder.onnx"))
    _edit(art, lambda d: d["components"]["image_encoder"].update(sha256=sha256_file(art / "image_encoder.onnx")))
    with pytest.raises(ArtifactError, match="cannot open image_encoder.onnx .*escapes"):
        edgefm.load(art)


def test_task_files_must_be_listed_assets(clip_exported, tmp_path):
    art = _copy(clip_exported, tmp_path / "art")
    edgefm.load(art).embed_texts(["a cat"])  # control
    outside = tmp_path / "tokenizer.json"
    shutil.copy(art / "tokenizer.json", outside)
    _edit(art, lambda d: d["task"]["text"].update(tokenizer=str(outside)))
    with pytest.raises(ArtifactError, match="not one of its assets"):
        edgefm.load(art).embed_texts(["a cat"])


@pytest.mark.parametrize("command", [["validate"], ["bench", "--iters", "1", "--warmup", "0", "--batch", "1"],
                                     ["compile", "--precision", "fp32", "-o", "{tmp}/out"],
                                     ["run", "--image", "{tmp}/x.png", "-o", "{tmp}/y.png"]])
def test_every_command_refuses_an_escaping_artifact_in_one_line(dinov2_exported, tmp_path, command):
    from PIL import Image

    art = _copy(dinov2_exported, tmp_path / "art")
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    _edit(art, lambda d: _retarget_asset(d, "../../payload/evil.txt"))
    args = [c.replace("{tmp}", str(tmp_path)) for c in command]
    output = _one_line_error(_run(args[0], art, *args[1:]))
    assert "not a plain path inside the artifact folder" in output
    assert not (tmp_path / "out").exists() and not (tmp_path.parent / "payload").exists()


# --- outputs ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("where,overwrite,message", [
    ("source", True, "is (or holds) the input"),
    ("parent", True, "is (or holds) the input"),
    ("inside", False, "is inside the input"),
    ("other", True, "replaces edgefm artifact folders only"),
])
def test_outputs_never_destroy_inputs(dinov2_exported, tmp_path, where, overwrite, message):
    parent = tmp_path / "work"
    art = _copy(dinov2_exported, parent / "art")
    (parent / "notes.txt").write_text("mine")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "thesis.tex").write_text("mine too")
    before = _fingerprint(tmp_path)
    out = {"source": art, "parent": parent, "inside": art / "compiled", "other": tmp_path / "other"}[where]
    result = _run("compile", art, "-o", out, *(["--overwrite"] if overwrite else []))
    assert message in _one_line_error(result)
    assert _fingerprint(tmp_path) == before


def test_overwrite_never_deletes_a_folder_that_is_not_wholly_an_artifact(dinov2_exported, tmp_path):
    webapp = tmp_path / "webapp"
    webapp.mkdir()
    (webapp / "manifest.json").write_text('{"name": "my extension"}')  # not an edgefm manifest
    (webapp / "background.js").write_text("precious")
    art = _copy(dinov2_exported, tmp_path / "art")
    (art / "notes.txt").write_text("mine")  # an artifact with a file of the user's
    before = _fingerprint(tmp_path)
    assert "is not one" in _one_line_error(_run("compile", dinov2_exported, "-o", webapp, "--overwrite"))
    assert "also holds notes.txt" in _one_line_error(_run("compile", dinov2_exported, "-o", art, "--overwrite"))
    assert _fingerprint(tmp_path) == before


def test_hidden_files_in_a_package_folder_are_hashed(tmp_path):
    package = tmp_path / "model.mlpackage"
    (package / "sub").mkdir(parents=True)
    (package / "sub" / ".weights.bin").write_bytes(b"\0" * 64)
    first = sha256_file(package)
    assert sha256_file(package) == first  # control: same bytes, same hash
    (package / "sub" / ".weights.bin").write_bytes(b"\1" * 64)
    assert sha256_file(package) != first


def test_overwrite_replaces_an_artifact_and_an_empty_folder(dinov2_exported, tmp_path):
    (tmp_path / "empty").mkdir()
    assert _run("compile", dinov2_exported, "-o", tmp_path / "empty", "--overwrite").exit_code == 0
    with open(tmp_path / "empty" / "preprocessor_config.json", "a") as f:
        f.write(" ")  # damaged: only a replaced folder loads again
    assert _run("compile", dinov2_exported, "-o", tmp_path / "empty").exit_code == 2  # control: needs --overwrite
    assert _run("compile", dinov2_exported, "-o", tmp_path / "empty", "--overwrite").exit_code == 0
    edgefm.load(tmp_path / "empty")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial folder or lock left


def test_a_folder_appearing_at_the_output_during_the_build_is_not_replaced(dinov2_exported, tmp_path):
    from edgefm.jobs.compile import compile_artifact

    out = tmp_path / "out"

    def intruder(message: str) -> None:
        if not out.exists():
            out.mkdir()
            (out / "keep.txt").write_text("someone else's")

    with pytest.raises(EdgefmError, match="appeared while this command ran"):
        compile_artifact(dinov2_exported, "onnxruntime", "fp32", out, log=intruder)
    assert _fingerprint(out) == {"keep.txt": hashlib.sha256(b"someone else's").hexdigest()}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _cli(*args, **kwargs) -> subprocess.Popen:
    edgefm_bin = Path(sys.executable).with_name("edgefm")
    return subprocess.Popen([str(edgefm_bin), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **kwargs)


def test_two_builds_to_one_output_one_wins_the_other_fails_clearly(dinov2_exported, tmp_path):
    out = tmp_path / "out"
    runs = [_cli("compile", dinov2_exported, "--precision", "int8", "-o", out) for _ in range(2)]
    results = [(run.wait(timeout=600), run.stdout.read()) for run in runs]
    assert sorted(code for code, _ in results) == [0, 2], results
    loser = next(text for code, text in results if code == 2)
    assert "another edgefm command" in loser or "already exists" in loser
    assert "Traceback" not in loser
    edgefm.load(out)


def test_a_killed_compile_leaves_nothing_that_looks_complete_and_a_rerun_succeeds(dinov2_exported, tmp_path):
    out = tmp_path / "out"
    run = _cli("compile", dinov2_exported, "--precision", "int8", "-o", out, start_new_session=True)
    deadline = time.time() + 300
    while not any((p / ".work").exists() for p in tmp_path.glob(".out.partial-*")):
        assert run.poll() is None and time.time() < deadline, "the compile ended before it could be killed"
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    assert not out.exists() and leftovers  # the partial folder and the lock of the dead build
    assert not any((p / "manifest.json").exists() for p in leftovers if p.is_dir())
    rerun = _cli("compile", dinov2_exported, "--precision", "int8", "-o", out)
    output = rerun.communicate(timeout=600)[0]
    assert rerun.returncode == 0, output
    assert "left by an interrupted build" in output
    edgefm.load(out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_run_never_writes_over_its_input_the_artifact_or_an_existing_file(sam2_exported, tmp_path):
    from PIL import Image

    art = _copy(sam2_exported, tmp_path / "art")
    image = tmp_path / "photo.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(image)
    (tmp_path / "kept.png").write_bytes(image.read_bytes())
    before = _fingerprint(tmp_path)
    prompt = ["--image", image, "--point", "10,10"]
    _one_line_error(_run("run", art, *prompt, "-o", image))
    _one_line_error(_run("run", art, *prompt, "-o", tmp_path))
    assert "inside the artifact" in _one_line_error(_run("run", art, *prompt, "-o", art / "mask.png"))
    assert "already exists" in _one_line_error(_run("run", art, *prompt, "-o", tmp_path / "kept.png"))
    assert _fingerprint(tmp_path) == before
    assert _run("run", art, *prompt, "-o", tmp_path / "kept.png", "--overwrite").exit_code == 0  # control
    assert _run("run", art, *prompt, "-o", tmp_path / "new" / "dir" / "mask.png").exit_code == 0


# --- provenance -----------------------------------------------------------------------------------------------

def test_validate_refuses_a_parent_that_changed(dinov2_exported, tmp_path):
    parent = _copy(dinov2_exported, tmp_path / "exported")
    assert _run("compile", parent, "--precision", "fp16", "-o", tmp_path / "fp16").exit_code == 0
    assert _run("validate", tmp_path / "fp16").exit_code == 0  # control
    _edit(parent, lambda d: d.update(variant="someone else's"))
    assert "changed since" in _one_line_error(_run("validate", tmp_path / "fp16"))
    assert _run("validate", tmp_path / "fp16", "--against", parent).exit_code == 0  # asked for explicitly
    assert "is the artifact itself" in _one_line_error(_run("validate", tmp_path / "fp16", "--against",
                                                            tmp_path / "fp16"))
    shutil.copytree(tmp_path / "fp16", tmp_path / "copy")
    assert "is a compiled artifact" in _one_line_error(_run("validate", tmp_path / "fp16", "--against",
                                                            tmp_path / "copy"))
    _edit(tmp_path / "fp16", lambda d: d["parent"].pop("manifest_sha256"))
    assert "records no sha256" in _one_line_error(_run("validate", tmp_path / "fp16"))


# --- schema -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("change,field", [
    (lambda d: d.update(format_version=0), "format_version"),
    (lambda d: d.update(format_version="1"), "format_version"),
    (lambda d: d.update(stage="done"), "stage"),
    (lambda d: d.update(components={}), "components"),
    (lambda d: d.update(family="resnet"), "family 'resnet'"),
    (lambda d: d.update(extra=1), "unexpected"),
    (lambda d: d["components"]["image_encoder"]["inputs"][0].update(shape="1,3,224,224"), "inputs.0.shape"),
    (lambda d: d["components"]["image_encoder"]["inputs"][0].update(shape=[1, 0, 224]), "inputs.0.shape.1"),
    (lambda d: d["components"]["image_encoder"]["inputs"][0].update(dtype="object"), "inputs.0.dtype"),
    (lambda d: d["components"]["image_encoder"].update(precision="fp64"), "precision"),
    (lambda d: d["components"]["image_encoder"].update(sha256="abc"), "sha256"),
    (lambda d: d["components"]["image_encoder"].update(runtime="../evil"), "runtime"),
    (lambda d: d["components"]["image_encoder"].update(runtime="loader"), "runtime 'loader'"),
    (lambda d: d["components"]["image_encoder"].update(runtime="nosuch"), "runtime 'nosuch'"),
    (lambda d: d["components"]["image_encoder"].update(target="openvino"), "target"),
    (lambda d: d["components"].update(decoder=d["components"]["image_encoder"]), "decoder"),
    (lambda d: d["components"]["image_encoder"].pop("inputs"), "inputs"),
    (lambda d: d.update(format_version=2.0), "newer than this edgefm"),
    (lambda d: d["components"]["image_encoder"]["inputs"][0].update(shape=[1, 3.0, 224, 224]), "inputs.0.shape.1"),
    (lambda d: d["components"]["image_encoder"]["inputs"][0].update(range=[5, 1]), "is empty"),
    (lambda d: d["components"]["image_encoder"]["inputs"][0].update(range=float("nan")), "NaN is not a JSON value"),
    (lambda d: d["components"]["image_encoder"]["inputs"][0].update(dtype="bfloat16"), "inputs.0.dtype"),
    (lambda d: d["components"]["image_encoder"]["options"].update(dims="x"), "options.dims"),
    (lambda d: d["components"]["image_encoder"]["options"]["dims"]["batch"].update(multiple_of=0), "multiple_of"),
    (lambda d: d["components"]["image_encoder"].update(validation={"checks": "x"}), "validation.checks"),
    (lambda d: _retarget_asset(d, "evil\u0000.txt"), "not a plain path"),
])
def test_malformed_manifests_get_one_line_naming_the_field(dinov2_exported, tmp_path, change, field):
    art = _copy(dinov2_exported, tmp_path / "art")
    _edit(art, change)
    output = _one_line_error(_run("validate", art))
    assert field in output and len(output.strip().splitlines()) <= 2, output  # rich may wrap one long line once


def test_odd_manifest_files_are_one_line(dinov2_exported, tmp_path):
    """Nesting past Python's recursion limit, a manifest.json that is a link out, a link loop."""
    art = _copy(dinov2_exported, tmp_path / "art")
    text = (art / "manifest.json").read_text()
    (art / "manifest.json").write_text(text.replace('"task": {', '"task": {"deep": ' + "[" * 100000 + "]" * 100000
                                                    + ", ", 1))
    assert "not a valid edgefm manifest" in _one_line_error(_run("validate", art))
    (tmp_path / "elsewhere.json").write_text(text)
    (art / "manifest.json").unlink()
    (art / "manifest.json").symlink_to(tmp_path / "elsewhere.json")
    assert "leads out of the artifact folder" in _one_line_error(_run("validate", art))
    (art / "manifest.json").unlink()
    (art / "manifest.json").write_text(text)
    edgefm.load(art)  # control
    _edit(art, lambda d: _retarget_asset(d, "loop.json"))
    (art / "preprocessor_config.json").unlink()
    (art / "loop.json").symlink_to(art / "loop.json")
    assert "cannot be resolved" in _one_line_error(_run("validate", art))


def _mutations():
    leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=True),
                     st.text(max_size=12), st.lists(st.integers(-3, 300), max_size=4), st.dictionaries(
                         st.text(max_size=6), st.integers(), max_size=2))
    return st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(["set", "delete"]), leaf), min_size=1,
                    max_size=4)


def _paths(node, prefix=()):
    yield prefix
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        yield from _paths(child, prefix + (key,))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=_mutations())
def test_fuzzed_manifests_load_or_fail_with_an_artifact_error(dinov2_exported, tmp_path_factory, mutations):
    """Any change to a manifest's values or structure: Manifest.load and edgefm.load work or say why in one
    ArtifactError; never another exception (a traceback for the user)."""
    art = tmp_path_factory.mktemp("fuzz") / "art"
    shutil.copytree(dinov2_exported, art)
    data = json.loads((art / "manifest.json").read_text())
    for where, action, value in mutations:
        paths = [p for p in _paths(data) if p]
        path = paths[where % len(paths)]
        holder = data
        for key in path[:-1]:
            holder = holder[key]
        if action == "delete" and isinstance(holder, dict):
            del holder[path[-1]]
        else:
            holder[path[-1]] = value
    (art / "manifest.json").write_text(json.dumps(data))
    try:
        edgefm.load(art)
    except ArtifactError as exc:
        assert "\n" not in str(exc)


# --- one-line errors ----------------------------------------------------------------------------------------------

def test_user_mistakes_are_one_line_with_exit_code_2(dinov2_exported, tmp_path):
    assert "no such folder" in _one_line_error(_run("export", "dinov2", "--model", "./no-such-dir", "-o",
                                                    tmp_path / "x"))
    _one_line_error(_run("run", dinov2_exported, "--prompt", "a cat", "--seed", "-1", "-o", tmp_path / "y.png"))
    _one_line_error(_run("run", dinov2_exported, "--prompt", "a cat", "--guidance", "nan", "-o", tmp_path / "y.png"))
    output = _one_line_error(_run("compile", dinov2_exported, "--target", "tensorrt", "--shapes", "foo=1,2,3",
                                  "-o", tmp_path / "trt"))
    assert "--shapes names foo, which no input has; dynamic dims: batch" in output
    assert "calib-size" in _one_line_error(_run("compile", dinov2_exported, "--calib-size", "0", "-o", tmp_path / "z"))
    assert not (tmp_path / "trt").exists() and not (tmp_path / "z").exists()
    (tmp_path / "afile").write_text("x")
    output = _one_line_error(_run("compile", dinov2_exported, "-o", tmp_path / "afile" / "o"))
    assert "is a file, not a folder" in output
    assert ".png, .svg or .pdf" in _one_line_error(_run("bench", dinov2_exported, "--plot", tmp_path / "x.txt"))
    assert "is a file" in _one_line_error(_run("bench", dinov2_exported, "--json", tmp_path / "afile" / "r.json"))


def test_a_bug_keeps_its_traceback_and_asks_to_be_reported(dinov2_exported, monkeypatch):
    import edgefm.jobs.validate

    def broken(*args, **kwargs):
        raise RuntimeError("an edgefm bug")

    monkeypatch.setattr(edgefm.jobs.validate, "validate", broken)
    result = _run("validate", dinov2_exported)
    assert result.exit_code == 1
    assert "an edgefm bug" in result.output and "this is a bug in edgefm" in result.output


def test_a_full_disk_is_a_one_line_error(dinov2_exported, tmp_path, monkeypatch):
    import errno

    import edgefm.jobs.validate

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))

    monkeypatch.setattr(edgefm.jobs.validate, "validate", full)
    assert "No space left on device" in _one_line_error(_run("validate", dinov2_exported))


def test_sessions_of_one_artifact_from_threads_give_each_caller_its_result(dinov2_exported, photos):
    """One loaded artifact shared by threads (the loader's session sharing included)."""
    artifact = edgefm.load(dinov2_exported)
    expected = [artifact.embed([photo]) for photo in photos[:4]]
    results = [None] * 4

    def work(index):
        for _ in range(5):
            results[index] = artifact.embed([photos[index]])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for got, want in zip(results, expected):
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert not np.allclose(expected[0], expected[1], atol=1e-3)  # control: a swapped result would show


def test_checkpoints_that_could_run_code_are_refused_in_one_line(tmp_path):
    """A pickle with a payload and a config asking for remote code: refused, nothing runs, one line each."""
    import pickle

    import torch
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                          image_size=28, patch_size=14)
    Dinov2Model(config).save_pretrained(tmp_path / "good")
    assert "image processor" in _one_line_error(_run("export", "dinov2", "--model", tmp_path / "good", "-o",
                                                     tmp_path / "o1"))  # control: the weights themselves load

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    shutil.copytree(tmp_path / "good", tmp_path / "pickled")
    (tmp_path / "pickled" / "model.safetensors").unlink()
    with open(tmp_path / "pickled" / "pytorch_model.bin", "wb") as f:
        pickle.dump({"weight": Payload(), "ok": torch.zeros(1)}, f)
    assert "never loads those" in _one_line_error(_run("export", "dinov2", "--model", tmp_path / "pickled", "-o",
                                                       tmp_path / "o2"))
    shutil.copytree(tmp_path / "good", tmp_path / "remote")
    data = json.loads((tmp_path / "remote" / "config.json").read_text())
    (tmp_path / "remote" / "config.json").write_text(json.dumps(
        {**data, "model_type": "custom_x", "auto_map": {"AutoConfig": "modeling_x.C", "AutoModel": "modeling_x.X"}}))
    (tmp_path / "remote" / "modeling_x.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w')")
    answered_yes = CliRunner().invoke(main, ["export", "dinov2", "--model", str(tmp_path / "remote"), "-o",
                                             str(tmp_path / "o3")], input="y\n")  # transformers would ask
    assert "custom code" in _one_line_error(answered_yes)
    assert not (tmp_path / "ran").exists()
    assert not any((tmp_path / name).exists() for name in ("o1", "o2", "o3"))


@pytest.mark.slow
def test_non_finite_values_inside_a_pipeline_check_fail_the_trial_not_the_compile(sd15_exported, tmp_path,
                                                                                  monkeypatch):
    """Session.run refuses NaN / Inf feeds; in an end-to-end check that means a component overflowed, which is a
    failed trial (the component goes back to fp32), not an aborted compile."""
    from edgefm.contract import registry
    from edgefm.contract.errors import FeedError
    from edgefm.jobs.compile import compile_artifact

    recipe = registry.family("sd15").calibration()
    real = recipe.pipeline_checks

    def overflowing_unet(trial, *args):
        if trial.manifest.components["unet"].precision != "fp32":
            raise FeedError("vae_decoder: input 'latent_sample' has 12 non-finite value(s) (NaN / Inf) of 64")
        return real(trial, *args)

    monkeypatch.setattr(recipe, "pipeline_checks", overflowing_unet)
    manifest = compile_artifact(sd15_exported, "onnxruntime", "fp16", tmp_path / "out", log=lambda m: None)
    record = manifest.pipeline_validation
    assert record["passed"] and "unet" in record["kept_fp32"]
    assert record["attempts"][0]["checks"] == {"finite pipeline": 0.0}


def test_reports_are_never_written_into_an_artifact(dinov2_exported, tmp_path):
    art = _copy(dinov2_exported, tmp_path / "art")
    before = _fingerprint(art)
    for args in (["bench", art, "--iters", "1", "--warmup", "0", "--batch", "1", "--json", art / "manifest.json"],
                 ["inspect", art, "--sensitivity", "--plot", art / "x.png"]):
        assert "write it outside the artifact" in _one_line_error(_run(*args))
    assert _fingerprint(art) == before
    assert _run("bench", art, "--iters", "1", "--warmup", "0", "--batch", "1", "--json",
                tmp_path / "r.json").exit_code == 0  # control


def test_hash_consistent_but_broken_task_files_are_one_line(clip_exported, sam2_exported, tmp_path):
    """A hostile artifact can list and hash any bytes: a tokenizer or saved tensor that does not parse is refused
    in one line (and a pickle is never loaded)."""
    import pickle

    clip = _copy(clip_exported, tmp_path / "clip")
    edgefm.load(clip).embed_texts(["a cat"])  # control
    (clip / "tokenizer.json").write_text("not a tokenizer")
    _edit(clip, lambda d: d["assets"].update({"tokenizer.json": sha256_file(clip / "tokenizer.json")}))
    with pytest.raises(ArtifactError, match="cannot read the tokenizer tokenizer.json"):
        edgefm.load(clip).embed_texts(["a cat"])
    sam2 = _copy(sam2_exported, tmp_path / "sam2")
    name = json.loads((sam2 / "manifest.json").read_text())["task"]["video"]["no_object_pointer"]
    edgefm.load(sam2).video_tracker()  # control
    with open(sam2 / name, "wb") as f:
        pickle.dump({"payload": 1}, f)
    _edit(sam2, lambda d: d["assets"].update({name: sha256_file(sam2 / name)}))
    with pytest.raises(ArtifactError, match=f"cannot read {name}"):
        edgefm.load(sam2).video_tracker()
