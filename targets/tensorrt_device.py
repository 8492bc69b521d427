"""The TensorRT target's on-device step (`edgefm engine`): build the TensorRT engines of a TensorRT-compiled
artifact on this GPU, from its build plan.

Engines are cached by `tensorrt_plan.engine_cache_key` (graph and external weights sha256, precision,
profile, build settings, TensorRT version, compute capability) and share a timing cache per TensorRT
version and GPU, so a rebuild of an unchanged component is a copy. The artifact is rewritten whole or
not at all.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from edgefm.contract.errors import EdgefmError
from edgefm.contract.manifest import Manifest, recorded_parent, sha256_file
from edgefm.contract.staging import staging_dir
from edgefm.targets.base import OnDeviceRequest


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEFM_CACHE", Path.home() / ".cache" / "edgefm")) / "tensorrt"


def build_engines(request: OnDeviceRequest) -> Manifest:
    """Engines for every component, gated against the fp32 export (the artifact's parent, or `request.against`)
    on this GPU; below the gates nothing is written unless `allow_below_gate`. `rebuild` builds anew, past the
    engine cache; `out` writes a new artifact instead of rewriting the artifact in place."""
    from edgefm.runtimes.tensorrt import unavailable_reason
    from edgefm.targets.tensorrt_plan import PLAN_FILE, build_plan, check_device

    artifact, out, rebuild, log = Path(request.artifact).resolve(), request.out, request.rebuild, request.log
    manifest = Manifest.load(artifact)
    # refuses artifacts not compiled for tensorrt
    plan = build_plan(manifest, artifact, request.flags.get("device_profile"), request.flags.get("shapes"))
    built = {n for n, e in manifest.components.items() if e.runtime == "tensorrt"}
    if built and not rebuild:
        raise EdgefmError(f"{artifact} already holds engines ({', '.join(sorted(built))}); pass --rebuild to build "
                          "them again on this GPU")
    reason = unavailable_reason()
    if reason:
        raise EdgefmError(f"building TensorRT engines needs TensorRT and an NVIDIA GPU: {reason}. Copy {artifact} "
                          "(its ONNX graphs and build_plan.json) to the device and run `edgefm engine` there")
    reference = Path(request.against) if request.against else recorded_parent(artifact, manifest)
    if not (reference / "manifest.json").is_file():
        raise EdgefmError(f"the engines are gated against the fp32 export this artifact came from, {reference}, "
                          "which is not on this machine; copy it here and pass --against EXPORTED_DIR")
    from edgefm.runtimes.tensorrt import this_machine

    here = this_machine()
    check_device(plan, here)
    cache = Path(request.cache or cache_dir())
    cache.mkdir(parents=True, exist_ok=True)
    # in place (no `out`) the artifact is what the user asked to rewrite; a new `out` must not touch it
    inputs = [reference, cache] + ([artifact] if out else [])
    with staging_dir(Path(out or artifact), out is None or request.overwrite, inputs, log) as tmp:
        for name in _files(manifest):
            shutil.copy2(artifact / name, tmp / name)
        entries = {name: _engine_entry(manifest.components[name], name, component, plan, here, cache, artifact, tmp,
                                       rebuild, log)
                   for name, component in plan["components"].items()}
        (tmp / PLAN_FILE).write_text(json.dumps(plan, indent=2) + "\n")
        engines = dataclasses.replace(manifest, components=entries,
                                      assets={**manifest.assets, PLAN_FILE: sha256_file(tmp / PLAN_FILE)})
        engines.save(tmp)
        engines = _gated(tmp, engines, reference, request)
        engines.save(tmp)
    return engines


def _files(manifest: Manifest) -> list[str]:
    names = set(manifest.assets)
    for entry in manifest.components.values():
        names |= {n for n in entry.files() if not n.endswith(".engine")}
    return sorted(names)


def _engine_entry(entry, name: str, component: dict, plan: dict, here: dict, cache: Path, artifact: Path, tmp: Path,
                  rebuild: bool, log):
    from edgefm.targets.tensorrt_engine import build_engine
    from edgefm.targets.tensorrt_plan import engine_cache_key

    key = engine_cache_key(component, plan["device_profile"], here["tensorrt"], here["compute_capability"])
    cached = cache / f"{key}.engine"
    if cached.exists() and not rebuild:
        log(f"{name}: engine from the cache ({cached})")
    else:
        log(f"{name}: building the {component['precision']} engine on {here['device']} (TensorRT {here['tensorrt']})")
        timing = cache / f"timing-trt{here['tensorrt']}-cc{here['compute_capability']}.cache"
        data = build_engine(artifact / component["onnx"], component, plan["device_profile"], timing)
        partial = cached.with_suffix(f".partial-{os.getpid()}")
        partial.write_bytes(data)
        partial.replace(cached)
    engine = tmp / f"{name}.engine"
    shutil.copy2(cached, engine)
    graph_files = {n: d for n, d in entry.files().items() if not n.endswith(".engine")}
    record = {**here, "device_profile": plan["device_profile"]["name"], "cache_key": key, "onnx": component["onnx"],
              "profile": component["profile"]}
    return dataclasses.replace(entry, file=engine.name, sha256=sha256_file(engine), runtime="tensorrt",
                               data_files=graph_files, options={**entry.options, "engine": record})


def _gated(directory: Path, manifest: Manifest, reference: Path, request: OnDeviceRequest) -> Manifest:
    """The engines' own figures against the fp32 export, on this GPU; below a gate, a GateError (and the staging
    directory goes) unless `allow_below_gate`."""
    from edgefm.contract.errors import GateError

    gated = request.validate(directory, against=reference, log=request.log)
    below = [f"{name}: {e.validation.describe()}" for name, e in gated.components.items() if not e.validation.passed]
    if gated.pipeline_validation and not gated.pipeline_validation.passed:
        below.append(f"end to end: {gated.pipeline_validation.describe()}")
    if below and not request.allow_below_gate:
        finding = "the engines are below their gates on this GPU (" + "; ".join(below) + ")"
        raise GateError(f"{finding}; nothing was written. Compile another precision, or keep them anyway with "
                        "--allow-below-gate (recorded in the manifest)", finding)
    entries = {name: dataclasses.replace(e, validation=dataclasses.replace(
        e.validation, allowed_below_gate=not e.validation.passed,
        measured_with=f"TensorRT on {e.options['engine']['device']}")) for name, e in gated.components.items()}
    pipeline = gated.pipeline_validation
    if pipeline:
        pipeline = dataclasses.replace(pipeline, allowed_below_gate=not pipeline.passed)
    return dataclasses.replace(gated, components=entries, pipeline_validation=pipeline)
