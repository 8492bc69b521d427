"""OpenVINO session: runs IR compiled by the openvino target, with the compute precision it was validated in."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgefm.contract.errors import ArtifactError
from edgefm.contract.manifest import ComponentEntry
from edgefm.runtimes.session import Session

# the distributions that may provide this runtime (the hardware block's versions)
PACKAGES = ["openvino"]


def check_device(core, device: str, where: str = "") -> None:
    seen = core.available_devices
    if device != "AUTO" and device.split(".")[0] not in {d.split(".")[0] for d in seen}:
        raise ArtifactError(f"{where}OpenVINO device {device!r} is not on this machine; it sees {seen}. "
                            "Pick one of those (--device at compile, device= in edgefm.load); CPU is always there")


class OpenVinoSession(Session):
    def __init__(self, path: Path, entry: ComponentEntry, name: str, device: str | None = None,
                 threads: int | None = None):
        try:
            import openvino as ov
        except ImportError:
            raise ArtifactError(f"{name}: this artifact runs on OpenVINO, which is not installed; "
                                "pip install 'edgefm[openvino]'") from None
        super().__init__(name, entry.inputs, entry.outputs, entry.options.get("dims"))
        made = entry.options.get("runtime") or entry.options.get("compile", {})  # "compile": artifacts before 0.2
        core = ov.Core()
        self.device = device or made.get("device", "CPU")
        check_device(core, self.device, f"{name}: ")
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if made.get("inference_precision"):
            config["INFERENCE_PRECISION_HINT"] = made["inference_precision"]
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self._compiled = core.compile_model(str(path), self.device, config)
        # An infer request runs one inference at a time ("Infer Request is busy"): each run takes an idle one,
        # or makes one when every request is in use, and gives it back. list.pop / append are atomic.
        self._idle = [self._compiled.create_infer_request()]
        self._outputs = {o.name: self._compiled.output(o.name) for o in entry.outputs}

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            request = self._idle.pop()
        except IndexError:
            request = self._compiled.create_infer_request()
        try:
            result = request.infer(feeds, share_outputs=False)  # copies: the outputs outlive the request's turn
            return {name: result[port] for name, port in self._outputs.items()}
        finally:
            self._idle.append(request)


def open_session(path: Path, entry: ComponentEntry, name: str, **options) -> OpenVinoSession:
    return OpenVinoSession(path, entry, name, **options)
