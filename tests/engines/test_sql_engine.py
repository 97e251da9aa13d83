"""The sql engine's moments job: generated code reused across pivots, invalid values
flagged by non-finite sums, results checked against float64 two-pass."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from reference import assert_state_close, exact_var, two_pass

from mxnorm_spark.batch.aggregate import batch_moments_and_rows, moments_table_by_batch

pytestmark = pytest.mark.spark
NAN, INF = float("nan"), float("inf")


def _compilations(spark: Any) -> int:
    """Whole-stage code compiled so far in this JVM (driver and local executors)."""
    metrics = spark.sparkContext._jvm.org.apache.spark.metrics.source.CodegenMetrics
    return int(metrics.METRIC_COMPILATION_TIME().getCount())


def test_new_pivots_reuse_the_generated_code(spark: Any) -> None:
    # A stream passes the state mean as the pivots of every micro-batch: the aggregation
    # must not compile new code for them (literals did, at ~0.3 s of CPU per batch).
    rng = np.random.default_rng(41)
    x = rng.normal([1e6, -3.0, 40.0], [2.0, 0.5, 9.0], (500, 3))
    df = spark.createDataFrame([tuple(map(float, r)) for r in x], "a double, b double, c double")
    df = df.repartition(2)
    cols = ["a", "b", "c"]
    mean, var = two_pass(x)
    shifts = [mean + d * np.sqrt(var) for d in (0.3, -0.7, 1.1, 0.05)]
    batch_moments_and_rows(df, cols, engine="sql", shift=shifts[0])  # compiles once
    before = _compilations(spark)
    for shift in shifts[1:]:
        m, rows = batch_moments_and_rows(df, cols, engine="sql", shift=shift)
        assert rows == 500
        assert_state_close(m.mean, m.var, mean, var, 1e-12)
        assert m.shift.tolist() == shift.tolist()  # the pivots given are the ones used
    assert _compilations(spark) == before


@pytest.mark.parametrize("bad", [None, NAN, INF, -INF])
def test_an_invalid_value_makes_the_fast_pass_give_way(spark: Any, bad: float | None) -> None:
    # The unchecked pass reads a null as NaN: one bad value anywhere (here in the last
    # row of the second partition) must still send the job to the checked pass.
    rng = np.random.default_rng(43)
    x = rng.normal([1e9, 7.0], [1.0, 2.0], (300, 2))
    rows: list[tuple[Any, Any]] = [(float(a), float(b)) for a, b in x]
    rows[-1] = (rows[-1][0], bad)
    df = spark.createDataFrame(rows, "a double, b double").coalesce(2)
    m, n = batch_moments_and_rows(df, ["a", "b"], engine="sql", shift=[1e9, 7.0])
    assert n == 300
    assert m.count.tolist() == [300.0, 299.0]
    x[-1, 1] = np.nan
    assert_state_close(m.mean, m.var, *two_pass(x), 1e-12)
    exact = exact_var(x[:, 0])
    assert abs(float(m.var[0]) - float(exact)) / float(exact) < 1e-12


def test_an_empty_partition_and_a_feature_without_values(spark: Any) -> None:
    # A partition with no row and a feature with only invalid values in one partition:
    # counts per feature, not per row, and no NaN from an empty sum.
    rows = [(1.0, None), (2.0, None), (4.0, 5.0), (8.0, 6.0)]
    df = spark.createDataFrame(rows, "a double, b double").repartition(3)
    m, n = batch_moments_and_rows(df, ["a", "b"], engine="sql", shift=[0.0, 0.0])
    assert n == 4
    assert m.count.tolist() == [4.0, 2.0]
    x = np.array([[r[0], np.nan if r[1] is None else r[1]] for r in rows])
    assert_state_close(m.mean, m.var, *two_pass(x), 1e-12)


def test_backfill_partials_flag_nulls_without_a_null_flag(spark: Any) -> None:
    # Per batch value: a null in one batch, NaN in another, inf in a third; every batch's
    # moments as two-pass over its finite values.
    rng = np.random.default_rng(47)
    data = {b: rng.normal([10.0 * b, -b], [1.0, 0.5 + b], (40, 2)) for b in range(4)}
    rows: list[tuple[int, Any, Any]] = []
    for b, x in data.items():
        rows += [(b, float(u), float(v)) for u, v in x]
    for i, (b, value) in enumerate([(1, None), (2, NAN), (3, INF)]):
        rows.append((b, 10.0 * b + i, value))
        data[b] = np.vstack([data[b], [[10.0 * b + i, np.nan]]])
    df = spark.createDataFrame(rows, "k int, u double, v double").repartition(3)
    table = moments_table_by_batch(df, ["u", "v"], "k", engine="sql")
    assert table.values.to_pylist() == [0, 1, 2, 3]
    for b, x in data.items():
        mean, var = two_pass(x)
        count = np.isfinite(x).sum(axis=0).astype(float)
        assert table.count[b].tolist() == count.tolist()
        got_mean = table.shift[b] + table.delta[b]
        assert_state_close(got_mean, table.m2[b] / table.count[b], mean, var, 1e-12)
