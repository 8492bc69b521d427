"""A family's calibration recipe: the data its compile calibrates and validates on, and its task checks.

Each family's module in edgefm.calibration defines one `CalibrationRecipe` object, which the family returns
from `ModelFamily.calibration()`. The compile (core/compile_job.py), `edgefm validate` (core/validate_job.py)
and the end-to-end check (core/pipeline_check.py) call it through these methods only; whatever it computes
once per job (captured feeds, the fp32 export's outputs) goes into the job's `CompileCache`, never into
module state.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefm.contract.cache import CompileCache

if TYPE_CHECKING:
    from edgefm.calibration.data import CalibrationData
    from edgefm.contract.manifest import Manifest
    from edgefm.contract.records import Check

Feeds = list[dict]  # one dict {input name: numpy array} per session run


@dataclass(frozen=True)
class CheckContext:
    """What a component's task checks (`CalibrationRecipe.extra_checks`) measure and against what."""

    component: str  # the component's name in the manifest
    candidate: Any  # the compiled component's session (or a stand-in): anything with run(feeds) -> outputs
    reference: dict  # {component: session of the fp32 export}, every component of the family
    manifest: Manifest  # the fp32 export's manifest
    directory: Path  # the fp32 export's folder (its tokenizer / preprocessor files)
    data: CalibrationData  # calibration and held-out photos / prompts
    gates: dict[str, float]  # {metric: minimum value} for this component and precision
    cache: CompileCache = field(default_factory=CompileCache)  # the job's cache (a fresh one for a one-off call)


class CalibrationRecipe(abc.ABC):
    """The calibration / validation protocol of one model family."""

    @abc.abstractmethod
    def feeds(self, component: str, manifest: Manifest, directory: Path, data: CalibrationData,
              cache: CompileCache | None = None) -> tuple[Feeds, Feeds]:
        """(calibration feeds, held-out feeds) of one component of the fp32 export in `directory`: the
        quantizers calibrate on the first, the compiled component is gated on the second."""

    @abc.abstractmethod
    def extra_checks(self, ctx: CheckContext) -> list[Check]:
        """The component's task-level checks beyond the shared output cosine, one per gate the family
        declares for it besides "cosine" (`ctx.gates`); [] where cosine says it all."""

    def pipeline_checks(self, candidate, reference_dir: Path, data: CalibrationData, gates: dict[str, float],
                        cache: CompileCache | None = None) -> list[Check]:
        """End-to-end checks of the loaded `candidate` artifact (the family's Artifact class) vs the fp32
        export in `reference_dir`, one per pipeline gate (`ModelFamily.pipeline_gates`). Only called for
        families that declare pipeline gates."""
        return []
