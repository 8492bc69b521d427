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

from edgefm.contract.errors import FeedError, GateError
from edgefm.contract.spec import Check, Precision, describe_checks, margin, validation_record


def compile_and_check_pipeline(context) -> tuple[dict, dict]:
    """Compile every component, then gate the pipeline -> ({component: (entry, files_dir)}, the manifest's record).

    A component that cannot reach its own gate in the asked precision is kept in fp32 too (the
    pipeline can still be built, and the reason is recorded) instead of failing the whole compile."""
    precision = context.precision.value
    gates = context.family.pipeline_gates(precision)
    kept_fp32 = context.family.keep_fp32(context.source, precision)  # component -> why
    compiled, fp32 = {}, {}
    for name in context.source.components:
        if name in kept_fp32:
            context.log(f"{name}: kept in fp32 ({kept_fp32[name]})")
            compiled[name] = fp32[name] = context.compile_component(name, Precision.FP32)
            continue
        try:
            compiled[name] = context.compile_component(name, context.precision)
        except GateError as exc:
            context.log(f"{name}: below its own {precision} gate after every scheme; kept in fp32")
            compiled[name] = fp32[name] = context.compile_component(name, Precision.FP32)
            kept_fp32[name] = exc.finding

    unavailable = context.target.cannot_run_here()

    def evaluate(chosen: dict) -> dict:
        trial = _load(context, chosen, unavailable)
        try:
            checks = context.recipe.pipeline_checks(trial, context.artifact, context.data, gates, context.cache)
        except FeedError as exc:  # e.g. a reduced-precision component overflowed: its NaN / Inf reach the next one
            checks = [Check("finite pipeline", 0.0, 1.0, detail={"note": str(exc)})]
        extra = {"measured_with": f"the components' stand-ins ({unavailable})"} if unavailable else {}
        return validation_record(checks, reference="fp32 export (ONNX Runtime), the same pipeline",
                                 inputs=f"held-out {context.data.source}", **extra)

    context.log(f"end to end: {context.family.name} pipeline in {precision} vs the fp32 export")
    record = evaluate(compiled)
    attempts = [_attempt(kept_fp32, record)]
    while not record["passed"]:
        quantized = [name for name, (entry, _) in compiled.items() if entry.precision != Precision.FP32.value]
        if not quantized:
            break
        context.log(f"end to end: {describe_checks(record)} -> below gate; trying each of {', '.join(quantized)} in fp32")
        trials = {}
        for name in quantized:
            if name not in fp32:
                fp32[name] = context.compile_component(name, Precision.FP32)
            trials[name] = evaluate({**compiled, name: fp32[name]})
            attempts.append(_attempt([*kept_fp32, name], trials[name]))
        best = max(trials, key=lambda name: margin(trials[name]))
        kept_fp32[best] = f"end to end: {describe_checks(record)}; with it in fp32: {describe_checks(trials[best])}"
        compiled, record = {**compiled, best: fp32[best]}, trials[best]
        context.log(f"end to end: {best} kept in fp32 -> {describe_checks(record)}")
    if not record["passed"] and not context.allow_below_gate:
        raise GateError(f"the {context.family.name} pipeline in {precision} stays below its gates even with "
                        f"{', '.join(kept_fp32) or 'no component'} in fp32 ({describe_checks(record)}). Try another "
                        "precision, calibrate on your own images with --calib DIR, or keep it anyway with "
                        "--allow-below-gate (recorded in the manifest)")
    context.log(f"end to end: {describe_checks(record)} -> {'pass' if record['passed'] else 'below gate (allowed)'}")
    return compiled, {**record, "precision": precision, "kept_fp32": kept_fp32,
                      "allowed_below_gate": not record["passed"], "attempts": attempts}


def _load(context, chosen: dict, unavailable: str | None):
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


def _attempt(kept_fp32, record: dict) -> dict:
    return {"kept_fp32": list(kept_fp32), "passed": record["passed"],
            "checks": {c["metric"]: c["value"] for c in record["checks"]}}
