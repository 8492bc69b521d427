"""Files an ONNX graph is made of: the .onnx itself plus any external-data files it refers to."""
from __future__ import annotations

from pathlib import Path


def external_data_files(path: Path) -> list[str]:
    """Graphs over protobuf's 2 GB limit keep weights in files next to the .onnx."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    return sorted({entry.value for tensor in model.graph.initializer if uses_external_data(tensor)
                   for entry in tensor.external_data if entry.key == "location"})
