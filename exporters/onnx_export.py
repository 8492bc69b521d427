"""torch wrapper -> ONNX (torch.onnx dynamo exporter), then parity against torch on fresh inputs."""
from __future__ import annotations

import logging
import secrets
from pathlib import Path

import numpy as np

from edgefm.contract.compare import cosine_rows, max_abs_diff
from edgefm.contract.errors import GateError
from edgefm.contract.manifest import ComponentEntry, sha256_file
from edgefm.contract.records import Check, Validation
from edgefm.exporters.base import Component

# fp32 ONNX vs fp32 torch: only kernel-order rounding differs.
EXPORT_COSINE_GATE = 0.9999
EXPORT_REL_DIFF_GATE = 1e-3  # max |onnx - torch| / max |torch|
# Protobuf caps one file at 2 GB; larger graphs keep their weights in an external data file.
EXTERNAL_DATA_BYTES = 1_500_000_000


def external_data_files(path: Path) -> list[str]:
    """The files an ONNX graph keeps its weights in beside the .onnx (graphs over protobuf's 2 GB limit)."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    return sorted({entry.value for tensor in model.graph.initializer if uses_external_data(tensor)
                   for entry in tensor.external_data if entry.key == "location"})


def _dynamic_shapes(component: Component) -> dict:
    import torch

    made: dict = {}

    def dim(name: str):
        if name not in made:
            rule = component.dims.get(name, {})
            step = rule.get("multiple_of", 1)
            bounds = {"max": rule["max"] // step} if "max" in rule else {}
            base = torch.export.Dim(name if step == 1 else f"{name}_div_{step}", min=1, **bounds)
            made[name] = base * step if step > 1 else base
        return made[name]

    return {spec.name: {axis: dim(d) for axis, d in enumerate(spec.shape) if isinstance(d, str)}
            for spec in component.inputs}


def _torch_outputs(component: Component, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        result = component.module(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    result = result if isinstance(result, (tuple, list)) else (result,)
    return [r.detach().numpy() for r in result]


def export_component(component: Component, out_dir: Path) -> ComponentEntry:
    import torch

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    path = Path(out_dir) / f"{component.name}.onnx"
    example = component.make_inputs(np.random.default_rng(0), component.trace_dims)
    with torch.no_grad():
        program = torch.onnx.export(
            component.module, (), kwargs={k: torch.from_numpy(v) for k, v in example.items()},
            input_names=[s.name for s in component.inputs], output_names=[s.name for s in component.outputs],
            dynamic_shapes=_dynamic_shapes(component), dynamo=True, verbose=False)
    # torch records each node's Python stack trace, module path and fx name: build-machine paths in a file that
    # ships to devices, and most of a small graph's bytes (a tiny CLIP text encoder: 147 of 282 KB in int8)
    for node in program.model.graph.all_nodes():
        node.metadata_props.clear()
    param_bytes = sum(p.numel() * p.element_size() for p in component.module.parameters())
    external = param_bytes > EXTERNAL_DATA_BYTES
    program.save(str(path), external_data=external)
    data_files = {name: sha256_file(path.parent / name) for name in external_data_files(path)}
    entry = ComponentEntry(
        file=path.name, sha256=sha256_file(path), runtime="onnxruntime", target=None, precision="fp32",
        inputs=component.inputs, outputs=component.outputs, data_files=data_files,
        options={"dims": component.dims, "arch": component.arch, "exporter": f"torch.onnx dynamo (torch {torch.__version__})"})
    entry.validation = validate_against_torch(component, path, entry)
    if not entry.validation["passed"]:
        raise GateError(f"{component.name}: the ONNX export differs from torch beyond its gate "
                        f"({_describe(entry.validation)}); this is an exporter bug, please report it "
                        "with the model id and `edgefm --version`")
    return entry


def validate_against_torch(component: Component, path: Path, entry: ComponentEntry) -> Validation:
    from edgefm.runtimes.loader import open_component

    session = open_component(Path(path).parent, entry, component.name)  # a graph it cannot open: one line
    seed = secrets.randbits(32)
    rng = np.random.default_rng(seed)
    worst_cos, worst_rel, worst_abs = 1.0, 0.0, 0.0
    for dims in component.validation_dims:
        feeds = component.make_inputs(rng, dims)
        try:
            outputs = session.run(feeds)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise GateError(f"{component.name}: the exported graph fails to run at {dims}: {exc}") from None
        for spec, ref in zip(component.outputs, _torch_outputs(component, feeds)):
            got = outputs[spec.name]
            worst_cos = min(worst_cos, float(cosine_rows(got, ref).min()))
            diff = max_abs_diff(got, ref)
            worst_abs = max(worst_abs, diff)
            worst_rel = max(worst_rel, diff / max(float(np.abs(ref).max()), 1e-12))
    checks = [Check("cosine_min", worst_cos, EXPORT_COSINE_GATE),
              Check("rel_max_abs_diff", worst_rel, EXPORT_REL_DIFF_GATE, higher_is_better=False,
                    detail={"max_abs_diff": worst_abs})]
    return Validation(tuple(checks), reference="torch fp32",
                      inputs=f"fresh random inputs at {component.validation_dims} (seed {seed})")


def _describe(validation: Validation) -> str:
    return ", ".join(f"{c['metric']}={c['value']:.6g} (gate {c['gate']})" for c in validation["checks"])
