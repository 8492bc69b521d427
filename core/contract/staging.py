"""Where commands write: a hidden partial folder, moved into place at the end, never over what they read.

An interrupted build therefore never leaves a folder that looks complete; its partial folder is removed
by the next build to the same output. While a build runs it holds a lock next to the output, so a second
build to the same output fails at once instead of one silently replacing the other.
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from edgefm.contract.errors import ArtifactError, EdgefmError
from edgefm.contract.manifest import MANIFEST_NAME, Manifest


def file_in_the_way(path: Path) -> Path | None:
    """The nearest existing parent of `path` when it is a file (nothing can be written below it), else None."""
    existing = next((p for p in Path(path).absolute().parents if p.exists()), None)
    return existing if existing is not None and not existing.is_dir() else None


def check_output(out: Path, overwrite: bool, inputs: Iterable[Path | None] = ()) -> Path:
    """Refuse, before any work, an output that is, holds or sits inside one of the command's inputs, or that
    --overwrite could not replace without destroying something that is not an edgefm artifact."""
    out = Path(out).absolute()
    blocked = file_in_the_way(out)
    if blocked:
        raise EdgefmError(f"-o {out}: {blocked} is a file, not a folder; choose an output in a folder")
    real = out.resolve()
    for given in filter(None, inputs):
        source = Path(given).resolve()
        if real == source or source.is_relative_to(real):
            raise EdgefmError(f"-o {out} is (or holds) the input {given}, which writing there would destroy; "
                              "choose an output outside it")
        if source.is_dir() and real.is_relative_to(source):
            raise EdgefmError(f"-o {out} is inside the input {given}; write the output outside it")
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise EdgefmError(f"{out} already exists; choose another output or pass --overwrite to replace it")
        _check_replaceable(out)
    return out


def check_file_outputs(outputs: Iterable[Path | None], inputs: Iterable[Path]) -> None:
    """Report files (--json, --plot, ...) may not land in or on an input artifact: that would change it. Their
    folders are made here, so a report computed for minutes is never lost to a missing folder."""
    inputs = [Path(i).resolve() for i in inputs]
    for output in filter(None, outputs):
        blocked = file_in_the_way(output)
        if blocked or Path(output).is_dir():
            raise EdgefmError(f"{output} cannot be written: {blocked or output} is a "
                              f"{'file' if blocked else 'folder'}; give a file path in a folder")
        real = Path(output).resolve()
        for source in inputs:
            if real == source or real.is_relative_to(source):
                raise EdgefmError(f"{output} is inside the input {source}, which writing it would change; "
                                  "write it outside the artifact")
        Path(output).parent.mkdir(parents=True, exist_ok=True)


def _check_replaceable(out: Path) -> None:
    """--overwrite replaces an empty folder, or an edgefm artifact holding only what its manifest lists."""
    refuse = f"--overwrite replaces edgefm artifact folders only, and {out}"
    if out.is_symlink() or not out.is_dir():
        raise EdgefmError(f"{refuse} is not a folder; remove it yourself or choose another output")
    if not any(out.iterdir()):
        return
    try:
        listed = set(Manifest.load(out, verify=False).listed_files())
    except ArtifactError:  # a web app's manifest.json is not ours: its folder is not ours to delete
        raise EdgefmError(f"{refuse} is not one (no valid edgefm {MANIFEST_NAME}); remove it yourself or choose "
                          "another output") from None
    other = sorted(p.name for p in out.iterdir() if p.name not in listed | {MANIFEST_NAME})
    if other:
        raise EdgefmError(f"{refuse} also holds {', '.join(other[:5])}, which its manifest does not list; move "
                          "them out or choose another output")


@contextmanager
def staging_dir(out: Path, overwrite: bool = False, inputs: Iterable[Path | None] = (),
                log: Callable[[str], None] = print) -> Iterator[Path]:
    """Yield an empty hidden folder next to `out`; on success it becomes `out`, on any error it is removed."""
    out = check_output(out, overwrite, inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _claim(out, log):
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
        try:
            yield tmp
            _move_into_place(tmp, out, overwrite)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def write_file_atomically(path: Path, write: Callable[[Path], None]) -> Path:
    """`write(temporary path)`, then rename over `path`: interrupted, it leaves no half-written file in place."""
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _move_into_place(tmp: Path, out: Path, overwrite: bool) -> None:
    if not (out.exists() or out.is_symlink()):
        # rename(2) cannot replace a file or a non-empty folder; at most an empty folder made in this instant
        os.rename(tmp, out)
        return
    if not overwrite:
        raise EdgefmError(f"{out} appeared while this command ran (another program wrote it); nothing was replaced. "
                          "Run again with another output, or with --overwrite")
    _check_replaceable(out)
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def _claim(out: Path, log: Callable[[str], None]) -> Iterator[None]:
    """A lock file next to `out` for the build's lifetime; a dead build's lock and partial folders are cleared."""
    lock = out.with_name(f".{out.name}.edgefm-lock")
    # The lock appears with its owner already in it (a hard link of a written file): a lock created empty and
    # written after would, in between, look to a second build like the remains of a crash, and be taken over.
    mine = lock.with_name(f"{lock.name}.{os.getpid()}")
    mine.write_text(f"{os.getpid()} {socket.gethostname()}")
    try:
        for _ in range(2):
            try:
                os.link(mine, lock)
                break
            except FileExistsError:
                owner = lock.read_text(errors="replace").strip()
                if _alive(owner):
                    raise EdgefmError(f"another edgefm command (pid {owner}) is writing {out}; wait for it to finish "
                                      f"or choose another output (if it is not running any more, delete {lock})"
                                      ) from None
                lock.unlink(missing_ok=True)
        else:
            raise EdgefmError(f"could not claim {out}: {lock} keeps reappearing; another command is writing it")
    finally:
        mine.unlink(missing_ok=True)
    try:
        _remove_leftovers(out, log)
        yield
    finally:
        lock.unlink(missing_ok=True)


def _alive(owner: str) -> bool:
    """Whether the lock's owner (pid and host) still runs; a lock from another host is taken as alive."""
    try:
        written, host = owner.split(" ", 1)
        pid = int(written)
    except ValueError:
        return False  # a lock cut short by a crash while it was written
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_leftovers(out: Path, log: Callable[[str], None]) -> None:
    """Partial folders of builds to `out` that were killed: we hold the lock, so nobody else is writing them."""
    prefixes = (f".{out.name}.partial-", f".{out.name}.old-")
    for leftover in out.parent.iterdir():
        if leftover.name.startswith(prefixes) and leftover.is_dir() and not leftover.is_symlink():
            log(f"removing {leftover.name}, left by an interrupted build of {out.name}")
            shutil.rmtree(leftover, ignore_errors=True)
