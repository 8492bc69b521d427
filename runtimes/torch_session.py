"""A torch module run as a Session: the stand-in that gates targets whose files cannot run on this machine."""
from __future__ import annotations

import copy

import numpy as np

from edgefm.runtimes.session import Session

# by design: the stand-in runs the torch model a target gated with where its own files cannot run
NEEDS_TORCH = True  # (tests/unit/test_layers.py)


class TorchWrapperSession(Session):
    """Runs a (compressed) torch wrapper in a compute precision, numpy in and out.

    It stands in for a runtime this machine lacks, for targets that convert torch modules: same weights
    as the written file, fp16 compute when the file computes in fp16. What it cannot show is that
    runtime's own kernels (accumulation, op fusions), which only its device measures. `missing` says which
    runtime it stands in for, for `measured_with`."""

    REENTRANT = False  # _run may swap self.module / self.dtype (the fp16 fallback) while another run uses them

    def __init__(self, name: str, module, entry, half: bool, weights: str, missing: str):
        import torch

        super().__init__(name, entry.inputs, entry.outputs, entry.options.get("dims"))
        self.dtype = torch.float16 if half else torch.float32
        self.module = copy.deepcopy(module).to(self.dtype) if half else module  # the package's module stays fp32
        self.weights, self.missing = weights, missing  # what the weights are; which runtime is missing here
        self.measured_with = f"{self.weights}, {'fp16' if half else 'fp32'} compute in torch ({missing})"

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        try:
            result = self._forward(feeds)
        except RuntimeError as exc:
            if self.dtype != torch.float16 or "Half" not in str(exc):
                raise
            # A wrapper that makes float32 tensors inside (SAM 2's sine position encodings) cannot run in
            # torch fp16 on the CPU: fall back to the package's fp16-rounded weights with fp32 compute, and say so.
            self.module, self.dtype = self.module.float(), torch.float32
            self.measured_with = (f"{self.weights}, fp16-rounded weights with fp32 compute in torch (its fp16 "
                                  f"compute fails on the CPU; {self.missing})")
            result = self._forward(feeds)
        return {spec.name: value.float().numpy() for spec, value in zip(self.outputs, result)}

    def _forward(self, feeds: dict[str, np.ndarray]):
        import torch

        tensors = {k: torch.from_numpy(v).to(self.dtype) if np.issubdtype(v.dtype, np.floating)
                   else torch.from_numpy(v) for k, v in feeds.items()}
        with torch.no_grad():
            result = self.module(**tensors)
        return result if isinstance(result, (tuple, list)) else (result,)
