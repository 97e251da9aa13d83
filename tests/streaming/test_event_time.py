"""Event-time streams: batches by the data's batch value, folded when the watermark passes.

Oracles: exact fractions (the open-batch sums), the DESIGN.md reference loop over the
batch values, the backfill's ``moments_by_batch`` fold, and a pure-numpy fold of
:func:`exact_partials` per batch value (the stream must give its bits exactly, whatever the
micro-batches, restarts and crashes).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from event_time_crash import assert_same_bits, kill_at_each_fault_point
from reference import Reference, assert_state_close

from mxnorm_spark import MXNormState
from mxnorm_spark.core.errors import InvalidParameterError, LateRowsError, StateConflictError
from mxnorm_spark.core.event_time import EventSection, EventTime
from mxnorm_spark.core.moments import Moments
from mxnorm_spark.core.open_batches import SCALE, OpenBatch, exact_partials
from mxnorm_spark.core.state import StateOptions

COLS = ["a", "b"]
ALPHA = 0.3
LATENESS = 1
# Days per file: out of order across files, never more than LATENESS behind the largest day
# of the files before, so no row is late with any grouping of the files into micro-batches.
DAYS = [[0, 1], [1, 2, 0], [3, 2, 1], [4, 3, 2], [5, 4]]


# ---- the exact open-batch partials (no Spark) -----------------------------------------------
def exact_sums(values: np.ndarray) -> tuple[Fraction, Fraction]:
    fr = [Fraction(float(v)) for v in values if np.isfinite(v)]
    return sum(fr, Fraction(0)), sum((v * v for v in fr), Fraction(0))


@pytest.mark.parametrize(
    "column",
    [
        np.array([1e9 + 1.0, 1e9 + 3.0, -2.5, np.nan, np.inf]),
        np.array([5e-324, 3.3e-310, -1e-300, 1.0]),  # subnormals: their squares underflow
        np.array([1.7e308, -1.7e308, 1e154, 3.0]),  # squares far beyond float64
        1e15 + np.arange(7.0),
    ],
)
def test_open_batch_sums_are_exact(column: np.ndarray) -> None:
    part = exact_partials(column[:, None], np.zeros(len(column), dtype=int), 1)[0]
    s1, s2 = exact_sums(column)
    assert Fraction(part.sum1[0], 1 << SCALE) == s1
    assert Fraction(part.sum2[0], 1 << SCALE) == s2
    assert part.rows == len(column) and part.count == (int(np.isfinite(column).sum()),)


def test_open_batch_moments_are_the_exact_moments_rounded_once() -> None:
    x = 1e9 + np.random.default_rng(3).normal(0.0, 1.0, 500)
    m = exact_partials(x[:, None], np.zeros(500, dtype=int), 1)[0].moments()
    s1, s2 = exact_sums(x)
    assert m.mean[0] == float(s1 / 500)
    assert m.m2[0] == float(s2 - s1 * s1 / 500)
    ref = Moments.from_array(x[:, None])  # the float64 two-pass partial: within an ulp or two
    assert abs(m.var[0] - ref.var[0]) <= 1e-13 * ref.var[0]


def test_open_batches_merge_to_the_same_bits_however_the_rows_are_split() -> None:
    rng = np.random.default_rng(11)
    x = np.column_stack([rng.normal(0, 1, 300), 1e12 + rng.normal(0, 1, 300)])
    x[rng.random((300, 2)) < 0.05] = np.nan
    codes = rng.integers(0, 3, 300)
    whole = exact_partials(x, codes, 3)
    for split in (1, 17, 150, 299):
        order = rng.permutation(300)  # any order and any split
        a = exact_partials(x[order[:split]], codes[order[:split]], 3)
        b = exact_partials(x[order[split:]], codes[order[split:]], 3)
        for g in range(3):
            merged = b[g].merge(a[g])
            assert merged == whole[g]
            assert merged.moments().to_dict() == whole[g].moments().to_dict()
    assert OpenBatch.from_dict(whole[0].to_dict()) == whole[0]


def test_open_batch_sums_stay_exact_over_blocks_and_flushes(monkeypatch: Any) -> None:
    import mxnorm_spark.core.open_batches as ob

    monkeypatch.setattr(ob, "_BLOCK_ROWS", 512)
    rng = np.random.default_rng(4)
    x = rng.normal(0, 1, (3_000, 1))
    x[1_000:] *= 1e200  # later blocks widen the exponent range, up and down
    x[2_500:] = 1e-300 * rng.normal(0, 1, (500, 1))
    codes = np.zeros(len(x), dtype=int)
    whole = exact_partials(x, codes, 1)[0]
    s1, s2 = exact_sums(x[:, 0])
    assert Fraction(whole.sum1[0], 1 << SCALE) == s1
    assert Fraction(whole.sum2[0], 1 << SCALE) == s2
    monkeypatch.setattr(ob, "CHUNK_ROWS", 1_200)  # the float bins drain to integers midway
    assert exact_partials(x, codes, 1)[0] == whole


# ---- the watermark and the fold (no Spark) --------------------------------------------------
def _parts(rows: dict[Any, np.ndarray]) -> dict[Any, tuple[OpenBatch, int | None]]:
    zeros = {v: np.zeros(len(x), dtype=int) for v, x in rows.items()}
    return {v: (exact_partials(x, zeros[v], 1)[0], None) for v, x in rows.items()}


def test_batches_fold_in_ascending_order_once_the_watermark_passes_them() -> None:
    spec = EventTime(batch_col="day", lateness=2)
    rng = np.random.default_rng(2)
    x = {d: rng.normal(d, 1.0, (5, 1)) for d in range(8)}
    state = MXNormState.create(["a"], alpha=0.5)
    section = EventSection(spec=spec.to_dict())
    section, state, folds = section.advance(spec, state, _parts({3: x[3], 1: x[1], 4: x[4]}))
    assert [f.value for f in folds] == [1] and [v for v, _ in section.open] == [3, 4]
    # Day 2 arrives at the watermark (4 - 2): not late; day 6 moves it to 4.
    section, state, folds = section.advance(spec, state, _parts({2: x[2], 6: x[6]}))
    assert [f.value for f in folds] == [2, 3] and section.late_rows == 0
    ref = Reference(alpha=0.5)
    for d in (1, 2, 3):
        ref.adapt(x[d])
    assert ref.mean is not None and ref.var is not None
    assert_state_close(state.mean, state.var, ref.mean, ref.var, 1e-12)
    # Day 3 is folded now: its rows are late, counted and left out; the state is unchanged.
    section2, state2, folds = section.advance(spec, state, _parts({3: x[3], 5: x[5]}))
    assert section2.batch_late == 5 and section2.late_rows == 5 and section2.values == (5,)
    assert folds == [] and state2 is state
    with pytest.raises(LateRowsError, match="5 late row"):
        section.advance(replace_spec(spec, late_rows="error"), state, _parts({3: x[3]}))


def replace_spec(spec: EventTime, **changes: Any) -> EventTime:
    return EventTime(**{**{k: getattr(spec, k) for k in spec.to_dict()}, **changes})


def test_apply_before_state_is_every_batch_below_value_minus_lateness() -> None:
    spec = EventTime(batch_col="day", lateness=1)
    state = MXNormState.create(["a"], alpha=0.5)
    section = EventSection(spec=spec.to_dict())
    rows = {d: np.array([[float(d)], [d + 2.0]]) for d in range(6)}
    section, _, folds = section.advance(spec, state, _parts(rows))
    by_value = {f.value: f.state for f in folds}
    assert sorted(by_value) == [0, 1, 2, 3]  # largest 5, lateness 1: days < 4 folded
    for day in range(6):
        folded, got = section.state_for(spec, day, state)
        want = max((d for d in by_value if d < day - 1), default=None)
        assert folded == want and got is (state if want is None else by_value[want])


def test_windows_close_when_their_end_passes_the_watermark() -> None:
    hour = 3_600_000_000
    spec = EventTime(event_time="ts", window="1 hour", lateness="10 minutes")
    state = MXNormState.create(["a"])
    section = EventSection(spec=spec.to_dict())
    part = exact_partials(np.ones((2, 1)), np.zeros(2, dtype=int), 1)[0]
    # Windows 00:00 and 01:00; the largest event time 02:09:59 leaves 01:00 open...
    parts = {0: (part, hour // 2), hour: (part, 2 * hour + 10 * 60_000_000 - 1)}
    section, state, folds = section.advance(spec, state, parts)
    assert [f.value for f in folds] == [0] and [v for v, _ in section.open] == [hour]
    # ... and 02:10:00 closes it.
    section, state, folds = section.advance(spec, state, {hour: (part, 2 * hour + 600_000_000)})
    assert [f.value for f in folds] == [hour]


def test_the_section_of_a_version_is_checksummed(tmp_path: Path) -> None:
    import json

    from mxnorm_spark.core.errors import CorruptStateError
    from mxnorm_spark.store import StateStore, read_state

    store = StateStore(tmp_path)
    state = MXNormState.create(["a"]).update(Moments.from_array(np.array([[1.0], [2.0]])))
    section = EventSection(spec=EventTime(batch_col="day").to_dict(), largest=3, folds=1)
    store.commit(0, state, section=("event_time", section.to_json()))
    assert read_state(str(tmp_path)).to_json() == state.to_json()  # readers ignore it
    got = EventSection.from_json(store.section(0, "event_time"), "v0")
    assert got.largest == 3 and got.folds == 1
    doc = json.loads(Path(store.version_path(0)).read_text())
    doc["event_time"]["value"]["largest"] = ["int", 4]
    Path(store.version_path(0)).write_text(json.dumps(doc))
    with pytest.raises(CorruptStateError, match="section fails its checksum"):
        store.section(0, "event_time")


def test_stream_config_builds_the_event_time_settings() -> None:
    from mxnorm_spark.cli.config import StreamConfig, resolve
    from mxnorm_spark.core.errors import ConfigError

    base = {"input": "i", "output": "o", "state": "s", "checkpoint": "c", "cols": "a"}
    cfg = resolve(StreamConfig, None, {**base, "batch_col": "day", "lateness": "2"})
    assert cfg.event_time_spec == EventTime(batch_col="day", lateness=2)
    windows = {**base, "event_time": "ts", "window": "1 hour", "lateness": "10 minutes"}
    spec = resolve(StreamConfig, None, windows).event_time_spec
    assert spec is not None and spec.window_us == 3_600_000_000
    assert spec.lateness_us == 600_000_000
    with pytest.raises(ConfigError, match="only apply with batch_col or event_time"):
        resolve(StreamConfig, None, {**base, "lateness": "3"})
    with pytest.raises(ConfigError, match="go together"):
        resolve(StreamConfig, None, {**base, "event_time": "ts"})
    assert resolve(StreamConfig, None, base).event_time_spec is None


def test_lateness_is_in_the_batch_column_units() -> None:
    from decimal import Decimal

    assert EventTime(batch_col="d", lateness=2).limit(dt.date(2024, 1, 5)) == dt.date(2024, 1, 3)
    stamp = dt.datetime(2024, 1, 5, 12, 0)
    late = EventTime(batch_col="t", lateness="90 minutes")
    assert late.limit(stamp) == dt.datetime(2024, 1, 5, 10, 30)
    assert EventTime(batch_col="x", lateness=0.5).limit(3.0) == 2.5
    assert EventTime(batch_col="x", lateness=1).limit(Decimal("2.50")) == Decimal("1.50")
    assert EventTime(batch_col="s").limit("2024-W03") == "2024-W03"
    with pytest.raises(InvalidParameterError, match="whole days"):
        EventTime(batch_col="d", lateness=1.5).limit(dt.date(2024, 1, 5))
    with pytest.raises(InvalidParameterError, match="interval"):
        EventTime(batch_col="t", lateness=5).limit(stamp)


def test_event_time_settings_are_checked() -> None:
    with pytest.raises(InvalidParameterError, match="exactly one of batch_col"):
        EventTime()
    with pytest.raises(InvalidParameterError, match="go together"):
        EventTime(event_time="ts")
    with pytest.raises(InvalidParameterError, match="interval"):
        EventTime(event_time="ts", window="an hour")
    with pytest.raises(InvalidParameterError, match="take no lateness"):
        EventTime(batch_col="name", lateness=2).limit("b")


# ---- file streams (Spark) -------------------------------------------------------------------
def write_day_files(directory: Path, days: list[list[int]], seed: int = 5) -> pd.DataFrame:
    """Parquet files f0, f1, ... (their modification times give the stream their order)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    frames, first = [], 0
    for k, file_days in enumerate(days):
        n = 12 * len(file_days)
        df = pd.DataFrame(
            {
                "id": np.arange(first, first + n, dtype=np.int64),
                "day": np.resize(np.array(file_days, dtype=np.int64), n),
                "a": rng.normal(10.0, 2.0, n),
                "b": 1e9 + rng.normal(0.0, 1.0, n),
            }
        )
        df.loc[df.index[::7], "a"] = np.nan  # invalid values never enter the moments
        df["a"] += df["day"]  # drifting batches
        first += n
        path = directory / f"f{k}.parquet"
        df.to_parquet(path, index=False)
        os.utime(path, (1_000_000_000 + 10 * k, 1_000_000_000 + 10 * k))
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def pure_fold(rows: pd.DataFrame) -> list[tuple[int, MXNormState]]:
    """(day, state after it) folding exact_partials per day in ascending order: the bits an
    event-time stream must give, however its rows arrive."""
    state = MXNormState.create(COLS, options=StateOptions(alpha=ALPHA))
    out = []
    for day, group in rows.groupby("day", sort=True):
        x = group[COLS].to_numpy(dtype=np.float64)
        state = state.update(exact_partials(x, np.zeros(len(x), dtype=int), 1)[0].moments())
        out.append((int(day), state))
    return out


def event_stream(spark: Any, root: Path, **kw: Any) -> Any:
    from mxnorm_spark.streaming.updater import MXNormStream

    spec = EventTime(batch_col="day", lateness=LATENESS, lineage_col="state_day", **kw)
    return MXNormStream(
        spark, str(root / "state"), cols=COLS, output=str(root / "out"), apply_at="before",
        options=StateOptions(alpha=ALPHA), progress=None, event_time=spec,
    )  # fmt: skip


def run_files(
    spark: Any, inp: Path, root: Path, per_trigger: int | None, *, on_driver: bool = True
) -> list[Any]:
    from mxnorm_spark.streaming._local import DriverBatches
    from mxnorm_spark.streaming.sources import FileSource

    source = FileSource(str(inp), "parquet", max_files_per_trigger=per_trigger)
    stream = event_stream(spark, root)
    if not on_driver:  # every micro-batch through the Spark jobs, not read to the driver
        stream._driver = DriverBatches(0, None)
    return stream.run(
        source.read(spark, [*COLS, "day"]), str(root / "chk"), source=source, end_of_input=True
    )


def read_out(spark: Any, path: Path) -> pd.DataFrame:
    out = spark.read.parquet(str(path)).toPandas()
    return out.drop(columns="batch_id").sort_values("id").reset_index(drop=True)


@pytest.fixture(scope="module")
def day_streams(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One input, streamed with 1, 2 and all files per micro-batch (2: on the Spark path,
    the others with the small micro-batches read to the driver)."""
    root = tmp_path_factory.mktemp("event_time")
    rows = write_day_files(root / "in", DAYS)
    runs = {
        n: run_files(spark, root / "in", root / f"run{n}", n, on_driver=n != 2)
        for n in (1, 2, None)
    }
    return {"root": root, "rows": rows, "reports": runs}


@pytest.mark.spark
def test_state_and_output_are_bit_identical_for_any_files_per_trigger(
    spark: Any, day_streams: dict[str, Any]
) -> None:
    from mxnorm_spark.store import StateStore

    root = day_streams["root"]
    assert [len(day_streams["reports"][n]) for n in (1, 2, None)] == [5, 3, 1]
    final = pure_fold(day_streams["rows"])[-1][1]
    outputs = []
    for n in (1, 2, None):
        state = StateStore(root / f"run{n}" / "state").latest()
        assert state is not None and state.to_json() == final.to_json()
        outputs.append(read_out(spark, root / f"run{n}" / "out"))
    pd.testing.assert_frame_equal(outputs[0], outputs[1], check_exact=True)
    pd.testing.assert_frame_equal(outputs[0], outputs[2], check_exact=True)


@pytest.mark.spark
def test_state_equals_backfill_and_reference_loop(spark: Any, day_streams: dict[str, Any]) -> None:
    from mxnorm_spark.batch.aggregate import moments_by_batch
    from mxnorm_spark.store import StateStore

    rows = day_streams["rows"]
    state = StateStore(day_streams["root"] / "run1" / "state").latest()
    assert state is not None and state.batches_seen == 6
    backfill = MXNormState.create(COLS, alpha=ALPHA)
    for _, moments in moments_by_batch(spark.createDataFrame(rows), COLS, "day"):
        backfill = backfill.update(moments)
    assert_state_close(state.mean, state.var, backfill.mean, backfill.var, 1e-13)
    ref_mean, ref_var = [], []
    for j, c in enumerate(COLS):  # the reference loop per feature (its NaN rows left out)
        ref = Reference(alpha=ALPHA)
        for _, group in rows.groupby("day", sort=True):
            values = group[c].to_numpy(dtype=np.float64)
            ref.adapt(values[np.isfinite(values)][:, None])
        assert ref.mean is not None and ref.var is not None
        ref_mean.append(ref.mean[0])
        ref_var.append(ref.var[0])
        assert j == len(ref_mean) - 1
    assert_state_close(state.mean, state.var, np.array(ref_mean), np.array(ref_var), 1e-12)


@pytest.mark.spark
def test_each_row_is_normalized_with_the_state_before_its_batch(
    spark: Any, day_streams: dict[str, Any]
) -> None:
    from mxnorm_spark.serving import load

    root = day_streams["root"]
    rows = day_streams["rows"].sort_values("id").reset_index(drop=True)
    out = read_out(spark, root / "run1" / "out")
    np.testing.assert_array_equal(out["id"].to_numpy(), rows["id"].to_numpy())
    folds = dict(pure_fold(rows))
    for day, group in rows.groupby("day"):
        got = out.loc[group.index]
        applied = max((d for d in folds if d < day - LATENESS), default=None)
        if applied is None:  # nothing folded yet: no state, null outputs, null lineage
            assert got[COLS].isna().all().all() and got["state_day"].isna().all()
            continue
        state = folds[applied]
        mean, scale = state.normalization_constants()
        want = (group[COLS].to_numpy(dtype=np.float64) - mean) / scale
        np.testing.assert_array_equal(got[COLS].to_numpy(dtype=np.float64), want)
        assert (got["state_day"] == applied).all()
        # Lineage: the row's state version pins the same constants for serving.
        pinned = load(str(root / "run1" / "state"), as_of=applied)
        assert pinned.state.to_json() == state.to_json()


@pytest.mark.spark
def test_history_and_progress_count_the_folds(day_streams: dict[str, Any]) -> None:
    from mxnorm_spark.store import StateStore

    store = StateStore(day_streams["root"] / "run1" / "state")
    history = store.history().to_pandas()
    folded = history.dropna(subset=["batch_value"]).drop_duplicates("batch_value")
    assert folded["batch_value"].tolist() == [str(d) for d in range(6)]
    assert (history["late_rows"] == 0).all()
    reports = day_streams["reports"][1]
    assert [r.folded for r in reports] == [0, 1, 1, 1, 1]
    assert [r.open_batches for r in reports] == [2, 2, 2, 2, 2]
    assert "0 late rows dropped, 1 batch(es) folded, 2 open" in reports[-1].line()
    # The end of input folded the last two days as one more version, and closed the store.
    assert store.batch_ids() == [0, 1, 2, 3, 4, 5]


# ---- late rows, the end of input (foreachBatch called directly) -----------------------------
def day_frame(spark: Any, days: list[int], first_id: int, seed: int) -> Any:
    rng = np.random.default_rng(seed)
    pdf = pd.DataFrame(
        {
            "id": np.arange(first_id, first_id + len(days), dtype=np.int64),
            "day": np.array(days, dtype=np.int64),
            "a": rng.normal(0, 1, len(days)),
            "b": rng.normal(5, 1, len(days)),
        }
    )
    return spark.createDataFrame(pdf), pdf


@pytest.mark.spark
def test_late_rows_are_dropped_and_counted_or_refused(spark: Any, tmp_path: Path) -> None:
    from mxnorm_spark.store import StateStore

    stream = event_stream(spark, tmp_path / "drop")
    batches = [[5, 6, 6], [9, 9], [4, 7, 8, 9, 7]]  # after [9]: watermark 8, days 4 and 7 late
    frames = []
    for i, days in enumerate(batches):
        df, pdf = day_frame(spark, days, 10 * i, i)
        stream.foreach_batch(df, i)
        frames.append(pdf)
    assert [r.late_rows for r in stream.reports] == [0, 0, 3]
    assert "3 late rows dropped" in stream.reports[-1].line()
    store = StateStore(tmp_path / "drop" / "state")
    late = store.history().to_pandas().groupby("batch_id")["late_rows"].first()
    assert late.tolist() == [0, 0, 3]
    out = spark.read.parquet(str(tmp_path / "drop" / "out")).toPandas()
    assert sorted(out["id"]) == [0, 1, 2, 10, 11, 22, 23]  # the late rows are not written
    # The state equals the fold of the rows that were not late.
    kept = pd.concat(frames).query("id not in [20, 21, 24]")
    closed = stream.close_open_batches()
    assert closed is not None and closed.to_json() == pure_fold(kept)[-1][1].to_json()
    with pytest.raises(StateConflictError, match="closed at the end of input"):
        stream.foreach_batch(day_frame(spark, [10], 99, 9)[0], 4)

    strict = event_stream(spark, tmp_path / "error", late_rows="error")
    for i, days in enumerate(batches[:2]):
        strict.foreach_batch(day_frame(spark, days, 10 * i, i)[0], i)
    with pytest.raises(LateRowsError, match="3 late row"):
        strict.foreach_batch(day_frame(spark, batches[2], 20, 2)[0], 2)
    assert StateStore(tmp_path / "error" / "state").batch_ids() == [0, 1]  # nothing committed


@pytest.mark.spark
def test_folds_are_compacted_and_as_of_still_pins_each(
    spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mxnorm_spark.store.folds as folds_mod
    from mxnorm_spark.serving import load

    monkeypatch.setattr(folds_mod, "SEGMENT_FOLDS", 2)
    stream = event_stream(spark, tmp_path)
    frames = []
    for i, days in enumerate([[1, 2], [3, 2], [5, 4], [7, 6]]):
        df, pdf = day_frame(spark, days, 10 * i, i)
        stream.foreach_batch(df, i)
        frames.append(pdf)
    stream.close_open_batches()
    folds = pure_fold(pd.concat(frames))  # days 1 .. 7: three whole segments and one fold
    names = sorted(p.name for p in (tmp_path / "state" / "_folds").iterdir())
    assert names == ["f-000000000006.json", *(f"s-{s:09d}.json" for s in range(3))]
    for day, state in folds:
        assert load(str(tmp_path / "state"), as_of=day).state.to_json() == state.to_json()


@pytest.mark.spark
def test_replayed_micro_batch_rewrites_the_same_output(spark: Any, tmp_path: Path) -> None:
    stream = event_stream(spark, tmp_path)
    for i, days in enumerate([[1, 2], [3, 2], [5, 4]]):
        stream.foreach_batch(day_frame(spark, days, 10 * i, i)[0], i)
    before = read_out(spark, tmp_path / "out")
    again = event_stream(spark, tmp_path)
    again.foreach_batch(day_frame(spark, [5, 4], 20, 2)[0], 2)  # Spark re-runs the last one
    assert again.reports[-1].replayed
    pd.testing.assert_frame_equal(read_out(spark, tmp_path / "out"), before, check_exact=True)


@pytest.mark.spark
def test_apply_at_after_and_unsupported_settings_are_refused(spark: Any, tmp_path: Path) -> None:
    from mxnorm_spark.streaming.updater import MXNormStream

    spec = EventTime(batch_col="day")
    with pytest.raises(InvalidParameterError, match="buffer raw rows"):
        MXNormStream(spark, str(tmp_path / "s"), cols=COLS, output=str(tmp_path / "o"),
                     event_time=spec)  # fmt: skip
    with pytest.raises(InvalidParameterError, match="handle_invalid"):
        MXNormStream(spark, str(tmp_path / "s"), cols=COLS, output=str(tmp_path / "o"),
                     event_time=spec, apply_at="before", handle_invalid="skip")  # fmt: skip


@pytest.mark.spark
def test_tumbling_windows_fold_as_the_backfill_over_window_starts(
    spark: Any, tmp_path: Path
) -> None:
    from mxnorm_spark.serving import load
    from mxnorm_spark.streaming.updater import MXNormStream

    spec = EventTime(event_time="ts", window="1 hour", lateness="10 minutes", lineage_col="v")
    stream = MXNormStream(
        spark, str(tmp_path / "state"), cols=COLS, output=str(tmp_path / "out"),
        apply_at="before", options=StateOptions(alpha=ALPHA), progress=None, event_time=spec,
    )  # fmt: skip
    rng = np.random.default_rng(8)
    base = pd.Timestamp("2024-03-01 00:00:00")
    # 03:10 seen, lateness 10 minutes: windows that ended by 03:00 close; 02:11 is late.
    minutes = [[5, 50, 70], [65, 118, 190], [185, 200, 131]]
    frames = []
    for i, mins in enumerate(minutes):
        pdf = pd.DataFrame(
            {
                "id": np.arange(len(mins)) + 10 * i,
                "ts": [base + pd.Timedelta(minutes=m) for m in mins],
                "a": rng.normal(0, 1, len(mins)),
                "b": rng.normal(3, 2, len(mins)),
            }
        )
        stream.foreach_batch(spark.createDataFrame(pdf), i)
        frames.append(pdf)
    assert [r.late_rows for r in stream.reports] == [0, 0, 1]
    final = stream.close_open_batches()
    rows = pd.concat(frames).query("id != 22")
    rows = rows.assign(day=(rows["ts"] - base) // pd.Timedelta(hours=1))
    folds = pure_fold(rows)
    assert final is not None and final.to_json() == folds[-1][1].to_json()
    epoch_hour = (base - pd.Timestamp("1970-01-01")) // pd.Timedelta(microseconds=1)
    pinned = load(str(tmp_path / "state"), as_of=epoch_hour + 3_600_000_000)
    assert pinned.state.to_json() == folds[1][1].to_json()
    at = dt.datetime(2024, 3, 1, 1, 30, tzinfo=dt.timezone.utc)  # a time in that window
    assert load(str(tmp_path / "state"), as_of=at).state.to_json() == folds[1][1].to_json()


# ---- crash safety: SIGKILL at each fault point, then restart ---------------------------------
@pytest.mark.slow
@pytest.mark.spark
def test_sigkill_at_each_fault_point_gives_the_same_bits(
    spark: Any, tmp_path: Path, day_streams: dict[str, Any]
) -> None:
    from mxnorm_spark.streaming.sources import FileSource

    shutil.copytree(day_streams["root"] / "in", tmp_path / "in")
    for k in range(len(DAYS)):  # copytree keeps the modification times: same file order
        assert (tmp_path / "in" / f"f{k}.parquet").stat().st_mtime == 1_000_000_000 + 10 * k

    kill_at_each_fault_point(tmp_path, [
        "--cols", "a,b", "--alpha", str(ALPHA), "--apply-at", "before", "--batch-col", "day",
        "--lateness", str(LATENESS), "--lineage-col", "state_day",
    ])  # fmt: skip
    source = FileSource(str(tmp_path / "in"), "parquet", max_files_per_trigger=1)
    restart = event_stream(spark, tmp_path)
    reports = restart.run(
        source.read(spark, [*COLS, "day"]), str(tmp_path / "chk"), source=source,
        end_of_input=True,
    )  # fmt: skip
    assert [(rep.batch_id, rep.replayed) for rep in reports] == [(3, True), (4, False)]
    assert_same_bits(spark, tmp_path, day_streams["root"] / "run1", read_out)


# ---- halfLife: another way to give alpha, everywhere alpha is accepted -----------------------
@pytest.mark.parametrize("half_life", [0.25, 1.0, 6.5788, 1e6])
def test_half_life_gives_the_alpha_that_halves_old_weight(half_life: float) -> None:
    from mxnorm_spark.core.state import alpha_from_half_life

    alpha = alpha_from_half_life(half_life)
    assert abs(np.exp(half_life * np.log1p(-alpha)) - 0.5) <= 1e-12
    # Against exact decimal arithmetic of 1 - 0.5 ** (1 / h).
    from decimal import Decimal, localcontext

    with localcontext() as ctx:
        ctx.prec = 50
        exact = 1 - Decimal("0.5") ** (1 / Decimal(half_life))
        assert abs(Decimal(alpha) - exact) <= Decimal("4e-16") * exact
    assert StateOptions(half_life=half_life).alpha == alpha
    assert MXNormState.create(["x"], half_life=half_life).alpha == alpha


def test_half_life_in_rows_halves_the_weight_after_that_many_rows() -> None:
    state = MXNormState.create(["x"], half_life=4, decay="rows").update(
        Moments.from_array(np.zeros((3, 1)))
    )
    # 4 rows in one batch: the old mean 0 keeps half its weight.
    state = state.update(Moments.from_array(np.ones((4, 1))))
    assert abs(state.mean[0] - 0.5) <= 1e-15


def test_half_life_is_checked_and_is_not_given_with_alpha() -> None:
    from mxnorm_spark.cli.config import StreamConfig, resolve
    from mxnorm_spark.core.errors import ConfigError

    with pytest.raises(InvalidParameterError, match="half_life must be a positive"):
        StateOptions(half_life=0)
    with pytest.raises(InvalidParameterError, match="alpha or half_life"):
        StateOptions(alpha=0.3, half_life=2)
    base = {"input": "i", "output": "o", "state": "s", "checkpoint": "c", "cols": "a"}
    cfg = resolve(StreamConfig, None, {**base, "half_life": "2"})
    assert cfg.state_options.alpha == -np.expm1(-np.log(2) / 2)
    with pytest.raises(ConfigError, match="alpha or half_life"):
        resolve(StreamConfig, None, {**base, "half_life": "2", "alpha": "0.5"})


@pytest.mark.spark
def test_estimator_takes_half_life(spark: Any) -> None:
    from mxnorm_spark.ml.estimator import MXNorm

    est = MXNorm(inputCols=["x"], halfLife=3.0)
    assert abs(est.getAlpha() - (1 - 0.5 ** (1 / 3))) <= 1e-16
    assert MXNorm(inputCols=["x"]).setHalfLife(1).getAlpha() == 0.5
    with pytest.raises(InvalidParameterError, match="alpha or halfLife"):
        MXNorm(inputCols=["x"], alpha=0.2, halfLife=3.0)


@pytest.mark.spark
def test_date_batches_give_the_same_bits_on_the_driver_and_on_spark(
    spark: Any, tmp_path: Path
) -> None:
    from mxnorm_spark.streaming._local import DriverBatches

    rng = np.random.default_rng(6)
    day = dt.date(2024, 5, 1)
    batches = [[0, 1, 1], [2, 1, 3], [3, 4, 2]]
    frames = [
        pd.DataFrame(
            {
                "id": np.arange(10 * len(d)) + 100 * i,
                "day": [day + dt.timedelta(days=v) for v in d for _ in range(10)],
                "a": rng.normal(0, 1, 10 * len(d)),
                "b": rng.normal(7, 3, 10 * len(d)),
            }
        )
        for i, d in enumerate(batches)
    ]
    outs, states = [], []
    for on_driver in (True, False):
        root = tmp_path / str(on_driver)
        stream = event_stream(spark, root)
        if not on_driver:
            stream._driver = DriverBatches(0, None)
        for i, pdf in enumerate(frames):
            stream.foreach_batch(spark.createDataFrame(pdf), i)
        states.append(stream.close_open_batches())
        outs.append(read_out(spark, root / "out"))
    assert states[0] is not None and states[1] is not None
    assert states[0].to_json() == states[1].to_json()
    pd.testing.assert_frame_equal(outs[0], outs[1], check_exact=True)
    # Lateness 1 day: the rows of May 4 were normalized with the state after May 1.
    assert set(outs[0].loc[outs[0]["day"] == day + dt.timedelta(days=3), "state_day"]) == {
        day + dt.timedelta(days=1)
    }
