"""The report of an `edgefm matrix` run: one row per (model, target, precision, device), from what is stored."""
from __future__ import annotations

from pathlib import Path

from edgefm import __version__
from edgefm.contract.records import Check


def task_metric(checks: list[dict]) -> dict | None:
    """The check a model's user would feel, with the least margin over its gate: the end-to-end (pipeline) checks
    when the family has them, else the task checks (not a tensor distance such as cosine), else any check."""
    candidates = ([c for c in checks if c["component"] == "pipeline"] or [c for c in checks if c["metric"] != "cosine"]
                  or checks)
    if not candidates:
        return None

    worst = min(candidates, key=lambda check: Check.from_json(check).margin)
    return {k: worst[k] for k in ("metric", "value", "gate", "passed")} | {"component": worst["component"]}


def bench_figures(bench: list[dict]) -> dict:
    """All components once at the smallest batch (summed medians), throughput at the largest batch every
    component ran, the largest peak memory, the artifact's size."""
    batches = sorted({r["batch"] for r in bench})
    components = {r["component"] for r in bench}
    at = lambda b: [r for r in bench if r["batch"] == b]  # noqa: E731
    full = [b for b in batches if {r["component"] for r in at(b)} == components]
    smallest, largest = (full[0], full[-1]) if full else (None, None)
    return {"latency_ms": sum(r["median_ms"] for r in at(smallest)) if smallest else None,
            "items_per_s": largest * 1e3 / sum(r["median_ms"] for r in at(largest)) if largest else None,
            "peak_rss_mib": max((r["peak_rss_mib"] for r in bench if r["peak_rss_mib"]), default=None),
            "size_mib": sum(r["size_mib"] for r in at(smallest)) if smallest else None}


def _row(run, row, workers: dict) -> dict:
    model, target = run.spec.models[row.model], run.spec.targets[row.target]
    base = {"model": model.label, "family": model.family, "variant": model.variant, "weights_sha256": None,
            "random_weights": model.random_weights,
            "target": target.name, "precision": row.precision, "device": row.device, "worker": None,
            "key": row.build_key, "artifact": None, "size_mib": None, "status": "failed", "error": row.error,
            "latency_ms": None, "items_per_s": None, "peak_rss_mib": None, "task_metric": None, "checks": [],
            "bench": [], "hardware": None, "stages": {}}
    stages = base["stages"]
    if row.export_dir is not None:
        manifest_source = run.store.read_json(row.export_dir / "manifest.json")["source"]
        base["weights_sha256"] = manifest_source["weights_sha256"]
        base["random_weights"] = manifest_source["random_weights"]
        stages["export"] = _artifact_stage(run, row.export_dir, workers)
    if row.artifact_dir is not None:
        base["artifact"] = str(row.artifact_dir.relative_to(run.store.out))
        stages["compile"] = _artifact_stage(run, run.store.artifact_dir("builds", row.build_key), workers)
        if row.artifact_dir.parent.name != "builds":
            stages["on_device"] = _artifact_stage(run, row.artifact_dir, workers)
    stored = {step: run.store.read_json(path) for step, path in row.results.items()}
    for step, data in stored.items():
        if data:
            stages[step] = _stage(run, row.results[step], data["record"], workers)
    if row.error or not all(stored.get(step) for step in ("validate", "bench")):
        base["error"] = base["error"] or "not finished"
        return base
    checks, bench = stored["validate"]["result"]["checks"], stored["bench"]["result"]
    base.update(bench_figures(bench["bench"]), checks=checks, bench=bench["bench"], hardware=bench["hardware"],
                worker=stored["bench"]["record"]["worker"], task_metric=task_metric(checks), error=None,
                status="ok" if all(c["passed"] for c in checks) else "below gate")
    return base


def _artifact_stage(run, directory: Path, workers: dict) -> dict:
    return _stage(run, directory, run.store.read_json(directory.with_suffix(".json")), workers)


def _stage(run, path: Path, record: dict | None, workers: dict) -> dict:
    """A step's figures for its row; its worker's hardware block joins `workers`."""
    record = record or {}
    if record.get("worker") and record.get("hardware"):
        worker = workers.setdefault(record["worker"], {"node": record["node"], "device_kinds": [],
                                                       "hardware": {**record["hardware"], "libraries": {}}})
        worker["hardware"]["libraries"].update(record["hardware"]["libraries"])  # each step names its own
    return {"built": path in run.built, "seconds": record.get("seconds"), "peak_rss_mib": record.get("peak_rss_mib"),
            "worker": record.get("worker"), "attempts": record.get("attempts")}


def build_report(run, nodes, started: str, seconds: float) -> dict:
    from datetime import datetime, timezone

    workers: dict = {}  # the workers the rows' steps ran on
    rows = [_row(run, row, workers) for row in run.rows]
    kinds = {n.id: sorted(n.kinds) for n in nodes}
    for worker_id, worker in workers.items():
        worker["device_kinds"] = kinds.get(worker_id, [])
    return {"title": "edgefm matrix", "spec": Path(run.spec.path).name, "started": started,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seconds": seconds,
            "edgefm_version": __version__, "counts": dict(run.counts),
            "workers": workers,
            "rows": rows, "errors": [f"{r['model']} {r['target']} {r['precision']} on {r['device']}: {r['error']}"
                                     for r in rows if r["error"]]}
