"""ONNX Runtime session: runs exported and ORT-compiled graphs."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgefm.contract.manifest import ComponentEntry
from edgefm.runtimes.session import Session

# the distributions that may provide this runtime (the hardware block's versions)
PACKAGES = ["onnxruntime", "onnxruntime-gpu"]


ARENA_MAX_MIB = 512
GRAPH_OPTIMIZATION = {"basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
SHARED_SESSIONS = True  # InferenceSession.run is thread-safe: the loader may hand one session to several loads


class OnnxRuntimeSession(Session):
    def __init__(self, path: Path, entry: ComponentEntry, name: str, providers=None, threads: int | None = None,
                 memory_arena: bool | None = None):
        import onnxruntime as ort

        super().__init__(name, entry.inputs, entry.outputs, entry.options.get("dims"))
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # keep ORT's per-node warnings out of user output
        # ORT's CPU arena keeps the peak activation memory for the session's lifetime (a 512 px SD 1.5 step +
        # decode left 9.3 GB resident with it, 6.1 GB without). Graphs past ARENA_MAX_MIB of weights give it
        # back after each run by default, measured at ~12% of a UNet step on 2 cores; memory_arena=True keeps
        # it. Weights are the proxy: a VAE decoder (~200 MB) keeps its arena despite large activations.
        if memory_arena is None:
            memory_arena = entry.size_mib(Path(path).parent) < ARENA_MAX_MIB
        options.enable_cpu_mem_arena = memory_arena
        # a target that needs its graph run as written says so (`options.runtime`, see Target.runtime_settings)
        level = entry.options.get("runtime", {}).get("graph_optimization", "all")
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_OPTIMIZATION[level])
        self.path = Path(path)
        self._session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
        self._output_names = [o.name for o in entry.outputs]

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._session.run(self._output_names, feeds)
        return dict(zip(self._output_names, values))


def open_session(path: Path, entry: ComponentEntry, name: str, **options) -> OnnxRuntimeSession:
    return OnnxRuntimeSession(path, entry, name, **options)
