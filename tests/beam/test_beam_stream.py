"""FitWindows on the BundleBasedDirectRunner with TestStream: windows arriving out of order,
watermark advances, late data (dropped and counted, or an error), per key.

Outputs of the stateful DoFn are collected with a recording DoFn (assert_that is not
reliable with state and timers, apache/beam #18987)."""

from __future__ import annotations

import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing import test_stream
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp
from reference import assert_state_close

from mxnorm_spark import Moments, MXNormState
from mxnorm_spark.beam import LATE_TAG, STATES_TAG, FitMXNorm, FitWindows, LateWindow, WriteState
from mxnorm_spark.core.errors import LateRowsError
from mxnorm_spark.core.state import StateOptions
from mxnorm_spark.store import read_state

pytestmark = pytest.mark.slow

_RECORDED: dict[str, list[Any]] = defaultdict(list)
_LOCK = threading.Lock()


class Record(beam.DoFn):
    """Appends every element to ``_RECORDED[name]`` (the DirectRunner runs in this process)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def process(self, element: Any) -> None:
        with _LOCK:
            _RECORDED[self.name].append(element)


def _options() -> PipelineOptions:
    opts = PipelineOptions([])
    opts.view_as(StandardOptions).streaming = True
    return opts


def _rows(rng: np.random.Generator, n: int, t: float, **extra: Any) -> list[Any]:
    xs = rng.normal(1e6, 3.0, size=(n, 2))
    return [
        TimestampedValue({"a": float(a), "b": float(b), **extra}, t + i * 1e-3)
        for i, (a, b) in enumerate(xs)
    ]


def _values(rows: list[Any]) -> np.ndarray:
    return np.array([[r.value["a"], r.value["b"]] for r in rows], dtype=np.float64)


OPTIONS = StateOptions(alpha=0.3, var_update="mixture")


def _run(name: str, stream: test_stream.TestStream, fit: FitWindows) -> dict[str, list[Any]]:
    for tag in (STATES_TAG, LATE_TAG):
        _RECORDED.pop(f"{name}/{tag}", None)
    p = beam.Pipeline(runner=BundleBasedDirectRunner(), options=_options())
    out = p | stream | fit
    for tag in (STATES_TAG, LATE_TAG):
        _ = out[tag] | f"Record{tag}" >> beam.ParDo(Record(f"{name}/{tag}"))
    result = p.run()
    result.wait_until_finish()
    got: dict[str, Any] = {tag: list(_RECORDED[f"{name}/{tag}"]) for tag in (STATES_TAG, LATE_TAG)}
    return got


def test_windows_out_of_order_fold_in_window_order_and_late_rows_are_dropped(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(7)
    w1 = _rows(rng, 40, 15.0)  # window [10, 20) arrives first
    w0 = _rows(rng, 30, 2.0)  # window [0, 10) after it
    late = _rows(rng, 5, 3.0)  # window [0, 10) again, after it was folded
    w2 = _rows(rng, 25, 21.0)
    # Window [30, 40) has rows but no valid value: an empty batch (counted, state kept).
    w3 = [TimestampedValue({"a": None, "b": float("nan")}, 31.0)]
    stream = (
        test_stream.TestStream()
        .add_elements(w1)
        .add_elements(w0)
        .advance_watermark_to(20)
        .add_elements(late)
        .add_elements(w2 + w3)
        .advance_watermark_to_infinity()
    )
    got = _run("global", stream, FitWindows(["a", "b"], window_size=10, options=OPTIONS))
    states = got[STATES_TAG]
    assert [s.last_batch_id for s in states] == [0, 10_000_000, 20_000_000, 30_000_000]
    assert [s.batches_seen for s in states] == [1, 2, 3, 4]
    # The numpy core over the same windows in window order; the late rows never enter.
    expected = MXNormState.create(["a", "b"], options=OPTIONS)
    for i, w in enumerate([w0, w1, w2]):
        expected = expected.update(Moments.from_array(_values(w)))
        assert_state_close(states[i].mean, states[i].var, expected.mean, expected.var)
        assert states[i].count.tolist() == expected.count.tolist()
    # The empty window changes nothing but counts.
    assert states[3].mean.tolist() == states[2].mean.tolist()
    assert states[3].var.tolist() == states[2].var.tolist()
    assert got[LATE_TAG] == [LateWindow(None, Timestamp(0), Timestamp(10), 5)]
    # Stream == backfill: the same rows (not the late ones) with the window as batch value.
    rows = [{**r.value, "w": r.timestamp.micros // 10_000_000} for r in w0 + w1 + w2 + w3]
    path = tmp_path / "backfill.json"
    with beam.Pipeline(runner=FnApiRunner()) as p:
        _ = (
            p
            | beam.Create(rows)
            | FitMXNorm(["a", "b"], batch_col="w", options=OPTIONS)
            | WriteState(path)
        )
    backfill = read_state(str(path))
    assert backfill.batches_seen == states[3].batches_seen
    assert backfill.count.tolist() == states[3].count.tolist()
    assert_state_close(states[3].mean, states[3].var, backfill.mean, backfill.var)


def test_per_key_windows_and_late_rows_per_key() -> None:
    rng = np.random.default_rng(8)
    a0, b0 = _rows(rng, 10, 1.0, k="a"), _rows(rng, 12, 4.0, k="b")
    a1 = _rows(rng, 9, 12.0, k="a")
    late_b = _rows(rng, 3, 5.0, k="b")
    nulls = _rows(rng, 4, 6.0, k=None)  # no entity: in no key's state
    stream = (
        test_stream.TestStream()
        .add_elements(a1 + nulls)
        .add_elements(b0 + a0)
        .advance_watermark_to(25)
        .add_elements(late_b)
        .advance_watermark_to_infinity()
    )
    fit = FitWindows(["a", "b"], window_size=10, options=OPTIONS, key_cols=["k"])
    got = _run("keyed", stream, fit)
    by_key: dict[Any, list[MXNormState]] = defaultdict(list)
    for key, state in got[STATES_TAG]:
        by_key[key].append(state)
    assert sorted(by_key) == [("a",), ("b",)]
    start = MXNormState.create(["a", "b"], options=OPTIONS)
    exp_a = start.update(Moments.from_array(_values(a0)))
    exp_a1 = exp_a.update(Moments.from_array(_values(a1)))
    exp_b = start.update(Moments.from_array(_values(b0)))
    for got_s, exp in zip(by_key[("a",)], [exp_a, exp_a1], strict=True):
        assert_state_close(got_s.mean, got_s.var, exp.mean, exp.var)
    (got_b,) = by_key[("b",)]
    assert_state_close(got_b.mean, got_b.var, exp_b.mean, exp_b.var)
    assert got_b.count.tolist() == [12.0, 12.0]
    assert [(w.key, w.rows) for w in got[LATE_TAG]] == [(("b",), 3)]


def test_late_rows_error_names_the_window() -> None:
    rng = np.random.default_rng(9)
    stream = (
        test_stream.TestStream()
        .add_elements(_rows(rng, 5, 1.0))
        .advance_watermark_to(30)
        .add_elements(_rows(rng, 2, 2.0))
        .advance_watermark_to_infinity()
    )
    fit = FitWindows(["a", "b"], window_size=10, late_rows="error")
    with pytest.raises(Exception, match="came after the window was folded") as info:
        _run("error", stream, fit)
    assert "LateRowsError" in str(info.value) or isinstance(info.value, LateRowsError)
    assert "2 row(s) of the window [Timestamp(0), Timestamp(10))" in str(info.value)
