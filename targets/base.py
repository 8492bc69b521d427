"""What a target provides: the precisions it builds and, per precision, a ladder of schemes.

The compile job tries the schemes in order (most aggressive first) and keeps the first whose
compiled graph passes the accuracy gates; each later rung keeps more of the graph in float.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefm.contract.cache import CompileCache
from edgefm.contract.errors import EdgefmError
from edgefm.contract.manifest import ComponentEntry, Manifest
from edgefm.contract.records import Check
from edgefm.contract.spec import Precision


@dataclass(frozen=True)
class Flag:
    """How one field of a target's options dataclass appears on the command line: the CLI builds its target
    flags from these (`edgefm compile` / `build`, and `edgefm engine` / `plan` for `on_device` ones)."""

    help: str
    kind: type = str  # str, int, float, or bool for a switch
    choices: tuple = ()
    minimum: int | None = None  # for int flags
    multiple: bool = False  # repeatable; the values arrive as a tuple
    name: str | None = None  # the flag when it is not --<field-name>
    precisions: tuple[str, ...] = ()  # the precisions it changes (empty: all), shown in the help
    on_device: bool = False  # also taken by the on-device step (`edgefm engine`) and its plan (`edgefm plan`)

    def flag_name(self, field_name: str) -> str:
        return self.name or "--" + field_name.replace("_", "-")


def option(default: Any, help: str, **flag: Any) -> Any:
    """A field of a target's options dataclass with its command-line flag (see Flag)."""
    return field(default=default, metadata={"flag": Flag(help, **flag)})


def flag_fields(options_class: type) -> dict[str, Flag]:
    """{field name: Flag} of the options a target shows on the command line."""
    return {f.name: f.metadata["flag"] for f in dataclasses.fields(options_class) if "flag" in f.metadata}


@dataclass(frozen=True)
class Scheme:
    name: str
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class OnDeviceRequest:
    """What the on-device step of one compiled artifact is asked (`edgefm engine`, or the compile job's last phase)."""

    artifact: Path  # the compiled artifact
    # the build layer's validate job (edgefm.jobs.validate.validate), passed in: a target never imports that layer
    validate: Callable[..., Manifest]
    out: Path | None = None  # write a new artifact here; None rewrites `artifact` in place
    flags: Mapping[str, Any] = field(default_factory=dict)  # values of the target options marked `on_device`
    rebuild: bool = False  # build anew, past the step's cache, even if the artifact has been through it
    cache: Path | None = None  # the step's cache folder (None: the target's default)
    against: Path | None = None  # the fp32 export to gate against (None: the one the artifact was compiled from)
    allow_below_gate: bool = False
    overwrite: bool = False  # replace `out` if it exists
    log: Callable[[str], None] = print


@dataclass
class CompileRequest:
    """Everything one component's compile needs; the target writes `out_dir / <component>.<ext>`."""

    component: str
    source: Path  # the exported fp32 graph
    entry: ComponentEntry
    precision: Precision
    scheme: Scheme
    calibration_feeds: list[dict]  # batch-1 feeds from the calibration split
    out_dir: Path
    work_dir: Path  # scratch space shared by the attempts of one component
    cache: CompileCache = field(default_factory=CompileCache)  # the job's: what a target computes once per compile


def first_and_last(names: list[str]) -> list[str]:
    """The end layers of a ViT (patch embedding, projection): the usual ones to keep in float."""
    return sorted({names[0], names[-1]}) if names else []


class Target:
    name: str = ""
    runtime: str = ""  # the edgefm.runtimes module that loads what this target writes
    precisions: tuple[Precision, ...] = ()
    default_precision: Precision = Precision.FP32  # what `--precision` means when not given
    options_class: type = object  # a dataclass; fields made with `option(...)` become command-line flags
    requires: tuple[str, ...] = ()  # modules compiling needs (all in the `build` extra)
    default: bool = False  # what `--target` means when not given (one target: the one every install runs)
    # `edgefm demo`: the precisions it compiles for this target, and whether for every demo family (targets
    # whose artifacts run elsewhere show a few precisions of the families marked `demo_on_every_target`)
    demo_precisions: tuple[str, ...] = ()
    demo_every_family: bool = False
    # `edgefm matrix`: what the on-device step, validation and benchmark of its artifacts take from a Ray worker
    # besides its device kind, as Ray resource names and amounts ({"GPU": 1}; CPUs are the matrix's to choose)
    device_resources: dict = {}

    def available(self) -> str | None:
        """None when this machine can compile for the target, else the reason it cannot."""
        import importlib

        for module in self.requires:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                return f"{exc.name} is not installed (pip install 'edgefm[build]')"
        return None

    def uses_calibration(self, precision: Precision, scheme: Scheme, options: Any) -> bool:
        """Whether the kept scheme computed anything from the calibration feeds (then the manifest records the
        calibration data): int8 / fp8 with calibrated activation ranges, or a scheme that says `calibrated`."""
        if scheme.params.get("calibrated", False):
            return True
        return precision in (Precision.INT8, Precision.FP8) and scheme.params.get("activations") != "float"

    def runtime_settings(self, precision: Precision, scheme: Scheme, options: Any) -> dict:
        """How the runtime must run the written file to compute what was validated (compute precision, device,
        graph optimizations), stored as the entry's `options.runtime` and read by the runtime module."""
        return {}

    def check_options(self, options: Any, source: Manifest) -> None:
        """Refuse, before any work, options that do not fit the exported artifact (`source`, its Manifest)."""

    def schemes(self, precision: Precision, options: Any, entry: ComponentEntry | None = None) -> list[Scheme]:
        """The ladder for one component (its exported manifest `entry`), most aggressive first."""
        raise NotImplementedError

    def compile(self, request: CompileRequest, options: Any) -> str:
        """Write the compiled graph; return its file name (relative to request.out_dir)."""
        raise NotImplementedError

    def cannot_run_here(self) -> str | None:
        """None when what this target writes can run on this machine, else why not: then the compile gates
        what `validation_session` returns, and runs end-to-end checks on those sessions too."""
        return None

    def validation_session(self, request: CompileRequest, entry: ComponentEntry, options: Any) -> Any:
        """The session whose outputs are gated against the fp32 export: by default the compiled file itself."""
        from edgefm.runtimes.loader import open_component

        return open_component(request.out_dir, entry, request.component)

    def static_checks(self, request: CompileRequest, entry: ComponentEntry, options: Any) -> list[Check]:
        """Checks of the written file that need no runtime (names, shapes, weight storage): a list of Check."""
        return []

    def quantized_layers(self, request: CompileRequest, file: str) -> list[str]:
        """Layers of the written file that compute in reduced precision and that `restore_layers` can put back
        in float, in graph order; empty where the target cannot (then no per-layer search runs)."""
        return []

    def restore_layers(self, request: CompileRequest, file: str, into: CompileRequest, options: Any) -> str:
        """Write into `into.out_dir` the compiled `file` of `request` with the layers `into.scheme.params
        ["float_layers"]` computing in float; return the written file's name."""
        raise NotImplementedError

    def artifact_files(self, manifest: Manifest, directory: Path) -> dict[str, str]:
        """Files the target adds to a compiled artifact beside its components (name -> text), as assets."""
        return {}

    # -- the optional on-device step: what only the device that will run the artifact can do ------------------
    @property
    def has_on_device_step(self) -> bool:
        return type(self).on_device is not Target.on_device

    def device_unavailable(self, artifact: Path, manifest: Manifest) -> str | None:
        """None when this machine is the device the on-device step of `artifact` is for, else why not (then the
        compile job logs where and how to run it). Asked only of targets that have an on-device step."""
        return None

    def on_device(self, request: OnDeviceRequest) -> Manifest:
        """`edgefm engine`, and the compile job's last phase where this machine is the device: finish a compiled
        artifact on the device that will run it, gated against the fp32 export there (`request.validate`)."""
        raise EdgefmError(f"{self.name} artifacts have no on-device step: they run as compiled")

    def on_device_plan(self, artifact: Path, manifest: Manifest, flags: Mapping[str, Any]) -> dict:
        """`edgefm plan`: what the on-device step will build, as JSON-ready data."""
        raise EdgefmError(f"{self.name} artifacts have no on-device step, so no plan: they run as compiled")
