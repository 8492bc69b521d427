"""Compiling a family whose task chains several graphs (SAM 2, SD) with an end-to-end check of the result.

`compile_and_check_pipeline` compiles every component (through the compile's own per-component ladder) and
compiles fp32 fallbacks while it checks, so compiling and checking stay in one loop here.

Per-component gates cannot see how errors compound through a pipeline (a decoder's small logit
error flips mask pixels; memory errors build up frame after frame; UNet errors add up over the
denoising steps). Once every component is compiled (one that cannot reach its own gate in the
asked precision, or that the family pins, is kept in fp32), the family's
pipeline runs on the compiled artifact and on the fp32 export and must pass the family's pipeline
gates. If it does not, reduced-precision components go back to fp32 one at a time, each time the
one whose fp32 version helps most, until it passes; the manifest records which ones, why, and
every figure on the way.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from edgefm.contract.errors import FeedError, GateError
from edgefm.contract.manifest import ComponentEntry
from edgefm.contract.records import Check, PipelineAttempt, PipelineValidation
from edgefm.contract.spec import Precision

if TYPE_CHECKING:
    from pathlib import Path

    from edgefm.jobs.component import CompileContext

Compiled = dict[str, tuple[ComponentEntry, "Path"]]  # component -> (entry, folder of its files)


def compile_and_check_pipeline(context: CompileContext) -> tuple[Compiled, PipelineValidation]:
    """Compile every component, then gate the pipeline -> ({component: (entry, files_dir)}, the manifest's record).

    A component that cannot reach its own gate in the asked precision is kept in fp32 too (the
    pipeline can still be built, and the reason is recorded) instead of failing the whole compile."""
    precision = context.precision.value
    kept_fp32 = context.family.keep_fp32(context.source, precision)  # component -> why
    compiled, fp32 = _compile_components(context, kept_fp32)
    unavailable = context.target.cannot_run_here()
    gates = context.family.pipeline_gates(precision)

    def evaluate(chosen: Compiled) -> PipelineValidation:
        trial = _load(context, chosen, unavailable)
        try:
            checks = context.recipe.pipeline_checks(trial, context.artifact, context.data, gates, context.cache)
        except FeedError as exc:  # e.g. a reduced-precision component overflowed: its NaN / Inf reach the next one
            checks = [Check("finite pipeline", 0.0, 1.0, detail={"note": str(exc)})]
        return PipelineValidation(tuple(checks), precision, reference="fp32 export (ONNX Runtime), the same pipeline",
                                  inputs=f"held-out {context.data.source}",
                                  measured_with=f"the components' stand-ins ({unavailable})" if unavailable else None)

    context.log(f"end to end: {context.family.name} pipeline in {precision} vs the fp32 export")
    record = evaluate(compiled)
    attempts = [_attempt(kept_fp32, record)]
    while not record.passed:
        quantized = [name for name, (entry, _) in compiled.items() if entry.precision != Precision.FP32.value]
        if not quantized:
            break
        context.log(f"end to end: {record.describe()} -> below gate; trying each of {', '.join(quantized)} in fp32")
        trials = {}
        for name in quantized:
            if name not in fp32:
                fp32[name] = context.compile_component(name, Precision.FP32)
            trials[name] = evaluate({**compiled, name: fp32[name]})
            attempts.append(_attempt([*kept_fp32, name], trials[name]))
        best = max(trials, key=lambda name: trials[name].margin)
        kept_fp32[best] = f"end to end: {record.describe()}; with it in fp32: {trials[best].describe()}"
        compiled, record = {**compiled, best: fp32[best]}, trials[best]
        context.log(f"end to end: {best} kept in fp32 -> {record.describe()}")
    if not record.passed and not context.allow_below_gate:
        raise GateError(f"the {context.family.name} pipeline in {precision} stays below its gates even with "
                        f"{', '.join(kept_fp32) or 'no component'} in fp32 ({record.describe()}). Try another "
                        "precision, calibrate on your own images with --calib DIR, or keep it anyway with "
                        "--allow-below-gate (recorded in the manifest)")
    context.log(f"end to end: {record.describe()} -> {'pass' if record.passed else 'below gate (allowed)'}")
    return compiled, dataclasses.replace(record, kept_fp32=kept_fp32, allowed_below_gate=not record.passed,
                                         fallbacks=tuple(attempts))


def _compile_components(context: CompileContext, kept_fp32: dict[str, str]) -> tuple[Compiled, Compiled]:
    """Every component in the asked precision (those the family pins, or that miss their own gate, in fp32):
    (what the pipeline is built from, the fp32 ones compiled so far)."""
    compiled: Compiled = {}
    fp32: Compiled = {}
    for name in context.source.components:
        if name in kept_fp32:
            context.log(f"{name}: kept in fp32 ({kept_fp32[name]})")
            compiled[name] = fp32[name] = context.compile_component(name, Precision.FP32)
            continue
        try:
            compiled[name] = context.compile_component(name, context.precision)
        except GateError as exc:
            context.log(f"{name}: below its own {context.precision.value} gate after every scheme; kept in fp32")
            compiled[name] = fp32[name] = context.compile_component(name, Precision.FP32)
            kept_fp32[name] = exc.finding
    return compiled, fp32


def _load(context: CompileContext, chosen: Compiled, unavailable: str | None) -> Any:
    """The artifact of one evaluation: the chosen components' sessions, opened where their files are, and the
    export's assets. Where the target's files cannot run here (Core ML off Apple systems), its sessions are the
    ones each component was gated with (`Target.validation_session`), under the same task pipeline."""
    from edgefm.runtimes.loader import open_component

    manifest = context.manifest({name: entry for name, (entry, _) in chosen.items()})
    if unavailable:
        sessions = {name: context.stand_ins[files_dir] for name, (_, files_dir) in chosen.items()}
    else:
        sessions = {name: open_component(files_dir, entry, name) for name, (entry, files_dir) in chosen.items()}
    return context.family.artifact_class()(context.artifact, manifest, sessions)


def _attempt(kept_fp32: Iterable[str], record: PipelineValidation) -> PipelineAttempt:
    return PipelineAttempt(tuple(kept_fp32), record.passed, {c.metric: c.value for c in record.checks})
