"""`edgefm matrix SPEC`: every export, compile, on-device step, validation and benchmark of a spec as Ray tasks.

Ray schedules (resources, retries of tasks whose worker died, cancellation); this module only decides what
runs where and what is already done:
- export and compile run on any worker, asking for the memory the model measurably needed before (an estimate
  from file sizes until then);
- the on-device step, validation and benchmark of a target listed with `devices` run on workers advertising
  the Ray resource `edgefm-device:KIND`, plus the target's `device_resources` (a GPU for engines); a benchmark
  holds as many CPUs as the smallest worker of its kind has (all, on equal workers), so no build shares the
  machine while it times;
- each task runs in a fresh worker process (max_calls=1), so its measured peak memory is its own;
- outputs are kept in --out by key (edgefm.matrix.store), so a re-run submits only what is missing.
"""
from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from edgefm import __version__
from edgefm.contract import registry
from edgefm.contract.errors import EdgefmError
from edgefm.matrix.spec import MatrixSpec, SpecError
from edgefm.matrix.store import Store, build_key, digest, export_key, write_json

RESOURCE = "edgefm-device:"
ANY = "any"  # the device of a target listed without `devices`: whichever worker is free
GIB = 2**30
RETRIES = 2  # attempts after the first, for a task whose worker process or node died


@dataclass(frozen=True)
class Node:
    id: str
    host: str
    cpus: float
    memory: float  # bytes Ray may hand to tasks
    gpus: float
    kinds: frozenset


def connect(address: str | None, device_kinds: tuple[str, ...]) -> bool:
    """Join `address`, or start a Ray instance on this machine offering `device_kinds`; True when this call
    started it (and so must shut it down)."""
    if not address:
        # Ray's switch for laptops: its own instance listens and talks on the loopback address only (set before
        # Ray is imported, which reads it); else it picks this machine's network address and is reachable there
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise EdgefmError("edgefm matrix runs on Ray: pip install 'edgefm[matrix]'") from None
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        return False
    ray.init(num_cpus=os.cpu_count(), resources={RESOURCE + kind: 1 for kind in device_kinds},
             include_dashboard=False, logging_level=logging.ERROR,
             log_to_driver=False, object_store_memory=2 * GIB)
    return True


def cluster() -> list[Node]:
    import ray

    return [Node(n["NodeID"][:12], n.get("NodeManagerHostname") or n["NodeManagerAddress"],
                 n["Resources"].get("CPU", 0), n["Resources"].get("memory", 0), n["Resources"].get("GPU", 0),
                 frozenset(k[len(RESOURCE):] for k in n["Resources"] if k.startswith(RESOURCE)))
            for n in ray.nodes() if n["Alive"]]


def offering(nodes: list[Node], device: str, needs: dict) -> list[Node]:
    return [n for n in nodes if (device == ANY or device in n.kinds) and n.gpus >= needs.get("GPU", 0)]


def preflight(spec: MatrixSpec, nodes: list[Node]) -> None:
    """Refuse, before any task, a spec this cluster cannot run: a device kind no worker offers (or offers without
    what the target needs there), a model whose stated memory no worker has."""
    kinds = sorted({kind for n in nodes for kind in n.kinds}) or ["none"]
    for target in spec.targets:
        needs = registry.target(target.name).device_resources
        for device in target.devices or (ANY,):
            if not offering(nodes, device, {}):
                raise SpecError(f"{spec.where(target.devices_line)}: device kind {device!r} is offered by no worker "
                                f"(workers offer: {', '.join(kinds)}); start one with `ray start --address HEAD "
                                f"--resources '{{\"{RESOURCE}{device}\": 1}}'`, or for the instance edgefm starts "
                                f"here pass --device-kind {device}")
            if not offering(nodes, device, needs):
                raise SpecError(f"{spec.where(target.devices_line)}: {target.name} needs {needs} on its device, and no "
                                f"worker of kind {device!r} offers it; add such a worker or drop the target")
    largest = max(n.memory for n in nodes)
    for model in spec.models:
        if model.memory_gb and model.memory_gb * GIB > largest:
            raise SpecError(f"{spec.where(model.line)}: {model.label} needs {model.memory_gb:g} GiB (memory_gb) and "
                            f"the largest worker offers Ray tasks {largest / GIB:.1f} GiB; add a larger worker or "
                            "lower memory_gb if that is too much")


def _size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


@dataclass
class _Row:
    """One (model, target, precision, device): where its outputs are, or why it has none."""
    model: int
    target: int
    precision: str
    device: str
    export_dir: Path | None = None
    build_key: str | None = None
    artifact_dir: Path | None = None
    error: str | None = None
    results: dict = field(default_factory=dict)  # "validate" / "bench" -> path of the stored result


class MatrixRun:
    def __init__(self, spec: MatrixSpec, store: Store, nodes: list[Node], progress: Callable | None = None):
        self.spec, self.store, self.nodes, self.progress = spec, store, nodes, progress
        self.run_id = uuid.uuid4().hex[:12]
        self.pending: dict = {}  # ObjectRef -> (step, label, on_done)
        self.packed: dict = {}  # artifact folder -> ObjectRef of its tar, put once for every task that needs it
        self.built: set[Path] = set()  # outputs this run wrote (the rest were reused)
        self.counts = {"tasks_run": 0, "tasks_reused": 0, "failed": 0, "retried": 0}
        self.remote = None  # run_step as a Ray task, made once
        self.rows = [_Row(m, t, p, d) for m in range(len(spec.models)) for t, target in enumerate(spec.targets)
                     for p in target.precisions for d in (target.devices or (ANY,))]
        self.bench_settings = {"batch_sizes": spec.batch_sizes, "iters": spec.iters, "warmup": spec.warmup}

    # --- submitting ---------------------------------------------------------------------------------------
    def _put(self, directory: Path):
        import ray

        from edgefm.matrix.tasks import pack

        if directory not in self.packed:
            self.packed[directory] = ray.put(pack(directory))
        return self.packed[directory]

    def _submit(self, step: str, key: str, job: dict, inputs: dict[str, Path], on_done, memory: float,
                device: str | None = None, target=None) -> None:
        import ray

        from edgefm.matrix.tasks import run_step

        resources, cpus, gpus = {}, 1, 0
        candidates = self.nodes
        if device is not None:  # a step on the device that runs the artifact
            needs = registry.target(target.name).device_resources
            candidates = offering(self.nodes, device, needs)
            gpus = needs.get("GPU", 0)
            resources = {RESOURCE + device: 1} if device != ANY else {}
            resources.update({k: v for k, v in needs.items() if k != "GPU"})
            if step == "bench":
                cpus = min(n.cpus for n in candidates)
        memory = min(memory, max(n.memory for n in candidates))  # an estimate never asks more than a worker has
        if self.remote is None:
            self.remote = ray.remote(max_calls=1)(run_step)
        remote = self.remote.options(name=f"edgefm-{step}", num_cpus=cpus, num_gpus=gpus, memory=int(memory),
                                     resources=resources, max_retries=RETRIES, retry_exceptions=False)
        runtimes = [registry.target(target.name).runtime] if target else []
        # the tars go as top-level arguments: Ray resolves those refs into bytes, not refs nested in a dict
        ref = remote.remote(step, {**job, "key": key, "run_id": self.run_id, "runtimes": runtimes}, list(inputs),
                            *[self._put(path) for path in inputs.values()])
        self.pending[ref] = (step, job.get("label", ""), on_done)
        self._show(f"running {step} {job.get('label', '')}")

    def _show(self, label: str, finished: bool = False) -> None:
        """`progress(label, done, total, finished)`: finished=True for a line worth keeping (a task ended)."""
        if self.progress:
            done = self.counts["tasks_run"] + self.counts["failed"]
            self.progress(label, done, done + len(self.pending), finished)

    # --- the graph ------------------------------------------------------------------------------------------
    def start(self) -> None:
        for index, model in enumerate(self.spec.models):
            directory = self.store.artifact_dir("exports", export_key(model))
            manifest = self.store.has_artifact(directory)
            if manifest:
                self.counts["tasks_reused"] += 1
                self._exported(index, directory, manifest)
                continue
            record = self.store.read_json(directory.with_suffix(".json"))
            memory = (model.memory_gb or 0) * GIB or _measured(record) or (
                4 * _size(Path(model.model)) + GIB if model.model and Path(model.model).is_dir() else 2 * GIB)
            self._submit("export", directory.name, {"model": asdict(model), "label": model.label}, {},
                         lambda out, i=index, d=directory: self._export_done(i, d, out), memory)

    def _saved(self, step: str, rows: list[_Row], directory: Path, out: dict, **record):
        """Store the artifact a step sent back: its manifest, or None when the step failed (its rows say why)."""
        if self._failed(out, step, rows):
            return None
        manifest = self.store.save_artifact(directory, out["files"], {**out["record"], "step": step, **record})
        self.built.add(directory)
        return manifest

    def _export_done(self, index: int, directory: Path, out: dict) -> None:
        manifest = self._saved("export", [r for r in self.rows if r.model == index], directory, out)
        if manifest:
            self._exported(index, directory, manifest)

    def _exported(self, index: int, export_dir: Path, manifest) -> None:
        model = self.spec.models[index]
        builds = self.store.out / "builds"  # compiles of this export measured in earlier runs size the new ones
        measured = max((_measured(r) for r in map(self.store.read_json, builds.glob("*.json"))
                        if r and r.get("export") == export_dir.name), default=0)
        for t, target in enumerate(self.spec.targets):
            for precision in target.precisions:
                rows = [r for r in self.rows if (r.model, r.target, r.precision) == (index, t, precision)]
                key = build_key(manifest, target.name, precision, target.options)
                for row in rows:
                    row.export_dir, row.build_key = export_dir, key
                directory = self.store.artifact_dir("builds", key)
                if self.store.has_artifact(directory):
                    self.counts["tasks_reused"] += 1
                    self._compiled(rows, directory)
                    continue
                memory = (model.memory_gb or 0) * GIB or measured or GIB + 8 * _size(export_dir)
                job = {"target": target.name, "precision": precision, "options": target.options,
                       "label": f"{model.label} {target.name} {precision}"}
                self._submit("compile", key, job, {"exported": export_dir},
                             lambda out, rows=rows, d=directory, e=export_dir: self._compile_done(rows, d, e, out),
                             memory)

    def _compile_done(self, rows: list[_Row], directory: Path, export_dir: Path, out: dict) -> None:
        if self._saved("compile", rows, directory, out, export=export_dir.name):
            self._compiled(rows, directory)

    def _compiled(self, rows: list[_Row], build_dir: Path) -> None:
        for row in rows:
            target = self.spec.targets[row.target]
            if not registry.target(target.name).has_on_device_step:
                self._on_device_ready(row, build_dir)
                continue
            directory = self.store.artifact_dir("devices", row.build_key, row.device)
            if self.store.has_artifact(directory):
                self.counts["tasks_reused"] += 1
                self._on_device_ready(row, directory)
                continue
            self._submit("on_device", row.build_key, {"target": target.name, "label": self._label(row)},
                         {"compiled": build_dir, "exported": row.export_dir},
                         lambda out, row=row, d=directory: self._on_device_done(row, d, out),
                         GIB + 4 * _size(build_dir), row.device, target)

    def _on_device_done(self, row: _Row, directory: Path, out: dict) -> None:
        if self._saved("on_device", [row], directory, out):
            self._on_device_ready(row, directory)

    def _on_device_ready(self, row: _Row, artifact_dir: Path) -> None:
        row.artifact_dir = artifact_dir
        target = self.spec.targets[row.target]
        memory = GIB + 4 * _size(artifact_dir)
        for step, what, inputs in (("validate", "validate", {"compiled": artifact_dir, "exported": row.export_dir}),
                                   ("bench", f"bench-{digest(self.bench_settings)}", {"compiled": artifact_dir})):
            path = self.store.result_path(row.device, row.build_key, what)
            row.results[step] = path
            if self.store.read_json(path):
                self.counts["tasks_reused"] += 1
                continue
            job = {**self.bench_settings, "label": self._label(row)}
            self._submit(step, f"{row.build_key}-{row.device}", job, inputs,
                         lambda out, row=row, p=path, s=step: self._result_done(row, s, p, out),
                         memory, row.device, target)

    def _result_done(self, row: _Row, step: str, path: Path, out: dict) -> None:
        if self._failed(out, step, [row]):
            return
        write_json(path, {"result": out["result"], "record": {**out["record"], "step": step}})
        self.built.add(path)

    def _failed(self, out: dict, step: str, rows: list[_Row]) -> bool:
        record = out.get("record") or {}
        if record:
            self.counts["retried"] += record["attempts"] - 1
        version = record.get("hardware", {}).get("libraries", {}).get("edgefm")
        if version and version != __version__ and not out.get("error"):  # its outputs would not match their keys
            out["error"] = (f"worker {record['node']} runs edgefm {version} and this driver {__version__}; install "
                            "the same edgefm on every worker")
        if not out.get("error"):
            self.counts["tasks_run"] += 1
            return False
        self.counts["failed"] += 1
        for row in rows:
            row.error = row.error or f"{step} failed: {out['error']}"
        return True

    def _label(self, row: _Row) -> str:
        target = self.spec.targets[row.target]
        return f"{self.spec.models[row.model].label} {target.name} {row.precision} on {row.device}"

    # --- running ----------------------------------------------------------------------------------------------
    def run(self) -> None:
        import ray
        from ray.exceptions import RayError

        try:
            self.start()
            while self.pending:
                (ref,), _ = ray.wait(list(self.pending), num_returns=1)
                step, label, on_done = self.pending.pop(ref)
                try:
                    out = ray.get(ref)
                except RayError as exc:  # retries spent, node lost, or a bug: the message's first line says which
                    out = {"error": f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[-1][:300]}"}
                on_done(out)
                self._show(_finished_line(step, label, out), finished=True)
        except KeyboardInterrupt:
            self._cancel()
            raise EdgefmError(f"interrupted: {len(self.pending)} unfinished task(s) cancelled; finished outputs are "
                              f"kept in {self.store.out}, and running the same matrix again picks up from them"
                              ) from None
        except BaseException:  # e.g. an output another program holds: no task may go on unwatched on a cluster
            self._cancel()
            raise

    def _cancel(self) -> None:
        import ray

        for ref in self.pending:
            ray.cancel(ref, force=True)


def _finished_line(step: str, label: str, out: dict) -> str:
    record = out.get("record") or {}
    where = (f" ({record['seconds']:.0f} s, peak {record['peak_rss_mib'] or 0:.0f} MiB, {record['node']} "
             f"{record['worker']})" if record else "")
    return f"{'failed' if out.get('error') else 'done'} {step} {label}{where}" + (
        f": {out['error']}" if out.get("error") else "")


def _measured(record: dict | None) -> float:
    """A step's measured peak memory, with a quarter to spare, in bytes (0 when never measured)."""
    peak = (record or {}).get("record", record or {}).get("peak_rss_mib")
    return 1.25 * peak * 2**20 if peak else 0


def run_matrix(spec: MatrixSpec, out: Path, address: str | None = None, device_kinds: tuple[str, ...] = ("local",),
               progress: Callable | None = None) -> dict:
    """Run the spec (checked against the cluster first) and write its report into `out`; return the report."""
    from edgefm.matrix.report import write_report
    from edgefm.matrix.rows import build_report

    store = Store(out)
    store.claim()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    we_started = connect(address, device_kinds)
    try:
        nodes = cluster()
        preflight(spec, nodes)
        run = MatrixRun(spec, store, nodes, progress)
        begin = time.perf_counter()
        run.run()
        report = build_report(run, nodes, started, time.perf_counter() - begin)
    finally:
        if we_started:
            import ray

            ray.shutdown()
    write_report(report, store.out)
    return report

