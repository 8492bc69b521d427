"""What one compile (or one `edgefm validate`) computes once and reuses, held by the job, never by a module.

`compile_artifact` creates one `CompileCache` and passes it down: to `open_sessions(..., cache=...)` for the
fp32 export, so that the compile's reference, its calibration captures and its end-to-end check share one
set of sessions (for SD 1.5 the export is 4.7 GB a copy), and to the family's calibration recipe
(`feeds(..., cache)`, `CheckContext.cache`, `pipeline_checks(..., cache)`), which keeps there what it would
otherwise compute again per component: captured feeds, the fp32 export's task outputs. Everything goes when
the job drops the cache.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

T = TypeVar("T")


class CompileCache:
    """A keyed store of values computed once per job. Keys are tuples whose first item says what they hold
    (e.g. ("session", path, ...), ("sam2 capture", directory, ...)), so that users of one cache never collide."""

    def __init__(self) -> None:
        self._values: dict[Hashable, object] = {}

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        """The value stored under `key`, computed by `compute()` the first time it is asked for."""
        if key not in self._values:
            self._values[key] = compute()
        return self._values[key]  # type: ignore[return-value]

    def __contains__(self, key: Hashable) -> bool:
        return key in self._values

    def __len__(self) -> int:
        return len(self._values)

    def clear(self) -> None:
        self._values.clear()
