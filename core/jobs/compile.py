"""`edgefm compile`: exported artifact -> compiled artifact for one target and precision.

Per component the target's scheme ladder is tried in order; each attempt is validated against
the fp32 export on held-out real inputs and the first one that passes its gates is kept.
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from edgefm.contract import registry
from edgefm.calibration.recipe import CheckContext
from edgefm.contract.cache import CompileCache
from edgefm.contract.errors import ArtifactError, EdgefmError, GateError, UnknownChoiceError
from edgefm.contract.manifest import ComponentEntry, Manifest, sha256_file
from edgefm.contract.spec import Precision, describe_checks, margin
from edgefm.contract.staging import staging_dir
from edgefm.jobs.sensitivity import search
from edgefm.jobs.validation import validate_component

if TYPE_CHECKING:
    from edgefm.calibration.data import CalibrationData
    from edgefm.calibration.recipe import CalibrationRecipe
    from edgefm.exporters.base import ModelFamily


def available_target(target_name: str):
    """The target, or a clear error when this machine lacks what compiling for it needs."""
    target = registry.target(target_name)
    reason = target.available()
    if reason:
        raise EdgefmError(f"target {target.name} cannot compile on this machine: {reason}")
    return target


def resolve_target(target_name: str, precision: str):
    target = available_target(target_name)
    chosen = Precision.parse(precision)
    if chosen not in target.precisions:
        raise UnknownChoiceError(f"precision for {target.name}", precision, [p.value for p in target.precisions])
    return target, chosen


def target_options(target_name: str, **values):
    """The target's typed options from command-line values; None means "the target's default"."""
    target = registry.target(target_name)
    fields = {f.name for f in dataclasses.fields(target.options_class)}
    given = {k: v for k, v in values.items() if v is not None}
    foreign = sorted(set(given) - fields)
    if foreign:
        flags = ", ".join("--" + k.replace("_", "-") for k in foreign)
        raise EdgefmError(f"{flags} do(es) not apply to target {target.name}; its options are "
                          f"{', '.join('--' + f.replace('_', '-') for f in sorted(fields))}")
    return target.options_class(**given)


def load_exported(artifact: Path) -> Manifest:
    manifest = Manifest.load(artifact)
    if manifest.stage != "exported":
        raise ArtifactError(f"{artifact} is already compiled ({manifest.stage}); compile the exported artifact "
                            f"it was made from: {(manifest.parent or {}).get('path', '?')}")
    return manifest


def compile_artifact(artifact: Path, target_name: str, precision: str, out: Path, calib_dir: Path | None = None,
                     calib_size: int | None = None, prompts: Path | None = None, options=None,
                     allow_below_gate: bool = False, overwrite: bool = False,
                     log: Callable[[str], None] = print, cache: CompileCache | None = None) -> Manifest:
    """`cache`: what this compile computes once (the fp32 export's sessions, captured feeds, reference
    outputs); a new one by default. A caller compiling the same export several times may pass one."""
    from edgefm.calibration.data import load as load_calibration
    from edgefm.jobs.pipeline_check import compile_and_check_pipeline
    from edgefm.runtimes.loader import open_sessions

    cache = CompileCache() if cache is None else cache
    target, precision = resolve_target(target_name, precision)
    options = options or target.options_class()
    artifact = Path(artifact).resolve()
    with staging_dir(Path(out), overwrite, [artifact, calib_dir, prompts], log) as tmp:
        source = load_exported(artifact)
        target.check_options(options, source)
        family = registry.family(source.family)
        recipe = family.calibration()
        data = load_calibration(calib_dir, calib_size, prompts)
        if data.note:
            log(data.note)
        reference = open_sessions(artifact, source, cache)
        context = _Context(target, options, precision, artifact, tmp, recipe, data, reference, source, family,
                           allow_below_gate, log,
                           {"dir": str(Path(calib_dir).resolve()) if calib_dir else None, "size": data.size,
                            "prompts": str(prompts) if prompts else None}, cache)
        pipeline = None
        if family.pipeline_gates(precision.value):
            compiled, pipeline = compile_and_check_pipeline(context)
        else:
            compiled = {name: context.compile_component(name, precision) for name in source.components}
        for entry, files_dir in compiled.values():
            for name in entry.files():
                shutil.move(str(files_dir / name), tmp / name)
        for name in source.assets:
            shutil.copy2(artifact / name, tmp / name)
        shutil.rmtree(tmp / ".work", ignore_errors=True)
        manifest = context.manifest({name: entry for name, (entry, _) in compiled.items()}, pipeline)
        for name, text in target.artifact_files(manifest, tmp).items():
            (tmp / name).write_text(text)
            manifest.assets[name] = sha256_file(tmp / name)
        manifest.save(tmp)
    return manifest


@dataclasses.dataclass
class _Context:
    target: object
    options: object
    precision: Precision
    artifact: Path
    out_dir: Path
    recipe: CalibrationRecipe
    data: CalibrationData
    reference: dict
    source: Manifest
    family: ModelFamily
    allow_below_gate: bool
    log: Callable[[str], None]
    calibration: dict
    cache: CompileCache
    # attempt dir -> the session it was gated with, for targets whose files cannot run here (end-to-end checks)
    stand_ins: dict = dataclasses.field(default_factory=dict)

    def compile_component(self, name: str, precision: Precision) -> tuple[ComponentEntry, Path]:
        """Walk the target's scheme ladder for one component; the entry and the folder holding its files."""
        from edgefm.targets.base import CompileRequest

        entry = self.source.components[name]
        calib_feeds, heldout = self.recipe.feeds(name, self.source, self.artifact, self.data, self.cache)
        gates = self.family.gates(name, precision.value)
        work = self.out_dir / ".work" / f"{name}-{precision.value}"

        def validate(candidate, static: list) -> dict:
            checked = CheckContext(name, candidate, self.reference, self.source, self.artifact, self.data, gates,
                                   self.cache)
            return validate_component(self.recipe, checked, heldout, static)

        attempts = []
        for index, scheme in enumerate(self.target.schemes(precision, self.options, entry)):
            attempt_dir = work / str(index)
            attempt_dir.mkdir(parents=True)
            self.log(f"{name}: {self.target.name} {precision.value} scheme {scheme.name}")
            request = CompileRequest(name, self.artifact / entry.file, entry, precision, scheme, calib_feeds,
                                     attempt_dir, work, self.cache)
            compiled = self._entry(entry, precision, scheme, self.target.compile(request, self.options), attempt_dir)
            static = self.target.static_checks(request, compiled, self.options)
            broken = [c for c in static if not c.passed]
            if broken:  # a file that is not what was asked: a conversion bug, never kept (not even below gate)
                raise EdgefmError(f"{name}: the {self.target.name} file of scheme {scheme.name} fails its checks ("
                                  + ", ".join(f"{c.metric} {c.value:.4g} (gate {c.gate}) {c.detail}" for c in broken)
                                  + "); this is a conversion problem, please report it with `edgefm --version`")
            candidate = self.target.validation_session(request, compiled, self.options)
            validation = validate(candidate, static)
            attempts.append((scheme, attempt_dir, compiled, validation, request))
            if self.target.cannot_run_here():
                self.stand_ins[attempt_dir] = candidate
            self.log(f"{name}: {describe_checks(validation)} -> {'pass' if validation['passed'] else 'below gate'}")
            if validation["passed"]:
                break
        if not any(a[3]["passed"] for a in attempts):  # then the fewest layers in float that pass, from data
            found = search(self, name, max(attempts, key=lambda a: margin(a[3])), validate)
            if found:
                attempts.append(found[0])
                if self.target.cannot_run_here():
                    self.stand_ins[found[0][1]] = found[1]
        scheme, attempt_dir, compiled, validation, _ = next(
            (a for a in attempts if a[3]["passed"]), max(attempts, key=lambda a: margin(a[3])))
        for _, other_dir, _, _, _ in attempts:  # stand-ins are whole torch models: keep the chosen one only
            if other_dir != attempt_dir:
                self.stand_ins.pop(other_dir, None)
        if not validation["passed"] and not self.allow_below_gate:
            tried = "; ".join(f"{s.name}: {describe_checks(v)}" for s, _, _, v, _ in attempts)
            finding = f"{name} in {precision.value} stays below its gate after every scheme ({tried})"
            raise GateError(f"{finding}. Try another precision, calibrate on your own images with --calib DIR, or "
                            "keep the best attempt anyway with --allow-below-gate (recorded in the manifest)", finding)
        validation["allowed_below_gate"] = not validation["passed"]
        validation["attempts"] = [{"scheme": s.name, "passed": v["passed"], "value": v["value"]}
                                  for s, _, _, v, _ in attempts]
        calibrated = self.target.uses_calibration(precision, scheme, self.options)
        return dataclasses.replace(compiled, validation=validation,
                                   calibration=self.data.record(len(calib_feeds)) if calibrated else None), attempt_dir

    def manifest(self, entries: dict[str, ComponentEntry], pipeline: dict | None = None) -> Manifest:
        return Manifest(
            family=self.source.family, variant=self.source.variant, stage="compiled", components=entries,
            assets=dict(self.source.assets), task=self.source.task, source=self.source.source,
            parent={"path": str(self.artifact), "manifest_sha256": sha256_file(self.artifact / "manifest.json"),
                    "calibration": self.calibration},
            pipeline_validation=pipeline)

    def _entry(self, entry: ComponentEntry, precision: Precision, scheme, file: str, directory: Path) -> ComponentEntry:
        """The manifest entry of one attempt: its files are everything the target wrote into `directory`."""
        data_files = {p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.name != file}
        return dataclasses.replace(
            entry, file=file, sha256=sha256_file(directory / file), runtime=self.target.runtime,
            target=self.target.name, precision=precision.value, data_files=data_files,
            # the scheme's parameters are what was applied: they win over the target's option of the same name
            options={**entry.options, "compile": {**dataclasses.asdict(self.options), "scheme": scheme.name,
                                                  **scheme.params},
                     "runtime": self.target.runtime_settings(precision, scheme, self.options)})
