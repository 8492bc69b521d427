"""One component through a target's scheme ladder: compile each scheme, gate it on held-out inputs against the
fp32 export, keep the first that passes; when none does, the fewest layers back in float (jobs.sensitivity)."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefm.calibration.recipe import CheckContext
from edgefm.contract.cache import CompileCache
from edgefm.contract.errors import EdgefmError, GateError
from edgefm.contract.manifest import ComponentEntry, Manifest, sha256_file
from edgefm.contract.records import Attempt, Check, PipelineValidation, Validation
from edgefm.contract.spec import Precision
from edgefm.jobs.validation import validate_component
from edgefm.targets.base import CompileRequest, Scheme, Target

if TYPE_CHECKING:
    from edgefm.calibration.data import CalibrationData
    from edgefm.calibration.recipe import CalibrationRecipe
    from edgefm.exporters.base import ModelFamily

Validator = Callable[[Any, list[Check]], Validation]  # (candidate session, static checks) -> its validation


@dataclass
class Tried:
    """One compiled attempt of a component: its scheme, the folder of its files, its entry, its validation."""

    scheme: Scheme
    directory: Path
    entry: ComponentEntry
    validation: Validation
    request: CompileRequest


@dataclass
class CompileContext:
    """What every component of one compile shares (the export, its reference sessions, the data, the target)."""

    target: Target
    options: Any  # the target's options dataclass
    precision: Precision
    artifact: Path  # the fp32 export
    out_dir: Path  # the staging folder of the compiled artifact
    source: Manifest  # the export's manifest
    family: ModelFamily
    recipe: CalibrationRecipe
    data: CalibrationData
    reference: dict[str, Any]  # component -> session of the fp32 export
    calibration: dict[str, Any]  # the manifest's parent.calibration block: what the data came from
    allow_below_gate: bool = False
    log: Callable[[str], None] = print
    cache: CompileCache = field(default_factory=CompileCache)
    # attempt dir -> the session it was gated with, for targets whose files cannot run here (end-to-end checks)
    stand_ins: dict[Path, Any] = field(default_factory=dict)

    def compile_component(self, name: str, precision: Precision) -> tuple[ComponentEntry, Path]:
        """Walk the target's scheme ladder for one component; the kept entry and the folder holding its files."""
        from edgefm.jobs.sensitivity import search

        calib_feeds, heldout = self.recipe.feeds(name, self.source, self.artifact, self.data, self.cache)
        gates = self.family.gates(name, precision.value)

        def validate(candidate: Any, static: list[Check]) -> Validation:
            checked = CheckContext(name, candidate, self.reference, self.source, self.artifact, self.data, gates,
                                   self.cache)
            return validate_component(self.recipe, checked, heldout, static)

        attempts = self._ladder(name, precision, calib_feeds, validate)
        if not any(a.validation.passed for a in attempts):  # then the fewest layers in float that pass, from data
            found = search(self, name, max(attempts, key=lambda a: a.validation.margin), validate)
            if found:
                attempts.append(found[0])
                self._keep_stand_in(found[0].directory, found[1])
        kept = next((a for a in attempts if a.validation.passed), max(attempts, key=lambda a: a.validation.margin))
        for other in attempts:  # stand-ins are whole torch models: keep the chosen one only
            if other.directory != kept.directory:
                self.stand_ins.pop(other.directory, None)
        if not kept.validation.passed and not self.allow_below_gate:
            tried = "; ".join(f"{a.scheme.name}: {a.validation.describe()}" for a in attempts)
            finding = f"{name} in {precision.value} stays below its gate after every scheme ({tried})"
            raise GateError(f"{finding}. Try another precision, calibrate on your own images with --calib DIR, or "
                            "keep the best attempt anyway with --allow-below-gate (recorded in the manifest)", finding)
        validation = dataclasses.replace(
            kept.validation, allowed_below_gate=not kept.validation.passed,
            attempts=tuple(Attempt(a.scheme.name, a.validation.passed, a.validation.value) for a in attempts))
        calibrated = self.target.uses_calibration(precision, kept.scheme, self.options)
        record = self.data.record(len(calib_feeds)) if calibrated else None
        return dataclasses.replace(kept.entry, validation=validation, calibration=record), kept.directory

    def _ladder(self, name: str, precision: Precision, calib_feeds: list[dict], validate: Validator) -> list[Tried]:
        """Each scheme in the target's order until one passes its gates."""
        entry = self.source.components[name]
        work = self.out_dir / ".work" / f"{name}-{precision.value}"
        attempts: list[Tried] = []
        for index, scheme in enumerate(self.target.schemes(precision, self.options, entry)):
            attempt_dir = work / str(index)
            attempt_dir.mkdir(parents=True)
            self.log(f"{name}: {self.target.name} {precision.value} scheme {scheme.name}")
            request = CompileRequest(name, self.artifact / entry.file, entry, precision, scheme, calib_feeds,
                                     attempt_dir, work, self.cache)
            compiled = self.entry_for(request, self.target.compile(request, self.options))
            static = self.target.static_checks(request, compiled, self.options)
            refuse_broken(name, f"the {self.target.name} file of scheme {scheme.name}", static)
            candidate = self.target.validation_session(request, compiled, self.options)
            validation = validate(candidate, static)
            attempts.append(Tried(scheme, attempt_dir, compiled, validation, request))
            self._keep_stand_in(attempt_dir, candidate)
            self.log(f"{name}: {validation.describe()} -> {'pass' if validation.passed else 'below gate'}")
            if validation.passed:
                break
        return attempts

    def _keep_stand_in(self, directory: Path, session: Any) -> None:
        if self.target.cannot_run_here():
            self.stand_ins[directory] = session

    def entry_for(self, request: CompileRequest, file: str) -> ComponentEntry:
        """The manifest entry of one attempt: its files are everything the target wrote into its folder."""
        directory, scheme = request.out_dir, request.scheme
        data_files = {p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.name != file}
        return dataclasses.replace(
            request.entry, file=file, sha256=sha256_file(directory / file), runtime=self.target.runtime,
            target=self.target.name, precision=request.precision.value, data_files=data_files,
            # the scheme's parameters are what was applied: they win over the target's option of the same name
            options={**request.entry.options,
                     "compile": {**dataclasses.asdict(self.options), "scheme": scheme.name, **scheme.params},
                     "runtime": self.target.runtime_settings(request.precision, scheme, self.options)})

    def manifest(self, entries: dict[str, ComponentEntry], pipeline: PipelineValidation | None = None) -> Manifest:
        return Manifest(
            family=self.source.family, variant=self.source.variant, stage="compiled", components=entries,
            assets=dict(self.source.assets), task=self.source.task, source=self.source.source,
            parent={"path": str(self.artifact), "manifest_sha256": sha256_file(self.artifact / "manifest.json"),
                    "calibration": self.calibration},
            pipeline_validation=pipeline)


def refuse_broken(name: str, what: str, static: list[Check]) -> None:
    """A file that is not what was asked (its static checks fail) is a conversion bug, never kept (not even
    below gate)."""
    broken = [c for c in static if not c.passed]
    if broken:
        raise EdgefmError(f"{name}: {what} fails its checks ("
                          + ", ".join(f"{c.metric} {c.value:.4g} (gate {c.gate}) {dict(c.detail) or ''}".rstrip()
                                      for c in broken)
                          + "); this is a conversion problem, please report it with `edgefm --version`")
