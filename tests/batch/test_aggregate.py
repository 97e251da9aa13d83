"""Distributed moments (batch/aggregate.py) against numpy two-pass and exact arithmetic."""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal
from typing import Any

import numpy as np
import pytest
from reference import assert_state_close, exact_var, two_pass

from mxnorm_spark import (
    EmptyInputError,
    FeatureMismatchError,
    InvalidParameterError,
    InvalidValueError,
    MissingColumnError,
    NonNumericError,
)
from mxnorm_spark.batch.aggregate import batch_moments, feature_names, moments_by_batch

pytestmark = pytest.mark.spark
ENGINES = ["sql", "arrow"]
INF, NAN = float("inf"), float("nan")


def bits(a: np.ndarray) -> list[int]:
    return np.ascontiguousarray(a, dtype=np.float64).view(np.int64).tolist()


_GROUPS = itertools.count()


def with_jobs(spark: Any, fn: Any) -> tuple[Any, int]:
    """``fn()`` and the number of Spark jobs it ran."""
    sc = spark.sparkContext
    group = f"count-{next(_GROUPS)}"
    sc.setJobGroup(group, "counted")
    try:
        out = fn()
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    return out, len(sc.statusTracker().getJobIdsForGroup(group))


@pytest.fixture(scope="module")
def mixed(spark: Any) -> tuple[Any, np.ndarray]:
    """Every accepted numeric type, with null, NaN and +/-inf sprinkled in, 2 partitions."""
    rng = np.random.default_rng(3)
    n = 60
    x = np.column_stack(
        [
            rng.integers(-50, 50, n),  # byte
            rng.integers(-1000, 1000, n),  # short
            rng.integers(-(10**6), 10**6, n),  # int
            rng.integers(-(10**12), 10**12, n),  # long
            rng.normal(3, 2, n).astype(np.float32),  # float
            rng.normal(-7, 0.5, n),  # double
            np.round(rng.normal(100, 10, n), 3),  # decimal(10,3)
        ]
    ).astype(np.float64)
    rows = []
    for i, r in enumerate(x):
        row: list[Any] = [int(r[0]), int(r[1]), int(r[2]), int(r[3]), float(r[4]), float(r[5])]
        row.append(Decimal(f"{r[6]:.3f}"))
        x[i, 6] = float(row[-1])
        rows.append(row)
    # Invalid values: nulls in integer/decimal columns, NaN/inf in floating ones.
    for i, j in [(1, 0), (5, 2), (7, 6), (11, 3)]:
        rows[i][j] = None
        x[i, j] = np.nan
    for i, j, v in [(2, 4, NAN), (3, 5, INF), (9, 5, -INF), (13, 4, INF), (17, 5, NAN)]:
        rows[i][j] = v
        x[i, j] = np.nan
    schema = "b byte, s short, i int, l long, f float, d double, m decimal(10,3)"
    df = spark.createDataFrame(rows, schema)
    assert df.rdd.getNumPartitions() == 2
    return df, x


COLS = ["b", "s", "i", "l", "f", "d", "m"]


def test_scalar_moments_equal_numpy_and_repeat_bit_for_bit(mixed: Any) -> None:
    df, x = mixed
    ref_mean, ref_var = two_pass(x)
    for engine in ENGINES:
        first, second = (batch_moments(df, COLS, engine=engine) for _ in range(2))
        assert first.count.tolist() == np.isfinite(x).sum(axis=0).tolist()
        assert_state_close(first.mean, first.var, ref_mean, ref_var, 1e-12)
        for name in ("count", "shift", "delta", "m2"):  # same input and partitioning
            assert bits(getattr(first, name)) == bits(getattr(second, name)), engine


@pytest.mark.parametrize("engine", ENGINES)
def test_large_offset_keeps_its_variance(spark: Any, engine: str) -> None:
    rng = np.random.default_rng(11)
    values = 1e9 + rng.normal(0.0, 1.0, 2000)
    df = spark.createDataFrame([(float(v),) for v in values], "x double")
    m = batch_moments(df, ["x"], engine=engine)
    exact = exact_var(values)
    assert abs(float(m.var[0]) - float(exact)) / float(exact) < 1e-12  # 1e-9 required
    assert abs(float(m.mean[0]) - float(np.mean(values - 1e9)) - 1e9) < 1e-6


@pytest.mark.parametrize(("engine", "partitions"), [("sql", 200), ("arrow", 20)])
def test_skew_all_rows_in_one_partition(spark: Any, engine: str, partitions: int) -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(2.0, 3.0, (300, 2))
    schema = "a double, c double"
    full = spark.createDataFrame([(float(a), float(b)) for a, b in x], schema).coalesce(1)
    n = partitions - 1
    empty = spark.range(0, n, 1, n).where("id < 0").selectExpr("0.0D AS a", "0.0D AS c")
    skewed = empty.union(full)  # empty partitions first, then one with every row
    assert skewed.rdd.getNumPartitions() == partitions
    m = batch_moments(skewed, ["a", "c"], engine=engine)
    assert_state_close(m.mean, m.var, *two_pass(x), 1e-12)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind", ["vector", "array"])
def test_vector_and_array_columns(spark: Any, engine: str, kind: str) -> None:
    from mxnorm_spark.batch.apply import to_vector

    rng = np.random.default_rng(9)
    x = rng.normal([1.0, -4.0, 1e6], [1.0, 0.1, 5.0], (40, 3))
    x[3, 1] = np.nan
    rows = [([float(v) for v in r],) for r in x] + [(None,)]  # a null row is skipped
    df = spark.createDataFrame(rows, "arr array<double>")
    col = "arr"
    if kind == "vector":
        df = df.withColumn("vec", to_vector(df["arr"])).drop("arr")
        col = "vec"
    m = batch_moments(df, input_col=col, engine=engine)
    assert m.n_features == 3
    assert_state_close(m.mean, m.var, *two_pass(x), 1e-12)
    assert feature_names(df, input_col=col) == [f"{col}[0]", f"{col}[1]", f"{col}[2]"]


@pytest.mark.parametrize("engine", ENGINES)
def test_moments_by_batch_one_pass_in_ascending_order(spark: Any, engine: str) -> None:
    from pyspark.sql import functions as F

    rng = np.random.default_rng(21)
    days = [dt.date(2024, 1, d) for d in (3, 1, 2, 5, 4)]
    data = {d: rng.normal(i, 1 + i, (8 + i, 2)) for i, d in enumerate(days)}
    rows = [(d, float(a), float(b)) for d, x in data.items() for a, b in x]
    df = spark.createDataFrame(rows, "day date, a double, c double")
    groups, jobs = with_jobs(spark, lambda: moments_by_batch(df, ["a", "c"], "day", engine=engine))
    one = df.withColumn("day", F.lit(days[0]))
    _, jobs_one = with_jobs(spark, lambda: moments_by_batch(one, ["a", "c"], "day", engine=engine))
    assert jobs == jobs_one  # one distributed pass, not one job per batch value
    assert [d for d, _ in groups] == sorted(days)
    for d, m in groups:
        assert_state_close(m.mean, m.var, *two_pass(data[d]), 1e-12)


def test_batch_column_with_nulls_fails(spark: Any) -> None:
    df = spark.createDataFrame([(1, 1.0), (None, 2.0)], "b int, x double")
    with pytest.raises(InvalidValueError, match="batch column 'b' is null"):
        moments_by_batch(df, ["x"], "b")


def test_shift_and_empty_input(spark: Any) -> None:
    df = spark.createDataFrame([(1e9 + 1,), (1e9 + 3,), (None,)], "x double")
    for engine in ENGINES:
        m = batch_moments(df, ["x"], engine=engine, shift=[1e9])
        assert m.count.tolist() == [2.0] and m.var.tolist() == [1.0]
    empty = df.where("x < 0")
    for engine in ENGINES:
        with pytest.raises(EmptyInputError, match="no rows"):
            batch_moments(empty, ["x"], engine=engine)
        got = batch_moments(empty, ["x"], engine=engine, allow_empty=True)
        assert got.count.tolist() == [0.0]
    all_invalid = spark.createDataFrame([(None,), (NAN,)], "x double")
    assert batch_moments(all_invalid, ["x"]).count.tolist() == [0.0]


def test_errors_name_the_problem_before_any_job(spark: Any) -> None:
    df = spark.createDataFrame([(1.0, "s", [1.0])], "x double, name string, arr array<double>")

    def check() -> None:
        with pytest.raises(MissingColumnError, match=r"\['nope'\].*\['x', 'name', 'arr'\]"):
            batch_moments(df, ["x", "nope"])
        with pytest.raises(NonNumericError, match=r"'name' \(string\)"):
            batch_moments(df, ["x", "name"])
        with pytest.raises(NonNumericError, match="input_col 'name' has type string"):
            batch_moments(df, input_col="name")
        with pytest.raises(InvalidParameterError, match=r"engine must be one of"):
            batch_moments(df, ["x"], engine="gpu")
        with pytest.raises(InvalidParameterError, match="exactly one of cols"):
            batch_moments(df, ["x"], input_col="arr")
        with pytest.raises(InvalidParameterError, match="got the string 'x'"):
            batch_moments(df, "x")  # type: ignore[arg-type]
        with pytest.raises(MissingColumnError, match="nope"):
            moments_by_batch(df, ["x"], "nope")

    assert with_jobs(spark, check)[1] == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_vectors_of_varying_length_fail(spark: Any, engine: str) -> None:
    df = spark.createDataFrame([([1.0, 2.0],), ([1.0, 2.0, 3.0],)], "arr array<double>")
    with pytest.raises(FeatureMismatchError, match=r"'arr' holds vectors of varying length"):
        batch_moments(df.coalesce(1), input_col="arr", engine=engine)


def test_sql_double_literals_round_trip_exactly(spark: Any) -> None:
    from mxnorm_spark.batch.aggregate import sql_double

    rng = np.random.default_rng(17)
    raw = rng.integers(0, 2**63 - 1, 200, dtype=np.int64).view(np.float64)
    values = [float(v) for v in raw if np.isfinite(v)]
    values += [5e-324, -2.2250738585072014e-308, 1.7976931348623157e308, 0.1, 1e22, -3.0]
    row = spark.sql("SELECT " + ", ".join(f"{sql_double(v)} AS c{i}" for i, v in enumerate(values)))
    got = [float(v) for v in row.first()]
    assert bits(np.array(got)) == bits(np.array(values))
    with pytest.raises(ValueError, match="not a finite double"):
        sql_double(float("nan"))


def test_sql_pivot_far_from_the_mean_gets_a_second_pass(spark: Any) -> None:
    rng = np.random.default_rng(23)
    bulk = 1e9 + rng.normal(0.0, 1.0, 3000)
    df = spark.createDataFrame([(float(v),) for v in bulk], "x double").coalesce(1)
    # A given pivot 1e9 standard deviations off: one pass of shifted sums keeps no digit
    # of the variance; the pass re-centred on the mean keeps them all.
    m, jobs = with_jobs(spark, lambda: batch_moments(df, ["x"], engine="sql", shift=[0.0]))
    exact = exact_var(bulk)
    assert abs(float(m.var[0]) - float(exact)) / float(exact) < 1e-12
    assert abs(float(m.mean[0]) - float(np.mean(bulk - 1e9)) - 1e9) < 1e-6
    _, jobs_near = with_jobs(spark, lambda: batch_moments(df, ["x"], engine="sql", shift=[1e9]))
    assert jobs == 2 * jobs_near, (jobs, jobs_near)  # one more pass, only where needed
    # First rows far below the bulk: the pivot taken from them is re-centred too.
    values = np.concatenate([np.zeros(20), bulk])
    far = spark.createDataFrame([(float(v),) for v in values], "x double").coalesce(1)
    m = batch_moments(far, ["x"], engine="sql")
    exact = exact_var(values)
    assert abs(float(m.var[0]) - float(exact)) / float(exact) < 1e-12


def test_sql_backfill_drifting_batches_recentres_each_batch(spark: Any) -> None:
    rng = np.random.default_rng(29)
    data = {b: 1e7 * b + rng.normal(0.0, 0.5 + b, 50) for b in range(6)}
    rows = [(b, float(v)) for b, x in data.items() for v in x]
    df = spark.createDataFrame(rows, "b int, x double").repartition(3)
    groups = moments_by_batch(df, ["x"], "b", engine="sql")
    assert [b for b, _ in groups] == list(range(6))
    for b, m in groups:
        exact = exact_var(data[b])
        assert abs(float(m.var[0]) - float(exact)) / float(exact) < 1e-12, b
        assert abs(float(m.mean[0]) - float(np.mean(data[b]))) < 1e-12 * 1e7 * max(b, 1)


@pytest.mark.parametrize("bad", [None, NAN, INF])
def test_sql_invalid_values_take_the_checked_pass(spark: Any, bad: float | None) -> None:
    # Clean scalar columns: one pass without per-value tests. A null, NaN or inf anywhere
    # shows in that pass (non-finite sums) and the checked pass runs instead.
    rng = np.random.default_rng(31)
    x = rng.normal([5.0, -2.0], [1.0, 3.0], (40, 2))
    rows = [(float(a), float(b)) for a, b in x]
    clean = spark.createDataFrame(rows, "a double, c double").coalesce(2)
    dirty = spark.createDataFrame([*rows[:7], (1.0, bad), *rows[7:]], "a double, c double")
    dirty = dirty.coalesce(2)
    kw: dict[str, Any] = {"engine": "sql", "shift": [5.0, -2.0]}  # no pivot job
    m_clean, jobs_clean = with_jobs(spark, lambda: batch_moments(clean, ["a", "c"], **kw))
    m_dirty, jobs_dirty = with_jobs(spark, lambda: batch_moments(dirty, ["a", "c"], **kw))
    assert jobs_dirty == 2 * jobs_clean  # one more aggregation, the same as the first
    assert_state_close(m_clean.mean, m_clean.var, *two_pass(x), 1e-12)
    assert m_dirty.count.tolist() == [41.0, 40.0]
    with_bad = np.vstack([x[:7], [[1.0, np.nan]], x[7:]])
    assert_state_close(m_dirty.mean, m_dirty.var, *two_pass(with_bad), 1e-12)


@pytest.mark.parametrize("kind", ["scalar", "array"])
def test_sql_many_features_one_row_per_feature(spark: Any, kind: str) -> None:
    # More than 32 features: the sql engine aggregates one row per (partition, feature).
    from mxnorm_spark.batch.aggregate import check_engine

    rng = np.random.default_rng(37)
    k = 40
    x = rng.normal(np.arange(k) * 100.0, 1.0 + np.arange(k), (60, k))
    x[5, 3], x[9, 30] = np.nan, np.inf
    if kind == "scalar":
        names = [f"f{j}" for j in range(k)]
        df = spark.createDataFrame([tuple(map(float, r)) for r in x], names).repartition(3)
        m = batch_moments(df, names, engine="sql")
    else:
        df = spark.createDataFrame([([float(v) for v in r],) for r in x], "a array<double>")
        m = batch_moments(df.repartition(3), input_col="a", engine="sql")
    assert m.count.tolist() == [59.0 if j in (3, 30) else 60.0 for j in range(k)]
    assert_state_close(m.mean, m.var, *two_pass(x), 1e-12)
    assert check_engine("auto", "scalar", moments=True, features=k) == "arrow"
    assert check_engine("auto", "scalar", moments=True, features=32) == "sql"


@pytest.mark.parametrize("rows", [10, 3000])
def test_auto_small_input_is_computed_on_the_driver(spark: Any, rows: int) -> None:
    # 2 columns: up to 16,384 rows are computed on the driver after a limit job.
    rng = np.random.default_rng(41)
    x = rng.normal([3.0, 1e6], [2.0, 0.5], (rows, 2))
    x[1, 0] = np.nan
    df = spark.createDataFrame([tuple(map(float, r)) for r in x], "a double, c double")
    m, jobs = with_jobs(spark, lambda: batch_moments(df, ["a", "c"]))
    _, jobs_sql = with_jobs(spark, lambda: batch_moments(df, ["a", "c"], engine="sql"))
    assert jobs < jobs_sql  # the limit job(s) only: no aggregation
    assert_state_close(m.mean, m.var, *two_pass(x), 1e-12)
    assert m.count.tolist() == [rows - 1.0, float(rows)]


def test_auto_large_input_goes_through_spark(spark: Any) -> None:
    n = 40_000  # above the local size for 2 columns
    df = spark.range(0, n, 1, 3).selectExpr(
        "CAST(id % 97 AS DOUBLE) * 0.25 AS a", "1e6D + CAST(id % 13 AS DOUBLE) AS c"
    )
    ids = np.arange(n)
    x = np.column_stack([(ids % 97) * 0.25, 1e6 + (ids % 13)])
    m, jobs = with_jobs(spark, lambda: batch_moments(df, ["a", "c"]))
    assert jobs > 1
    assert_state_close(m.mean, m.var, *two_pass(x), 1e-12)
