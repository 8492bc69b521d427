"""Compare a compiled component with its fp32 reference on held-out real inputs."""
from __future__ import annotations

import numpy as np

from edgefm.compare import cosine_rows
from edgefm.spec import Check, validation_record


def compare_outputs(candidate, reference, feeds: list[dict], gate: float) -> Check:
    """Mean cosine per output over held-out rows; the headline is the worst output."""
    per_output: dict[str, list[np.ndarray]] = {}
    for feed in feeds:
        got, ref = candidate.run(feed), reference.run(feed)
        for name in ref:
            per_output.setdefault(name, []).append(cosine_rows(got[name], ref[name]))
    detail = {name: {"mean": float(np.concatenate(v).mean()), "min": float(np.concatenate(v).min())}
              for name, v in per_output.items()}
    return Check("cosine", min(d["mean"] for d in detail.values()), gate, detail={"outputs": detail})


def validate_component(name: str, candidate, reference: dict, heldout_feeds: list[dict], gates: dict,
                       recipe, manifest, directory, data, static_checks: list | None = None) -> dict:
    """`candidate` is the compiled session, or a stand-in that says what it measured (`measured_with`)."""
    checks = [compare_outputs(candidate, reference[name], heldout_feeds, gates["cosine"])]
    checks += recipe.extra_checks(name, candidate, reference, manifest, directory, data, gates)
    extra = {"measured_with": candidate.measured_with} if getattr(candidate, "measured_with", None) else {}
    return validation_record(checks + list(static_checks or []), reference="fp32 export (ONNX Runtime)",
                             inputs=f"held-out {data.source}", **extra)
