"""How bench_peers.py runs each engine in its child process: `runner(spec)` gives `(call, size_bytes, extra)`, where
`call(feeds) -> {edgefm output name: array}` takes any batch, so the same call is timed and scored on the task.

Engines: torch-fp32 (eager, the reference), torch-bf16-autocast, torch-bf16-compile (the model cast to bf16 and
torch.compile'd: PyTorch's fastest CPU configuration where the CPU has bf16), optimum-ort (Optimum's ONNX export on
ONNX Runtime), optimum-ov-PRECISION (optimum-intel's OpenVINO export) and edgefm-TARGET-PRECISION artifacts.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def torch_runner(spec: dict):
    import torch

    from edgefm.contract import registry
    from edgefm.exporters.base import ExportOptions

    torch.set_num_threads(spec["threads"])
    family = registry.family(spec["family"])
    loaded = family.load(family.resolve(None, spec["variant"], random_weights=True), ExportOptions())
    component = next(c for c in family.components(loaded, ExportOptions()) if c.name == spec["component"])
    names = [o.name for o in component.outputs]
    extra = {}
    if spec["engine"] == "torch-fp32":  # count the FLOPs once, on the eager (plain matmul) attention export uses
        from torch.utils.flop_counter import FlopCounterMode

        feeds = dict(np.load(spec["inputs"]))
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            component.module(**{k: torch.from_numpy(v) for k, v in feeds.items()})
        extra["gflop"] = counter.get_total_flops() / 1e9
    loaded.model.set_attn_implementation("sdpa")  # torch's own fastest attention (export switched it to eager)
    size = _called_parameter_bytes(component.module, spec)
    module, dtype = component.module, torch.float32
    if spec["engine"] == "torch-bf16-compile":
        module, dtype, size = torch.compile(module.to(torch.bfloat16)), torch.bfloat16, size // 2
    autocast = spec["engine"] == "torch-bf16-autocast"

    def call(feeds):
        tensors = {k: torch.from_numpy(v).to(dtype) if v.dtype == np.float32 else torch.from_numpy(v)
                   for k, v in feeds.items()}
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = module(**tensors)
        return dict(zip(names, (t.float().numpy() for t in (out if isinstance(out, tuple) else (out,)))))

    if spec["engine"] == "torch-bf16-compile":  # compiling happens on the first call: reported on its own
        start = time.perf_counter()
        call(dict(np.load(spec["inputs"])))
        extra["compile_s"] = time.perf_counter() - start
    return call, size, extra


def _called_parameter_bytes(module, spec: dict) -> int:
    """Parameters of the modules this component calls (CLIP's wrapper holds both towers), in fp32 bytes."""
    import torch

    called = []
    hooks = [m.register_forward_hook(lambda m, *_: called.append(m)) for m in module.modules()]
    with torch.no_grad():
        module(**{k: torch.from_numpy(v) for k, v in np.load(spec["inputs"]).items()})
    for hook in hooks:
        hook.remove()
    params = {id(p): p for m in called for p in m.parameters(recurse=False)}
    return sum(p.numel() * 4 for p in params.values())


def _optimum_outputs(spec: dict, run):
    """Optimum's graphs (ONNX or OpenVINO) give HF output names; map them to edgefm's."""
    if spec["family"] == "dinov2":
        def call(feeds):
            hidden = run(feeds)["last_hidden_state"]
            return {"cls_embedding": hidden[:, 0], "patch_tokens": hidden[:, 1:]}
    elif spec["component"] == "image_encoder":
        def call(feeds):
            return {"image_embeds": run(feeds)["image_embeds"]}
    else:
        def call(feeds):  # Optimum's text graphs also take the attention mask CLIP ignores for causal text
            return {"text_embeds": run({**feeds, "attention_mask": np.ones_like(feeds["input_ids"])})["text_embeds"]}
    return call


def optimum_ort_runner(spec: dict):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = spec["threads"]
    path = Path(spec["artifact"]) / "model.onnx"
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]

    def run(feeds):
        return dict(zip(outputs, session.run(None, {k: v for k, v in feeds.items() if k in names})))

    size = sum(p.stat().st_size for p in path.parent.iterdir() if p.suffix in (".onnx", ".onnx_data", ".data"))
    return _optimum_outputs(spec, run), size, {}


def optimum_ov_runner(spec: dict):
    """optimum-intel's IR through OpenVINO with the config its OVModel classes compile with by default."""
    import openvino as ov

    path = Path(spec["artifact"]) / "openvino_model.xml"
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": spec["threads"], **spec.get("ov_config", {})}
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    names = {i.get_any_name() for i in compiled.inputs}

    def run(feeds):
        result = request.infer({k: v for k, v in feeds.items() if k in names}, share_outputs=False)
        return {port.get_any_name(): value for port, value in result.items()}

    return _optimum_outputs(spec, run), path.stat().st_size + path.with_suffix(".bin").stat().st_size, {}


def edgefm_runner(spec: dict):
    from edgefm.contract.manifest import Manifest
    from edgefm.runtimes.loader import open_component

    directory = Path(spec["artifact"])  # open only this component's session, not the whole artifact
    entry = Manifest.load(directory).components[spec["component"]]
    session = open_component(directory, entry, spec["component"], threads=spec["threads"])
    return session.run, entry.size_mib(directory) * 2**20, {}


def runner(spec: dict):
    engine = spec["engine"]
    if engine.startswith("torch-"):
        return torch_runner(spec)
    if engine == "optimum-ort":
        return optimum_ort_runner(spec)
    if engine.startswith("optimum-ov-"):
        return optimum_ov_runner(spec)
    return edgefm_runner(spec)


class _Callable:
    """What edgefm's task checks call: an object with run(feeds)."""

    def __init__(self, call):
        self.run = call


def task_metrics(spec: dict, call) -> dict:
    """The family's own task checks (those edgefm's compile gates use), this engine vs the fp32 export, on the
    held-out photos / prompts: every row is scored the same way."""
    from edgefm.calibration.data import load
    from edgefm.calibration.recipe import CheckContext
    from edgefm.contract import registry
    from edgefm.contract.manifest import Manifest
    from edgefm.runtimes.loader import open_sessions

    exported = Path(spec["exported"])
    manifest = Manifest.load(exported)
    family = registry.family(spec["family"])
    gates = family.gates(spec["component"], "int8")  # values are what the row reports
    reference = open_sessions(exported, manifest, threads=spec["threads"])
    checks = family.calibration().extra_checks(CheckContext(spec["component"], _Callable(call), reference, manifest,
                                                            exported, load(), gates))
    return {check.metric: check.value for check in checks}
