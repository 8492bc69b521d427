"""Core ML target: every family's tiny preset converts on Linux, and the packages are checked statically.

There is no Core ML runtime off Apple systems, so here a package's accuracy is measured on the torch
wrapper holding the same compressed weights (coremltools.optimize.torch), and the package itself is
checked from its spec: I/O vs manifest, ops in the deployment target's opset, weight storage, size.
The parity tests at the end run the packages through Core ML on a Mac and skip elsewhere.
"""
from __future__ import annotations

import json
import secrets
import shutil
import sys

import numpy as np
import pytest

from edgefm.contract.errors import ArtifactError, EdgefmError

ct = pytest.importorskip("coremltools", reason="coremltools is in the build extra")

ON_MAC = sys.platform == "darwin"
STATIC = {"io_matches_manifest", "ops_in_deployment_target", "weight_file_over_expected"}
STORAGE = {"fp16": "weights_stored_float16", "int8": "weights_stored_int8", "int4": "weights_stored_int4"}


def _quiet(_):
    pass


@pytest.fixture(scope="session")
def coreml(work, request):
    """coreml(family, precision, **options) -> compiled Core ML artifact dir, built on first use."""
    from edgefm.jobs.compile import compile_artifact, target_options

    made = {}

    def get(family: str, precision: str, **options):
        key = (family, precision, json.dumps(options, sort_keys=True))
        if key not in made:
            out = work / f"{family}-coreml-{precision}-{len(made)}"
            compile_artifact(request.getfixturevalue(f"{family}_exported"), "coreml", precision, out,
                             calib_size=8, options=target_options("coreml", **options), log=_quiet)
            made[key] = out
        return made[key]

    return get


def _spec(package):
    return ct.utils.load_spec(str(package))


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "int8", "int4"])
@pytest.mark.parametrize("family", ["clip", "dinov2", "sam2", "sd15", "sdxl"])
def test_every_family_converts_with_static_checks(coreml, family, precision):
    from edgefm.contract.manifest import Manifest

    out = coreml(family, precision)
    manifest = Manifest.load(out)  # also verifies every package's sha256
    for name, entry in manifest.components.items():
        assert entry.target == "coreml" and entry.file == f"{name}.mlpackage" and (out / entry.file).is_dir()
        checks = {c["metric"]: c for c in entry.validation["checks"]}
        assert STATIC <= set(checks), name
        assert all(checks[m]["passed"] for m in STATIC), (name, {m: checks[m] for m in STATIC})
        if entry.precision != "fp32":  # a pipeline family may keep a component in fp32 (recorded)
            assert checks[STORAGE[entry.precision]]["passed"], (name, checks[STORAGE[entry.precision]])
        assert entry.validation["passed"], (name, entry.validation)
        if not ON_MAC:
            assert "torch wrapper" in entry.validation["measured_with"]
            assert ("coremltools.optimize.torch" in entry.validation["measured_with"]) == (entry.precision in ("int8", "int4"))
        spec = _spec(out / entry.file)
        assert [i.name for i in spec.description.input] and spec.specificationVersion >= 8  # iOS 17+
    if manifest.pipeline_validation and not ON_MAC:  # end to end on the same stand-ins, and says so
        assert manifest.pipeline_validation["passed"], manifest.pipeline_validation
        assert "stand-ins" in manifest.pipeline_validation["measured_with"]


@pytest.mark.slow
def test_static_checks_fail_on_wrong_packages(coreml, clip_exported):
    """Negative controls: each static check rejects a package that does not match what was asked."""
    import dataclasses

    from edgefm.contract.manifest import Manifest
    from edgefm.contract.spec import TensorSpec
    from edgefm.targets import coreml_checks
    from edgefm.targets.coreml import _ct_target

    fp16 = coreml("clip", "fp16")
    int4 = coreml("clip", "int4")
    entry = Manifest.load(fp16).components["image_encoder"]
    spec = _spec(fp16 / entry.file)
    shapes = entry.options["compile"]["shapes"]
    assert coreml_checks.check_io(spec, entry, shapes).passed
    renamed = dataclasses.replace(entry, inputs=[TensorSpec("pixels", "float32", entry.inputs[0].shape)])
    assert not coreml_checks.check_io(spec, renamed, {"pixels": shapes["pixel_values"]}).passed
    wrong_dtype = dataclasses.replace(entry, inputs=[TensorSpec("pixel_values", "int64", entry.inputs[0].shape)])
    assert not coreml_checks.check_io(spec, wrong_dtype, shapes).passed
    assert not coreml_checks.check_io(spec, entry, {"pixel_values": [1, 3, 112, 112]}).passed
    assert not coreml_checks.check_storage(spec, "INT8").passed  # fp16 weights are not int8
    int4_spec = _spec(int4 / "image_encoder.mlpackage")
    assert coreml_checks.check_opset(int4_spec, _ct_target("ios18")).passed
    opset = coreml_checks.check_opset(int4_spec, _ct_target("ios17"))  # per-block int4 ops are iOS 18's
    assert not opset.passed and "constexpr_blockwise_shift_scale" in opset.detail["missing"]
    assert not coreml_checks.check_storage(int4_spec, "FLOAT16").passed


def test_int4_and_int8_store_fewer_bytes(coreml):
    """On the text encoder: in the tiny image encoder, a patch-embedding conv whose 3 input channels no
    int4 block divides (kept fp16) outweighs the linear layers, which a real-size ViT's does not."""
    from edgefm.contract.manifest import Manifest

    sizes = {p: Manifest.load(coreml("clip", p)).components["text_encoder"].size_mib(coreml("clip", p))
             for p in ("fp16", "int8", "int4")}
    assert sizes["int4"] < sizes["int8"] < sizes["fp16"], sizes


@pytest.mark.slow
def test_palettized_weights(coreml):
    from edgefm.contract.manifest import Manifest

    out = coreml("clip", "int8", palettize_bits=6)
    entry = Manifest.load(out).components["image_encoder"]
    checks = {c["metric"]: c for c in entry.validation["checks"]}
    assert entry.options["compile"]["scheme"] == "palettize-6bit-kmeans"
    assert entry.options["compile"]["deployment_target"] == "ios17"  # LUT weights need no iOS 18 ops
    assert checks["weights_stored_uint6"]["passed"] and entry.validation["passed"], entry.validation


def test_bicubic_position_embeddings_are_baked(tmp_path):
    """No Core ML op resizes bicubically: a resize of weights is computed once, matching torch's."""
    import torch

    from edgefm.targets import coreml_ops

    class Resize(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Parameter(torch.randn(1, 8, 5, 5))

        def forward(self, x):
            grid = torch.nn.functional.interpolate(self.table, size=(7, 7), mode="bicubic", align_corners=False)
            return x + grid

    module = Resize().eval()
    x = torch.randn(1, 8, 7, 7)
    coreml_ops.register()
    traced = torch.jit.trace(module, x)
    model = ct.convert(traced, inputs=[ct.TensorType(name="x", shape=(1, 8, 7, 7))], convert_to="mlprogram",
                       compute_precision=ct.precision.FLOAT32, minimum_deployment_target=ct.target.iOS17)
    ops = list(model._mil_program.functions["main"].operations)
    assert not any("resize" in op.op_type or "upsample" in op.op_type for op in ops)
    baked = [op.val.val for op in ops if op.op_type == "const" and op.val.val is not None
             and np.shape(op.val.val) == (1, 8, 7, 7)]
    expected = torch.nn.functional.interpolate(module.table, size=(7, 7), mode="bicubic").detach().numpy()
    assert len(baked) == 1 and np.allclose(baked[0], expected, atol=1e-6)


def test_dinov2_dynamic_resolution_needs_fixed_shapes(dinov2_dynamic, tmp_path):
    from edgefm.contract.manifest import Manifest
    from edgefm.jobs.compile import compile_artifact, target_options

    with pytest.raises(EdgefmError, match="fixed-shapes"):
        compile_artifact(dinov2_dynamic, "coreml", "fp16", tmp_path / "ranged", calib_size=4, log=_quiet)
    out = compile_artifact(dinov2_dynamic, "coreml", "fp16", tmp_path / "fixed", calib_size=4,
                           options=target_options("coreml", fixed_shapes=True), log=_quiet)
    entry = out.components["image_encoder"]
    assert entry.validation["passed"] and entry.options["compile"]["shapes"]["pixel_values"] == [1, 3, 224, 224]
    assert Manifest.load(tmp_path / "fixed").components["image_encoder"].options["compile"]["fixed_shapes"]


@pytest.mark.slow
def test_ranged_and_int32_inputs(coreml):
    """SAM 2's point count and memory sizes stay ranged; token ids go in as int32 (the CLIP EOS argmax)."""
    from edgefm.contract.manifest import Manifest

    sam2 = coreml("sam2", "fp16")
    decoder = _spec(sam2 / "mask_decoder.mlpackage")
    coords = next(i for i in decoder.description.input if i.name == "point_coords").type.multiArrayType
    ranges = [(r.lowerBound, r.upperBound) for r in coords.shapeRange.sizeRanges]
    assert ranges == [(1, 1), (1, 64), (2, 2)]
    manifest = Manifest.load(sam2)
    assert manifest.components["memory_attention"].options["compile"]["shapes"]["memory"][1] == [1, 64]
    text = _spec(coreml("clip", "fp16") / "text_encoder.mlpackage")
    ids = text.description.input[0].type.multiArrayType
    assert ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(ids.dataType) == "INT32"


@pytest.mark.slow
def test_chunked_unet_keeps_its_interface(sd15_exported, tmp_path):
    from edgefm.jobs.compile import compile_artifact, target_options

    with pytest.raises(EdgefmError, match="--fixed-shapes"):
        target_options("coreml", chunk_over_mib=0.05)
    out = compile_artifact(sd15_exported, "coreml", "fp16", tmp_path / "chunked", calib_size=2,
                           options=target_options("coreml", chunk_over_mib=0.05, fixed_shapes=True), log=_quiet)
    spec = _spec(tmp_path / "chunked" / "unet.mlpackage")
    assert spec.WhichOneof("Type") == "pipeline" and len(spec.pipeline.models) == 2
    checks = {c["metric"]: c for c in out.components["unet"].validation["checks"]}
    assert all(checks[m]["passed"] for m in (*STATIC, "weights_stored_float16"))


def test_refusals(clip_exported, tmp_path):
    from edgefm.jobs.compile import compile_artifact, target_options

    with pytest.raises(EdgefmError, match="ios18"):
        compile_artifact(clip_exported, "coreml", "int4", tmp_path / "a",
                         options=target_options("coreml", deployment_target="ios17"), log=_quiet)
    with pytest.raises(EdgefmError, match="palettize 6"):
        compile_artifact(clip_exported, "coreml", "int4", tmp_path / "b",
                         options=target_options("coreml", palettize_bits=6), log=_quiet)
    if not ON_MAC:
        with pytest.raises(EdgefmError, match="compile on a Mac"):
            compile_artifact(clip_exported, "coreml", "int8", tmp_path / "d",
                             options=target_options("coreml", int8_activations=True), log=_quiet)
    changed = tmp_path / "changed"
    shutil.copytree(clip_exported, changed)
    manifest = json.loads((changed / "manifest.json").read_text())
    manifest["source"]["weights_sha256"] = "0" * 64
    (changed / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="does not have the weights"):
        compile_artifact(changed, "coreml", "fp16", tmp_path / "c", log=_quiet)
    assert not (tmp_path / "c").exists()  # nothing half-written


def test_cli_defaults_to_fp16_and_refuses_auto_off_apple(clip_exported, tmp_path):
    from click.testing import CliRunner

    from edgefm.cli import main
    from edgefm.cli.build import compile_job

    flags = {"target": "coreml", "precision": None, "objective": None, "allow_below_gate": False}
    assert compile_job(flags).precision == "fp16"
    assert compile_job({**flags, "target": "onnxruntime"}).precision == "fp32"
    if not ON_MAC:
        result = CliRunner().invoke(main, ["compile", str(clip_exported), "--target", "coreml", "--precision", "auto",
                                           "-o", str(tmp_path / "auto")])
        assert result.exit_code != 0 and "cannot run here" in result.output
        assert not (tmp_path / "auto").exists()


def test_session_splits_the_batch_and_casts_token_ids():
    """The session's own work around MLModel.predict: one call per batch item, int64 ids as int32,
    float32 outputs in order. The model is a stand-in for predict() only: this verifies nothing of Core ML."""
    from edgefm.contract.spec import TensorSpec
    from edgefm.runtimes.coreml import CoreMLSession
    from edgefm.runtimes.session import Session

    class PredictOnly:
        def __init__(self):
            self.calls = []

        def predict(self, feeds):
            self.calls.append({k: (v.shape, v.dtype) for k, v in feeds.items()})
            return {"text_embeds": feeds["input_ids"][:, :2].astype(np.float16) * 2}

    session = CoreMLSession.__new__(CoreMLSession)
    Session.__init__(session, "text_encoder", [TensorSpec("input_ids", "int64", ("batch", 77))],
                     [TensorSpec("text_embeds", "float32", ("batch", 2))])
    session._model, session._shapes = PredictOnly(), {"input_ids": [1, 77]}
    ids = np.random.default_rng().integers(0, 1000, (3, 77))
    out = session.run({"input_ids": ids})
    assert out["text_embeds"].dtype == np.float32 and np.array_equal(out["text_embeds"], ids[:, :2] * 2)
    assert session._model.calls == [{"input_ids": ((1, 77), np.dtype(np.int32))}] * 3


def test_runtime_checks_the_sizes_a_package_was_built_for():
    from edgefm.contract.errors import FeedError
    from edgefm.contract.spec import TensorSpec
    from edgefm.runtimes.coreml import check_package_shapes

    specs = [TensorSpec("sample", "float32", ("batch", 4, "latent_height", "latent_width"))]
    feed = {"sample": np.zeros((2, 4, 8, 8), np.float32)}
    check_package_shapes("unet", specs, {"sample": [1, 4, 8, 8]}, feed)  # batch is looped over
    check_package_shapes("unet", specs, {"sample": [1, 4, [2, 64], [2, 64]]}, feed)
    with pytest.raises(FeedError, match="latent_height=8, but this Core ML package was built for latent_height=16"):
        check_package_shapes("unet", specs, {"sample": [1, 4, 16, 16]}, feed)
    with pytest.raises(FeedError, match="2..4"):
        check_package_shapes("unet", specs, {"sample": [1, 4, [2, 4], [2, 64]]}, feed)


@pytest.mark.skipif(ON_MAC, reason="off Apple systems the runtime must refuse clearly")
def test_runtime_refuses_off_apple(coreml):
    import edgefm

    with pytest.raises(ArtifactError, match="Core ML runs only on Apple systems"):
        edgefm.load(coreml("clip", "fp16"))


@pytest.mark.skipif(not ON_MAC, reason="Core ML runs packages only on macOS; on Linux the packages are "
                                       "checked statically and their accuracy on the torch wrapper")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8", "int4"])
@pytest.mark.parametrize("family", ["clip", "dinov2", "sam2", "sd15", "sdxl"])
def test_macos_parity_with_fp32_onnx(coreml, family, precision, request):
    """The packages themselves, through Core ML, against the fp32 ONNX export on fresh random feeds."""
    import edgefm
    from edgefm.contract import registry
    from edgefm.contract.compare import cosine_rows

    reference = edgefm.load(request.getfixturevalue(f"{family}_exported"))
    compiled = edgefm.load(coreml(family, precision))
    seed = secrets.randbits(32)
    rng = np.random.default_rng(seed)
    for name, session in compiled.sessions.items():
        feeds = reference[name].example_feeds(rng)
        got, ref = session.run(feeds), reference[name].run(feeds)
        for output, value in ref.items():
            cosine = float(cosine_rows(got[output], value).mean())
            gate = registry.family(family).gates(name, compiled.manifest.components[name].precision)["cosine"]
            assert cosine >= gate, (name, output, cosine, f"seed {seed}")
