"""Backfill over many batch values: partials merged in Spark, columnar fold on the driver.

Bit for bit: the per-batch moments merged in Spark equal the driver-side fold of the
per-partition partials (in partition-id order), and :func:`fold_history` equals
``MXNormState.update`` applied batch by batch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from mxnorm_spark.core.history import fold_history
from mxnorm_spark.core.moments import Moments
from mxnorm_spark.core.state import MXNormState, StateOptions

OPTIONS = [
    StateOptions(alpha=0.1),
    StateOptions(alpha=0.3, var_update="mixture"),
    StateOptions(alpha=0.2, var_update="mixture", decay="rows"),
    StateOptions(alpha=None),
    StateOptions(alpha=0.5, decay="rows", zero_variance="unit"),
]
COLS = ["a", "b", "c"]


def bits(x: Any) -> list[int]:
    return np.ascontiguousarray(x, dtype=np.float64).view(np.int64).tolist()


def batches(n: int, seed: int) -> list[np.ndarray]:
    """``n`` small batches, 1e9 offsets, NaN/inf masks, some features absent for a while."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        rows = int(rng.integers(1, 9))
        x = rng.normal(0.0, 1.0 + i % 5, (rows, 3)) + np.array([1e9, -3.0, 1e9 + i])
        x[rng.random(x.shape) < 0.2] = np.nan
        x[rng.random(x.shape) < 0.05] = np.inf
        if i < 7:
            x[:, 1] = np.nan  # feature b has no value in the first batches
        if i % 11 == 3:
            x[:, 2] = np.nan  # and c misses some batches
        out.append(x)
    return out


def assert_same_state(got: MXNormState, want: MXNormState, what: str) -> None:
    assert bits(got.mean) == bits(want.mean), what
    assert bits(got.var) == bits(want.var), what
    for name in ("count", "shift", "delta", "m2"):
        assert bits(getattr(got.totals, name)) == bits(getattr(want.totals, name)), (what, name)
    assert got.batches_seen == want.batches_seen, what
    assert got.last_batch_id == want.last_batch_id, what


def stacked(parts: list[Moments]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    f = [np.stack([getattr(p, n) for p in parts]) for n in ("count", "shift", "delta", "m2")]
    return f[0], f[1], f[2], f[3]


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: str(o.to_dict()))
def test_fold_history_is_the_update_loop_bit_for_bit(opts: StateOptions) -> None:
    parts = [Moments.from_array(x) for x in batches(300, 1)]
    state = MXNormState.create(COLS, options=opts)
    history = fold_history(state, stacked(parts))
    assert len(history) == len(parts)
    for i, m in enumerate(parts):
        state = state.update(m)
        assert_same_state(history.state(i), state, f"batch {i}")
    assert_same_state(history.state(-1), state, "last")


def test_fold_history_continues_from_a_state() -> None:
    parts = [Moments.from_array(x) for x in batches(40, 2)]
    start = MXNormState.create(COLS, alpha=0.25)
    for m in parts[:10]:
        start = start.update(m)
    history = fold_history(start, stacked(parts[10:]))
    state = start
    for m in parts[10:]:
        state = state.update(m)
    assert_same_state(history.state(-1), state, "continued")
    assert history.state(0).batches_seen == 11


# ---- Spark: both engines ------------------------------------------------------------------
def _frame(spark: Any, n_batches: int) -> tuple[Any, dict[int, np.ndarray]]:
    rows, per_batch = [], {}
    for b, x in enumerate(batches(n_batches, 3)):
        per_batch[b] = x
        for r in x:
            rows.append((b * 7 % n_batches, *[None if math.isnan(v) else float(v) for v in r]))
    df = spark.createDataFrame(rows, "b long, a double, b2 double, c double")
    return df.repartition(5).withColumnRenamed("b2", "bb"), per_batch


@pytest.mark.spark
@pytest.mark.parametrize("engine", ["sql", "arrow"])
def test_merged_in_spark_equals_driver_fold(spark: Any, engine: str, monkeypatch: Any) -> None:
    from mxnorm_spark.batch import aggregate

    df, _ = _frame(spark, 300)
    cols = ["a", "bb", "c"]
    collected: list[int] = []
    real = aggregate.merged_by_batch

    def counting(partials: Any, **options: Any) -> Any:
        got = real(partials, **options)
        collected.append(got.num_rows)
        return got

    monkeypatch.setattr(aggregate, "merged_by_batch", counting)
    table = aggregate.moments_table_by_batch(df, cols, "b", engine=engine)
    # One merged row per batch value reaches the driver, not one per partition and value.
    assert collected and all(n == 300 for n in collected), collected
    assert table.values.to_pylist() == list(range(300))
    # The old path: every partition's partial on the driver, merged in partition-id order.
    old, _, _ = aggregate._moments_per_batch(
        df, cols, None, engine=engine, shift=None, batch_col="b", allow_empty=False
    )
    assert [b for b, _ in old] == list(range(300))
    for i, (b, m) in enumerate(old):
        got = table.moments(i)
        for name in ("count", "shift", "delta", "m2"):
            assert bits(getattr(got, name)) == bits(getattr(m, name)), (engine, b, name)
    # The columnar fold over the table equals the update loop over the pairs.
    for opts in OPTIONS[:4]:
        state = MXNormState.create(cols, options=opts)
        history = fold_history(state, (table.count, table.shift, table.delta, table.m2))
        for i, (_, m) in enumerate(table.pairs()):
            state = state.update(m)
            if i % 37 == 0:
                assert_same_state(history.state(i), state, f"{engine} {i}")
        assert_same_state(history.state(-1), state, f"{engine} last")


@pytest.mark.spark
@pytest.mark.parametrize("engine", ["sql", "arrow"])
def test_batch_constants_join_as_arrow_like_the_tuple_table(spark: Any, engine: str) -> None:
    import datetime as dt

    import pyarrow as pa

    from mxnorm_spark.batch.apply import BatchConstants, normalize_per_batch

    rng = np.random.default_rng(5)
    days = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(40)]
    rows = [(d, float(v), float(w)) for d in days for v, w in rng.normal(1e9, 2.0, (3, 2))]
    rows += [(None, 1e9, 1e9), (dt.date(1999, 1, 1), 1e9 + 1, 1e9 - 1)]  # default constants
    df = spark.createDataFrame(rows, "day date, x double, y double")
    mean = 1e9 + rng.normal(0.0, 1.0, (len(days), 2))
    scale = rng.uniform(0.5, 2.0, (len(days), 2))
    default = (np.array([1e9, 1e9]), np.array([1.0, 3.0]))
    opts: dict[str, Any] = {"batch_col": "day", "cols": ["x", "y"], "engine": engine}
    tuples = [(d, mean[i], scale[i]) for i, d in enumerate(days)]
    want = normalize_per_batch(df, ["x", "y"], tuples, default, **opts)
    table = BatchConstants(pa.array(days, pa.date32()), mean, scale)
    got = normalize_per_batch(df, ["x", "y"], table, default, **opts)
    key = ["day", "x"]
    a = [tuple(r) for r in want.orderBy(*key).collect()]
    b = [tuple(r) for r in got.orderBy(*key).collect()]
    assert len(a) == len(rows)
    assert bits([v for r in a for v in r[1:]]) == bits([v for r in b for v in r[1:]])


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: str(o.to_dict()))
def test_backfill_history_constants_and_table_as_per_batch(opts: StateOptions) -> None:
    import datetime as dt

    import pyarrow as pa

    from mxnorm_spark.batch.apply import BackfillHistory
    from mxnorm_spark.engines.partials import BatchTable
    from mxnorm_spark.ml.estimator import _constants
    from mxnorm_spark.store.history import batch_table

    parts = [Moments.from_array(x) for x in batches(120, 4)]
    count, shift, delta, m2 = stacked(parts)
    values = pa.array(np.arange(120) * 3, pa.int64())
    rows = np.arange(120, dtype=np.int64) + 5
    table = BatchTable(values, rows, count, shift, delta, m2)
    start = MXNormState.create(COLS, options=opts)
    history = BackfillHistory.fold(start, table)
    state, pairs = start, []
    for v, m in zip(values.to_pylist(), parts, strict=True):
        state = state.update(m)
        pairs.append((v, state))
    assert len(history) == 120 and [v for v, _ in history] == [v for v, _ in pairs]
    assert_same_state(history.final, state, "final")
    assert_same_state(history[57][1], pairs[57][1], "57")
    for before in (False, True):
        got = history.constants(before)
        prev = None
        for i, (_, after) in enumerate(pairs):
            mean, scale = _constants(prev, after) if before and prev else _constants(after)
            assert bits(got.mean[i]) == bits(mean) and bits(got.scale[i]) == bits(scale), i
            prev = after
    when = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    want = pa.concat_tables(
        batch_table(i, rows=int(rows[i]), moments=m, state=s, batch_value=v, committed_at=when)
        for i, ((v, s), m) in enumerate(zip(pairs, parts, strict=True))
    )
    got_table = history.history_table(when)
    assert got_table.schema == want.schema and got_table.num_rows == want.num_rows
    for name in want.column_names:
        a, b = got_table.column(name), want.column(name)
        if a.type == pa.float64():
            assert bits(a.to_numpy()) == bits(b.to_numpy()), name
        else:
            assert a.to_pylist() == b.to_pylist(), name


@pytest.mark.spark
@pytest.mark.parametrize("engine", ["sql", "arrow"])
def test_partials_merged_in_spark_or_on_the_driver_alike(
    spark: Any, engine: str, monkeypatch: Any
) -> None:
    """Few partials are collected and merged on the driver, many go through a shuffle by
    value: both give the per-partition fold's bits and the same value column."""
    from pyspark.sql import functions as F

    from mxnorm_spark.batch import aggregate
    from mxnorm_spark.engines import partials

    df, _ = _frame(spark, 40)
    df = df.withColumn("b", F.format_string("v%03d", "b"))  # a string batch column
    cols = ["a", "bb", "c"]
    old, _, _ = aggregate._moments_per_batch(
        df, cols, None, engine=engine, shift=None, batch_col="b", allow_empty=False
    )
    tables = [aggregate.moments_table_by_batch(df, cols, "b", engine=engine)]
    monkeypatch.setattr(partials, "DRIVER_MERGE_PARTIALS", 0)  # every partial through Spark
    tables.append(aggregate.moments_table_by_batch(df, cols, "b", engine=engine))
    for table in tables:
        assert table.values.type == tables[0].values.type
        assert table.values.to_pylist() == [b for b, _ in old]
        np.testing.assert_array_equal(table.rows, tables[0].rows)
        for i, (b, m) in enumerate(old):
            for name in ("count", "shift", "delta", "m2"):
                assert bits(getattr(table.moments(i), name)) == bits(getattr(m, name)), (b, name)


@pytest.mark.spark
@pytest.mark.parametrize("engine", ["sql", "arrow"])
def test_vector_batches_merged_in_spark(spark: Any, engine: str) -> None:
    from mxnorm_spark.batch import aggregate
    from mxnorm_spark.core.errors import FeatureMismatchError, InvalidValueError

    rng = np.random.default_rng(9)
    rows: list[tuple[Any, Any]] = []
    for b in range(60):
        for _ in range(int(rng.integers(1, 6))):
            v = rng.normal(1e9, 1.0 + b % 4, 3)
            rows.append((b, [None if rng.random() < 0.1 else float(x) for x in v]))
    rows.append((7, None))  # a null vector row is skipped
    df = spark.createDataFrame(rows, "b int, arr array<double>").repartition(4)
    table = aggregate.moments_table_by_batch(df, None, "b", input_col="arr", engine=engine)
    old, _, _ = aggregate._moments_per_batch(
        df, None, "arr", engine=engine, shift=None, batch_col="b", allow_empty=False
    )
    assert table.values.to_pylist() == [b for b, _ in old] == list(range(60))
    for i, (_, m) in enumerate(old):
        for name in ("count", "shift", "delta", "m2"):
            assert bits(getattr(table.moments(i), name)) == bits(getattr(m, name)), (i, name)
    ragged = spark.createDataFrame(
        [(1, [1.0, 2.0]), (2, [1.0, 2.0, 3.0])], "b int, arr array<double>"
    )
    with pytest.raises(FeatureMismatchError, match="varying length"):
        aggregate.moments_table_by_batch(ragged, None, "b", input_col="arr", engine=engine)
    nulls = spark.createDataFrame([(1, [1.0]), (None, [2.0])], "b int, arr array<double>")
    with pytest.raises(InvalidValueError, match="batch column 'b' is null in 1 row"):
        aggregate.moments_table_by_batch(nulls, None, "b", input_col="arr", engine=engine)


@pytest.mark.spark
def test_many_features_take_the_long_sql_aggregation(spark: Any) -> None:
    from mxnorm_spark.batch import aggregate

    rng = np.random.default_rng(11)
    k = 40  # above WIDE_FEATURES: one row per feature, gathered back into arrays
    cols = [f"f{j}" for j in range(k)]
    x = rng.normal(1e9, 1.0, (300, k))
    x[rng.random(x.shape) < 0.1] = np.nan
    rows = [(i % 25, *[None if math.isnan(v) else float(v) for v in r]) for i, r in enumerate(x)]
    df = spark.createDataFrame(rows, ["b", *cols]).repartition(3)
    table = aggregate.moments_table_by_batch(df, cols, "b", engine="sql")
    old, _, _ = aggregate._moments_per_batch(
        df, cols, None, engine="sql", shift=None, batch_col="b", allow_empty=False
    )
    assert table.values.to_pylist() == [b for b, _ in old] == list(range(25))
    for i, (_, m) in enumerate(old):
        for name in ("count", "shift", "delta", "m2"):
            assert bits(getattr(table.moments(i), name)) == bits(getattr(m, name)), (i, name)


@pytest.mark.parametrize("seed", range(12))
def test_fold_history_edge_cases_bit_for_bit(seed: int) -> None:
    """Empty batches first (the shift moves with them), lanes empty for a while, -0.0 and
    repeated values (zero variance), huge offsets: every option set, from a fresh and from
    a fitted state."""
    rng = np.random.default_rng([14, seed])
    parts = []
    for i in range(int(rng.integers(1, 60))):
        rows = int(rng.integers(0, 5))
        x = rng.choice([-0.0, 0.0, 1.0, 1e15, -3.5, 2.0**-1074], (rows, 3))
        x = x + rng.normal(0.0, 1.0, x.shape) * (rng.random(x.shape) < 0.5)
        x[rng.random(x.shape) < 0.3] = np.nan
        if i < seed % 5:
            x[:] = np.nan  # nothing valid yet in any lane
        parts.append(Moments.from_array(x, shift=rng.normal(0.0, 1e3, 3) if i % 3 else None))
    opts = StateOptions(
        alpha=[0.1, 0.5, None, 1.0][seed % 4],
        var_update="mixture" if seed % 2 else "ema",
        decay="rows" if seed % 3 == 0 and seed % 4 != 2 else "batch",
        zero_variance=["eps", "unit", "zero"][seed % 3],
    )
    fresh = MXNormState.create(COLS, options=opts)
    for start in (fresh, fresh.update(parts[-1])):
        history = fold_history(start, stacked(parts))
        state = start
        for i, m in enumerate(parts):
            state = state.update(m)
            assert_same_state(history.state(i), state, f"seed {seed} batch {i}")
