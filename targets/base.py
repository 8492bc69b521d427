"""What a target provides: the precisions it builds and, per precision, a ladder of schemes.

The compile job tries the schemes in order (most aggressive first) and keeps the first whose
compiled graph passes the accuracy gates; each later rung keeps more of the graph in float.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgefm.contract.cache import CompileCache
from edgefm.contract.manifest import ComponentEntry
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


def option(default, help: str, **flag):
    """A field of a target's options dataclass with its command-line flag (see Flag)."""
    return field(default=default, metadata={"flag": Flag(help, **flag)})


def flag_fields(options_class) -> dict[str, Flag]:
    """{field name: Flag} of the options a target shows on the command line."""
    return {f.name: f.metadata["flag"] for f in dataclasses.fields(options_class) if "flag" in f.metadata}


@dataclass(frozen=True)
class Scheme:
    name: str
    params: dict = field(default_factory=dict)


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

    def uses_calibration(self, precision: Precision, scheme: Scheme, options) -> bool:
        """Whether the kept scheme computed anything from the calibration feeds (then the manifest records the
        calibration data): int8 / fp8 with calibrated activation ranges, or a scheme that says `calibrated`."""
        if scheme.params.get("calibrated", False):
            return True
        return precision in (Precision.INT8, Precision.FP8) and scheme.params.get("activations") != "float"

    def runtime_settings(self, precision: Precision, scheme: Scheme, options) -> dict:
        """How the runtime must run the written file to compute what was validated (compute precision, device,
        graph optimizations), stored as the entry's `options.runtime` and read by the runtime module."""
        return {}

    def check_options(self, options, source) -> None:
        """Refuse, before any work, options that do not fit the exported artifact (`source`, its Manifest)."""

    def schemes(self, precision: Precision, options, entry=None) -> list[Scheme]:
        """The ladder for one component (its exported manifest `entry`), most aggressive first."""
        raise NotImplementedError

    def compile(self, request: CompileRequest, options) -> str:
        """Write the compiled graph; return its file name (relative to request.out_dir)."""
        raise NotImplementedError

    def cannot_run_here(self) -> str | None:
        """None when what this target writes can run on this machine, else why not: then the compile gates
        what `validation_session` returns, and runs end-to-end checks on those sessions too."""
        return None

    def validation_session(self, request: CompileRequest, entry: ComponentEntry, options):
        """The session whose outputs are gated against the fp32 export: by default the compiled file itself."""
        from edgefm.runtimes.loader import open_component

        return open_component(request.out_dir, entry, request.component)

    def static_checks(self, request: CompileRequest, entry: ComponentEntry, options) -> list:
        """Checks of the written file that need no runtime (names, shapes, weight storage): a list of Check."""
        return []

    def quantized_layers(self, request: CompileRequest, file: str) -> list[str]:
        """Layers of the written file that compute in reduced precision and that `restore_layers` can put back
        in float, in graph order; empty where the target cannot (then no per-layer search runs)."""
        return []

    def restore_layers(self, request: CompileRequest, file: str, into: CompileRequest, options) -> str:
        """Write into `into.out_dir` the compiled `file` of `request` with the layers `into.scheme.params
        ["float_layers"]` computing in float; return the written file's name."""
        raise NotImplementedError

    def artifact_files(self, manifest, directory: Path) -> dict[str, str]:
        """Files the target adds to a compiled artifact beside its components (name -> text), as assets."""
        return {}

    # -- the optional on-device step: what only the device that will run the artifact can do ------------------
    def after_compile(self, artifact: Path, manifest, allow_below_gate: bool, log: Callable[[str], None]):
        """Right after a compile: run the on-device step when this machine is the device, else log where and how;
        return the artifact's manifest."""
        return manifest

    def on_device(self, artifact: Path, out: Path | None, flags: dict, rebuild: bool, cache: Path | None,
                  against: Path | None, allow_below_gate: bool, overwrite: bool, log: Callable[[str], None]):
        """`edgefm engine`: finish a compiled artifact on the device that will run it (in place, or into `out`),
        gated against the fp32 export there; `flags` holds the values of the options marked `on_device`."""
        from edgefm.contract.errors import EdgefmError

        raise EdgefmError(f"{self.name} artifacts have no on-device step: they run as compiled")

    @property
    def has_on_device_step(self) -> bool:
        return type(self).on_device is not Target.on_device

    def on_device_plan(self, artifact: Path, manifest, flags: dict) -> dict:
        """`edgefm plan`: what the on-device step will build, as JSON-ready data."""
        from edgefm.contract.errors import EdgefmError

        raise EdgefmError(f"{self.name} artifacts have no on-device step, so no plan: they run as compiled")
