"""Keyed event-time streams: per key, batches fold when the global watermark passes them.

Oracles: a pure-numpy fold of :func:`exact_partials` per (key, day) in ascending day (the
stream must give its bits exactly, whatever the micro-batches, restarts and crashes), the
keyed backfill (``fit_keyed`` with the batch column: compensated two-pass moments, so
within 1e-13 relative) and the DESIGN.md reference loop per key (within 1e-12).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from event_time_crash import assert_same_bits, kill_at_each_fault_point
from reference import Reference, assert_state_close

from mxnorm_spark import MXNormState
from mxnorm_spark.core.errors import InvalidParameterError, LateRowsError
from mxnorm_spark.core.event_time import EventTime
from mxnorm_spark.core.open_batches import exact_partials
from mxnorm_spark.core.state import StateOptions

COLS = ["a", "b"]
ALPHA = 0.3
LATENESS = 1
MIN_KEY_ROWS = 3
KEYS = np.array(["s0", "s1", "s2", None], dtype=object)
# Days per file: out of order across files, never more than LATENESS behind the largest day
# of the files before (no row is late with any grouping of the files into micro-batches).
DAYS = [[0, 1], [1, 2, 0], [3, 2, 1], [4, 3, 2], [5, 4]]
OPTIONS = StateOptions(alpha=ALPHA)


def write_files(directory: Path, days: list[list[int]], seed: int = 7) -> pd.DataFrame:
    """Parquet files f0, f1, ... (their modification times give the stream their order);
    three keys and a few rows with a null key, which count for the global state only."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    frames, first = [], 0
    for k, file_days in enumerate(days):
        n = 10 * len(file_days)
        df = pd.DataFrame(
            {
                "id": np.arange(first, first + n, dtype=np.int64),
                "sensor": KEYS[rng.integers(0, len(KEYS), n)],
                "day": np.resize(np.array(file_days, dtype=np.int64), n),
                "a": rng.normal(10.0, 2.0, n),
                "b": 1e9 + rng.normal(0.0, 1.0, n),
            }
        )
        df.loc[df.index[::6], "a"] = np.nan  # invalid values never enter the moments
        df["a"] += 3.0 * (df["sensor"] == "s1") + df["day"]  # keys and days differ
        first += n
        path = directory / f"f{k}.parquet"
        df.to_parquet(path, index=False)
        os.utime(path, (1_000_000_000 + 10 * k, 1_000_000_000 + 10 * k))
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def pure_fold(rows: pd.DataFrame) -> list[tuple[int, MXNormState]]:
    """(day, state after it) folding exact_partials per day in ascending order."""
    state = MXNormState.create(COLS, options=OPTIONS)
    out = []
    for day, group in rows.groupby("day", sort=True):
        x = group[COLS].to_numpy(dtype=np.float64)
        state = state.update(exact_partials(x, np.zeros(len(x), dtype=int), 1)[0].moments())
        out.append((int(day), state))
    return out


def pure_keys(rows: pd.DataFrame) -> dict[str, list[tuple[int, MXNormState]]]:
    keyed = rows.dropna(subset=["sensor"])
    return {str(k): pure_fold(group) for k, group in keyed.groupby("sensor", sort=True)}


def keyed_stream(spark: Any, root: Path, **kw: Any) -> Any:
    from mxnorm_spark.streaming.keyed import KeyOptions
    from mxnorm_spark.streaming.updater import MXNormStream

    spec = EventTime(batch_col="day", lateness=LATENESS, lineage_col="state_day", **kw)
    return MXNormStream(
        spark, str(root / "state"), cols=COLS, output=str(root / "out"), apply_at="before",
        options=OPTIONS, progress=None, event_time=spec,
        keys=KeyOptions(("sensor",), min_key_rows=MIN_KEY_ROWS),
    )  # fmt: skip


def run_files(spark: Any, inp: Path, root: Path, per_trigger: int | None) -> list[Any]:
    from mxnorm_spark.streaming.sources import FileSource

    source = FileSource(str(inp), "parquet", max_files_per_trigger=per_trigger)
    stream = keyed_stream(spark, root)
    return stream.run(
        source.read(spark, ["sensor", *COLS, "day"]), str(root / "chk"), source=source,
        end_of_input=True,
    )  # fmt: skip


def read_out(spark: Any, path: Path) -> pd.DataFrame:
    out = spark.read.parquet(str(path)).toPandas()
    return out.drop(columns="batch_id").sort_values("id").reset_index(drop=True)


def key_states(spark: Any, root: Path) -> dict[Any, MXNormState]:
    from mxnorm_spark.streaming.keyed_events import read_key_states

    return read_key_states(keyed_stream(spark, root))


@pytest.fixture(scope="module")
def runs(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One input, streamed with 1, 2 and all files per micro-batch."""
    root = tmp_path_factory.mktemp("event_time_keyed")
    rows = write_files(root / "in", DAYS)
    reports = {n: run_files(spark, root / "in", root / f"run{n}", n) for n in (1, 2, None)}
    return {"root": root, "rows": rows, "reports": reports}


@pytest.mark.spark
def test_states_and_outputs_are_bit_identical_for_any_files_per_trigger(
    spark: Any, runs: dict[str, Any]
) -> None:
    from mxnorm_spark.store import StateStore

    root, rows = runs["root"], runs["rows"]
    assert [len(runs["reports"][n]) for n in (1, 2, None)] == [5, 3, 1]
    final_global = pure_fold(rows)[-1][1]
    want = {k: folds[-1][1] for k, folds in pure_keys(rows).items()}
    outputs = []
    for n in (1, 2, None):
        state = StateStore(root / f"run{n}" / "state").latest()
        assert state is not None and state.to_json() == final_global.to_json()
        got = key_states(spark, root / f"run{n}")
        assert sorted(got) == [("s0",), ("s1",), ("s2",)]
        for (key,), s in got.items():
            assert s.to_json() == want[key].to_json(), (n, key)
        outputs.append(read_out(spark, root / f"run{n}" / "out"))
    pd.testing.assert_frame_equal(outputs[0], outputs[1], check_exact=True)
    pd.testing.assert_frame_equal(outputs[0], outputs[2], check_exact=True)


@pytest.mark.spark
def test_key_states_equal_keyed_backfill_and_reference_loop(
    spark: Any, runs: dict[str, Any]
) -> None:
    from mxnorm_spark.keyed.backfill import fit_keyed

    rows = runs["rows"]
    got = key_states(spark, runs["root"] / "run1")
    model = fit_keyed(spark.createDataFrame(rows), COLS, ["sensor"], "day", options=OPTIONS)
    last = (
        model.key_states.toPandas().sort_values("day").groupby("sensor").tail(1).set_index("sensor")
    )
    for (key,), state in got.items():
        group = rows[rows["sensor"] == key]
        assert state.batches_seen == group["day"].nunique()
        mean = last.loc[key, [f"f{j}_mean" for j in range(2)]].to_numpy(dtype=np.float64)
        var = last.loc[key, [f"f{j}_var" for j in range(2)]].to_numpy(dtype=np.float64)
        assert_state_close(state.mean, state.var, mean, var, 1e-13)
        ref_mean, ref_var = [], []
        for c in COLS:  # the reference loop per key and feature (NaN rows left out)
            ref = Reference(alpha=ALPHA)
            for _, day in group.groupby("day", sort=True):
                values = day[c].to_numpy(dtype=np.float64)
                ref.adapt(values[np.isfinite(values)][:, None])
            assert ref.mean is not None and ref.var is not None
            ref_mean.append(ref.mean[0])
            ref_var.append(ref.var[0])
        assert_state_close(state.mean, state.var, np.array(ref_mean), np.array(ref_var), 1e-12)


@pytest.mark.spark
def test_each_row_takes_its_keys_state_before_its_batch(spark: Any, runs: dict[str, Any]) -> None:
    rows = runs["rows"].sort_values("id").reset_index(drop=True)
    out = read_out(spark, runs["root"] / "run1" / "out")
    np.testing.assert_array_equal(out["id"].to_numpy(), rows["id"].to_numpy())
    global_folds = dict(pure_fold(rows))
    key_folds = {k: dict(v) for k, v in pure_keys(rows).items()}
    for (sensor, day), group in rows.groupby([rows["sensor"].fillna("-"), "day"]):
        got = out.loc[group.index]
        g_day = max((d for d in global_folds if d < day - LATENESS), default=None)
        folds = key_folds.get(str(sensor), {})
        k_day = max((d for d in folds if d < day - LATENESS), default=None)
        x = group[COLS].to_numpy(dtype=np.float64)
        for j, c in enumerate(COLS):
            k_state = None if k_day is None else folds[k_day]
            if sensor != "-" and k_state is not None and k_state.count[j] >= MIN_KEY_ROWS:
                state = k_state
            else:  # no key, or too few values of the feature so far: the global state
                state = None if g_day is None else global_folds[g_day]
            if state is None:
                assert got[c].isna().all()
                continue
            mean, scale = state.normalization_constants()
            np.testing.assert_array_equal(
                got[c].to_numpy(dtype=np.float64), (x[:, j] - mean[j]) / scale[j]
            )
        lineage = g_day if sensor == "-" else k_day
        if lineage is None:
            assert got["state_day"].isna().all()
        else:
            assert (got["state_day"] == lineage).all()


@pytest.mark.spark
def test_progress_and_history_count_the_global_folds(runs: dict[str, Any]) -> None:
    from mxnorm_spark.store import StateStore

    reports = runs["reports"][1]
    assert [r.late_rows for r in reports] == [0] * 5
    assert [r.folded for r in reports] == [0, 1, 1, 1, 1]
    store = StateStore(runs["root"] / "run1" / "state")
    assert (store.history().to_pandas()["late_rows"] == 0).all()
    assert store.batch_ids() == [0, 1, 2, 3, 4, 5]  # the end of input: one more version


# ---- late rows, replays, refusals (foreachBatch called directly) ----------------------------
def frame(spark: Any, days: list[int], sensors: list[Any], first_id: int, seed: int) -> Any:
    rng = np.random.default_rng(seed)
    pdf = pd.DataFrame(
        {
            "id": np.arange(first_id, first_id + len(days), dtype=np.int64),
            "sensor": np.array(sensors, dtype=object),
            "day": np.array(days, dtype=np.int64),
            "a": rng.normal(0, 1, len(days)),
            "b": rng.normal(5, 1, len(days)),
        }
    )
    return spark.createDataFrame(pdf, "id long, sensor string, day long, a double, b double"), pdf


@pytest.mark.spark
def test_late_rows_are_dropped_and_counted_per_key_or_refused(spark: Any, tmp_path: Path) -> None:
    from mxnorm_spark.store import StateStore
    from mxnorm_spark.streaming.keyed_events import read_key_states

    stream = keyed_stream(spark, tmp_path / "drop")
    # After day 9 (s1): the watermark is 8 for every key; s0's days 4 and 7 are late, though
    # s0 itself never saw a day above 6.
    batches = [([5, 6, 6], ["s0", "s0", "s1"]), ([9, 9], ["s1", None]),
               ([4, 7, 8, 9, 7], ["s0", "s0", "s0", "s1", None])]  # fmt: skip
    frames = []
    for i, (days, sensors) in enumerate(batches):
        df, pdf = frame(spark, days, sensors, 10 * i, i)
        stream.foreach_batch(df, i)
        frames.append(pdf)
    assert [r.late_rows for r in stream.reports] == [0, 0, 3]
    assert "3 late rows dropped" in stream.reports[-1].line()
    late = StateStore(tmp_path / "drop" / "state").history().to_pandas()
    assert late.groupby("batch_id")["late_rows"].first().tolist() == [0, 0, 3]
    out = spark.read.parquet(str(tmp_path / "drop" / "out")).toPandas()
    assert sorted(out["id"]) == [0, 1, 2, 10, 11, 22, 23]
    kept = pd.concat(frames).query("id not in [20, 21, 24]")
    closed = stream.close_open_batches()
    assert closed is not None and closed.to_json() == pure_fold(kept)[-1][1].to_json()
    want = pure_keys(kept)
    got = read_key_states(stream)
    assert sorted(got) == [("s0",), ("s1",)]
    for (key,), state in got.items():
        assert state.to_json() == want[key][-1][1].to_json()

    strict = keyed_stream(spark, tmp_path / "error", late_rows="error")
    for i, (days, sensors) in enumerate(batches[:2]):
        strict.foreach_batch(frame(spark, days, sensors, 10 * i, i)[0], i)
    with pytest.raises(LateRowsError, match="3 late row"):
        strict.foreach_batch(frame(spark, *batches[2], 20, 2)[0], 2)
    assert StateStore(tmp_path / "error" / "state").batch_ids() == [0, 1]


@pytest.mark.spark
def test_replayed_micro_batch_rewrites_the_same_output(spark: Any, tmp_path: Path) -> None:
    batches = [([1, 2], ["s0", "s1"]), ([3, 2], ["s0", None]), ([5, 4], ["s1", "s0"])]
    stream = keyed_stream(spark, tmp_path)
    for i, (days, sensors) in enumerate(batches):
        stream.foreach_batch(frame(spark, days, sensors, 10 * i, i)[0], i)
    before = read_out(spark, tmp_path / "out")
    again = keyed_stream(spark, tmp_path)
    again.foreach_batch(frame(spark, *batches[2], 20, 2)[0], 2)  # Spark re-runs the last one
    assert again.reports[-1].replayed
    pd.testing.assert_frame_equal(read_out(spark, tmp_path / "out"), before, check_exact=True)


@pytest.mark.spark
def test_trigger_dependent_key_settings_are_refused(spark: Any, tmp_path: Path) -> None:
    from mxnorm_spark.streaming.keyed import KeyOptions
    from mxnorm_spark.streaming.updater import MXNormStream

    def make(keys: KeyOptions, spec: EventTime) -> Any:
        return MXNormStream(spark, str(tmp_path / "s"), cols=COLS, output=str(tmp_path / "o"),
                            apply_at="before", event_time=spec, keys=keys)  # fmt: skip

    with pytest.raises(InvalidParameterError, match="evict_after"):
        make(KeyOptions(("sensor",), evict_after=3), EventTime(batch_col="day"))
    with pytest.raises(InvalidParameterError, match="both a key column"):
        make(KeyOptions(("day",)), EventTime(batch_col="day"))


# ---- crash safety: SIGKILL at each fault point, then restart ---------------------------------
@pytest.mark.slow
@pytest.mark.spark
def test_sigkill_at_each_fault_point_gives_the_same_bits(
    spark: Any, tmp_path: Path, runs: dict[str, Any]
) -> None:
    from mxnorm_spark.streaming.sources import FileSource

    shutil.copytree(runs["root"] / "in", tmp_path / "in")

    kill_at_each_fault_point(tmp_path, [
        "--cols", "a,b", "--alpha", str(ALPHA), "--apply-at", "before", "--batch-col", "day",
        "--lateness", str(LATENESS), "--lineage-col", "state_day", "--key-cols", "sensor",
        "--min-key-rows", str(MIN_KEY_ROWS),
    ])  # fmt: skip
    source = FileSource(str(tmp_path / "in"), "parquet", max_files_per_trigger=1)
    restart = keyed_stream(spark, tmp_path)
    reports = restart.run(
        source.read(spark, ["sensor", *COLS, "day"]), str(tmp_path / "chk"), source=source,
        end_of_input=True,
    )  # fmt: skip
    assert [(rep.batch_id, rep.replayed) for rep in reports] == [(3, True), (4, False)]
    # Every version (every key's open batches included) and output row: bit-identical.
    assert_same_bits(spark, tmp_path, runs["root"] / "run1", read_out)


# ---- settings (no Spark) ----------------------------------------------------------------------
def test_stream_config_takes_keys_with_event_time_and_checks_them() -> None:
    from mxnorm_spark.cli.config import StreamConfig, parse_config_text, resolve
    from mxnorm_spark.core.errors import ConfigError

    text = (
        '[stream]\ninput = "i"\noutput = "o"\nstate = "s"\ncheckpoint = "c"\ncols = ["a"]\n'
        'apply_at = "before"\nbatch_col = "day"\nlateness = 2\nkey_cols = ["sensor"]\n'
        "min_key_rows = 4\n"
    )
    cfg = resolve(StreamConfig, parse_config_text(text).section("stream"))
    assert cfg.event_time_spec == EventTime(batch_col="day", lateness=2)
    assert (cfg.key_cols, cfg.min_key_rows) == (("sensor",), 4)
    base = {"input": "i", "output": "o", "state": "s", "checkpoint": "c", "cols": "a"}
    with pytest.raises(ConfigError, match="evict_after counts micro-batches"):
        resolve(
            StreamConfig, None, {**base, "batch_col": "day", "key_cols": "k", "evict_after": "2"}
        )
    windows = {**base, "event_time": "ts", "window": "1 hour", "key_cols": "ts"}
    with pytest.raises(ConfigError, match=r"cols/batch_col/event_time share \['ts'\]"):
        resolve(StreamConfig, None, windows)


def test_keyed_events_fold_per_key_under_one_watermark() -> None:
    from mxnorm_spark.core.event_time import EventSection
    from mxnorm_spark.keyed.event_time import KeyedEvents, key_constants

    spec = EventTime(batch_col="day", lateness=0)
    fresh = MXNormState.create(["x"], options=OPTIONS)

    def part(*xs: float) -> Any:
        return exact_partials(np.array(xs)[:, None], np.zeros(len(xs), dtype=int), 1)[0]

    def global_section(largest: int, before: int | None) -> EventSection:
        return EventSection(spec=spec.to_dict(), largest=largest, watermark_before=before)

    keyed = KeyedEvents().advance(
        spec, {("a",): {1: part(1.0), 3: part(2.0)}, ("b",): {2: part(7.0, 9.0)}},
        global_section(3, None), fresh,
    )  # fmt: skip
    # Day 3 seen (by a): b's day 2 closes too, a's day 3 stays open.
    assert [v for v, _ in keyed.keys[("a",)].recent] == [1]
    assert [v for v, _ in keyed.keys[("a",)].open] == [3]
    assert [v for v, _ in keyed.keys[("b",)].recent] == [2]
    # Another micro-batch: merge into a's open day 3, late rows of b's day 2 are left out.
    again = keyed.advance(
        spec, {("a",): {3: part(4.0)}, ("b",): {2: part(100.0)}}, global_section(4, 3), fresh
    )
    b_state = again.keys[("b",)].state(fresh)
    want = fresh.update(part(7.0, 9.0).moments())
    assert b_state.to_json() == want.to_json()
    a_state = again.keys[("a",)].state(fresh)
    want_a = fresh.update(part(1.0).moments()).update(part(2.0, 4.0).moments())
    assert a_state.to_json() == want_a.to_json()
    # JSON round trip: the same bits, and the same bytes again.
    back = KeyedEvents.from_json(again.to_json(), fresh, "test")
    assert back.to_json() == again.to_json()
    # A row of a on day 4 takes a's state after day 3; a key with too few values the global.
    glob = fresh.update(part(5.0, 6.0).moments())
    section = EventSection(
        spec=spec.to_dict(), largest=4, watermark_before=3, recent=((2, 0, glob),)
    )
    means, scales, lineage = key_constants(
        spec, back, section, ("a",), 4, fresh=fresh, base=fresh, min_key_rows=1
    )
    assert means == [float(want_a.mean[0])] and lineage == 3
    assert scales == [float(want_a.normalization_constants()[1][0])]
    means, _, lineage = key_constants(
        spec, back, section, ("a",), 4, fresh=fresh, base=fresh, min_key_rows=4
    )
    assert means == [float(glob.mean[0])] and lineage == 3
    means, _, lineage = key_constants(
        spec, back, section, (None,), 4, fresh=fresh, base=fresh, min_key_rows=1
    )
    assert means == [float(glob.mean[0])] and lineage == 2


@pytest.mark.spark
def test_tumbling_windows_per_key(spark: Any, tmp_path: Path) -> None:
    from mxnorm_spark.streaming.keyed import KeyOptions
    from mxnorm_spark.streaming.keyed_events import read_key_states
    from mxnorm_spark.streaming.updater import MXNormStream

    spec = EventTime(event_time="ts", window="1 hour", lateness="10 minutes", lineage_col="v")
    stream = MXNormStream(
        spark, str(tmp_path / "state"), cols=COLS, output=str(tmp_path / "out"),
        apply_at="before", options=OPTIONS, progress=None, event_time=spec,
        keys=KeyOptions(("sensor",)),
    )  # fmt: skip
    rng = np.random.default_rng(8)
    base = pd.Timestamp("2024-03-01 00:00:00")
    # 03:10 seen (by s1), lateness 10 minutes: windows that ended by 03:00 close for both
    # keys; s0's 02:11 is late.
    minutes = [([5, 50, 70], ["s0", "s1", "s0"]), ([65, 118, 190], ["s0", "s0", "s1"]),
               ([185, 131, 20], ["s0", "s0", "s1"])]  # fmt: skip
    frames = []
    for i, (mins, sensors) in enumerate(minutes):
        pdf = pd.DataFrame(
            {
                "id": np.arange(len(mins)) + 10 * i,
                "sensor": sensors,
                "ts": [base + pd.Timedelta(minutes=m) for m in mins],
                "a": rng.normal(0, 1, len(mins)),
                "b": rng.normal(3, 2, len(mins)),
            }
        )
        stream.foreach_batch(spark.createDataFrame(pdf), i)
        frames.append(pdf)
    assert [r.late_rows for r in stream.reports] == [0, 0, 2]
    stream.close_open_batches()
    rows = pd.concat(frames).query("id not in [21, 22]")
    rows = rows.assign(day=(rows["ts"] - base) // pd.Timedelta(hours=1))
    want = pure_keys(rows)
    got = read_key_states(stream)
    assert sorted(got) == [("s0",), ("s1",)]
    for (key,), state in got.items():
        assert state.to_json() == want[key][-1][1].to_json()
    out = spark.read.parquet(str(tmp_path / "out")).toPandas().set_index("id")
    # s1's row at 03:10 takes s1's state after the 00:00 window (its only window before
    # 02:00), its lineage that window's start.
    assert out.loc[12, "v"] == base.to_pydatetime()
    s1 = want["s1"][0][1]
    mean, scale = s1.normalization_constants()
    src = frames[1].set_index("id").loc[12, COLS].to_numpy(dtype=np.float64)
    np.testing.assert_array_equal(
        out.loc[12, COLS].to_numpy(dtype=np.float64), (src - mean) / scale
    )
