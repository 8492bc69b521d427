"""The steps of `edgefm matrix`, as they run inside a Ray worker: export, compile, on-device, validate, bench.

Workers share no filesystem with the driver: an artifact travels as an uncompressed tar in Ray's object
store, is unpacked into the task's scratch folder with tarfile's `data` filter (no links out, no absolute
paths) and verified against its manifest's hashes before use, like any artifact from elsewhere.
"""
from __future__ import annotations

import io
import os
import socket
import tarfile
import tempfile
import time
from pathlib import Path

from edgefm.contract.errors import ArtifactError, EdgefmError


def pack(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(Path(directory).rglob("*")):
            tar.add(path, arcname=str(path.relative_to(directory)), recursive=False)
    return buffer.getvalue()


def unpack(data: bytes, directory: Path):
    """Unpack an artifact's tar into `directory` (new or empty) and verify it: its Manifest."""
    from edgefm.contract.manifest import Manifest

    if not hasattr(tarfile, "data_filter"):
        raise EdgefmError("edgefm matrix needs Python >= 3.10.12 / 3.11.4 (tarfile's data filter); upgrade Python")
    directory.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            tar.extractall(directory, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise ArtifactError(f"an artifact sent between workers did not unpack ({exc}); re-run the matrix") from None
    return Manifest.load(directory)


def _attempt(run_id: str, key: str) -> int:
    """Which attempt at this task this is, on this node: Ray retries a task whose worker died, but tells the
    task nothing, so each attempt leaves a mark in the node's Ray temp folder (holding its process id)."""
    import ray

    marks = Path(ray.get_runtime_context().get_temp_dir()) / "edgefm-attempts" / run_id
    marks.mkdir(parents=True, exist_ok=True)
    count = len(list(marks.glob(f"{key}.*"))) + 1
    (marks / f"{key}.{count}").write_text(str(os.getpid()))
    return count


def run_step(step: str, job: dict, names: list[str], *tars: bytes) -> dict:
    """Run one step in a scratch folder: {"files": the written artifact's tar or None, "result": what the step
    measured, "record": where and how it ran}. An EdgefmError becomes {"error": message}: a task that fails
    for a reason Ray cannot fix by retrying returns it rather than raising."""
    import ray

    from edgefm.bench.hardware import describe
    from edgefm.bench.timing import peak_rss_mib

    start = time.perf_counter()
    attempt = _attempt(job["run_id"], f"{step}-{job['key']}")
    files, result, error = None, None, None
    with tempfile.TemporaryDirectory(prefix=f"edgefm-{step}-") as scratch:
        scratch = Path(scratch)
        try:
            unpacked = {name: scratch / name for name in names}
            for name, data in zip(names, tars):
                unpack(data, unpacked[name])
            result = STEPS[step](job, unpacked, scratch / "out")
            if (scratch / "out").is_dir():
                files = pack(scratch / "out")
        except EdgefmError as exc:
            error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    record = {"worker": ray.get_runtime_context().get_node_id()[:12], "node": socket.gethostname(),
              "seconds": time.perf_counter() - start, "peak_rss_mib": peak_rss_mib(), "attempts": attempt,
              "pid": os.getpid(), "hardware": describe(None, job.get("runtimes", []))}
    return {"files": files, "result": result, "error": error, "record": record}


def _quiet(message: str) -> None:
    pass  # the driver shows progress per task; a step's own log lines would interleave across workers


def _export(job: dict, inputs: dict, out: Path):
    from edgefm.exporters.base import ExportOptions
    from edgefm.jobs.export import export

    model = job["model"]
    export(model["family"], out, model=model["model"], variant=model["variant"],
           random_weights=model["random_weights"], options=ExportOptions(resolution=model["resolution"]), log=_quiet)
    return None


def _compile(job: dict, inputs: dict, out: Path):
    from edgefm.jobs.compile import compile_artifact, target_options

    options = target_options(job["target"], **job["options"])
    # the on-device step is its own task, on the device kind the spec names
    compile_artifact(inputs["exported"], job["target"], job["precision"], out, options=options,
                     allow_below_gate=True, on_device="deferred", log=_quiet)
    return None


def _on_device(job: dict, inputs: dict, out: Path):
    from edgefm.jobs.on_device import run_on_device

    run_on_device(inputs["compiled"], out=out, against=inputs["exported"], allow_below_gate=True, log=_quiet)
    return None


def _validate(job: dict, inputs: dict, out: Path):
    """The compiled artifact's checks re-run on the device's runtime, against the fp32 export."""
    from edgefm.jobs.validate import validate

    manifest = validate(inputs["compiled"], against=inputs["exported"], log=_quiet)
    found = [(name, check) for name, entry in manifest.components.items() if entry.validation
             for check in entry.validation.checks]
    if manifest.pipeline_validation:
        found += [("pipeline", check) for check in manifest.pipeline_validation.checks]
    return {"checks": [{"component": name, "metric": c.metric, "value": c.value, "gate": c.gate, "passed": c.passed,
                        "higher_is_better": c.higher_is_better} for name, c in found]}


def _bench(job: dict, inputs: dict, out: Path):
    from edgefm.bench.runner import run_bench

    report = run_bench([inputs["compiled"]], job["batch_sizes"], job["warmup"], job["iters"], None)
    if report["errors"]:
        raise EdgefmError(report["errors"][0])
    keep = ("component", "batch", "median_ms", "p90_ms", "p99_ms", "items_per_s", "load_s", "peak_rss_mib", "size_mib")
    return {"bench": [{k: r[k] for k in keep} for r in report["results"]], "hardware": report["hardware"]}


STEPS = {"export": _export, "compile": _compile, "on_device": _on_device, "validate": _validate, "bench": _bench}
