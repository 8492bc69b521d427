"""The main job, fully offline: tiny presets -> ONNX -> every target and precision, validated and timed.

What it covers is declared by the plugins: a family with a `demo_variant` is exported; a target compiles its
`demo_precisions` for every such family when `demo_every_family`, else only for the families marked
`demo_on_every_target` (targets whose artifacts run elsewhere: the table shows their static checks and the
accuracy gated here, and a latency only where they run). A family may draw a picture per precision.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def demo_families() -> list:
    from edgefm.contract import registry

    return [f for _, f in sorted(registry.families().items()) if f.demo_variant]


def demo_targets() -> list:
    from edgefm.contract import registry

    chosen = [t for t in registry.targets().values() if t.demo_precisions]
    return sorted(chosen, key=lambda t: (not t.demo_every_family, t.name))


def run_demo(out: Path, log: Callable[[str], None] = print) -> tuple[list, dict]:
    from edgefm.bench.timing import artifact_latencies
    from edgefm.jobs.compile import compile_artifact
    from edgefm.jobs.export import export

    rows, latencies = [], {}
    for family in demo_families():
        exported = out / family.name / "exported"
        rows.append((exported, export(family.name, exported, variant=family.demo_variant, overwrite=True, log=log)))
        latencies.update(artifact_latencies(exported))
        for target in demo_targets():
            if not (target.demo_every_family or family.demo_on_every_target):
                continue
            for precision in target.demo_precisions:
                compiled = out / family.name / f"{target.name}-{precision}"
                # keep below-gate results so the table shows them; the command still exits non-zero
                rows.append((compiled, compile_artifact(exported, target.name, precision, compiled,
                                                        allow_below_gate=True, overwrite=True, log=log)))
                if target.cannot_run_here() is None:
                    latencies.update(artifact_latencies(compiled))
    return rows, latencies


def demo_pictures(out: Path, rows: list) -> list[str]:
    """Each demo family's picture of its compiled artifacts against its export: one line per picture."""
    lines = []
    for family in demo_families():
        compiled = [d for d, m in rows if m.family == family.name and m.stage == "compiled"]
        drawn = family.demo_picture(out / family.name / "exported", compiled, out / family.name)
        if drawn:
            lines.append(f"{drawn[1]}: {drawn[0]}")
    return lines
