"""Build artifacts in a hidden temporary directory and rename at the end.

An interrupted build therefore never leaves a directory that looks complete.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from edgefm.errors import EdgefmError


@contextmanager
def staging_dir(out: Path, overwrite: bool = False):
    out = Path(out)
    if out.exists() and not overwrite:
        raise EdgefmError(f"{out} already exists; choose another output or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
