"""`edgefm run -o`: refused, before any work, where writing it would fail or destroy something.

An output may not be one of the task's inputs, sit inside an input folder or inside the artifact, nor
replace an existing file without --overwrite. A folder output may hold an input folder: its files go
beside it, never into it.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from edgefm.contract.errors import EdgefmError
from edgefm.contract.images import IMAGE_SUFFIXES
from edgefm.contract.tasks import TaskOutput


def check_out(output: TaskOutput, out: Path, artifact: Path, sources: Iterable[Path] = (),
              overwrite: bool = False) -> None:
    """Refuse `out` for `output` (see the module's docstring); make the folder an output file goes in."""
    sources = [Path(s) for s in sources]
    if output.kind == "folder":
        check_folder_out(out, artifact, sources, output.pattern, output.help, overwrite)
    elif output.kind == "image":
        check_file_out(out, artifact, writable_image_suffixes(), "image", sources, overwrite)
    else:
        check_file_out(out, artifact, list(output.suffixes), "file", sources, overwrite)


def writable_image_suffixes() -> list[str]:
    """The usual image suffixes this Pillow build can write an RGB image to, .png first."""
    from PIL import Image

    formats = Image.registered_extensions()
    return sorted((s for s in IMAGE_SUFFIXES if formats.get(s) in Image.SAVE), key=lambda s: (s != ".png", s))


def check_file_out(out: Path, artifact: Path, suffixes: list[str], noun: str, sources: list[Path],
                   overwrite: bool = False) -> None:
    out = Path(out)
    _check_outside(out, artifact)
    example = suffixes[0]
    if out.is_dir():
        raise EdgefmError(f"-o {out} is a directory; give a {example} file path, e.g. {out / ('out' + example)}")
    if out.suffix.lower() not in suffixes:
        article = "an" if noun[0] in "aeiou" else "a"
        what = f"{out.suffix} {noun}s" if out.suffix else f"{article} {noun} without a suffix"
        raise EdgefmError(f"-o {out}: cannot write {what}; end the path in one of {', '.join(suffixes)}")
    for source in sources:
        if _same_file(out, source):
            what = "image" if source.suffix.lower() in IMAGE_SUFFIXES else "file"
            raise EdgefmError(f"-o {out} is the input {what}; writing there would destroy it: give another path")
        if source.is_dir() and source.resolve() in out.resolve().parents:
            raise EdgefmError(f"-o {out} is inside the input {source}; write outside it")
    if out.exists() and not overwrite:
        raise EdgefmError(f"-o {out} already exists; give another path or pass --overwrite to replace it")
    _check_parent(out)
    out.parent.mkdir(parents=True, exist_ok=True)


def check_folder_out(out: Path, artifact: Path, sources: list[Path], pattern: str, what: str,
                     overwrite: bool = False) -> None:
    """A folder output: not a file, not an input folder nor inside one; `pattern` files in it are replaced
    only with --overwrite. The task makes the folder once its inputs are accepted."""
    out = Path(out)
    _check_outside(out, artifact)
    if out.exists() and not out.is_dir():
        raise EdgefmError(f"-o {out} is a file; give a directory for the {what}")
    for source in sources:
        if out.resolve() == source.resolve() or source.resolve() in out.resolve().parents:
            raise EdgefmError(f"-o {out} is or is inside the input {source}; give a directory outside it so the "
                              "inputs are never written over")
    if out.is_dir() and any(out.glob(pattern)) and not overwrite:
        raise EdgefmError(f"-o {out} already holds {pattern} {what}; give another directory or pass --overwrite "
                          "to replace them")
    _check_parent(out)


def _same_file(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))  # samefile: hard links


def _check_parent(out: Path) -> None:
    from edgefm.contract.staging import file_in_the_way

    existing = file_in_the_way(out)
    if existing:
        raise EdgefmError(f"-o {out}: {existing} is a file, not a directory; give a path in a directory")


def _check_outside(out: Path, artifact: Path) -> None:
    if Path(out).resolve().is_relative_to(Path(artifact).resolve()):
        raise EdgefmError(f"-o {out} is inside the artifact {artifact}, which writing there would change; "
                          "write outside it")
