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

import numpy as np

from edgefm.contract.compare import cosine_rows
from edgefm.contract.errors import EdgefmError
from edgefm.contract.spec import describe_checks, margin

RANK_FEEDS = 4  # calibration feeds the ranking runs on (each trial opens one session and runs these)
MAX_LAYERS = 200  # past this (a real-size SD UNet has ~700), ranking one layer at a time takes hours: no search
LATENCY_ITERS = 10


def output_error(session, feeds: list[dict], references: list[dict]) -> float:
    errors = []
    for feed, ref in zip(feeds, references):
        got = session.run(feed)
        errors += [1.0 - float(cosine_rows(got[name], ref[name]).mean()) for name in ref]
    return float(np.mean(errors))


def search(context, name: str, attempt: tuple, validate) -> tuple | None:
    """From a below-gate `attempt` (scheme, dir, entry, validation, request): (the passing attempt with the fewest
    layers in float, or the best one tried if none passes; a session of it), or None where the target cannot
    restore layers."""
    from edgefm.bench.timing import time_calls

    scheme, attempt_dir, compiled, validation, request = attempt
    layers = context.target.quantized_layers(request, compiled.file)
    if len(layers) > MAX_LAYERS or len(set(layers)) < len(layers) or "" in layers:
        context.log(f"{name}: {len(layers)} quantized layers (past {MAX_LAYERS}, or unnamed / duplicate names); "
                    "no search for layers to keep in float")
        return None
    if not layers:
        return None
    context.log(f"{name}: below its gates after every scheme; measuring which of {len(layers)} layers to keep in float")
    work = attempt_dir.parent / "float-layers"
    feeds = request.calibration_feeds[:RANK_FEEDS]
    references = [context.reference[name].run(feed) for feed in feeds]

    def trial(kept: list[str], label: str):
        where = work / label
        where.mkdir(parents=True)
        params = {**scheme.params, "float_layers": kept}
        trial_scheme = dataclasses.replace(scheme, name=f"{scheme.name}+{len(kept)}-float", params=params)
        moved = dataclasses.replace(request, out_dir=where, scheme=trial_scheme)
        file = context.target.restore_layers(request, compiled.file, moved, context.options)
        entry = context._entry(request.entry, request.precision, trial_scheme, file, where)
        return trial_scheme, where, entry, context.target.validation_session(moved, entry, context.options), moved

    base_session = context.target.validation_session(request, compiled, context.options)
    base_error = output_error(base_session, feeds, references)
    contributions = {}
    for index, layer in enumerate(layers):
        _, where, _, session, _ = trial([layer], f"rank-{index}")
        contributions[layer] = base_error - output_error(session, feeds, references)
        del session
        shutil.rmtree(where)
        if (index + 1) % 10 == 0 or index + 1 == len(layers):
            context.log(f"{name}: error contribution measured for {index + 1}/{len(layers)} layers")
    ranked = sorted(layers, key=lambda layer: -contributions[layer])

    tried = {}

    def gate(count: int):
        if count not in tried:
            trial_scheme, where, entry, session, moved = trial(ranked[:count], f"keep-{count}")
            static = context.target.static_checks(moved, entry, context.options)
            broken = [f"{c.metric} {c.value:.4g} (gate {c.gate})" for c in static if not c.passed]
            if broken:  # as on the ladder: a file that is not what was asked is a conversion bug, never kept
                raise EdgefmError(f"{name}: the {context.target.name} file with {count} layer(s) back in float fails "
                                  f"its checks ({', '.join(broken)}); please report it with `edgefm --version`")
            record = validate(session, static)
            tried[count] = (trial_scheme, where, entry, record, moved)  # sessions are released: a UNet is GBs
            context.log(f"{name}: {count} layer(s) in float -> {describe_checks(record)} -> "
                        f"{'pass' if record['passed'] else 'below gate'}")
        return tried[count][3]["passed"]

    low, high = 0, 1  # low: known to fail; find a passing high by doubling, then bisect between
    while not gate(min(high, len(ranked))) and high < len(ranked):
        low, high = high, high * 2
    high = min(high, len(ranked))
    if tried[high][3]["passed"]:
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if gate(middle) else (middle, high)
    best = high if tried[high][3]["passed"] else max(tried, key=lambda count: margin(tried[count][3]))
    trial_scheme, where, entry, record, moved = tried[best]
    session = context.target.validation_session(moved, entry, context.options)
    feed = request.calibration_feeds[0]
    latency = None if context.target.cannot_run_here() else {  # a stand-in's speed says nothing of the target's
        label: float(np.median(time_calls(lambda s=s: s.run(feed), 2, LATENCY_ITERS)))
        for label, s in (("all_quantized", base_session), ("chosen", session))}
    record["float_layers"] = {
        "from_scheme": scheme.name, "kept": ranked[:best],
        "ranking": {"measured_on": f"{len(feeds)} calibration feeds",
                    "metric": "drop of mean (1 - cosine) over outputs vs the fp32 export with the layer alone in float",
                    "all_quantized_error": base_error,
                    "layers": [{"name": layer, "contribution": contributions[layer]} for layer in ranked]},
        "trials": [{"layers": count, "passed": t[3]["passed"], "checks": {c["metric"]: c["value"] for c in t[3]["checks"]}}
                   for count, t in sorted(tried.items())],
        "latency_ms_batch1": latency}
    return (trial_scheme, where, entry, record, moved), session
