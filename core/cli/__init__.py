"""The `edgefm` command line: one module per command group over the library in edgefm.jobs."""
from edgefm.cli.app import main

__all__ = ["main"]
