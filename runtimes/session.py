"""Session base: checks feeds against the manifest's specs before any backend sees them."""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping

import numpy as np

from edgefm.contract.errors import FeedError
from edgefm.contract.spec import TensorSpec


class Session:
    """One component: `inputs`, `outputs`, `run(feeds) -> {name: array}`.

    `dims` holds constraints on symbolic dimensions from the manifest, e.g.
    {"height": {"default": 224, "multiple_of": 14}, "sequence": {"max": 77}}.

    `run` may be called from several threads at once and returns each caller its own result. A backend whose
    `_run` is not safe to enter twice at once sets REENTRANT = False: its runs then take a per-session lock.
    """

    REENTRANT = True
    # What the outputs were computed with, when it is not the artifact's own file on its runtime (a stand-in
    # for a runtime this machine lacks); the compile records it beside the figures.
    measured_with: str | None = None

    def __init__(self, name: str, inputs: list[TensorSpec], outputs: list[TensorSpec], dims: dict | None = None):
        self.name = name
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.dims = dims or {}
        self._lock = contextlib.nullcontext() if self.REENTRANT else threading.Lock()

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check_feeds(feeds)
        with self._lock:
            return self._run(dict(feeds))

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        """Give back what the backend holds beyond memory (device buffers); the session is unusable after."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> None:
        if not isinstance(feeds, Mapping):
            raise FeedError(f"{self.name}: feeds must be a dict of input name -> numpy array, got {type(feeds).__name__}")
        expected = {s.name: s for s in self.inputs}
        unknown = sorted(set(feeds) - set(expected), key=str)  # key=str: a non-str key must not break the message
        missing = sorted(set(expected) - set(feeds))
        if unknown or missing:
            raise FeedError(f"{self.name}: unknown inputs {unknown}, missing inputs {missing}; "
                            f"expected {self._describe_inputs()}")
        bound: dict[str, tuple[int, str]] = {}
        for name, spec in expected.items():
            self._check_one(spec, feeds[name], bound)

    def _check_one(self, spec: TensorSpec, value, bound: dict) -> None:
        where = f"{self.name}: input {spec.name!r} (expected {spec.describe()})"
        if not isinstance(value, np.ndarray):
            raise FeedError(f"{where} must be a numpy array, got {type(value).__name__}")
        if value.dtype != np.dtype(spec.dtype):
            raise FeedError(f"{where} got dtype {value.dtype}; convert with .astype(np.{spec.dtype})")
        if value.ndim != len(spec.shape):
            raise FeedError(f"{where} got {value.ndim} dimensions {tuple(value.shape)}, needs {len(spec.shape)}")
        for axis, (want, got) in enumerate(zip(spec.shape, value.shape)):
            if isinstance(want, int):
                if got != want:
                    raise FeedError(f"{where} got shape {tuple(value.shape)}: axis {axis} must be {want}")
                continue
            self._check_symbolic(where, want, got, axis, value.shape)
            if want in bound and bound[want][0] != got:
                other_size, other_input = bound[want]
                raise FeedError(f"{where} got {want}={got} on axis {axis}, but input {other_input!r} "
                                f"has {want}={other_size}; they must agree")
            bound.setdefault(want, (got, spec.name))
        # The one place values are checked: backends would compute garbage from NaN / Inf silently, and
        # out-of-range ids fail deep in a Gather (ONNX Runtime) or wrap around (negative ids).
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            bad = value.size - np.count_nonzero(np.isfinite(value))
            raise FeedError(f"{where} has {bad} non-finite value(s) (NaN / Inf) of {value.size}; replace them "
                            "(e.g. np.nan_to_num) or fix the preprocessing that made them")
        if spec.range is not None and value.size:
            low, high = spec.range
            if value.min() < low or value.max() > high:
                outside = (value < low) | (value > high)
                raise FeedError(f"{where} has value {value[outside][0]} outside its range {low}..{high} "
                                f"({np.count_nonzero(outside)} such value(s)); feed values in {low}..{high}")

    def _check_symbolic(self, where: str, dim: str, size: int, axis: int, shape) -> None:
        rule = self.dims.get(dim, {})
        if size < 1:
            raise FeedError(f"{where} got shape {tuple(shape)}: {dim} (axis {axis}) must be at least 1")
        if "max" in rule and size > rule["max"]:
            raise FeedError(f"{where} got {dim}={size}; the model supports at most {rule['max']}")
        if "multiple_of" in rule and size % rule["multiple_of"]:
            raise FeedError(f"{where} got {dim}={size}; it must be a multiple of {rule['multiple_of']}")

    def _describe_inputs(self) -> str:
        return "; ".join(s.describe() for s in self.inputs)

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.name}: inputs [{self._describe_inputs()}] -> "
                f"[{'; '.join(s.describe() for s in self.outputs)}]>")

    def example_feeds(self, rng: np.random.Generator, **sizes: int) -> dict[str, np.ndarray]:
        """Random feeds at the default size of each symbolic dim (override with e.g. batch=8).

        Integer inputs (token ids) are zeros, a valid id for every vocabulary.
        """
        feeds = {}
        for spec in self.inputs:
            shape = tuple(d if isinstance(d, int) else sizes.get(d, self.dims.get(d, {}).get("default", 1))
                          for d in spec.shape)
            if np.issubdtype(np.dtype(spec.dtype), np.floating):
                feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
            else:
                feeds[spec.name] = np.zeros(shape, spec.dtype)
        return feeds


def check_built_sizes(name: str, specs: list[TensorSpec], sizes: dict[str, list], feeds: dict[str, np.ndarray],
                      built: str, fix: str) -> None:
    """For files built for fixed sizes (or [lower, upper] ranges) per symbolic dim, batch aside (the session
    loops over it): a feed of another size is refused here, naming the size, before a backend whose own error
    says less. `built` names the file ("this Core ML package"), `fix` what to do."""
    for spec in specs:
        for axis, (dim, made) in enumerate(zip(spec.shape, sizes.get(spec.name, []))):
            if dim == "batch" or isinstance(dim, int):
                continue
            got = feeds[spec.name].shape[axis]
            low, high = made if isinstance(made, list) else (made, made)
            if not low <= got <= high:
                wanted = f"{low}..{high}" if low != high else str(low)
                raise FeedError(f"{name}: input {spec.name!r} has {dim}={got}, but {built} was built for "
                                f"{dim}={wanted}; {fix}")


def batch_items(specs: list[TensorSpec], feeds: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """One feed per item of the `batch` axis, for backends whose files fix batch at 1 (they run items in turn
    and concatenate the outputs); inputs without a batch axis go to every item whole."""
    batched = [s.name for s in specs if s.shape and s.shape[0] == "batch"]
    size = feeds[batched[0]].shape[0] if batched else 1
    return [{k: v[i:i + 1] if k in batched else v for k, v in feeds.items()} for i in range(size)]
