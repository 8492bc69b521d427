"""Typed records of what a compile measured and decided: checks, validations, attempts, float layers, selections.

Each record is a frozen dataclass with `to_json` / `from_json`, written into the manifest in the JSON form
manifests have always had. Derived figures (`passed`, the headline metric, `margin`) are computed, never read
back from the file: a manifest is untrusted, and a hand-edited `passed: true` must not pass anything.

Records are also read-only mappings over their JSON (`validation["passed"]`), so scripts written against the
manifest's JSON keep working; library code uses the attributes.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

# How tables and logs name the metrics whose full name is long.
SHORT_METRIC = {"cosine_min": "cos min", "rel_max_abs_diff": "rel diff", "cosine": "cos",
                "zero_shot_top1_agreement": "zero-shot top1", "image_mask_iou": "image IoU",
                "image_mask_iou_median": "image IoU@median", "video_mask_iou": "video IoU",
                "video_mask_iou_median": "video IoU@median"}


class JsonView(Mapping[str, Any]):
    """A record read as its JSON dict (read-only); two records, or a record and a dict, are equal when their JSON
    is (dataclasses below use eq=False to keep this)."""

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_json())

    def __len__(self) -> int:
        return len(self.to_json())


@dataclass(frozen=True, eq=False)
class Check(JsonView):
    """One accuracy figure against a reference, with the gate it must reach; `detail` holds what else it
    measured (per-output figures, a note), written beside the figure."""

    metric: str
    value: float
    gate: float
    higher_is_better: bool = True
    detail: Mapping[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.value >= self.gate if self.higher_is_better else self.value <= self.gate

    @property
    def margin(self) -> float:
        """How far the figure is above (or below, negative) its gate, in the check's direction and relative to
        the gate (1 when the gate is 0), so that checks in different units (cosine, agreement, dB) compare."""
        over = self.value - self.gate if self.higher_is_better else self.gate - self.value
        return over / (abs(self.gate) or 1.0)

    def describe(self) -> str:
        note = self.detail.get("note")
        return f"{self.metric} {self.value:.5f} (gate {self.gate}{'; ' + note if note else ''})"

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": self.value, "gate": self.gate,
                "higher_is_better": self.higher_is_better, "passed": self.passed, **self.detail}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Check:
        known = ("metric", "value", "gate", "higher_is_better", "passed")
        return cls(str(data["metric"]), float(data["value"]), float(data["gate"]),
                   bool(data.get("higher_is_better", True)), {k: v for k, v in data.items() if k not in known})


def _checks(data: Mapping[str, Any]) -> tuple[Check, ...]:
    checks = tuple(Check.from_json(c) for c in data["checks"])
    if not checks:
        raise ValueError("a validation holds at least one check")
    return checks


def _checks_json(checks: tuple[Check, ...], reference: str, inputs: str, measured_with: str | None) -> dict[str, Any]:
    """What every validation writes first: the headline (the first check), passed over all, the checks."""
    head = checks[0]
    data: dict[str, Any] = {"metric": head.metric, "value": head.value, "gate": head.gate,
                            "passed": all(c.passed for c in checks), "reference": reference, "inputs": inputs,
                            "checks": [c.to_json() for c in checks]}
    if measured_with is not None:
        data["measured_with"] = measured_with
    return data


@dataclass(frozen=True, eq=False)
class Attempt(JsonView):
    """One rung of a target's scheme ladder as the compile tried it."""

    scheme: str
    passed: bool
    value: float  # the headline figure

    def to_json(self) -> dict[str, Any]:
        return {"scheme": self.scheme, "passed": self.passed, "value": self.value}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Attempt:
        return cls(str(data["scheme"]), bool(data["passed"]), float(data["value"]))


@dataclass(frozen=True, eq=False)
class FloatLayers(JsonView):
    """The fewest-layers-in-float search (edgefm.jobs.sensitivity): which layers went back to float, the ranking
    it was decided from, every trial, and the batch-1 latency they cost (None where the target's files cannot
    run here)."""

    from_scheme: str
    kept: tuple[str, ...]
    ranking: Mapping[str, Any]  # measured_on, metric, all_quantized_error, layers: [{name, contribution}]
    trials: tuple[Mapping[str, Any], ...]  # {layers, passed, checks: {metric: value}}
    latency_ms_batch1: Mapping[str, float] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"from_scheme": self.from_scheme, "kept": list(self.kept), "ranking": dict(self.ranking),
                "trials": [dict(t) for t in self.trials], "latency_ms_batch1": self.latency_ms_batch1}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FloatLayers:
        return cls(str(data["from_scheme"]), tuple(data["kept"]), dict(data["ranking"]),
                   tuple(dict(t) for t in data["trials"]), data.get("latency_ms_batch1"))


@dataclass(frozen=True, eq=False)
class Validation(JsonView):
    """A component's checks against its reference; the first check is the headline, `passed` covers all.
    `extra` keeps keys this edgefm does not know (a newer edgefm wrote them), so saving changes nothing."""

    checks: tuple[Check, ...]
    reference: str = ""
    inputs: str = ""
    measured_with: str | None = None  # what ran when it was not the compiled file itself (a stand-in, a GPU)
    allowed_below_gate: bool | None = None  # set by a compile: kept below its gate because asked to
    attempts: tuple[Attempt, ...] = ()
    float_layers: FloatLayers | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    KEYS = ("metric", "value", "gate", "passed", "reference", "inputs", "checks", "measured_with",
            "allowed_below_gate", "attempts", "float_layers")

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def headline(self) -> Check:
        return self.checks[0]

    @property
    def value(self) -> float:
        return self.headline.value

    @property
    def margin(self) -> float:
        """The worst check's margin (Check.margin): what ranks below-gate attempts against each other."""
        return min(c.margin for c in self.checks)

    def describe(self) -> str:
        """One line for logs and errors: every check's value and gate."""
        return ", ".join(c.describe() for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        data = _checks_json(self.checks, self.reference, self.inputs, self.measured_with)
        if self.float_layers is not None:
            data["float_layers"] = self.float_layers.to_json()
        if self.allowed_below_gate is not None:
            data["allowed_below_gate"] = self.allowed_below_gate
        if self.attempts:
            data["attempts"] = [a.to_json() for a in self.attempts]
        return {**data, **self.extra}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Validation:
        floats = data.get("float_layers")
        return cls(_checks(data), str(data.get("reference", "")), str(data.get("inputs", "")),
                   data.get("measured_with"), data.get("allowed_below_gate"),
                   tuple(Attempt.from_json(a) for a in data.get("attempts", [])),
                   FloatLayers.from_json(floats) if floats else None,
                   {k: v for k, v in data.items() if k not in cls.KEYS})


@dataclass(frozen=True, eq=False)
class PipelineAttempt(JsonView):
    """One end-to-end check of the pipeline with these components in fp32."""

    kept_fp32: tuple[str, ...]
    passed: bool
    checks: Mapping[str, float]  # metric -> value

    def to_json(self) -> dict[str, Any]:
        return {"kept_fp32": list(self.kept_fp32), "passed": self.passed, "checks": dict(self.checks)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PipelineAttempt:
        return cls(tuple(data["kept_fp32"]), bool(data["passed"]), dict(data["checks"]))


@dataclass(frozen=True, eq=False)
class PipelineValidation(JsonView):
    """The family's task end to end on the compiled artifact against the fp32 export (SAM 2 masks, SD images),
    with the components kept in fp32 (component -> why) and every fallback tried on the way."""

    checks: tuple[Check, ...]
    precision: str
    reference: str = ""
    inputs: str = ""
    kept_fp32: Mapping[str, str] = field(default_factory=dict)
    measured_with: str | None = None
    allowed_below_gate: bool | None = None
    fallbacks: tuple[PipelineAttempt, ...] = ()  # "attempts" in the manifest
    extra: Mapping[str, Any] = field(default_factory=dict)

    KEYS = ("metric", "value", "gate", "passed", "reference", "inputs", "checks", "measured_with", "precision",
            "kept_fp32", "allowed_below_gate", "attempts")

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def margin(self) -> float:
        return min(c.margin for c in self.checks)

    def describe(self) -> str:
        return ", ".join(c.describe() for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        data = _checks_json(self.checks, self.reference, self.inputs, self.measured_with)
        data |= {"precision": self.precision, "kept_fp32": dict(self.kept_fp32)}
        if self.allowed_below_gate is not None:
            data["allowed_below_gate"] = self.allowed_below_gate
        if self.fallbacks:
            data["attempts"] = [a.to_json() for a in self.fallbacks]
        return {**data, **self.extra}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PipelineValidation:
        return cls(_checks(data), str(data["precision"]), str(data.get("reference", "")),
                   str(data.get("inputs", "")), dict(data.get("kept_fp32", {})), data.get("measured_with"),
                   data.get("allowed_below_gate"), tuple(PipelineAttempt.from_json(a) for a in data.get("attempts", [])),
                   {k: v for k, v in data.items() if k not in cls.KEYS})


@dataclass(frozen=True, eq=False)
class Candidate(JsonView):
    """One target x precision that `--precision auto` compiled: its figures when it passed, why not otherwise."""

    precision: str
    passed: bool
    target: str | None = None
    reason: str | None = None  # why it did not pass
    latency_ms: float | None = None  # summed batch-1 medians of all components, measured here
    size_mib: float | None = None
    validation: Mapping[str, Any] = field(default_factory=dict)  # component -> headline value; "end to end"

    @property
    def label(self) -> str:
        return f"{self.target} {self.precision}" if self.target else self.precision

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"precision": self.precision, "passed": self.passed}
        if self.target is not None:
            data = {"target": self.target, **data}
        for key in ("reason", "latency_ms", "size_mib"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        if self.validation:
            data["validation"] = dict(self.validation)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Candidate:
        return cls(str(data["precision"]), bool(data["passed"]), data.get("target"), data.get("reason"),
                   data.get("latency_ms"), data.get("size_mib"), dict(data.get("validation", {})))


@dataclass(frozen=True, eq=False)
class Selection(JsonView):
    """How `--precision auto` (or `--target auto`) chose: what was asked, every candidate, where it measured."""

    asked: str
    objective: str
    chosen: str  # the precision
    chosen_target: str
    reason: str
    candidates: tuple[Candidate, ...]
    targets_skipped: Mapping[str, str] = field(default_factory=dict)  # target -> why it was not tried
    measured_on: Mapping[str, Any] = field(default_factory=dict)
    timing: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"asked": self.asked, "objective": self.objective, "chosen": self.chosen,
                "chosen_target": self.chosen_target, "reason": self.reason,
                "candidates": [c.to_json() for c in self.candidates], "targets_skipped": dict(self.targets_skipped),
                "measured_on": dict(self.measured_on), "timing": self.timing}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Selection:
        return cls(str(data.get("asked", "--precision auto")), str(data["objective"]), str(data["chosen"]),
                   str(data.get("chosen_target", "")), str(data["reason"]),
                   tuple(Candidate.from_json(c) for c in data["candidates"]), dict(data.get("targets_skipped", {})),
                   dict(data.get("measured_on", {})), str(data.get("timing", "")))
