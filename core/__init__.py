"""edgefm: vision foundation models from PyTorch to validated, deployable artifacts.

`edgefm.load(DIR)` is the runtime entry point; it imports numpy and one backend, never torch.
"""
__version__ = "0.1.0"


def load(directory, verify: bool = True, **session_options):
    """Load an artifact directory: one session per component plus the family's task helpers."""
    from edgefm.runtimes.loader import load as _load

    return _load(directory, verify=verify, **session_options)


__all__ = ["load", "__version__"]
