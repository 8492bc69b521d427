"""What a target provides: the precisions it builds and, per precision, a ladder of schemes.

The compile job tries the schemes in order (most aggressive first) and keeps the first whose
compiled graph passes the accuracy gates; each later rung keeps more of the graph in float.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgefm.manifest import ComponentEntry
from edgefm.spec import Precision


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


def first_and_last(names: list[str]) -> list[str]:
    """The end layers of a ViT (patch embedding, projection): the usual ones to keep in float."""
    return sorted({names[0], names[-1]}) if names else []


class Target:
    name: str = ""
    runtime: str = ""  # the edgefm.runtimes module that loads what this target writes
    precisions: tuple[Precision, ...] = ()
    default_precision: Precision = Precision.FP32  # what `--precision` means when not given
    options_class: type = object
    requires: tuple[str, ...] = ()  # modules compiling needs (all in the `build` extra)

    def available(self) -> str | None:
        """None when this machine can compile for the target, else the reason it cannot."""
        import importlib

        for module in self.requires:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                return f"{exc.name} is not installed (pip install 'edgefm[build]')"
        return None

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
