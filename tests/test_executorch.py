"""ExecuTorch target: XNNPACK programs (.pte) for CLIP and DINOv2, gated, loaded and benchmarked like the others.

Programs have static shapes (batch 1, other dims at their defaults): larger batches run item by item, other
sizes are refused before ExecuTorch sees them, and exports whose sizes vary per call are refused at compile.
"""
from __future__ import annotations

import types

import numpy as np
import pytest

from edgefm.contract.errors import EdgefmError, FeedError
from edgefm.contract.spec import TensorSpec

pytest.importorskip("executorch.runtime", reason="executorch is not installed (pip install executorch)")
pytest.importorskip("torchao", reason="the executorch target quantizes with torchao (pip install torchao)")

FAMILIES = ["clip", "dinov2"]
# int4: CLIP tiny's text encoder stays below its gate (int8 dynamic activations on 2 random layers)
SLOW = pytest.mark.slow  # the longer lowerings (CLIP int8: two calibrated programs, about a minute on 2 cores)
BUILDS = [("clip", "fp32"), pytest.param("clip", "int8", marks=SLOW), ("dinov2", "fp32"), ("dinov2", "int8"),
          pytest.param("dinov2", "int4", marks=SLOW)]
OUTPUT = {"clip": {"image_encoder": "image_embeds", "text_encoder": "text_embeds"},
          "dinov2": {"image_encoder": "cls_embedding"}}


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


@pytest.mark.parametrize("family,precision", BUILDS)
def test_compiles_passes_gates_with_static_checks(compiled, family, precision):
    from edgefm.contract.manifest import Manifest

    out = compiled(family, precision, "executorch")
    manifest = Manifest.load(out)  # verifies every file's sha256
    assert set(manifest.components) == set(OUTPUT[family])
    for name, entry in manifest.components.items():
        assert (entry.target, entry.runtime, entry.precision) == ("executorch", "executorch", precision)
        assert entry.file == f"{name}.pte" and (out / entry.file).is_file()
        assert (out / entry.file).read_bytes()[4:8] == b"ET12"  # the ExecuTorch program flatbuffer's identifier
        assert entry.validation["passed"], (name, entry.validation)
        checks = {c["metric"]: c for c in entry.validation["checks"]}
        assert checks["compute_ops_in_xnnpack"]["passed"] and checks["compute_ops_in_xnnpack"]["compute_ops"] > 0
        assert checks["program_bytes_vs_weights"]["passed"]
        if precision in ("int8", "int4"):
            stored = checks[f"weights_stored_{precision}"]
            assert stored["passed"] and stored["stored"] == stored["asked"] > 0, stored
        shapes = entry.options["runtime"]["shapes"]
        assert all(size[0] == 1 for size in shapes.values())  # batch 1: the session splits batches


@pytest.mark.parametrize("family", [pytest.param("clip", marks=SLOW), "dinov2"])
def test_static_int8_records_calibration_and_shrinks_weights(compiled, family):
    from edgefm.contract.manifest import Manifest

    fp32 = Manifest.load(compiled(family, "fp32", "executorch"))
    int8 = Manifest.load(compiled(family, "int8", "executorch"))
    for name, entry in int8.components.items():
        static = entry.options["compile"]["activations"] == "int8"
        assert (entry.calibration is not None) == static, (name, entry.options["compile"]["scheme"])
        assert fp32.components[name].calibration is None
        assert entry.size_mib(compiled(family, "int8", "executorch")) < fp32.components[name].size_mib(
            compiled(family, "fp32", "executorch")), name


def test_clip_matches_the_onnx_export_at_fp32(compiled, clip_exported, photos):
    import edgefm

    program, export = edgefm.load(compiled("clip", "fp32", "executorch")), edgefm.load(clip_exported)
    images, labels = photos[:3], ["a cat", "a dog", "a car"]  # 3 images, 3 prompts: batches run item by item
    assert _cos(program.embed_images(images), export.embed_images(images)) > 0.9999
    assert _cos(program.embed_texts(labels), export.embed_texts(labels)) > 0.9999
    got, ref = program.zero_shot(images, labels), export.zero_shot(images, labels)
    assert got.top1 == ref.top1 and np.abs(got.probs - ref.probs).max() < 1e-3


def test_dinov2_matches_the_onnx_export_at_fp32(compiled, dinov2_exported, photos):
    import edgefm

    program, export = edgefm.load(compiled("dinov2", "fp32", "executorch")), edgefm.load(dinov2_exported)
    assert _cos(program.embed(photos[:2]), export.embed(photos[:2])) > 0.9999
    grid, ref = program.patch_features(photos[:2]), export.patch_features(photos[:2])
    assert grid.shape == ref.shape and _cos(grid, ref) > 0.9999


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_a_batch_runs_item_by_item(compiled, precision):
    import edgefm

    session = edgefm.load(compiled("dinov2", precision, "executorch"))["image_encoder"]
    feeds = session.example_feeds(np.random.default_rng(1), batch=2)
    both = session.run(feeds)
    for index in range(2):
        one = session.run({"pixel_values": feeds["pixel_values"][index:index + 1]})
        for name, value in one.items():
            assert value.dtype == np.float32 and both[name].shape[0] == 2
            np.testing.assert_allclose(both[name][index:index + 1], value, rtol=1e-5, atol=1e-5)
    assert not np.allclose(both["cls_embedding"][0], both["cls_embedding"][1])  # two items, not one twice


def test_a_feed_of_another_size_is_refused_naming_the_size(compiled):
    import edgefm

    artifact = edgefm.load(compiled("clip", "fp32", "executorch"), threads=1)  # threads: accepted and ignored
    session = artifact["text_encoder"]
    built = session._shapes["input_ids"][1]
    with pytest.raises(FeedError, match=f"input 'input_ids' has sequence=10, .* built for sequence={built}"):
        session.run({"input_ids": np.zeros((1, 10), np.int64)})
    assert session.run({"input_ids": np.zeros((2, built), np.int64)})["text_embeds"].shape[0] == 2
    session.close()
    with pytest.raises(EdgefmError, match="closed"):
        session.run({"input_ids": np.zeros((1, built), np.int64)})


def test_a_dynamic_resolution_export_is_refused_before_any_work(dinov2_dynamic, tmp_path):
    from edgefm.jobs.compile import compile_artifact

    out = tmp_path / "out"
    with pytest.raises(EdgefmError, match="static shapes.*height.*export without --dynamic-resolution"):
        compile_artifact(dinov2_dynamic, "executorch", "fp32", out, log=lambda _: None)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_families_whose_sizes_vary_per_call_are_refused():
    """SAM 2's point and memory counts: a program fixed at the default could serve one point only."""
    from edgefm.targets.executorch import TARGET, ExecuTorchOptions

    entry = types.SimpleNamespace(inputs=[TensorSpec("point_coords", "float32", ("batch", "points", 2))],
                                  options={"dims": {"batch": {"default": 1}, "points": {"default": 1}}})
    source = types.SimpleNamespace(family="sam2", source={"options": {}}, components={"mask_decoder": entry})
    with pytest.raises(EdgefmError, match="mask_decoder: points.*sam2 does not convert to ExecuTorch"):
        TARGET.check_options(ExecuTorchOptions(), source)
    entry.options["dims"]["points"]["max"] = 1  # pinned by its rule (as CLIP's padded 77 tokens): accepted
    TARGET.check_options(ExecuTorchOptions(), source)


def test_a_conversion_failure_names_the_component_and_cause(clip_exported, tmp_path, monkeypatch):
    from edgefm.contract.manifest import Manifest
    from edgefm.contract.spec import Precision
    from edgefm.targets import executorch_lower
    from edgefm.targets.base import CompileRequest
    from edgefm.targets.executorch import TARGET, ExecuTorchOptions

    def fails(*_):
        raise RuntimeError("XNNPACK has no kernel for aten.foo\n(long trace)")

    monkeypatch.setattr(executorch_lower, "lower", fails)
    entry = Manifest.load(clip_exported).components["text_encoder"]
    scheme = TARGET.schemes(Precision.FP32, ExecuTorchOptions(), entry)[0]
    request = CompileRequest("text_encoder", clip_exported / entry.file, entry, Precision.FP32, scheme, [], tmp_path,
                             tmp_path)
    with pytest.raises(EdgefmError, match=r"^text_encoder: ExecuTorch conversion failed \(RuntimeError: XNNPACK has "
                                          r"no kernel for aten.foo\); clip does not convert to ExecuTorch"):
        TARGET.compile(request, ExecuTorchOptions())
    assert not list(tmp_path.iterdir())


def test_static_checks_fail_on_programs_that_are_not_as_asked(tmp_path):
    from edgefm.targets.executorch import delegated_check, size_check, storage_check

    assert delegated_check({"aten_linear_default": (12, 0), "aten_add_tensor": (3, 5)}).passed
    left = delegated_check({"aten_linear_default": (11, 1), "aten_convolution_default": (1, 0)})
    assert not left.passed and left.detail["not_delegated"] == ["aten_linear_default"]
    assert storage_check([32, 8, 8, 32], asked=2, bits=8).passed
    assert not storage_check([32, 32, 32, 32], asked=2, bits=8).passed  # weights left in float
    assert not storage_check([8, 8, 8, 8], asked=2, bits=8).passed  # the ends were to stay float
    assert not storage_check([8, 8], asked=2, bits=4).passed  # int8 where int4 was asked
    program = tmp_path / "x.pte"
    program.write_bytes(bytes(200_000))
    assert size_check(program, {"weight_bytes": 150_000}).passed
    assert not size_check(program, {"weight_bytes": 50_000}).passed


def test_options_are_checked_and_become_flags():
    from edgefm.cli.flags import target_flags
    from edgefm.targets.executorch import ExecuTorchOptions

    with pytest.raises(EdgefmError, match="power of two"):
        ExecuTorchOptions(int4_group_size=16)  # XNNPACK delegates multiples of 32
    assert "executorch" in target_flags()["int4_group_size"].targets


def test_bench_runs_on_an_executorch_artifact(compiled):
    from edgefm.bench import report as bench_report
    from edgefm.bench.runner import run_bench

    artifact = compiled("clip", "fp32", "executorch")
    report = run_bench([artifact], batches=[1, 2], warmup=1, iters=2, threads=None)
    assert not report["errors"], report["errors"]
    rows = bench_report.rows(report)
    assert sorted((r["component"], r["batch"]) for r in rows) == [
        ("image_encoder", 1), ("image_encoder", 2), ("text_encoder", 1), ("text_encoder", 2)]
    assert all(r["runtime"] == "executorch" and r["median_ms"] > 0 for r in rows)


@pytest.mark.slow
def test_cli_compiles_int8(dinov2_exported, tmp_path):
    from click.testing import CliRunner

    from edgefm.cli import main
    from edgefm.contract.manifest import Manifest

    out = tmp_path / "et"
    result = CliRunner().invoke(main, ["compile", str(dinov2_exported), "--target", "executorch", "--precision",
                                       "int8", "--calib-size", "8", "-o", str(out)])
    assert result.exit_code == 0, result.output
    entry = Manifest.load(out).components["image_encoder"]
    assert entry.target == "executorch" and entry.validation["passed"]
