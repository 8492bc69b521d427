"""Errors a user can act on. Each message names the problem and the fix."""
from __future__ import annotations

from collections.abc import Iterable


class EdgefmError(Exception):
    """Base class: the CLI prints these without a traceback and exits non-zero."""


class UnknownChoiceError(EdgefmError):
    def __init__(self, kind: str, value: str, choices: Iterable[str]) -> None:
        choices = sorted(choices)
        super().__init__(f"unknown {kind} {value!r}; valid choices: {', '.join(choices)}")
        self.choices = choices


class ArtifactError(EdgefmError):
    """A missing, corrupt or inconsistent artifact directory."""


class FeedError(EdgefmError):
    """Inputs given to a session do not match its spec."""


class CalibrationError(EdgefmError):
    """No usable calibration data."""


class GateError(EdgefmError):
    """An accuracy gate failed. `finding` is what was measured, without the advice."""

    def __init__(self, message: str, finding: str = ""):
        super().__init__(message)
        self.finding = finding or message
