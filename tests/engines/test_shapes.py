"""The fast paths for vector, array and wide inputs against two-pass numpy.

``transform()`` normalization of vector/array columns, the row-major moments kernel of
all-valid list batches and the packed kernel input of many scalar columns.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from reference import assert_state_close, two_pass

from mxnorm_spark import FeatureMismatchError, Moments, MXNormState
from mxnorm_spark.batch.aggregate import batch_moments
from mxnorm_spark.batch.apply import normalize
from mxnorm_spark.core.moments import finite_rows_moments

NAN, INF = float("nan"), float("inf")


def _rows(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """``1e9 + N(0, 1)`` and spreads that differ per feature."""
    return 1e9 + rng.standard_normal((n, k)) * (1.0 + np.arange(k))


# ---- the row-major kernel (no Spark) ------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 127, 128, 129, 1000])
def test_row_major_moments_match_two_pass(n: int) -> None:
    x = _rows(np.random.default_rng(n), n, 5)
    got = finite_rows_moments(x, None)
    mean, var = two_pass(x)
    assert_state_close(got.mean, got.var, mean, var)
    other = Moments.from_columns(x.T)
    assert got.count.tolist() == other.count.tolist()


def test_row_major_moments_take_the_finite_shift() -> None:
    x = _rows(np.random.default_rng(7), 300, 3)
    shift = np.array([1e9, NAN, 1e9 + 1])
    got = finite_rows_moments(x, shift)
    assert got.shift.tolist() == [1e9, x[0, 1], 1e9 + 1]
    assert_state_close(got.mean, got.var, *two_pass(x))


# ---- vector / array columns in Spark -------------------------------------------------------
def _array_frame(spark: Any, x: np.ndarray, kind: str) -> Any:
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    rows = [([None if v is None else float(v) for v in r],) for r in x.tolist()]
    df = spark.createDataFrame(rows, "v array<double>").repartition(2)
    if kind == "vector":
        df = df.select(F.when(F.col("v").isNotNull(), array_to_vector("v")).alias("v"))
    return df


def _values(rows: list[Any]) -> np.ndarray:
    out = []
    for r in rows:
        v = r["z"]
        out.append(
            v.toArray() if hasattr(v, "toArray") else [np.nan if e is None else e for e in v]
        )
    return np.array(out, dtype=float)


@pytest.mark.parametrize("kind", ["array", "vector"])
def test_vector_fit_and_transform_match_numpy(spark: Any, kind: str) -> None:
    x = _rows(np.random.default_rng(3), 400, 6)
    df = _array_frame(spark, x, kind)
    m = batch_moments(df, input_col="v")
    mean, var = two_pass(x)
    assert_state_close(m.mean, m.var, mean, var)
    state = MXNormState.create([f"v[{i}]" for i in range(6)]).update(m)
    out = normalize(df, state, input_col="v", output_col="z")
    assert out.schema["z"].dataType.typeName() == ("vectorudt" if kind == "vector" else "array")
    got = _values(out.collect())
    want_mean, want_scale = state.normalization_constants()
    expect = (x - want_mean) / want_scale
    # Row order after repartition is not the input's: compare sorted per feature.
    np.testing.assert_array_equal(np.sort(got, axis=0), np.sort(expect, axis=0))


@pytest.mark.parametrize("engine", ["sql", "arrow"])
def test_array_invalid_values_per_policy(spark: Any, engine: str) -> None:
    """Null elements, NaN, inf and a null row: skipped by the moments; kept, skipped or
    refused by the normalization, the same in both engines."""
    rng = np.random.default_rng(5)
    x = _rows(rng, 60, 3).astype(object)
    x[3, 0], x[7, 1], x[11, 2] = None, NAN, INF
    rows = [([None if v is None else float(v) for v in r],) for r in x.tolist()]
    rows.append((None,))
    df = spark.createDataFrame(rows, "v array<double>").repartition(2)
    m = batch_moments(df, input_col="v", engine=engine)
    num = np.array([[np.nan if v is None else v for v in r] for r in x.tolist()], dtype=float)
    assert_state_close(m.mean, m.var, *two_pass(num))
    assert m.count.tolist() == [59.0, 59.0, 59.0]
    state = MXNormState.create(["v[0]", "v[1]", "v[2]"]).update(m)
    kept = normalize(df, state, input_col="v", output_col="z", engine=engine).collect()
    assert sum(r["z"] is None for r in kept) == 1
    got = _values([r for r in kept if r["z"] is not None])
    assert np.isnan(got).sum() == 2 and np.isinf(got).sum() == 1
    skipped = normalize(
        df, state, input_col="v", output_col="z", handle_invalid="skip", engine=engine
    )
    assert skipped.count() == 57
    with pytest.raises(Exception, match="column 'v' holds a"):
        normalize(df, state, input_col="v", handle_invalid="error", engine=engine).collect()


@pytest.mark.parametrize("engine", ["sql", "arrow"])
def test_wrong_length_rows_fail_with_the_length_message(spark: Any, engine: str) -> None:
    df = spark.createDataFrame([([1.0, 2.0],), ([3.0, 4.0, 5.0],)], "v array<double>")
    state = MXNormState.create(["v[0]", "v[1]"]).update(Moments.from_array(np.eye(2)))
    with pytest.raises(Exception, match="holds a vector whose length is not 2"):
        normalize(df, state, input_col="v", engine=engine).collect()
    with pytest.raises(FeatureMismatchError, match="varying length"):
        batch_moments(df, input_col="v", engine=engine)


# ---- many scalar columns, packed into one list for the kernel -----------------------------
def test_wide_scalar_moments_match_numpy(spark: Any) -> None:
    k = 40  # above WIDE_FEATURES: auto takes the arrow kernel over a packed array
    x = _rows(np.random.default_rng(9), 300, k)
    x[5, 2], x[9, 30] = NAN, INF
    cols = [f"c{j}" for j in range(k)]
    data = [
        [None if (i, j) == (12, 7) else float(v) for j, v in enumerate(r)] for i, r in enumerate(x)
    ]
    df = spark.createDataFrame(data, ", ".join(f"{c} double" for c in cols)).repartition(2)
    x[12, 7] = np.nan
    for engine in ("auto", "arrow"):
        m = batch_moments(df, cols, engine=engine)
        assert_state_close(m.mean, m.var, *two_pass(x))
        assert m.count[[2, 7, 30]].tolist() == [299.0, 299.0, 299.0]


# ---- ml vectors read as their Arrow struct (no vector_to_array / array_to_vector) ---------
def _vector_rows(x: np.ndarray) -> list[Any]:
    """Rows of ``x`` as ml vectors, every third one sparse (its zeros left out)."""
    from pyspark.ml.linalg import Vectors

    out: list[Any] = []
    for i, r in enumerate(x.tolist()):
        nz = {j: v for j, v in enumerate(r) if v != 0.0}
        out.append((i, Vectors.sparse(len(r), nz) if i % 3 == 0 else Vectors.dense(r)))
    return out


def _bits(a: Any) -> list[int]:
    """The float64 bits (every NaN as one)."""
    x = np.asarray(a, dtype=np.float64)
    return np.where(np.isnan(x), np.nan, x).view(np.int64).ravel().tolist()


def _vector_frame(spark: Any, rows: list[Any]) -> Any:
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import types as T

    schema = T.StructType([T.StructField("id", T.LongType()), T.StructField("v", VectorUDT())])
    return spark.createDataFrame(rows, schema).repartition(2)


@pytest.mark.parametrize("engine", ["auto", "arrow", "sql"])
def test_vector_struct_path_gives_the_serving_bits(spark: Any, engine: str) -> None:
    """Dense and sparse rows (a sparse one comes out dense), null rows and invalid values:
    the same bits as MXNormState.normalize, per handle_invalid, in every engine."""
    x = _rows(np.random.default_rng(11), 90, 4)
    x[3, 1] = x[6, 3] = 0.0  # left out of their sparse rows
    x[4, 2], x[8, 0] = NAN, INF
    rows = [*_vector_rows(x), (90, None)]
    df = _vector_frame(spark, rows)
    m = batch_moments(df, input_col="v", engine=engine)
    assert m.count.tolist() == [89.0, 90.0, 89.0, 90.0]
    state = MXNormState.create([f"v[{i}]" for i in range(4)]).update(m)
    out = normalize(df, state, input_col="v", output_col="z", engine=engine)
    assert out.columns == ["id", "v", "z"]
    got = {r["id"]: r["z"] for r in out.collect()}
    assert got[90] is None and all(type(got[i]).__name__ == "DenseVector" for i in range(90))
    assert _bits([got[i].toArray() for i in range(90)]) == _bits(state.normalize(x))
    skipped = normalize(df, state, input_col="v", handle_invalid="skip", engine=engine)
    kept = sorted(r["id"] for r in skipped.collect())
    assert kept == [i for i in range(90) if i not in (4, 8)]
    with pytest.raises(Exception, match="column 'v' holds a"):
        normalize(df, state, input_col="v", handle_invalid="error", engine=engine).collect()


@pytest.mark.parametrize("engine", ["auto", "arrow"])
def test_vector_moments_equal_the_array_path_bit_for_bit(spark: Any, engine: str) -> None:
    from pyspark.ml.functions import vector_to_array

    x = _rows(np.random.default_rng(12), 3000, 5)
    df = _vector_frame(spark, _vector_rows(x)).cache()
    got = batch_moments(df, input_col="v", engine=engine)
    want = batch_moments(df.select(vector_to_array("v").alias("v")), input_col="v", engine=engine)
    assert_state_close(got.mean, got.var, *two_pass(x))
    assert _bits([got.count, got.mean, got.var]) == _bits([want.count, want.mean, want.var])
    df.unpersist()


@pytest.mark.parametrize("engine", ["auto", "arrow", "sql"])
def test_wrong_length_vectors_fail_with_the_length_message(spark: Any, engine: str) -> None:
    from pyspark.ml.linalg import Vectors

    state = MXNormState.create(["v[0]", "v[1]"]).update(Moments.from_array(np.eye(2)))
    for bad in (Vectors.dense([3.0, 4.0, 5.0]), Vectors.sparse(3, {2: 1.0})):
        df = _vector_frame(spark, [(0, Vectors.dense([1.0, 2.0])), (1, bad)])
        with pytest.raises(Exception, match="holds a vector whose length is not 2"):
            normalize(df, state, input_col="v", engine=engine).collect()


@pytest.mark.parametrize("engine", ["auto", "arrow"])
def test_vector_in_place_from_parquet(spark: Any, engine: str, tmp_path: Any) -> None:
    """A Parquet scan feeds Arrow UDFs columnar batches, which refuse a vector column: the
    arrow engine's struct pass normalizes the column in place all the same."""
    x = _rows(np.random.default_rng(13), 50, 3)
    _vector_frame(spark, _vector_rows(x)).write.parquet(str(tmp_path / "v"))
    df = spark.read.parquet(str(tmp_path / "v"))
    state = MXNormState.create(["v[0]", "v[1]", "v[2]"]).update(Moments.from_array(x))
    got = normalize(df, state, input_col="v", engine=engine).orderBy("id").collect()
    assert _bits([r["v"].toArray() for r in got]) == _bits(state.normalize(x))
