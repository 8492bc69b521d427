"""TensorRT target. What decides an engine's numbers is made and checked here on the CPU: the typed ONNX
(fp16 pins from data, QDQ int8 / fp8, int4 weights) gated on ONNX Runtime, its static checks with negative
controls, the build plan, cache keys and the refusals. Engine build and parity run only where TensorRT
and an NVIDIA GPU are (`GPU` tests below skip elsewhere, saying why); nothing here imitates TensorRT."""
from __future__ import annotations

import json
import secrets
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from edgefm.contract.errors import ArtifactError, EdgefmError
from edgefm.runtimes.tensorrt import cuda_unavailable_reason, unavailable_reason

FAMILIES = ["clip", "dinov2", "sam2", "sd15", "sdxl"]
QUANTIZED = {"int8": "int8", "fp8": "float8e4m3fn", "int4": "int4"}
NO_TENSORRT = unavailable_reason()
GPU = pytest.mark.skipif(NO_TENSORRT is not None, reason=f"needs TensorRT and an NVIDIA GPU: {NO_TENSORRT}")


@pytest.fixture(scope="session")
def trt(compiled):
    return lambda family, precision: compiled(family, precision, "tensorrt")


def _cosine_gate(family: str, component: str, precision: str) -> float:
    from edgefm.contract import registry

    return registry.family(family).gates(component, precision)["cosine"]


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "int8", "fp8", "int4"])
@pytest.mark.parametrize("family", FAMILIES)
def test_graphs_pass_gates_checks_and_plan(trt, family, precision, request):
    """Every family and precision: gated on ONNX Runtime vs the fp32 export, static checks passed, the plan
    derived from the manifest, and the graphs again vs the export on fresh random feeds."""
    import edgefm
    from edgefm.contract.compare import cosine_rows
    from edgefm.contract.manifest import Manifest, sha256_file
    from edgefm.targets.tensorrt_plan import PLAN_FILE, build_plan

    artifact = trt(family, precision)
    manifest = Manifest.load(artifact)
    assert manifest.pipeline_validation is None or manifest.pipeline_validation["passed"]
    for name, entry in manifest.components.items():
        assert (entry.target, entry.runtime) == ("tensorrt", "onnxruntime")
        assert entry.validation["passed"], (name, entry.validation)
        checks = {c["metric"]: c for c in entry.validation["checks"]}
        assert checks["onnx_standard_ops_only"]["passed"]
        if entry.precision in QUANTIZED:  # quantized wherever there are matrix products (gate 1, else 0)
            assert checks[f"quantized_products_{QUANTIZED[entry.precision]}"]["passed"]
            assert checks["zero_points_zero"]["passed"]
    plan = json.loads((artifact / PLAN_FILE).read_text())
    assert plan == build_plan(manifest, artifact)  # the file compile wrote is what the manifest derives
    assert set(plan["components"]) == set(manifest.components)
    for name, component in plan["components"].items():
        entry = manifest.components[name]
        assert component["onnx"] == entry.file and component["onnx_sha256"] == sha256_file(artifact / entry.file)
        assert component["fp32_pins"] == json.loads((artifact / f"{name}.fp16_pins.json").read_text())
        assert component["strongly_typed"] and component["precision"] == entry.precision
        for spec in entry.inputs:  # batch 1..8 around the default 1; fixed sizes as the manifest says
            shapes = component["profile"][spec.name]
            for axis, dim in enumerate(spec.shape):
                expected = (1, 1, 8) if dim == "batch" else (dim, dim, dim) if isinstance(dim, int) else None
                got = (shapes["min"][axis], shapes["opt"][axis], shapes["max"][axis])
                assert got == expected if expected else got[0] <= got[1] <= got[2], (name, spec.name, axis, got)
    reference, graphs = edgefm.load(request.getfixturevalue(f"{family}_exported")), edgefm.load(artifact)
    seed = secrets.randbits(32)
    rng = np.random.default_rng(seed)
    for name, session in graphs.sessions.items():
        if manifest.components[name].precision not in ("fp32", "fp16"):
            continue  # quantized graphs are gated on real held-out inputs (above): noise is outside their calibration
        feeds = reference[name].example_feeds(rng)
        got, want = session.run(feeds), reference[name].run(feeds)
        for output, value in want.items():
            cosine = float(cosine_rows(got[output], value).mean())
            assert cosine >= _cosine_gate(family, name, manifest.components[name].precision), (name, output, seed)


def _tiny_overflow_graph(path):
    """x -> MatMul(W) -> square -> sqrt -> /1000 -> +1: the square leaves fp16's range (65504) on ordinary
    inputs (each row's sum of 16 normals times 1000 squared); the last node's values stay small."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.full((16, 16), 1000.0, np.float32), "W")
    scale = numpy_helper.from_array(np.array(1e-3, np.float32), "scale")
    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"], name="matmul"),
             helper.make_node("Mul", ["y", "y"], ["y2"], name="square"),
             helper.make_node("Sqrt", ["y2"], ["r"], name="sqrt"),
             helper.make_node("Mul", ["r", "scale"], ["small"], name="rescale"),
             helper.make_node("Add", ["small", "one"], ["out"], name="final")]
    graph = helper.make_graph(nodes, "overflow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 16])],
                              [weight, scale, one])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _request(tmp_path, source, precision: str, scheme_params: dict, feeds):
    from edgefm.contract.manifest import ComponentEntry
    from edgefm.contract.spec import Precision, TensorSpec
    from edgefm.targets.base import CompileRequest, Scheme

    entry = ComponentEntry("net.onnx", "", "onnxruntime", None, "fp32", [TensorSpec("x", "float32", ("batch", 16))],
                           [TensorSpec("out", "float32", ("batch", 16))])
    out = tmp_path / f"out-{precision}"
    out.mkdir()
    return CompileRequest("net", source, entry, Precision(precision), Scheme("s", scheme_params), feeds, out, tmp_path)


def test_fp16_pins_come_from_data_and_prevent_overflow(tmp_path):
    """Negative control: with the data rule off (data_max huge) the fp16 graph, as the gate runs it (fp16
    storage emulated), overflows to inf; with it, the nodes touching out-of-range values are pinned, stay
    fp32 in the written graph, the last node stays fp16, and the output matches the fp32 graph."""
    import onnx
    import onnxruntime as ort

    from edgefm.targets import tensorrt_graphs
    from edgefm.targets.tensorrt import TARGET, TensorRTOptions
    from edgefm.targets.tensorrt_fp16 import tensor_types

    source = tmp_path / "net.onnx"
    _tiny_overflow_graph(source)
    rng = np.random.default_rng(secrets.randbits(32))
    calibration = [{"x": rng.standard_normal((1, 16)).astype(np.float32)} for _ in range(8)]
    fresh = {"x": rng.standard_normal((4, 16)).astype(np.float32)}
    want = ort.InferenceSession(str(source)).run(None, fresh)[0]
    results = {}
    for label, data_max in (("rule off", 1e30), ("rule on", 512.0)):
        work = tmp_path / label.replace(" ", "-")
        work.mkdir()
        request = _request(work, source, "fp16", {"pin_ops": []}, calibration)
        options = TensorRTOptions(fp16_data_max=data_max)
        written = request.out_dir / tensorrt_graphs.write(request, options)
        gated = TARGET.validation_session(request, request.entry, options)
        results[label] = (json.loads((request.out_dir / "net.fp16_pins.json").read_text())["nodes"],
                          gated.run(fresh)["out"], {c.metric: c.passed for c in tensorrt_graphs.checks(request, written)})
    pins, got, _ = results["rule off"]
    assert pins == [] and not np.isfinite(got).all()
    pins, got, checks = results["rule on"]
    assert {"matmul", "square", "sqrt", "rescale"} == set(pins) and checks["pinned_nodes_fp32"]
    written = onnx.load(str(tmp_path / "rule-on" / "out-fp16" / "net.onnx"))
    final = next(n for n in written.graph.node if n.name == "final")
    assert tensor_types(written)[final.output[0]] == onnx.TensorProto.FLOAT16  # values in range stay fp16
    np.testing.assert_allclose(got, want, rtol=2e-3)


def test_static_checks_fail_on_graphs_tensorrt_cannot_build(trt, compiled, tmp_path):
    """Negative controls: ONNX Runtime's own int8 graph (asymmetric uint8 activations, contrib ops after its
    fusions) fails the symmetric-QDQ and standard-ops checks; a pinned node left in fp16 fails the pin check."""
    import onnx

    from edgefm.contract.manifest import Manifest
    from edgefm.contract.spec import Precision
    from edgefm.targets import tensorrt_graphs
    from edgefm.targets.base import CompileRequest, Scheme

    ort_int8 = compiled("clip", "int8")
    request = CompileRequest("image_encoder", ort_int8 / "image_encoder.onnx", None, Precision.INT8, Scheme("x"), [],
                             tmp_path, tmp_path)
    (tmp_path / "image_encoder.fp16_pins.json").write_text(json.dumps({"rest": "fp32", "nodes": []}))
    checks = {c.metric: c for c in tensorrt_graphs.checks(request, ort_int8 / "image_encoder.onnx")}
    assert not checks["zero_points_zero"].passed and not checks["onnx_standard_ops_only"].passed

    artifact = trt("clip", "fp16")
    graph = artifact / "text_encoder.onnx"
    shutil.copy(graph, tmp_path / "text_encoder.onnx")
    halves = [n.name for n in onnx.load(str(graph)).graph.node if n.op_type == "MatMul"][:2]
    (tmp_path / "text_encoder.fp16_pins.json").write_text(json.dumps({"rest": "fp16", "nodes": halves}))
    request = CompileRequest("text_encoder", graph, Manifest.load(artifact).components["text_encoder"],
                             Precision.FP16, Scheme("x"), [], tmp_path, tmp_path)
    checks = {c.metric: c for c in tensorrt_graphs.checks(request, tmp_path / "text_encoder.onnx")}
    assert not checks["pinned_nodes_fp32"].passed


def test_plan_overrides_and_refusals(trt):
    from edgefm.contract.manifest import Manifest
    from edgefm.targets.tensorrt_plan import build_plan

    artifact = trt("clip", "fp16")
    manifest = Manifest.load(artifact)
    plan = build_plan(manifest, artifact, "jetson-orin", ("batch=1,2,4", "sequence=1,16,77"))
    assert plan["device_profile"]["name"] == "jetson-orin"
    assert plan["components"]["image_encoder"]["profile"]["pixel_values"]["max"][0] == 4
    assert plan["components"]["text_encoder"]["profile"]["input_ids"] == {"min": [1, 1], "opt": [2, 16],
                                                                          "max": [4, 77]}
    with pytest.raises(EdgefmError, match="at most 77"):
        build_plan(manifest, artifact, None, ("sequence=1,77,100",))
    with pytest.raises(EdgefmError, match="no input has"):
        build_plan(manifest, artifact, None, ("height=1,2,3",))
    with pytest.raises(EdgefmError, match="DIM=MIN,OPT,MAX"):
        build_plan(manifest, artifact, None, ("batch=4",))
    fp8 = trt("clip", "fp8")
    with pytest.raises(EdgefmError, match="no fp8 tensor cores"):
        build_plan(Manifest.load(fp8), fp8, "a100")


def test_plan_refuses_artifacts_of_other_targets(compiled):
    from edgefm.contract.manifest import Manifest
    from edgefm.targets.tensorrt_plan import build_plan

    other = compiled("clip", "fp16")
    with pytest.raises(ArtifactError, match="--target tensorrt"):
        build_plan(Manifest.load(other), other)


def test_engine_cache_key_covers_every_input():
    from edgefm.targets.tensorrt_plan import DEVICE_PROFILES, engine_cache_key

    component = {"onnx_sha256": "a" * 64, "onnx_data": {"unet.onnx.data": "c" * 64}, "precision": "fp16", "tf32": False,
                 "profile": {"x": {"min": [1, 3], "opt": [1, 3], "max": [8, 3]}}}
    device = {"name": "h100", **DEVICE_PROFILES["h100"]}
    key = engine_cache_key(component, device, "10.13.0", "9.0")
    assert key == engine_cache_key(dict(component), dict(device), "10.13.0", "9.0")
    changed = [engine_cache_key({**component, "onnx_sha256": "b" * 64}, device, "10.13.0", "9.0"),
               engine_cache_key({**component, "onnx_data": {"unet.onnx.data": "d" * 64}}, device, "10.13.0", "9.0"),
               engine_cache_key({**component, "precision": "int8"}, device, "10.13.0", "9.0"),
               engine_cache_key({**component, "profile": {"x": {"min": [1, 3], "opt": [2, 3], "max": [8, 3]}}},
                                device, "10.13.0", "9.0"),
               engine_cache_key(component, {**device, "name": "generic"}, "10.13.0", "9.0"),
               engine_cache_key(component, device, "11.4.0", "9.0"),
               engine_cache_key(component, device, "10.13.0", "8.9")]
    assert len({key, *changed}) == 8


def test_device_checks_and_mismatch_refusal(tmp_path):
    """The pure decisions behind the GPU paths: which builds a GPU must refuse, and the load-time refusal of
    an engine built on another GPU or TensorRT version, naming the command that rebuilds it."""
    from edgefm.runtimes.tensorrt import engine_mismatch
    from edgefm.targets.tensorrt_plan import DEVICE_PROFILES, check_device

    orin = {"tensorrt": "10.3.0", "compute_capability": "8.7", "device": "Orin"}
    h100 = {"tensorrt": "10.13.0", "compute_capability": "9.0", "device": "NVIDIA H100 80GB HBM3"}

    def plan(profile: str, precision: str) -> dict:
        return {"device_profile": {"name": profile, **DEVICE_PROFILES[profile]},
                "components": {"unet": {"precision": precision,
                                        "min_compute_capability": {"fp8": "8.9"}.get(precision)}}}

    check_device(plan("h100", "fp8"), h100)
    check_device(plan("generic", "fp16"), orin)
    with pytest.raises(EdgefmError, match="--device-profile jetson-orin"):
        check_device(plan("h100", "fp16"), orin)
    with pytest.raises(EdgefmError, match="compute capability 8.9"):
        check_device(plan("generic", "fp8"), orin)
    assert engine_mismatch(h100, dict(h100), tmp_path, "unet") is None
    for built in (orin, {**h100, "tensorrt": "11.4.0"}, {**h100, "device": "NVIDIA H200"}):
        message = engine_mismatch(built, h100, tmp_path, "unet")
        assert f"edgefm engine {tmp_path} --rebuild" in message and built["device"] in message


@pytest.mark.skipif(NO_TENSORRT is None, reason="TensorRT and a GPU are here: the refusal path does not apply")
def test_engines_refused_without_tensorrt(trt, tmp_path):
    from edgefm.cli import main
    from edgefm.contract.manifest import Manifest
    from edgefm.runtimes.tensorrt import open_session

    artifact = trt("dinov2", "fp16")
    result = CliRunner().invoke(main, ["engine", str(artifact)])
    assert result.exit_code == 2 and "needs TensorRT and an NVIDIA GPU" in result.output
    entry = Manifest.load(artifact).components["image_encoder"]
    with pytest.raises(EdgefmError, match="cannot run here"):
        open_session(artifact / "image_encoder.engine", entry, "image_encoder")


def test_cli_plan_and_refusals(trt, dinov2_exported, tmp_path):
    from edgefm.cli import main

    artifact = trt("dinov2", "fp16")
    result = CliRunner().invoke(main, ["plan", str(artifact), "--shapes", "batch=1,1,2"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["components"]["image_encoder"]["profile"]["pixel_values"]["max"][0] == 2
    for flags, message in ((["--precision", "fp8", "--device-profile", "a100"], "no fp8 tensor cores"),
                           (["--precision", "auto"], "cannot run here"),
                           (["--shapes", "batch"], "DIM=MIN,OPT,MAX"),
                           (["--int4-group-size", "48"], "16, 32, 64 or 128")):
        result = CliRunner().invoke(main, ["compile", str(dinov2_exported), "--target", "tensorrt", *flags,
                                           "-o", str(tmp_path / "x")])
        assert result.exit_code == 2 and message in result.output, (flags, result.output)
        assert not (tmp_path / "x").exists()


# -- on a GPU (CUDA alone, then with TensorRT) -----------------------------------------------------------------
NO_CUDA = cuda_unavailable_reason()


@pytest.mark.skipif(NO_CUDA is not None, reason=f"needs cuda-python and an NVIDIA GPU: {NO_CUDA}")
def test_gpu_identity_buffers_and_cuda_graphs():
    """The CUDA half of the TensorRT session, on a real GPU: the identity an engine is bound to, a host ->
    device -> host round trip through buffers allocated once, and a captured CUDA graph replayed."""
    import re

    from edgefm.bench.hardware import gpus
    from edgefm.runtimes.tensorrt import CudaStream, gpu_identity

    identity = gpu_identity()
    assert re.fullmatch(r"\d+\.\d+", identity["compute_capability"]) and identity["device"]
    assert any((identity["device"] in g["name"] or g["name"] in identity["device"])
               and g["compute_capability"] == identity["compute_capability"] for g in gpus())  # CUDA and NVML agree
    stream = CudaStream()
    values = np.random.default_rng(secrets.randbits(32)).standard_normal((3, 1024)).astype(np.float32)
    pointer, back = stream.malloc(values.nbytes), np.empty_like(values)
    stream.to_device(pointer, values)
    stream.to_host(back, pointer)
    stream.synchronize()
    np.testing.assert_array_equal(back, values)
    cudart = stream.cudart
    for byte in (7, 3):  # a graph captured, replayed twice, released; then another
        graph = stream.capture(lambda: cudart.cudaMemsetAsync(pointer, byte, values.nbytes, stream.handle))
        for _ in range(2):
            stream.launch(graph)
            stream.to_host(back, pointer)
            stream.synchronize()
            assert (back.view(np.uint8) == byte).all()
            stream.to_device(pointer, values)
        stream.release(graph)


# -- on a GPU with TensorRT ------------------------------------------------------------------------------------
@GPU
@pytest.mark.parametrize("precision", ["fp16", "int8", "fp8"])
@pytest.mark.parametrize("family", FAMILIES)
def test_gpu_engine_parity_with_fp32_onnx(trt, family, precision, request, tmp_path):
    """Build the engines here, gate them against the fp32 export (the build does), then again on fresh random
    feeds, with and without CUDA graphs; a second build comes from the engine cache."""
    import edgefm
    from edgefm.contract.compare import cosine_rows
    from edgefm.runtimes.tensorrt import this_machine
    from edgefm.targets.tensorrt_device import build_engines
    from edgefm.targets.tensorrt_plan import cc_tuple

    if precision == "fp8" and cc_tuple(this_machine()["compute_capability"]) < (8, 9):
        pytest.skip("fp8 needs compute capability 8.9+ (Ada, Hopper)")
    messages = []
    engines = build_engines(trt(family, precision), tmp_path / "engines", cache=tmp_path / "cache",
                            log=messages.append)
    assert all(e.runtime == "tensorrt" and e.validation["passed"] for e in engines.components.values())
    assert engines.pipeline_validation is None or engines.pipeline_validation["passed"]
    build_engines(trt(family, precision), tmp_path / "again", cache=tmp_path / "cache", log=messages.append)
    assert sum("from the cache" in m for m in messages) == len(engines.components)
    reference = edgefm.load(request.getfixturevalue(f"{family}_exported"))
    plain, graphs = edgefm.load(tmp_path / "engines"), edgefm.load(tmp_path / "engines", cuda_graphs=True)
    rng = np.random.default_rng(secrets.randbits(32))
    for name, session in plain.sessions.items():
        feeds = reference[name].example_feeds(rng)
        got, want, replayed = session.run(feeds), reference[name].run(feeds), graphs[name].run(feeds)
        for output, value in want.items():
            if engines.components[name].precision in ("fp32", "fp16"):
                assert cosine_rows(got[output], value).mean() >= _cosine_gate(family, name, "fp16")
            np.testing.assert_allclose(replayed[output], got[output], rtol=1e-3, atol=1e-4)


@GPU
def test_gpu_engine_on_other_tensorrt_version_is_refused(trt, tmp_path):
    import edgefm
    from edgefm.contract.manifest import MANIFEST_NAME
    from edgefm.targets.tensorrt_device import build_engines

    build_engines(trt("dinov2", "fp16"), tmp_path / "engines", cache=tmp_path / "cache", log=lambda m: None)
    manifest = json.loads((tmp_path / "engines" / MANIFEST_NAME).read_text())
    manifest["components"]["image_encoder"]["options"]["engine"]["tensorrt"] = "9.0.0"
    (tmp_path / "engines" / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="--rebuild"):
        edgefm.load(tmp_path / "engines")
