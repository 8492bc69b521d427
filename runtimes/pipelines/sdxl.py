"""SDXL artifacts: the numpy text-to-image pipeline shared by the diffusion families."""
from edgefm.runtimes.diffusion import ARTIFACT_CLASS  # noqa: F401
