"""The pure parts of mxnorm_spark.feast (no Feast, no Spark): the clock, the spec, the
view's function text; bad input gets a named error."""

from __future__ import annotations

import datetime as dt

import pytest

from mxnorm_spark.core.errors import InvalidParameterError
from mxnorm_spark.feast import BatchClock, ViewSpec, normalize_inputs, udf_source

UTC = dt.timezone.utc


def test_clock_starts_of_each_kind_of_batch_value() -> None:
    clock = BatchClock(origin=dt.datetime(2026, 1, 1, 6, tzinfo=UTC), period=dt.timedelta(hours=6))
    assert clock.start(3) == dt.datetime(2026, 1, 1, 0, tzinfo=UTC) + dt.timedelta(hours=24)
    assert BatchClock().start(dt.date(2026, 2, 3)) == dt.datetime(2026, 2, 3, tzinfo=UTC)
    naive = dt.datetime(2026, 2, 3, 4, 5)
    assert BatchClock().start(naive) == naive.replace(tzinfo=UTC)
    other = dt.datetime(2026, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert BatchClock().start(other) == dt.datetime(2026, 2, 3, 2, 5, tzinfo=UTC)
    assert clock.final_at([0, 1]) == clock.start(1) + dt.timedelta(hours=6)


def test_clock_rejects_what_it_cannot_time() -> None:
    with pytest.raises(InvalidParameterError, match="origin="):
        BatchClock().start(4)
    with pytest.raises(InvalidParameterError, match="must rise"):
        BatchClock(starts={"b": dt.datetime(2026, 1, 2), "a": dt.datetime(2026, 1, 3)}).starts_of(
            ["a", "b"]
        )
    with pytest.raises(InvalidParameterError, match="no start"):
        BatchClock(starts={}).start("x")
    with pytest.raises(InvalidParameterError, match="positive"):
        BatchClock(period=dt.timedelta(0))


def test_spec_round_trips_and_rejects_bad_names() -> None:
    spec = ViewSpec(
        name="m",
        features=("a",),
        outputs=("a_z",),
        state_path="/s",
        key_cols=("k",),
        entity_types={"k": "int64"},
        key_state_path="/k",
    )
    assert ViewSpec.from_json(spec.to_json()) == spec
    with pytest.raises(InvalidParameterError, match="also input features"):
        ViewSpec(name="m", features=("a",), outputs=("a",), state_path="/s")
    with pytest.raises(InvalidParameterError, match="cannot name a Feast field"):
        ViewSpec(name="m", features=("v[0]",), outputs=("z",), state_path="/s")
    with pytest.raises(InvalidParameterError, match="needs a type"):
        ViewSpec(
            name="m",
            features=("a",),
            outputs=("z",),
            state_path="/s",
            key_cols=("k",),
            key_state_path="/k",
        )


def test_view_function_text_rebuilds_alone() -> None:
    """What Feast does with it (feast #6815): exec the text alone, then call it."""
    text = udf_source("view", (("a", "a_z"),), True)
    namespace: dict[str, object] = {}
    exec(text, namespace)
    fn = namespace["view"]
    inputs = {
        "a": [1.0, 2.0, None, 7],
        "a__mean": [0.5, 0.5, 0.5, None],
        "a__scale": [2.0, 2.0, 2.0, None],
        "a__key_mean": [None, 1.5, 1.5, None],
        "a__key_scale": [None, 0.25, 0.25, None],
    }
    assert fn(inputs) == {"a_z": [(1.0 - 0.5) / 2.0, (2.0 - 1.5) / 0.25, None, None]}  # type: ignore[operator]
    assert fn(inputs) == normalize_inputs(inputs, (("a", "a_z"),), True)  # type: ignore[operator]
