"""Compare a compiled component with its fp32 reference on held-out real inputs."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from edgefm.contract.compare import cosine_rows
from edgefm.contract.records import Check, Validation

if TYPE_CHECKING:
    from edgefm.calibration.recipe import CalibrationRecipe, CheckContext


def compare_outputs(candidate: Any, reference: Any, feeds: list[dict], gate: float) -> Check:
    """Mean cosine per output over held-out rows; the headline is the worst output."""
    per_output: dict[str, list[np.ndarray]] = {}
    for feed in feeds:
        got, ref = candidate.run(feed), reference.run(feed)
        for name in ref:
            per_output.setdefault(name, []).append(cosine_rows(got[name], ref[name]))
    detail = {name: {"mean": float(np.concatenate(v).mean()), "min": float(np.concatenate(v).min())}
              for name, v in per_output.items()}
    return Check("cosine", min(d["mean"] for d in detail.values()), gate, detail={"outputs": detail})


def validate_component(recipe: CalibrationRecipe, ctx: CheckContext, heldout_feeds: list[dict],
                       static_checks: list[Check] | None = None) -> Validation:
    """The validation record of `ctx.candidate`: output cosine on `heldout_feeds` plus the recipe's task checks.
    The candidate is the compiled session, or a stand-in that says what it measured (`Session.measured_with`)."""
    checks = [compare_outputs(ctx.candidate, ctx.reference[ctx.component], heldout_feeds, ctx.gates["cosine"])]
    checks += recipe.extra_checks(ctx)
    return Validation(tuple(checks + list(static_checks or [])), reference="fp32 export (ONNX Runtime)",
                      inputs=f"held-out {ctx.data.source}", measured_with=ctx.candidate.measured_with or None)
