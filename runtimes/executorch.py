"""ExecuTorch session: runs the XNNPACK programs (.pte) written by the executorch target, on the CPU.

Its Python runtime (`executorch.runtime`) takes and returns torch tensors, so running these artifacts needs
torch (`pip install 'edgefm[executorch]'` brings it). Programs have static shapes (see targets/executorch.py):
batch 1, every other dim at the size it was built for. A larger batch runs item by item; another size is refused
here, naming the size, before ExecuTorch sees it (its own error is an opaque code).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgefm.contract.errors import ArtifactError
from edgefm.contract.manifest import ComponentEntry
from edgefm.runtimes.session import Session, batch_items, check_built_sizes

# by design: ExecuTorch programs run in the ExecuTorch runtime, which ships with torch
NEEDS_TORCH = True  # (tests/unit/test_layers.py)

PACKAGES = ["executorch"]  # the distributions that may provide this runtime (the hardware block's versions)


class ExecuTorchSession(Session):
    # One loaded Method run from two threads is not faster (measured) and not documented as thread-safe.
    REENTRANT = False

    def __init__(self, path: Path, entry: ComponentEntry, name: str, threads: int | None = None):
        """`threads` is accepted for the common session API and ignored: XNNPACK sizes its thread pool when the
        runtime starts, and resetting it after a program is loaded corrupts the heap (measured, executorch 1.5)."""
        try:
            from executorch.runtime import Runtime
        except ImportError:
            raise ArtifactError(f"{name}: this artifact runs on ExecuTorch, which is not installed; "
                                "pip install 'edgefm[executorch]'") from None
        super().__init__(name, entry.inputs, entry.outputs, entry.options.get("dims"))
        made = entry.options.get("runtime", {})
        self._shapes = made.get("shapes", {})
        # loaded from the path: a Program loaded from bytes must outlive its Methods, or they read freed memory
        self._program = Runtime.get().load_program(str(path))
        self._method = self._program.load_method("forward")

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        if self._method is None:
            raise ArtifactError(f"{self.name}: this session is closed; load the artifact again")
        check_built_sizes(self.name, self.inputs, self._shapes, feeds, "this ExecuTorch program (static shapes)",
                          "feed that size")
        results = []
        for item in batch_items(self.inputs, feeds):
            # the program takes the manifest's inputs by position, in the manifest's dtypes (token ids stay int64)
            tensors = [torch.from_numpy(np.ascontiguousarray(item[spec.name])) for spec in self.inputs]
            # copied at once: a program's output buffers may be reused by its next run
            outputs = self._method.execute(tensors)
            results.append([np.array(out.numpy(), spec.dtype) for out, spec in zip(outputs, self.outputs)])
        return {spec.name: np.concatenate([r[index] for r in results]) for index, spec in enumerate(self.outputs)}

    def close(self) -> None:
        self._method = None
        self._program = None


def open_session(path: Path, entry: ComponentEntry, name: str, **options) -> ExecuTorchSession:
    return ExecuTorchSession(path, entry, name, **options)
