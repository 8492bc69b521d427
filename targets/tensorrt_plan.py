"""The build plan: everything an engine build needs, derived from a TensorRT-compiled artifact's manifest.

Engines do not move between GPUs or TensorRT versions, so the portable thing is the artifact (typed ONNX
per component, validated on the CPU) plus this plan; each device builds its own engines from them
(`edgefm engine`). The engine cache key is the plan's inputs plus the builder's TensorRT version and GPU.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from edgefm.contract.errors import ArtifactError, EdgefmError
from edgefm.contract.manifest import Manifest, inside
from edgefm.contract.spec import dim_range

PLAN_FORMAT = 1
PLAN_FILE = "build_plan.json"  # written by `edgefm compile --target tensorrt` beside the graphs
BATCH_MAX = 8  # optimization profiles cover batch 1..8 unless overridden (`--shapes batch=1,1,32`)
# Where each profile's engines run. `unsupported`: precisions its GPU has no kernels for.
DEVICE_PROFILES = {
    "generic": {"compute_capability": None, "workspace_mib": None, "optimization_level": 3, "unsupported": {},
                "about": "the GPU the engine is built on; fp8 needs compute capability 8.9+"},
    "jetson-orin": {"compute_capability": "8.7", "workspace_mib": 2048, "optimization_level": 3,
                    "unsupported": {"fp8": "Orin's Ampere GPU has no fp8 tensor cores"},
                    "about": "Jetson AGX / NX / Nano Orin; JetPack 6 ships TensorRT 10.3 (no TensorRT 11 JetPack "
                             "build yet); memory is shared with the CPU, so the workspace stays small"},
    "a100": {"compute_capability": "8.0", "workspace_mib": 16384, "optimization_level": 3,
             "unsupported": {"fp8": "A100 (Ampere) has no fp8 tensor cores"}, "about": "A100 40/80 GB"},
    "h100": {"compute_capability": "9.0", "workspace_mib": 16384, "optimization_level": 3, "unsupported": {},
             "about": "H100 / H200 (Hopper)"},
}
# Kernels TensorRT has per precision, by compute capability (fp8: Ada / Hopper; int4 weight-only: Ampere+).
MIN_COMPUTE_CAPABILITY = {"fp8": "8.9", "int4": "8.0"}


def parse_shape_overrides(values) -> dict[str, tuple[int, int, int]]:
    """["batch=1,4,16", ...] -> {"batch": (1, 4, 16)}."""
    parsed = {}
    for value in values or ():
        dim, _, sizes = str(value).partition("=")
        try:
            low, opt, high = (int(s) for s in sizes.split(","))
        except ValueError:
            raise EdgefmError(f"--shapes {value!r}: give DIM=MIN,OPT,MAX, e.g. batch=1,4,16") from None
        if not 1 <= low <= opt <= high:
            raise EdgefmError(f"--shapes {value!r}: sizes must satisfy 1 <= min <= opt <= max")
        parsed[dim.strip()] = (low, opt, high)
    return parsed


def optimization_profile(entry, overrides: dict[str, tuple[int, int, int]]) -> dict[str, dict[str, list[int]]]:
    """Per input, the min / opt / max shapes: the manifest's dims (default as opt), overrides winning."""
    rules = entry.options.get("dims", {})
    sizes = {}
    for dim in _dims(entry):
        rule = rules.get(dim, {})
        low, high = (1, max(BATCH_MAX, rule.get("default", 1))) if dim == "batch" else dim_range(rule)
        low, opt, high = overrides.get(dim, (low, rule.get("default", low), high))
        step = rule.get("multiple_of", 1)
        if any(size % step for size in (low, opt, high)) or high > rule.get("max", high) or not low <= opt <= high:
            raise EdgefmError(f"{dim}: profile {low},{opt},{high} does not fit the model "
                              f"(multiples of {step}, at most {rule.get('max', 'unbounded')}, min <= opt <= max)")
        sizes[dim] = (low, opt, high)
    return {spec.name: {key: [d if isinstance(d, int) else sizes[d][i] for d in spec.shape]
                        for i, key in enumerate(("min", "opt", "max"))} for spec in entry.inputs}


def build_plan(manifest: Manifest, directory: Path, device_profile: str | None = None,
               shapes: tuple[str, ...] | None = None) -> dict:
    """The plan of a TensorRT-compiled artifact in `directory`; `device_profile` / `shapes` override the compile's."""
    components, profile_name = {}, "generic"
    for name, entry in manifest.components.items():
        if entry.target != "tensorrt":
            raise ArtifactError(f"{directory}: {name} was compiled for {entry.target or 'no target (an export)'}, "
                                "not tensorrt; compile with `edgefm compile ART --target tensorrt`")
        options = entry.options.get("compile", {})
        profile_name = device_profile or options.get("device_profile", "generic")
        overrides = parse_shape_overrides(options.get("shapes", ()) if shapes is None else shapes)
        graph = entry.options.get("engine", {}).get("onnx", entry.file)
        pins_file = graph.removesuffix(".onnx") + ".fp16_pins.json"
        if not {graph, pins_file} <= set(entry.files()):  # a manifest is untrusted: read listed, hashed files only
            raise ArtifactError(f"{directory}: {name} names {graph} / {pins_file}, which its manifest does not list; "
                                "rebuild the artifact")
        pins = json.loads(inside(Path(directory), pins_file).read_text())
        components[name] = {
            "onnx": graph, "onnx_sha256": entry.data_files.get(graph, entry.sha256),
            # external weights (graphs past 2 GB): the .onnx alone does not change when only they do
            "onnx_data": {f: digest for f, digest in entry.data_files.items() if f.startswith(graph + ".")},
            "precision": entry.precision, "scheme": options.get("scheme"),
            # every tensor's type is in the ONNX: a strongly typed network builds exactly what was validated
            "strongly_typed": True, "tf32": False,
            "fp32_pins": pins, "profile": optimization_profile(entry, overrides),
            "min_compute_capability": MIN_COMPUTE_CAPABILITY.get(entry.precision)}
        check_shape_dims(overrides, artifact_dims(manifest))
    if profile_name not in DEVICE_PROFILES:
        raise EdgefmError(f"device profile {profile_name!r} is not one of: {', '.join(DEVICE_PROFILES)}")
    for name, component in components.items():
        why = DEVICE_PROFILES[profile_name]["unsupported"].get(component["precision"])
        if why:
            raise EdgefmError(f"{name} is {component['precision']}, which device profile {profile_name} cannot run "
                              f"({why}); compile another precision for it")
    return {"edgefm_plan": PLAN_FORMAT, "family": manifest.family, "variant": manifest.variant,
            "device_profile": {"name": profile_name, **DEVICE_PROFILES[profile_name]},
            "components": components}


def check_shape_dims(overrides: dict, dims: set[str]) -> None:
    """--shapes may only name dynamic dims the artifact's inputs have (an unknown one would be ignored)."""
    unknown = sorted(set(overrides) - dims)
    if unknown:
        raise EdgefmError(f"--shapes names {', '.join(unknown)}, which no input has; dynamic dims: "
                          f"{', '.join(sorted(dims)) or 'none'}")


def artifact_dims(manifest: Manifest) -> set[str]:
    return set().union(*(_dims(entry) for entry in manifest.components.values()))


def _dims(entry) -> set[str]:
    return {d for spec in entry.inputs for d in spec.shape if isinstance(d, str)}


def engine_cache_key(component: dict, device_profile: dict, tensorrt_version: str, compute_capability: str) -> str:
    """Same key, same engine: the graph's bytes (external weights too), its precision and profile, the build
    settings, TensorRT and the GPU."""
    fields = {"onnx_sha256": component["onnx_sha256"], "onnx_data": component["onnx_data"],
              "precision": component["precision"],
              "profile": component["profile"], "tf32": component["tf32"],
              "device_profile": {k: device_profile.get(k) for k in ("name", "workspace_mib", "optimization_level")},
              "tensorrt": tensorrt_version, "compute_capability": compute_capability}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


def cc_tuple(value: str) -> tuple[int, int]:
    major, _, minor = str(value).partition(".")
    return int(major), int(minor or 0)


def check_device(plan: dict, here: dict) -> None:
    """Refuse a build the GPU `here` cannot honour: another GPU than the profile's, or a precision it lacks."""
    profile, capability = plan["device_profile"], here["compute_capability"]
    if profile["compute_capability"] and profile["compute_capability"] != capability:
        fits = [n for n, p in DEVICE_PROFILES.items() if p["compute_capability"] == capability] or ["generic"]
        raise EdgefmError(f"device profile {profile['name']} is for compute capability {profile['compute_capability']}"
                          f", but this GPU ({here['device']}) has {capability}; build on that device, or pass "
                          f"--device-profile {fits[0]}")
    for name, component in plan["components"].items():
        need = component["min_compute_capability"]
        if need and cc_tuple(capability) < cc_tuple(need):
            raise EdgefmError(f"{name} is {component['precision']}, which TensorRT runs on compute capability {need} "
                              f"or newer; this GPU ({here['device']}) has {capability}. Compile another precision")
