"""The on-device step of a compiled artifact (TensorRT engines, built on the GPU that runs them): the compile
job's last phase where this machine is that device, and `edgefm engine` / the matrix's on-device task elsewhere."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edgefm.contract import registry
from edgefm.contract.errors import ArtifactError
from edgefm.contract.manifest import Manifest
from edgefm.targets.base import OnDeviceRequest, Target


def finish_on_device(target: Target, artifact: Path, manifest: Manifest, *, allow_below_gate: bool = False,
                     log: Callable[[str], None] = print) -> Manifest:
    """Run the target's on-device step when this machine is the device it is for, else say where and how;
    the artifact's manifest either way."""
    if not target.has_on_device_step:
        return manifest
    reason = target.device_unavailable(artifact, manifest)
    if reason:
        log(f"{reason}. On the device that will run it: `edgefm engine {artifact}`")
        return manifest
    return target.on_device(_request(artifact, allow_below_gate=allow_below_gate, log=log))


def artifact_target(artifact: Path) -> tuple[Target, Manifest]:
    """The target a compiled artifact was built for, from its manifest."""
    manifest = Manifest.load(Path(artifact))
    built_for = sorted({e.target for e in manifest.components.values() if e.target})
    if manifest.stage != "compiled" or len(built_for) != 1:
        raise ArtifactError(f"{artifact} is not an artifact compiled for one target ({manifest.stage}); "
                            "give one that `edgefm compile` wrote")
    return registry.target(built_for[0]), manifest


def run_on_device(artifact: Path, *, out: Path | None = None, flags: Mapping[str, Any] | None = None,
                  rebuild: bool = False, cache: Path | None = None, against: Path | None = None,
                  allow_below_gate: bool = False, overwrite: bool = False,
                  log: Callable[[str], None] = print) -> Manifest:
    """`edgefm engine`: the on-device step of a compiled artifact, by the target it was compiled for."""
    target, _ = artifact_target(artifact)
    return target.on_device(_request(artifact, out=out, flags=dict(flags or {}), rebuild=rebuild, cache=cache,
                                     against=against, allow_below_gate=allow_below_gate, overwrite=overwrite, log=log))


def plan_on_device(artifact: Path, flags: Mapping[str, Any] | None = None) -> dict:
    """`edgefm plan`: what the on-device step of a compiled artifact will build."""
    target, manifest = artifact_target(artifact)
    return target.on_device_plan(Path(artifact), manifest, dict(flags or {}))


def _request(artifact: Path, **fields: Any) -> OnDeviceRequest:
    from edgefm.jobs.validate import validate

    return OnDeviceRequest(Path(artifact), validate, **fields)
