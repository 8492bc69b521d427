"""A fake family and a fake target for the unit tier: no torch, no real model, no download.

The toy family's export is a two-layer MLP per component written with onnx.helper (x [batch, 8] -> MatMul ->
Relu -> MatMul -> y [batch, 8]) that ONNX Runtime runs. The recording target "compiles" by adding seeded noise to
named layers' weights (a scheme's `noise`: {layer: relative std}), can put layers back in float, has an
on-device step, and records every call the compile job makes of it, in order.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgefm.calibration.recipe import CalibrationRecipe
from edgefm.contract.manifest import ComponentEntry, Manifest, sha256_file
from edgefm.contract.records import Check
from edgefm.contract.spec import Precision, TensorSpec
from edgefm.exporters.base import ModelFamily, Variant
from edgefm.runtimes.loader import Artifact
from edgefm.targets.base import OnDeviceRequest, Scheme, Target, option

LAYERS = ("layer1", "layer2")
WIDTH = 8


def mlp(seed: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    weights = {"layer1": rng.normal(size=(WIDTH, 16)).astype(np.float32),
               "layer2": rng.normal(size=(16, WIDTH)).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "layer1.weight"], ["h"], name="layer1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "layer2.weight"], ["y"], name="layer2")]
    graph = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])],
                              [numpy_helper.from_array(w, f"{n}.weight") for n, w in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def write_export(family: ModelFamily, out: Path) -> Manifest:
    """The toy family's exported artifact in `out`, as `edgefm export` would write it."""
    out.mkdir(parents=True)
    entries = {}
    for index, name in enumerate(family.component_names):
        onnx.save(mlp(index), str(out / f"{name}.onnx"))
        spec = [TensorSpec("x", "float32", ("batch", WIDTH))], [TensorSpec("y", "float32", ("batch", WIDTH))]
        entries[name] = ComponentEntry(f"{name}.onnx", sha256_file(out / f"{name}.onnx"), "onnxruntime", None, "fp32",
                                       *spec)
    manifest = Manifest(family=family.name, variant="tiny", stage="exported", components=entries,
                        source={"kind": "preset", "id": family.name, "weights_sha256": "0" * 64,
                                "random_weights": True, "options": {}})
    manifest.save(out)
    return manifest


class ToyRecipe(CalibrationRecipe):
    """Seeded random inputs: the calibration split and a disjoint held-out split; the pipeline check chains the
    components (each one's output is the next one's input) and compares the last output with the export's."""

    def feeds(self, component, manifest, directory, data, cache=None):
        rng = np.random.default_rng(0)
        rows = [{"x": rng.normal(size=(1, WIDTH)).astype(np.float32)} for _ in range(16)]
        return rows[:8], rows[8:]

    def extra_checks(self, ctx):
        return []

    def pipeline_checks(self, candidate, reference_dir, data, gates, cache=None):
        import edgefm

        reference = edgefm.load(reference_dir)
        rng = np.random.default_rng(1)
        x = rng.normal(size=(32, WIDTH)).astype(np.float32)
        got, want = chain(candidate, x), chain(reference, x)
        cosine = float(np.mean(np.sum(got * want, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))))
        return [Check("cosine", cosine, gates["cosine"])]


def chain(artifact: Artifact, x: np.ndarray) -> np.ndarray:
    for name in artifact.manifest.components:
        x = artifact[name].run({"x": x})["y"]
    return x


class ToyFamily(ModelFamily):
    name = "toy"
    title = "Toy"
    description = "a two-layer MLP per component, written with onnx.helper"
    demo_variant = "tiny"
    variants = {"tiny": Variant("tiny", None, {}, "offline toy")}
    component_names = ("encoder",)

    def calibration(self):
        return ToyRecipe()

    def artifact_class(self):
        return Artifact


class ToyPipelineFamily(ToyFamily):
    """Two chained components, gated end to end more strictly than each component alone."""

    name = "toy_pipeline"
    component_names = ("encoder", "head")
    demo_variant = None
    pipeline_gate_metrics = ("cosine",)
    pipeline_gate_overrides = {"cosine": {"int8": 0.9995}}


@dataclass
class FakeOptions:
    ladder: str = option("coarse-then-fine", "Which ladder of noise levels the fake int8 walks.",
                         choices=("coarse-then-fine", "one-bad-layer", "hopeless", "per-component"))
    device: str = option("here", "Where the fake on-device step runs: here, or elsewhere (deferred with a line).",
                         choices=("here", "elsewhere"), on_device=True)


LADDERS = {
    "coarse-then-fine": [Scheme("coarse", {"noise": {"layer1": 0.6, "layer2": 0.6}}),
                         Scheme("fine", {"noise": {"layer1": 0.002, "layer2": 0.002}})],
    "one-bad-layer": [Scheme("bad", {"noise": {"layer1": 0.002, "layer2": 0.8}})],
    "hopeless": [Scheme("hopeless", {"noise": {"layer1": 0.8, "layer2": 0.8}, "no_float_layers": True})],
}


class RecordingTarget(Target):
    """A target whose files are ONNX Runtime graphs with noisy weights; `calls` lists every call made of it."""

    name = "fake"
    runtime = "onnxruntime"
    precisions = (Precision.FP32, Precision.INT8)
    default_precision = Precision.INT8
    options_class = FakeOptions
    demo_precisions = ("int8",)
    demo_every_family = True
    default = True

    def __init__(self, noise_per_component: dict[str, float] | None = None):
        self.calls: list[str] = []
        self.noise_per_component = noise_per_component or {}

    def _record(self, call: str) -> None:
        self.calls.append(call)

    def available(self):
        return None

    def check_options(self, options, source):
        self._record("check_options")

    def schemes(self, precision, options, entry=None):
        self._record(f"schemes {precision.value}")
        if precision == Precision.FP32:
            return [Scheme("exact", {"noise": {}})]
        if options.ladder == "per-component":
            noise = self.noise_per_component[entry.file.removesuffix(".onnx")]
            return [Scheme(f"noise-{noise}", {"noise": {"layer1": noise, "layer2": noise}})]
        return LADDERS[options.ladder]

    def compile(self, request, options):
        self._record(f"compile {request.component} {request.scheme.name}")
        model = onnx.load(str(request.source))
        rng = np.random.default_rng(7)
        for tensor in model.graph.initializer:
            layer = tensor.name.removesuffix(".weight")
            scale = request.scheme.params["noise"].get(layer, 0.0)
            values = numpy_helper.to_array(tensor)
            noisy = values + rng.normal(size=values.shape).astype(np.float32) * scale * float(np.std(values))
            tensor.CopyFrom(numpy_helper.from_array(noisy.astype(np.float32), tensor.name))
        onnx.save(model, str(request.out_dir / f"{request.component}.onnx"))
        return f"{request.component}.onnx"

    def static_checks(self, request, entry, options):
        self._record("static_checks")
        return []

    def validation_session(self, request, entry, options):
        self._record("validation_session")
        return super().validation_session(request, entry, options)

    def quantized_layers(self, request, file):
        if request.scheme.params.get("no_float_layers"):
            return []
        return [layer for layer in LAYERS if request.scheme.params["noise"].get(layer)]

    def restore_layers(self, request, file, into, options):
        original = {t.name: t for t in onnx.load(str(request.source)).graph.initializer}
        model = onnx.load(str(request.out_dir / file))
        for tensor in model.graph.initializer:
            if tensor.name.removesuffix(".weight") in into.scheme.params["float_layers"]:
                tensor.CopyFrom(original[tensor.name])
        onnx.save(model, str(into.out_dir / file))
        return file

    def artifact_files(self, manifest, directory):
        self._record("artifact_files")
        return {"fake-notes.txt": "compiled by the fake target\n"}

    def device_unavailable(self, artifact, manifest):
        self._record("device_unavailable")
        device = next(iter(manifest.components.values())).options["compile"]["device"]
        return None if device == "here" else "the fake device is elsewhere"

    def on_device(self, request: OnDeviceRequest):
        """Re-gate the artifact through the validate job the request carries (as TensorRT's engines are)."""
        self._record("on_device")
        return request.validate(request.artifact, against=request.against, log=request.log)


def register(monkeypatch, families=(), targets=()) -> None:
    """Make the registry see only these plugins (the real ones stay installed, unseen)."""
    from edgefm.contract import registry

    real = _real_flag_names()
    found_families = {f.name: f for f in families}
    found_targets = {t.name: t for t in targets}
    monkeypatch.setattr(registry, "families", lambda: dict(found_families))
    monkeypatch.setattr(registry, "targets", lambda: dict(found_targets))
    # the commands add their target flags once per process: make them add these plugins' flags, and put the real
    # ones back after the test (monkeypatch restores both attributes)
    from edgefm.cli import main
    from edgefm.cli.flags import TargetFlagsCommand

    for command in main.commands.values():
        if isinstance(command, TargetFlagsCommand):
            base = [p for p in command.params if not command._added or p.name not in real]
            monkeypatch.setattr(command, "params", base)
            monkeypatch.setattr(command, "_added", False)


def _real_flag_names() -> set[str]:
    from edgefm.contract import registry

    return {f.name for t in registry.targets().values() for f in dataclasses.fields(t.options_class)}
