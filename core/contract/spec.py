"""Typed descriptions shared by every stage: tensors, precisions and accuracy gates."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from numbers import Integral

from edgefm.contract.errors import UnknownChoiceError


class Precision(str, Enum):
    """Declared from most to least precise: `--precision auto` keeps the earlier of two tied candidates. A new
    precision is a member here and a column of every row in contract/gates.py (the manifest schema takes its
    values from here)."""

    FP32 = "fp32"
    FP16 = "fp16"
    FP8 = "fp8"  # e4m3 QDQ (TensorRT on Hopper / Ada); gated like int8
    INT8 = "int8"
    INT4 = "int4"

    @classmethod
    def parse(cls, value: str) -> Precision:
        try:
            return cls(value.lower())
        except ValueError:
            raise UnknownChoiceError("precision", value, [p.value for p in cls]) from None


def whole_number(value: object) -> bool:
    """An int or numpy integer, not a bool (True is an int to Python, never a count to a user)."""
    return isinstance(value, Integral) and not isinstance(value, bool)


Dim = int | str  # a fixed size, or the symbolic name of a dynamic dimension
RANGE_FLOOR = 64  # ranged builds give a dynamic dim without a manifest max at least this, or 4x its default


def dim_range(rule: dict) -> tuple[int, int]:
    """The [lower, upper] sizes a ranged build (Core ML, TensorRT) gives a dynamic dim from its manifest rule."""
    step = rule.get("multiple_of", 1)
    upper = rule.get("max", max(RANGE_FLOOR, 4 * rule.get("default", 1)))
    return step, upper - upper % step


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name, e.g. "float32", "int64"
    shape: tuple[Dim, ...]
    range: tuple[int, int] | None = None  # inclusive [min, max] of valid values (token ids, labels); checked by run

    def to_json(self) -> dict:
        data = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.range is not None:  # written only when set: manifests without ranges stay as they were
            data["range"] = list(self.range)
        return data

    @classmethod
    def from_json(cls, data: dict) -> TensorSpec:
        return cls(data["name"], data["dtype"], tuple(data["shape"]),
                   tuple(data["range"]) if data.get("range") is not None else None)

    def describe(self) -> str:
        values = f" in {self.range[0]}..{self.range[1]}" if self.range is not None else ""
        return f"{self.name}: {self.dtype}[{', '.join(str(d) for d in self.shape)}]{values}"
