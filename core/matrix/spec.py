"""`edgefm matrix` specs: models x targets x precisions x devices, read from TOML and checked before any work.

A spec (every key but `[[model]]` and `[[target]]` is optional):

    batch_sizes = [1, 8]            # benchmarked per artifact and device
    precisions = ["fp32", "int8"]   # for targets that name none of their own
    iters = 20                      # timed runs per batch size (after `warmup` untimed ones)
    warmup = 3

    [[model]]
    family = "clip"
    variant = "tiny"                # or model = "hub/id" or "/a/local/dir"; random_weights = true for a
                                    # variant's real architecture with seeded weights; resolution = 224
    memory_gb = 6                   # optional: what its export / compiles need, when known

    [[target]]
    name = "openvino"
    precisions = ["fp32", "int8"]
    devices = ["x86-amx"]           # device kinds to validate and benchmark on (workers advertise them)
    options = { int4_group_size = 64 }   # the target's options, as `edgefm compile` takes them

Errors name the spec's line: tomllib keeps no positions, so `_Lines` finds them in the text.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from edgefm.contract.errors import EdgefmError, UnknownChoiceError

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, before it joined the standard library
    import tomli as tomllib

DEVICE_KIND = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
TOP_KEYS = {"batch_sizes", "precisions", "iters", "warmup", "model", "target"}
MODEL_KEYS = {"family", "variant", "model", "random_weights", "resolution", "memory_gb"}
TARGET_KEYS = {"name", "precisions", "devices", "options"}


class SpecError(EdgefmError):
    """A spec that cannot run as written; the message starts with FILE:LINE."""


@dataclass(frozen=True)
class ModelSpec:
    family: str
    variant: str | None
    model: str | None
    random_weights: bool
    resolution: int | None
    memory_gb: float | None
    line: int

    @property
    def label(self) -> str:
        source = self.variant or (Path(self.model).name if Path(self.model).is_absolute() else self.model)
        return f"{self.family} {source}" + (" (random weights)" if self.random_weights else "")


@dataclass(frozen=True)
class TargetSpec:
    name: str
    precisions: tuple[str, ...]
    devices: tuple[str, ...]  # () = any worker
    options: dict
    line: int
    devices_line: int


@dataclass
class MatrixSpec:
    path: Path
    models: list[ModelSpec]
    targets: list[TargetSpec]
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    iters: int = 20
    warmup: int = 3

    def where(self, line: int) -> str:
        return f"{self.path}:{line}"


class _Lines:
    """Line numbers of keys in the spec's text: the n-th `[[table]]` header, and a key within one table."""

    def __init__(self, text: str):
        self.lines = text.splitlines()

    def _headers(self) -> list[tuple[int, str]]:
        found = []
        for number, line in enumerate(self.lines, 1):
            match = re.match(r"\s*\[\[?\s*([A-Za-z0-9_.-]+)\s*\]", line)
            if match:
                found.append((number, match.group(1)))
        return found

    def table(self, name: str, index: int) -> tuple[int, int]:
        """(header line, last line) of the index-th [[name]]."""
        headers = self._headers()
        starts = [number for number, header in headers if header == name]
        start = starts[index]
        later = [number for number, _ in headers if number > start]
        return start, (later[0] - 1 if later else len(self.lines))

    def key(self, key: str, within: tuple[int, int] | None = None) -> int:
        first, last = within or (1, (self._headers() or [(len(self.lines) + 1, "")])[0][0] - 1)
        for number in range(first, last + 1):
            if re.match(rf"\s*{re.escape(key)}\s*=", self.lines[number - 1]):
                return number
        return first


def load_spec(path: Path) -> MatrixSpec:
    """Read and check a spec: families, variants, sources, targets, precisions, options and sizes, each error
    with its line. What the cluster offers (device kinds, memory) is checked against it in edgefm.matrix."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such spec file; write one as in `edgefm matrix --help`")
    text = path.read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML ({exc})") from None
    lines = _Lines(text)
    fail = lambda line, message: SpecError(f"{path}:{line}: {message}")  # noqa: E731
    _unknown_keys(data, TOP_KEYS, lambda k: lines.key(k), fail, "the spec")
    spec = MatrixSpec(path, [], [])
    spec.batch_sizes = _positive_ints(data, "batch_sizes", [1], lines.key("batch_sizes"), fail)
    spec.iters = _positive_ints(data, "iters", [20], lines.key("iters"), fail, single=True)[0]
    spec.warmup = _positive_ints(data, "warmup", [3], lines.key("warmup"), fail, single=True, minimum=0)[0]
    default_precisions = data.get("precisions")
    models, targets = data.get("model", []), data.get("target", [])
    if not isinstance(models, list) or not models:
        raise fail(1, "the spec lists no [[model]]; add one: [[model]] family = \"...\" variant = \"...\"")
    if not isinstance(targets, list) or not targets:
        raise fail(1, "the spec lists no [[target]]; add one: [[target]] name = \"...\"")
    for index, table in enumerate(models):
        spec.models.append(_model(table, path, lines.table("model", index), lines, fail))
    for index, table in enumerate(targets):
        spec.targets.append(_target(table, default_precisions, lines.table("target", index), lines, fail))
    return spec


def _unknown_keys(table: dict, known: set, line_of, fail, what: str) -> None:
    for key in table:
        if key not in known:
            raise fail(line_of(key), f"unknown key {key!r} in {what}; known keys: {', '.join(sorted(known))}")


def _positive_ints(data, key, default, line, fail, single=False, minimum=1) -> list[int]:
    value = data.get(key, default[0] if single else default)
    values = [value] if single else value
    if not isinstance(values, list) or not values or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in values):
        shape = "an integer" if single else "a list of integers"
        raise fail(line, f"{key} must be {shape} >= {minimum} (got {value!r})")
    return values


def _named(table: dict, key: str, table_name: str, plugins: dict, within, line, fail):
    """The family or target a table names, or an error at its line listing the valid names."""
    if key not in table:
        raise fail(within[0], f"[[{table_name}]] needs {key} = \"...\" (one of {', '.join(sorted(plugins))})")
    if table[key] not in plugins:
        raise fail(line(key), str(UnknownChoiceError(key if key != "name" else table_name, table[key], plugins)))
    return plugins[table[key]]


def _model(table: dict, path: Path, within, lines: _Lines, fail) -> ModelSpec:
    from edgefm.contract import registry
    from edgefm.exporters.base import ExportOptions

    line = lambda key: lines.key(key, within)  # noqa: E731
    _unknown_keys(table, MODEL_KEYS, line, fail, "[[model]]")
    family = _named(table, "family", "model", registry.families(), within, line, fail)
    memory = table.get("memory_gb")
    if memory is not None and (isinstance(memory, bool) or not isinstance(memory, (int, float)) or memory <= 0):
        raise fail(line("memory_gb"), f"memory_gb must be a positive number of GiB (got {memory!r})")
    resolution = table.get("resolution")
    if isinstance(table.get("model"), str):  # a folder may be written relative to the spec, or from ~
        folder = path.parent / Path(table["model"]).expanduser()
        table = {**table, "model": str(folder.resolve()) if folder.is_dir() else table["model"]}
    try:
        family.check_options(ExportOptions(resolution=resolution))
        family.resolve(table.get("model"), table.get("variant"), bool(table.get("random_weights", False)))
    except EdgefmError as exc:
        key = next((k for k in ("variant", "model", "resolution", "random_weights") if k in table), "family")
        raise fail(line(key), str(exc).replace("--model", "model").replace("--variant", "variant")
                   .replace("--random-weights", "random_weights")) from None
    return ModelSpec(family.name, table.get("variant"), table.get("model"), bool(table.get("random_weights", False)),
                     resolution, memory, within[0])


def _target(table: dict, default_precisions, within, lines: _Lines, fail) -> TargetSpec:
    from edgefm.contract import registry
    from edgefm.jobs.compile import target_options

    line = lambda key: lines.key(key, within)  # noqa: E731
    _unknown_keys(table, TARGET_KEYS, line, fail, "[[target]]")
    target = _named(table, "name", "target", registry.targets(), within, line, fail)
    precisions = table.get("precisions", default_precisions)
    if precisions is None:
        precisions = [target.default_precision.value]
    where = line("precisions") if "precisions" in table else lines.key("precisions")
    known = [p.value for p in target.precisions]
    if not isinstance(precisions, list) or not precisions:
        raise fail(where, f"precisions must be a list of names (got {precisions!r})")
    for precision in precisions:
        if precision not in known:
            raise fail(where, f"target {target.name} builds no precision {precision!r}; it builds {', '.join(known)}")
    devices = table.get("devices", [])
    if not isinstance(devices, list) or not all(isinstance(d, str) and DEVICE_KIND.fullmatch(d) for d in devices):
        raise fail(line("devices"), f"devices must be a list of device kinds like \"x86-amx\" or \"jetson-orin\" "
                                    f"(letters, digits, . _ -; got {devices!r})")
    options = table.get("options", {})
    if not isinstance(options, dict):
        raise fail(line("options"), f"options must be a table, e.g. options = {{ name = value }} (got {options!r})")
    options = {k.replace("-", "_"): v for k, v in options.items()}
    try:
        target_options(target.name, **options)
    except (EdgefmError, TypeError, ValueError) as exc:
        raise fail(line("options"), f"options: {exc}") from None
    return TargetSpec(target.name, tuple(dict.fromkeys(precisions)), tuple(dict.fromkeys(devices)), options,
                      within[0], line("devices") if "devices" in table else within[0])
