"""TensorRT session: numpy in, numpy out, through an engine built on this GPU by `edgefm engine`.

Device buffers are allocated once, at the optimization profile's largest shapes; a call copies the
feeds in, runs the engine on one stream and copies the outputs back. With `cuda_graphs=True` the
engine call is captured as a CUDA graph at the current input shapes and replayed until they change
(less launch overhead for small batches). CUDA calls go through NVIDIA's cuda-python bindings (`cuda.bindings.runtime`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgefm.contract.errors import ArtifactError, EdgefmError, FeedError
from edgefm.contract.manifest import ComponentEntry
from edgefm.runtimes.session import Session

# the distributions that may provide this runtime (the hardware block's versions)
PACKAGES = ["tensorrt", "tensorrt-cu13", "tensorrt-cu12"]

INSTALL = "pip install 'edgefm[tensorrt]' on a machine with an NVIDIA GPU and driver"


def _cudart():
    try:
        from cuda.bindings import runtime
    except ImportError:  # cuda-python < 12.6 named the module cuda.cudart
        from cuda import cudart as runtime
    return runtime


def unavailable_reason() -> str | None:
    """None when TensorRT engines can run here, else why not."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed ({INSTALL})"
    return cuda_unavailable_reason()


def cuda_unavailable_reason() -> str | None:
    """None when cuda-python sees a CUDA GPU, else why not."""
    try:
        cudart = _cudart()
    except ImportError as exc:
        return f"{exc.name} is not installed ({INSTALL})"
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or count < 1:
        return f"no CUDA GPU is visible ({err})"
    return None


def _check(result):
    """cuda-python returns (error, *values): raise on an error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != _cudart().cudaError_t.cudaSuccess:
        raise EdgefmError(f"CUDA call failed: {err}")
    return values[0] if len(values) == 1 else values


def gpu_identity(device: int = 0) -> dict:
    """The GPU's name and compute capability, from the CUDA runtime."""
    props = _check(_cudart().cudaGetDeviceProperties(device))
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return {"compute_capability": f"{props.major}.{props.minor}", "device": name.strip("\0 ")}


def this_machine() -> dict:
    """TensorRT version, GPU name and compute capability here: what an engine is bound to."""
    import tensorrt as trt

    return {"tensorrt": trt.__version__, **gpu_identity()}


class CudaStream:
    """One CUDA stream with the device memory, copies and CUDA graphs a session needs (cuda-python)."""

    def __init__(self):
        self.cudart = _cudart()
        self.handle = _check(self.cudart.cudaStreamCreate())
        self.handle_int = int(self.handle)  # what TensorRT's execute_async_v3 takes
        self._allocations = []

    def malloc(self, nbytes: int) -> int:
        pointer = _check(self.cudart.cudaMalloc(max(nbytes, 1)))
        self._allocations.append(pointer)
        return int(pointer)

    def to_device(self, pointer: int, array: np.ndarray) -> None:
        _check(self.cudart.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes,
                                           self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.handle))

    def to_host(self, array: np.ndarray, pointer: int) -> None:
        _check(self.cudart.cudaMemcpyAsync(array.ctypes.data, pointer, array.nbytes,
                                           self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.handle))

    def synchronize(self) -> None:
        _check(self.cudart.cudaStreamSynchronize(self.handle))

    def capture(self, work) -> object:
        """A CUDA graph of what `work()` enqueues on this stream, instantiated and ready to launch."""
        mode = self.cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        _check(self.cudart.cudaStreamBeginCapture(self.handle, mode))
        try:
            work()
        finally:  # the stream leaves capture mode even when the work fails
            graph = _check(self.cudart.cudaStreamEndCapture(self.handle))
        try:
            return _check(self.cudart.cudaGraphInstantiate(graph, 0))
        finally:
            self.cudart.cudaGraphDestroy(graph)

    def launch(self, graph) -> None:
        _check(self.cudart.cudaGraphLaunch(graph, self.handle))

    def release(self, graph) -> None:
        self.cudart.cudaGraphExecDestroy(graph)

    def free(self) -> None:
        """Give the device buffers back; safe to call twice (close, then garbage collection)."""
        allocations, self._allocations = getattr(self, "_allocations", []), []
        for pointer in allocations:
            self.cudart.cudaFree(pointer)

    def __del__(self):
        self.free()


def engine_mismatch(built: dict, here: dict, artifact: Path, component: str) -> str | None:
    """Why an engine built on `built` cannot run on `here` (TensorRT binds an engine to its version and GPU
    model: its tactics were timed there), with the fix."""
    if all(built.get(k) == here.get(k) for k in ("tensorrt", "compute_capability", "device")):
        return None
    return (f"{component}: its engine was built with TensorRT {built.get('tensorrt')} on {built.get('device')} "
            f"(compute capability {built.get('compute_capability')}); this machine has TensorRT {here['tensorrt']} "
            f"on {here['device']} (compute capability {here['compute_capability']}). Engines do not move between "
            f"GPUs or TensorRT versions: rebuild them here with `edgefm engine {artifact} --rebuild`")


class TensorRTSession(Session):
    REENTRANT = False  # one execution context, its device buffers and CUDA graph: one run at a time

    def __init__(self, path: Path, entry: ComponentEntry, name: str, cuda_graphs: bool = False,
                 threads: int | None = None):  # threads: CPU runtimes' option, nothing to set on a GPU
        import tensorrt as trt

        super().__init__(name, entry.inputs, entry.outputs, entry.options.get("dims"))
        here = this_machine()
        problem = engine_mismatch(entry.options.get("engine", {}), here, Path(path).parent, name)
        if problem:
            raise ArtifactError(problem)
        self.device = here["device"]
        self._engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(Path(path).read_bytes())
        if self._engine is None:
            raise ArtifactError(f"{path}: TensorRT could not load this engine; rebuild it with "
                                f"`edgefm engine {Path(path).parent} --rebuild`")
        self._context = self._engine.create_execution_context()
        self._stream = CudaStream()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}
        self._inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in self._inputs]
        self._limits = {n: [tuple(s) for s in self._engine.get_tensor_profile_shape(n, 0)] for n in self._inputs}
        for n in self._inputs:  # the largest shapes size every buffer once
            self._context.set_input_shape(n, self._limits[n][2])
        self._buffers = {}
        for n in names:
            shape = self._limits[n][2] if n in self._inputs else tuple(self._context.get_tensor_shape(n))
            if min(shape, default=1) < 0:  # none of edgefm's graphs has one; say so rather than guess a size
                raise ArtifactError(f"{path}: output {n!r} has a data-dependent shape {shape}, which this session "
                                    "does not support")
            self._buffers[n] = self._stream.malloc(int(np.prod(shape)) * self._dtypes[n].itemsize)
            self._context.set_tensor_address(n, self._buffers[n])
        self._cuda_graphs = cuda_graphs
        self._graph: tuple[tuple, object] | None = None  # (input shapes, the CUDA graph captured at them)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for n in self._inputs:
            value = np.ascontiguousarray(feeds[n], dtype=self._dtypes[n])
            self._check_profile(n, value.shape)
            self._context.set_input_shape(n, value.shape)
            self._stream.to_device(self._buffers[n], value)
        self._execute(tuple(feeds[n].shape for n in self._inputs))
        outputs = {}
        for n in self._outputs:
            outputs[n] = np.empty(tuple(self._context.get_tensor_shape(n)), self._dtypes[n])
            self._stream.to_host(outputs[n], self._buffers[n])
        self._stream.synchronize()
        return {spec.name: outputs[spec.name].astype(spec.dtype, copy=False) for spec in self.outputs}

    def _enqueue(self) -> None:
        if not self._context.execute_async_v3(self._stream.handle_int):
            raise EdgefmError(f"{self.name}: TensorRT failed to run the engine")

    def _execute(self, signature: tuple) -> None:
        """With CUDA graphs, one graph at a time, captured at the current input shapes: a graph holds the kernels
        of the shapes it was captured at, so new shapes capture anew (the usual fixed-shape loop replays)."""
        if not self._cuda_graphs:
            self._enqueue()
            return
        if self._graph is None or self._graph[0] != signature:
            if self._graph is not None:
                self._stream.release(self._graph[1])
                self._graph = None
            self._enqueue()  # one plain run first: TensorRT applies the shape change then, outside the capture
            self._graph = signature, self._stream.capture(self._enqueue)
        self._stream.launch(self._graph[1])

    def close(self) -> None:
        """Free the CUDA graph and device buffers now, not when the garbage collector gets to them."""
        if self._graph is not None:
            self._stream.release(self._graph[1])
            self._graph = None
        self._stream.free()

    def _check_profile(self, name: str, shape: tuple) -> None:
        low, _, high = self._limits[name]
        if any(s < lo or s > hi for s, lo, hi in zip(shape, low, high)):
            raise FeedError(f"{self.name}: input {name!r} has shape {shape}, outside the engine's optimization "
                            f"profile {low}..{high}; rebuild with a wider profile, e.g. `edgefm engine ART --rebuild "
                            f"--shapes DIM=MIN,OPT,MAX`")

def open_session(path: Path, entry: ComponentEntry, name: str, **options) -> TensorRTSession:
    reason = unavailable_reason()
    if reason:
        raise EdgefmError(f"{name}: this artifact holds TensorRT engines, which cannot run here: {reason}. "
                          "Its ONNX graphs run anywhere: load the plan artifact it was built from instead")
    return TensorRTSession(path, entry, name, **options)
