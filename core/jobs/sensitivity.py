"""Keep the fewest layers in float until a quantized component passes its gates, decided from data.

When every scheme of a target's ladder leaves a component below its gates, the quantized layers of the
best attempt are ranked by their error contribution, measured on calibration feeds (never the held-out
ones): how much the output error (mean 1 - cosine over outputs, vs the fp32 export) drops when that layer
alone goes back to float. Then the top 1, 2, 4, ... layers of that ranking go back to float until the
held-out gates pass, and a bisection finds the fewest. Everything is recorded under the validation's
`float_layers`, with the batch-1 latency the kept layers cost.

Written here, not taken from NNCF's quantize_with_accuracy_control, because that covers OpenVINO and NNCF's
own ONNX quantizer only, gates one scalar metric, and returns no per-layer figures to record; ONNX Runtime's
quantizers (whose QDQ graphs the TensorRT target shares) have no such search.
"""
from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgefm.contract.compare import cosine_rows
from edgefm.contract.records import FloatLayers, Validation

if TYPE_CHECKING:
    from edgefm.jobs.component import CompileContext, Tried, Validator

RANK_FEEDS = 4  # calibration feeds the ranking runs on (each trial opens one session and runs these)
MAX_LAYERS = 200  # past this (a real-size SD UNet has ~700), ranking one layer at a time takes hours: no search
LATENCY_ITERS = 10


def output_error(session: Any, feeds: list[dict], references: list[dict]) -> float:
    errors = []
    for feed, ref in zip(feeds, references):
        got = session.run(feed)
        errors += [1.0 - float(cosine_rows(got[name], ref[name]).mean()) for name in ref]
    return float(np.mean(errors))


def search(context: CompileContext, name: str, attempt: Tried, validate: Validator) -> tuple[Tried, Any] | None:
    """From a below-gate `attempt`: (the passing attempt with the fewest layers in float, or the best one tried if
    none passes; a session of it), or None where the target cannot restore layers."""
    layers = context.target.quantized_layers(attempt.request, attempt.entry.file)
    if len(layers) > MAX_LAYERS or len(set(layers)) < len(layers) or "" in layers:
        context.log(f"{name}: {len(layers)} quantized layers (past {MAX_LAYERS}, or unnamed / duplicate names); "
                    "no search for layers to keep in float")
        return None
    if not layers:
        return None
    context.log(f"{name}: below its gates after every scheme; measuring which of {len(layers)} layers to keep in float")
    search = _Search(context, name, attempt, validate)
    ranked, contributions = search.rank(layers)
    best = search.fewest(ranked)
    chosen = search.tried[best]
    session = context.target.validation_session(chosen.request, chosen.entry, context.options)
    float_layers = FloatLayers(
        attempt.scheme.name, tuple(ranked[:best]),
        {"measured_on": f"{len(search.feeds)} calibration feeds",
         "metric": "drop of mean (1 - cosine) over outputs vs the fp32 export with the layer alone in float",
         "all_quantized_error": search.base_error,
         "layers": [{"name": layer, "contribution": contributions[layer]} for layer in ranked]},
        tuple({"layers": count, "passed": t.validation.passed,
               "checks": {c.metric: c.value for c in t.validation.checks}}
              for count, t in sorted(search.tried.items())),
        search.latency(session))
    recorded = dataclasses.replace(chosen.validation, float_layers=float_layers)
    return dataclasses.replace(chosen, validation=recorded), session


@dataclass
class _Search:
    """The trials of one component's search: each writes the attempt with some layers back in float."""

    context: CompileContext
    name: str
    attempt: Tried
    validate: Validator

    def __post_init__(self) -> None:
        self.work = self.attempt.directory.parent / "float-layers"
        self.feeds = self.attempt.request.calibration_feeds[:RANK_FEEDS]
        self.references = [self.context.reference[self.name].run(feed) for feed in self.feeds]
        self.base_session = self.context.target.validation_session(self.attempt.request, self.attempt.entry,
                                                                   self.context.options)
        self.base_error = output_error(self.base_session, self.feeds, self.references)
        self.tried: dict[int, Tried] = {}

    def trial(self, kept: list[str], label: str) -> tuple[Tried, Any]:
        """The attempt with `kept` in float, unvalidated (its validation is the base attempt's), and its session."""
        from edgefm.jobs.component import Tried

        context, request, scheme = self.context, self.attempt.request, self.attempt.scheme
        where = self.work / label
        where.mkdir(parents=True)
        trial_scheme = dataclasses.replace(scheme, name=f"{scheme.name}+{len(kept)}-float",
                                           params={**scheme.params, "float_layers": kept})
        moved = dataclasses.replace(request, out_dir=where, scheme=trial_scheme)
        entry = context.entry_for(moved, context.target.restore_layers(request, self.attempt.entry.file, moved,
                                                                       context.options))
        session = context.target.validation_session(moved, entry, context.options)
        return Tried(trial_scheme, where, entry, self.attempt.validation, moved), session

    def rank(self, layers: list[str]) -> tuple[list[str], dict[str, float]]:
        """Layers by how much the output error drops with that layer alone in float, measured on calibration feeds."""
        contributions = {}
        for index, layer in enumerate(layers):
            tried, session = self.trial([layer], f"rank-{index}")
            contributions[layer] = self.base_error - output_error(session, self.feeds, self.references)
            del session
            shutil.rmtree(tried.directory)
            if (index + 1) % 10 == 0 or index + 1 == len(layers):
                self.context.log(f"{self.name}: error contribution measured for {index + 1}/{len(layers)} layers")
        return sorted(layers, key=lambda layer: -contributions[layer]), contributions

    def gate(self, ranked: list[str], count: int) -> bool:
        """Whether the top `count` layers of `ranked` in float pass the held-out gates (each count tried once)."""
        from edgefm.jobs.component import refuse_broken

        if count not in self.tried:
            tried, session = self.trial(ranked[:count], f"keep-{count}")
            static = self.context.target.static_checks(tried.request, tried.entry, self.context.options)
            refuse_broken(self.name, f"the {self.context.target.name} file with {count} layer(s) back in float", static)
            record: Validation = self.validate(session, static)
            self.tried[count] = dataclasses.replace(tried, validation=record)  # sessions released: a UNet is GBs
            self.context.log(f"{self.name}: {count} layer(s) in float -> {record.describe()} -> "
                             f"{'pass' if record.passed else 'below gate'}")
        return self.tried[count].validation.passed

    def fewest(self, ranked: list[str]) -> int:
        """The fewest top layers in float that pass: double until one passes, then bisect; else the best tried."""
        low, high = 0, 1  # low: known to fail
        while not self.gate(ranked, min(high, len(ranked))) and high < len(ranked):
            low, high = high, high * 2
        high = min(high, len(ranked))
        if not self.tried[high].validation.passed:
            return max(self.tried, key=lambda count: self.tried[count].validation.margin)
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if self.gate(ranked, middle) else (middle, high)
        return high

    def latency(self, chosen: Any) -> dict[str, float] | None:
        """Batch-1 median latency all quantized and as chosen; None where the files cannot run here (a stand-in's
        speed says nothing of the target's)."""
        from edgefm.bench.timing import time_calls

        if self.context.target.cannot_run_here():
            return None
        feed = self.attempt.request.calibration_feeds[0]
        return {label: float(np.median(time_calls(lambda s=s: s.run(feed), 2, LATENCY_ITERS)))
                for label, s in (("all_quantized", self.base_session), ("chosen", chosen))}
