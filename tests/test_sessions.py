"""Sessions under hostile use: several threads on one session, non-finite and out-of-range feeds, fuzzed feeds."""
from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edgefm
from edgefm.contract.errors import FeedError
from edgefm.contract.manifest import Manifest
from edgefm.contract.spec import TensorSpec
from edgefm.runtimes.session import Session

COMPONENT = {"dinov2": "image_encoder", "clip": "text_encoder"}


@pytest.fixture(scope="module")
def session(dinov2_exported, clip_exported, compiled):
    """session(family, runtime) -> the family's tested component, loaded once per (family, runtime)."""
    loaded = {}

    def get(family: str, runtime: str) -> Session:
        if (family, runtime) not in loaded:
            directory = {"dinov2": dinov2_exported, "clip": clip_exported}[family] if runtime == "onnxruntime" \
                else compiled(family, "fp32", runtime)
            loaded[family, runtime] = edgefm.load(directory)[COMPONENT[family]]
        return loaded[family, runtime]

    return get


def _feeds(session: Session, rng: np.random.Generator, batch: int) -> dict:
    """Valid feeds: normal floats, integers drawn over the spec's whole range."""
    feeds = session.example_feeds(rng, batch=batch)
    for spec in session.inputs:
        if spec.range is not None:
            feeds[spec.name] = rng.integers(spec.range[0], spec.range[1] + 1, feeds[spec.name].shape)
    return feeds


def _run_together(session: Session, feeds: list[dict], repeats: int = 8) -> list[list[dict]]:
    """One thread per feed, all released at once, each running its feed `repeats` times."""
    start = threading.Barrier(len(feeds))

    def work(mine):
        start.wait()
        return [session.run(mine) for _ in range(repeats)]

    with ThreadPoolExecutor(len(feeds)) as pool:
        return list(pool.map(work, feeds))


def _assert_each_thread_gets_its_own(session: Session, feeds: list[dict]) -> None:
    serial = [session.run(f) for f in feeds]
    # control: no two threads' results are alike (batch sizes or values), so a result handed to the wrong
    # thread cannot pass the comparison below
    for a, b in itertools.combinations(serial, 2):
        assert any(x.shape != y.shape or not np.allclose(x, y, atol=1e-3) for x, y in zip(a.values(), b.values()))
    for want, runs in zip(serial, _run_together(session, feeds)):
        for got in runs:
            for name, value in want.items():
                np.testing.assert_allclose(got[name], value, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("family", ["dinov2", "clip"])
def test_concurrent_runs_return_each_thread_its_own_result(session, family, runtime):
    one = session(family, runtime)
    rng = np.random.default_rng(7)
    _assert_each_thread_gets_its_own(one, [_feeds(one, rng, batch) for batch in (1, 2, 1, 3)])


def test_one_shared_openvino_request_fails_the_same_check(session, monkeypatch):
    """Negative control: the OpenVINO session as it was (one infer request for every caller) fails the check."""
    one = session("dinov2", "openvino")
    request = one._compiled.create_infer_request()

    def single_request(feeds):
        result = request.infer(feeds, share_outputs=False)
        return {name: result[port] for name, port in one._outputs.items()}

    monkeypatch.setattr(one, "_run", single_request)
    rng = np.random.default_rng(7)
    with pytest.raises((RuntimeError, AssertionError), match="Infer Request is busy|Not equal to tolerance"):
        _assert_each_thread_gets_its_own(one, [_feeds(one, rng, batch) for batch in (1, 2, 1, 3)])


class _OneBuffer(Session):
    """A backend with one buffer per session, like TensorRT's context: overlapping runs mix callers' results."""

    def _run(self, feeds):
        self.buffer = feeds["x"]
        time.sleep(0.002)
        return {"y": self.buffer * 2}


@pytest.mark.parametrize("reentrant", [False, True])
def test_sessions_that_are_not_reentrant_run_one_at_a_time(reentrant):
    kind = type("Backend", (_OneBuffer,), {"REENTRANT": reentrant})
    one = kind("toy", [TensorSpec("x", "float32", ("batch", 3))], [TensorSpec("y", "float32", ("batch", 3))])
    feeds = [{"x": np.full((1, 3), i, np.float32)} for i in range(4)]
    if reentrant:  # negative control: without the lock this backend hands results to the wrong threads
        with pytest.raises(AssertionError, match="Not equal to tolerance"):
            _assert_each_thread_gets_its_own(one, feeds)
    else:
        _assert_each_thread_gets_its_own(one, feeds)


def test_backends_with_shared_state_declare_it():
    from edgefm.runtimes.coreml import CoreMLSession
    from edgefm.runtimes.onnxruntime import OnnxRuntimeSession
    from edgefm.runtimes.openvino import OpenVinoSession
    from edgefm.runtimes.tensorrt import TensorRTSession
    from edgefm.runtimes.torch_session import TorchWrapperSession

    assert not any(s.REENTRANT for s in (CoreMLSession, TensorRTSession, TorchWrapperSession))
    assert OnnxRuntimeSession.REENTRANT and OpenVinoSession.REENTRANT


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_feeds_are_refused(session, runtime, bad):
    one = session("dinov2", runtime)
    feeds = one.example_feeds(np.random.default_rng(0), batch=2)
    out = one.run(feeds)  # control: the same feeds, finite, run
    assert out["cls_embedding"].shape == (2, 64) and np.isfinite(out["cls_embedding"]).all()
    feeds["pixel_values"][1, 2, 3, 4] = feeds["pixel_values"][0, 0, 0, 0] = bad
    with pytest.raises(FeedError, match=r"input 'pixel_values' .* has 2 non-finite value\(s\) \(NaN / Inf\) of "
                                        r"301056; replace them") as refused:
        one.run(feeds)
    assert "\n" not in str(refused.value)


def test_token_ids_outside_the_vocabulary_are_refused(session, clip_exported, compiled):
    vocab = 514  # the tiny preset's text vocab_size
    for directory in (clip_exported, compiled("clip", "fp32", "openvino")):  # compiling keeps the export's specs
        assert Manifest.load(directory).components["text_encoder"].inputs[0].range == (0, vocab - 1)
    for runtime in ("onnxruntime", "openvino"):
        one = session("clip", runtime)
        ids = np.full((2, 77), vocab - 1, np.int64)
        ids[0, :3] = 0
        assert one.run({"input_ids": ids})["text_embeds"].shape == (2, 32)  # control: both ends of the range run
        for bad in (vocab, -1, np.iinfo(np.int64).max):
            wrong = ids.copy()
            wrong[1, 5] = bad
            with pytest.raises(FeedError, match=rf"input 'input_ids' .* has value {bad} outside its range "
                                                rf"0\.\.{vocab - 1} \(1 such value\(s\)\)"):
                one.run({"input_ids": wrong})


def test_without_the_range_check_backends_fail_or_wrap(session):
    """Why the check exists: ONNX Runtime raises its own error on an id past the vocabulary, and reads a negative
    id from the end of the table without a word (-2 is token 512)."""
    one = session("clip", "onnxruntime")
    ids = np.zeros((1, 77), np.int64)
    ids[0, 10] = 513  # the end-of-text token the text embedding is pooled at
    with pytest.raises(Exception) as raw:
        one._run({"input_ids": np.where(np.arange(77) == 5, 514, ids)})
    assert not isinstance(raw.value, FeedError)
    negative = one._run({"input_ids": np.where(np.arange(77) == 5, -2, ids)})["text_embeds"]
    wrapped = one._run({"input_ids": np.where(np.arange(77) == 5, 512, ids)})["text_embeds"]
    other = one._run({"input_ids": np.where(np.arange(77) == 5, 511, ids)})["text_embeds"]
    np.testing.assert_allclose(negative, wrapped, atol=1e-6)
    assert not np.allclose(negative, other, atol=1e-3)  # control: the id at position 5 matters


def test_ranges_are_written_only_when_set():
    plain = {"name": "x", "dtype": "float32", "shape": ["batch", 3]}
    assert TensorSpec.from_json(plain).range is None and TensorSpec.from_json(plain).to_json() == plain
    ranged = TensorSpec("ids", "int64", ("batch", 77), (0, 9))
    assert ranged.to_json()["range"] == [0, 9] and TensorSpec.from_json(ranged.to_json()) == ranged
    assert ranged.describe() == "ids: int64[batch, 77] in 0..9"


# -- fuzzing: any feeds either run to outputs of the declared shapes, or are refused with a FeedError ------------
SPECIALS = [np.nan, np.inf, -np.inf, 3e38, -3e38, 1e-45, np.iinfo(np.int64).max, np.iinfo(np.int64).min, -1, 0]
DTYPES = ["float32", "float64", "float16", "int64", "int32", "uint8", "bool", "complex64", "object", ">f4"]


@st.composite
def _value(draw, spec: TensorSpec, dims: dict):
    kind = draw(st.sampled_from(["array"] * 12 + ["list", "scalar", "zero-d", "none", "text"]))
    if kind == "none":
        return None
    if kind == "text":
        return draw(st.text(max_size=5))
    if kind == "scalar":
        return draw(st.one_of(st.floats(), st.integers(), st.sampled_from([np.float32(1), np.int64(3)])))
    if kind in ("zero-d", "list"):
        value = np.array(draw(st.floats(width=32)), np.float32)
        return value if kind == "zero-d" else draw(st.sampled_from([[1.0, 2.0], [[0, 1]], [], value.tolist()]))
    dtype = draw(st.sampled_from(DTYPES)) if draw(st.integers(0, 3)) == 3 else spec.dtype
    for d in spec.shape:
        if isinstance(d, str) and d not in dims:  # inputs sharing a symbolic dim get one size
            dims[d] = draw(st.integers(1, 3))
    shape = [dims.get(d, d) for d in spec.shape]
    if draw(st.integers(0, 5)) == 5:  # a wrong rank or size now and then
        shape = draw(st.lists(st.integers(0, 80), max_size=5))
    if shape and spec.range is not None and draw(st.booleans()):
        shape[-1] = draw(st.integers(0, 90))  # clip's sequence: 1..77 runs
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if spec.range is not None:
        value = rng.integers(spec.range[0], spec.range[1] + 1, shape)
    else:
        value = rng.standard_normal(shape) * draw(st.sampled_from([1.0, 1e3, 1e30]))
    with np.errstate(all="ignore"):  # casts that overflow are part of the fuzz
        value = np.asarray(value).astype(dtype)
        specials = draw(st.lists(st.sampled_from(SPECIALS), min_size=1, max_size=3)) if draw(st.integers(0, 2)) else []
        for special in specials:
            if value.size:
                try:
                    value.flat[rng.integers(value.size)] = special
                except (OverflowError, ValueError):  # that value has no place in this dtype
                    pass
    layout = draw(st.sampled_from(["c", "fortran", "reversed", "strided", "read-only"]))
    if layout == "fortran":
        value = np.asfortranarray(value)
    elif layout == "reversed" and value.ndim:
        value = value[::-1].copy()[::-1]
    elif layout == "strided" and value.ndim:
        value = np.repeat(value, 2, axis=-1)[..., ::2]
    elif layout == "read-only":
        value.flags.writeable = False
    return value


@st.composite
def _feeds_for(draw, session: Session):
    dims: dict = {}
    feeds = {spec.name: draw(_value(spec, dims)) for spec in session.inputs if draw(st.integers(0, 19)) < 19}
    if draw(st.integers(0, 4)) == 4:  # now and then an unknown input, named by a str or not
        feeds[draw(st.one_of(st.text(max_size=4), st.integers(), st.just("input_ids")))] = \
            draw(_value(session.inputs[0], dims))
    return draw(st.sampled_from([feeds] * 16 + [list(feeds.items()), None, tuple(feeds.values())]))


@pytest.mark.parametrize("family", ["dinov2", "clip"])
def test_fuzzed_feeds_run_or_are_refused(session, family):
    one = session(family, "onnxruntime")

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(_feeds_for(one))
    def check(feeds):
        try:
            out = one.run(feeds)
        except FeedError as refused:
            assert "\n" not in str(refused)
            return
        sizes = {d: feeds[s.name].shape[axis] for s in one.inputs for axis, d in enumerate(s.shape)
                 if isinstance(d, str)}
        for spec in one.outputs:
            assert out[spec.name].shape == tuple(sizes.get(d, d) for d in spec.shape)
            assert out[spec.name].dtype == np.dtype(spec.dtype)

    check()
