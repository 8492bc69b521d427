"""What `edgefm run` can do with an artifact, as the families declare it (`ModelFamily.tasks()`).

A task says which options select it, which it takes, what it writes and how it runs. The command line
builds its flags from these declarations and the library checks values with them, so neither names a
family; the task's `run` does the work. Standard library only: no numpy, no click.
"""
from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefm.contract.errors import EdgefmError
from edgefm.contract.images import IMAGE_SUFFIXES

KINDS = (str, int, float, bool, Path)
OUTPUT_KINDS = ("image", "file", "folder")


@dataclass(frozen=True)
class TaskOption:
    """One option of a task: enough for the CLI to make a flag (type, range, repeatable, help) and for the
    library to check a value given without the CLI.

    `name` is the key in `TaskRequest.values`; the flag is `--name` with dashes for underscores. `parse`
    turns the flag's text into the value (raising ValueError with what to type instead); a value that is
    not text is passed on as given, for the task's own checks."""

    name: str
    help: str
    kind: type = str
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple = ()
    multiple: bool = False  # a repeatable flag: the value is a tuple
    parse: Callable[[str], Any] | None = None
    required: bool = False
    must_exist: bool = False  # Path: checked before the artifact is opened
    file_only: bool = False
    dir_only: bool = False
    metavar: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise TypeError(f"task option {self.name}: kind must be one of {KINDS}, not {self.kind}")

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value: Any) -> Any:
        """The value as the task gets it (a tuple when `multiple`); EdgefmError naming the flag otherwise."""
        if not self.multiple:
            return self._one(value)
        values = [value] if isinstance(value, (str, os.PathLike)) else list(value)
        return tuple(self._one(v) for v in values)

    def _one(self, value: Any) -> Any:
        if self.parse is not None:
            if not isinstance(value, str):
                return value  # already parsed: the task's own checks see it
            try:
                return self.parse(value)
            except ValueError as exc:
                raise EdgefmError(f"{self.flag} {value!r}: {exc}") from None
        value = self._typed(value)
        if self.choices and value not in self.choices:
            raise EdgefmError(f"{self.flag} {value!r}: choose one of {', '.join(map(str, self.choices))}")
        low, high = self.minimum, self.maximum
        if low is not None and value < low or high is not None and value > high:
            bounds = (f"from {low} to {high}" if low is not None and high is not None else
                      f"of at least {low}" if low is not None else f"of at most {high}")
            raise EdgefmError(f"{self.flag} {value}: give a value {bounds}")
        return self._existing(value) if self.kind is Path else value

    def _typed(self, value: Any) -> Any:
        kind = self.kind
        if kind is bool and isinstance(value, bool):
            return value
        if kind is str and isinstance(value, str):
            return value
        if kind is Path and isinstance(value, (str, os.PathLike)):
            return Path(value)
        if kind is int and isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        if kind is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
            if math.isfinite(value):
                return float(value)
        if kind in (int, float) and isinstance(value, str):
            try:
                return self._typed(kind(value))
            except ValueError:
                pass
        wanted = {bool: "true or false", str: "text", Path: "a path", int: "a whole number",
                  float: "a finite number"}[kind]
        raise EdgefmError(f"{self.flag} {value!r}: give {wanted}")

    def _existing(self, path: Path) -> Path:
        if self.must_exist and not path.exists():
            what = "file" if self.file_only else "folder" if self.dir_only else "file or folder"
            raise EdgefmError(f"{self.flag} {path}: no such {what}")
        if self.file_only and path.is_dir():
            raise EdgefmError(f"{self.flag} {path} is a folder; give a file")
        if self.dir_only and path.exists() and not path.is_dir():
            raise EdgefmError(f"{self.flag} {path} is a file; give a folder")
        return path


@dataclass(frozen=True)
class TaskOutput:
    """What a task writes at -o: an image (any suffix Pillow writes), a file with one of `suffixes`, or a
    folder of files named like `pattern`. `help` is a noun phrase ("an overlay image") for messages."""

    kind: str
    help: str
    suffixes: tuple[str, ...] = ()
    pattern: str = ""
    required: bool = True

    def __post_init__(self):
        if self.kind not in OUTPUT_KINDS:
            raise TypeError(f"task output kind must be one of {OUTPUT_KINDS}, not {self.kind!r}")

    def accepts(self, out: Path) -> bool:
        """Whether `out` looks like what this output is: tells apart tasks that take the same inputs."""
        suffix = Path(out).suffix.lower()
        if self.kind == "folder":
            return Path(out).is_dir() or not suffix
        return suffix in (IMAGE_SUFFIXES if self.kind == "image" else self.suffixes)


@dataclass
class TaskRequest:
    """What a task's `run` gets: the loaded artifact, every option's value (given or its default), and the
    -o path, already checked against the task's output."""

    artifact_dir: Path
    artifact: Any  # the family's edgefm.runtimes.loader.Artifact
    values: dict
    out: Path | None
    overwrite: bool = False
    log: Callable[[str], None] = print
    progress: Callable[[int, int], None] | None = None  # (done, total) of the task's steps


@dataclass
class TaskResult:
    """What a task did: `lines` for people (the CLI prints one per item), the files it wrote, and its
    figures for library callers."""

    lines: list[str]
    files: list[Path] = field(default_factory=list)
    summary: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """One thing `edgefm run` does with a family's artifacts. Giving any of `inputs` selects it."""

    name: str
    help: str
    inputs: tuple[TaskOption, ...]
    options: tuple[TaskOption, ...]
    output: TaskOutput
    run: Callable[[TaskRequest], TaskResult]

    @property
    def all_options(self) -> tuple[TaskOption, ...]:
        return self.inputs + self.options

    def takes(self, name: str) -> bool:
        return any(option.name == name for option in self.all_options)

    def describe(self) -> str:
        """The task and what selects it, e.g. "track (--video)", for messages and help."""
        return f"{self.name} ({' / '.join(option.flag for option in self.inputs)})"

    def values(self, given: dict) -> dict:
        """Every option's value: the given ones checked, the defaults for the rest."""
        if not any(option.name in given for option in self.inputs):
            raise EdgefmError(f"{self.name} needs {' or '.join(option.flag for option in self.inputs)}")
        missing = [option.flag for option in self.options if option.required and option.name not in given]
        if missing:
            raise EdgefmError(f"{self.name} needs {', '.join(missing)}")
        return {option.name: option.check(given[option.name]) if option.name in given else option.default
                for option in self.all_options}
