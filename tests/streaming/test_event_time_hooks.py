"""The ``on_commit`` hook of event-time streams (global and keyed): it runs for each version
that folds batches, with the state after the newest of them, and again on a replay.

Oracles: the watermark rule worked out here from the days alone (which micro-batch folds
which days), the DESIGN.md reference loop over the folded days (within 1e-12) and the
committed version of the batch id the hook is given (the same bits). Reading a keyed
event-time state directory: every key's state against a fold of its exact partials, and
export-keys refused by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from reference import Reference, assert_state_close

from mxnorm_spark import MXNormState
from mxnorm_spark.core.event_time import EventTime
from mxnorm_spark.core.state import StateOptions

COLS = ["a", "b"]
ALPHA = 0.4
LATENESS = 1
# Days per micro-batch; with a lateness of 1 the watermark is the largest day so far - 1.
MICRO_BATCHES = [[0, 1], [1, 2], [2, 1], [4, 3]]


def frames(seed: int = 4) -> list[pd.DataFrame]:
    rng = np.random.default_rng(seed)
    out, first = [], 0
    for days in MICRO_BATCHES:
        n = 6 * len(days)
        out.append(
            pd.DataFrame(
                {
                    "id": np.arange(first, first + n, dtype=np.int64),
                    "sensor": np.resize(np.array(["s0", "s1", None], dtype=object), n),
                    "day": np.resize(np.array(days, dtype=np.int64), n),
                    "a": rng.normal(5.0, 2.0, n),
                    "b": 1e6 + rng.normal(0.0, 1.0, n),
                }
            )
        )
        first += n
    return out


def expected_calls() -> list[tuple[int, int]]:
    """(micro-batch, newest day folded) for each micro-batch that folds a day: a day folds
    once it is below the largest day seen minus the lateness; the close folds the rest."""
    calls: list[tuple[int, int]] = []
    folded, seen = -1, set[int]()
    for i, days in enumerate(MICRO_BATCHES):
        seen |= set(days)
        closed = sorted(d for d in seen if d < max(seen) - LATENESS)
        if closed and closed[-1] > folded:
            folded = closed[-1]
            calls.append((i, folded))
    return calls


def reference_through(rows: pd.DataFrame, day: int) -> Reference:
    ref = Reference(alpha=ALPHA)
    for _, group in rows[rows["day"] <= day].groupby("day", sort=True):
        ref.adapt(group[COLS].to_numpy(dtype=np.float64))
    return ref


@pytest.mark.spark
@pytest.mark.parametrize("keyed", [False, True], ids=["global", "keyed"])
def test_on_commit_gets_the_newest_folded_state_once_per_folding_version(
    spark: Any, tmp_path: Path, keyed: bool
) -> None:
    from mxnorm_spark.store import StateStore
    from mxnorm_spark.streaming.keyed import KeyOptions
    from mxnorm_spark.streaming.updater import MXNormStream

    calls: list[tuple[int, MXNormState]] = []
    stream = MXNormStream(
        spark, str(tmp_path / "state"), cols=COLS, output=str(tmp_path / "out"),
        apply_at="before", options=StateOptions(alpha=ALPHA), progress=None,
        event_time=EventTime(batch_col="day", lateness=LATENESS),
        keys=KeyOptions(("sensor",)) if keyed else None,
        on_commit=lambda batch_id, state: calls.append((batch_id, state)),
    )  # fmt: skip
    parts = frames()
    for i, pdf in enumerate(parts):
        stream.foreach_batch(spark.createDataFrame(pdf), i)
    last = len(parts) - 1
    stream.foreach_batch(spark.createDataFrame(parts[last]), last)  # Spark replays the last
    final = stream.close_open_batches()
    again = stream.close_open_batches()  # the close called again: as a replay
    rows = pd.concat(parts)
    want = expected_calls()
    assert want == [(1, 0), (3, 2)]  # the data folds in two micro-batches, then the close
    closing = (last + 1, int(rows["day"].max()))
    want = [*want, want[-1], closing, closing]
    assert [b for b, _ in calls] == [b for b, _ in want]
    store = StateStore(tmp_path / "state")
    for (batch_id, state), (_, day) in zip(calls, want, strict=True):
        committed = store.get(batch_id)
        assert committed is not None and state.to_json() == committed.to_json()
        ref = reference_through(rows, day)
        assert ref.mean is not None and ref.var is not None
        assert_state_close(state.mean, state.var, ref.mean, ref.var, 1e-12)
        assert state.batches_seen == day + 1  # one fold per day, days 0 ..
    assert final is not None and again is not None
    assert final.to_json() == again.to_json() == calls[-1][1].to_json()


# ---- reading a keyed event-time state directory ------------------------------------------------
@pytest.mark.spark
def test_key_states_are_read_from_the_directory_and_export_keys_refuses_it(
    spark: Any, tmp_path: Path
) -> None:
    from mxnorm_spark.core.errors import InvalidParameterError, StateConflictError
    from mxnorm_spark.core.open_batches import exact_partials
    from mxnorm_spark.streaming.keyed import KeyOptions, export_latest
    from mxnorm_spark.streaming.keyed_events import read_key_states
    from mxnorm_spark.streaming.updater import MXNormStream

    state_dir = str(tmp_path / "state")
    stream = MXNormStream(
        spark, state_dir, cols=COLS, output=str(tmp_path / "out"), apply_at="before",
        options=StateOptions(alpha=ALPHA), progress=None,
        event_time=EventTime(batch_col="day"), keys=KeyOptions(("sensor",)),
    )  # fmt: skip
    first = frames()[0]  # days 0 and 1: day 0 folds
    stream.foreach_batch(spark.createDataFrame(first), 0)
    got = read_key_states(state_dir)
    assert {k: s.to_json() for k, s in got.items()} == {
        k: s.to_json() for k, s in read_key_states(stream).items()
    }
    want = {}  # each key's day-0 rows folded once, from their exact partials
    for (sensor,), group in first[first["day"] == 0].groupby(["sensor"]):
        x = group[COLS].to_numpy(dtype=np.float64)
        part = exact_partials(x, np.zeros(len(x), dtype=int), 1)[0]
        fresh = MXNormState.create(COLS, options=StateOptions(alpha=ALPHA))
        want[(sensor,)] = fresh.update(part.moments()).to_json()
    assert {k: s.to_json() for k, s in got.items()} == want
    with pytest.raises(InvalidParameterError, match=r"keyed event-time stream.*read_key_states"):
        export_latest(spark, state_dir, str(tmp_path / "export"))
    plain = MXNormStream(spark, str(tmp_path / "plain"), cols=COLS, output=str(tmp_path / "o2"),
                         progress=None)  # fmt: skip
    plain.foreach_batch(spark.createDataFrame(first[COLS]), 0)
    with pytest.raises(StateConflictError, match="not one of a keyed event-time stream"):
        read_key_states(str(tmp_path / "plain"))
