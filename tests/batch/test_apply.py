"""Normalization (batch/apply.py): engines bit-identical to each other and to the numpy path."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import numpy as np
import pytest

from mxnorm_spark import (
    FeatureMismatchError,
    InvalidParameterError,
    MissingColumnError,
    Moments,
    MXNormState,
    NotFittedError,
)
from mxnorm_spark.batch.aggregate import batch_moments
from mxnorm_spark.batch.apply import normalize, to_vector

pytestmark = pytest.mark.spark
ENGINES = ["sql", "arrow"]
INF, NAN = float("inf"), float("nan")


def bits(a: Any) -> list[int]:
    return np.ascontiguousarray(a, dtype=np.float64).view(np.int64).ravel().tolist()


def as_float(values: Any) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float)


@pytest.fixture(scope="module")
def data(spark: Any) -> tuple[Any, np.ndarray, MXNormState]:
    """id, a (double with NaN/inf/null), b (int with a null), c (decimal); 2 partitions."""
    rng = np.random.default_rng(4)
    n = 24
    a = rng.normal(1e9, 3.0, n)
    b = rng.integers(-100, 100, n).astype(float)
    c = np.round(rng.normal(5.0, 0.25, n), 2)
    a[2], a[5], a[7] = np.nan, INF, -INF
    rows = []
    for i in range(n):
        rows.append(
            (
                i,
                None if i == 9 else float(a[i]),
                None if i == 4 else int(b[i]),
                Decimal(f"{c[i]:.2f}"),
            )
        )
    a[9], b[4] = np.nan, np.nan
    x = np.column_stack([a, b, c])
    df = spark.createDataFrame(rows, "id int, a double, b int, c decimal(6,2)")
    state = MXNormState.create(["a", "b", "c"]).update(Moments.from_array(x[:12]))
    state = state.update(Moments.from_array(x[12:]))
    return df, x, state


def test_engines_equal_the_numpy_serving_path_bit_for_bit(data: Any) -> None:
    df, x, state = data
    expected = state.normalize(x)  # numpy reads null as NaN
    outs = {}
    for engine in ENGINES:
        got = normalize(df, state, ["a", "b", "c"], ["za", "zb", "zc"], engine=engine)
        assert got.columns == ["id", "a", "b", "c", "za", "zb", "zc"]
        assert dict(got.dtypes)["zb"] == "double"
        rows = sorted(got.collect())
        z = as_float([(r.za, r.zb, r.zc) for r in rows])
        # keep: null stays null, NaN stays NaN, +/-inf gives +/-inf.
        assert rows[9].za is None and rows[4].zb is None
        assert np.isnan(rows[2].za) and rows[5].za == INF and rows[7].za == -INF
        assert bits(z) == bits(expected), engine
        outs[engine] = z
    assert bits(outs["sql"]) == bits(outs["arrow"])


@pytest.mark.parametrize("kind", ["vector", "array"])
def test_vector_and_array_output_their_own_kind(spark: Any, kind: str) -> None:
    from pyspark.ml.linalg import DenseVector

    rng = np.random.default_rng(8)
    x = rng.normal([0.0, 50.0, -3.0], [1.0, 10.0, 0.01], (12, 3))
    x[1, 2] = np.nan
    rows = [(i, [float(v) for v in r]) for i, r in enumerate(x)] + [(99, None)]
    df = spark.createDataFrame(rows, "id int, f array<double>")
    if kind == "vector":
        df = df.withColumn("f", to_vector(df["f"]))
    state = MXNormState.create(["f[0]", "f[1]", "f[2]"]).update(batch_moments(df, input_col="f"))
    expected = state.normalize(x)
    for engine in ENGINES:
        got = normalize(df, state, input_col="f", output_col="z", engine=engine)
        assert dict(got.dtypes)["z"] == ("vector" if kind == "vector" else "array<double>")
        rows = sorted(got.select("id", "z").collect())
        assert rows[-1].z is None  # a null row stays null
        if kind == "vector":
            assert isinstance(rows[0].z, DenseVector)
        z = np.array([list(r.z) for r in rows[:-1]])
        assert bits(z) == bits(expected), engine
    # With no columns named, the state's own features (f[0], f[1], ...) mean column f.
    default = normalize(df, state).where("id = 0").first()
    assert bits(list(default.f)) == bits(expected[0])


def test_skip_drops_rows_with_any_invalid_value(data: Any) -> None:
    df, _, state = data
    for engine in ENGINES:
        got = normalize(df, state, ["a", "b", "c"], handle_invalid="skip", engine=engine)
        assert sorted(r.id for r in got.select("id").collect()) == [
            i for i in range(24) if i not in (2, 4, 5, 7, 9)
        ]


@pytest.mark.parametrize("engine", ENGINES)
def test_error_names_the_column_and_the_value_kind(spark: Any, engine: str) -> None:
    state = MXNormState.create(["v"]).update(Moments.from_array(np.array([[1.0], [3.0]])))
    for value, kind in [(None, "a null"), (NAN, "a NaN"), (-INF, "an infinite")]:
        df = spark.createDataFrame([(1.0,), (value,)], "v double").coalesce(1)
        out = normalize(df, state, ["v"], ["z"], handle_invalid="error", engine=engine)
        with pytest.raises(Exception, match=f"column 'v' holds {kind} value"):
            out.collect()
    ok = spark.createDataFrame([(1.0,), (3.0,)], "v double")
    z = normalize(ok, state, ["v"], handle_invalid="error", engine=engine).collect()
    assert [r.v for r in z] == pytest.approx([-1.0, 1.0], abs=1e-8)


def test_single_batch_equals_scikit_learn_standard_scaler(spark: Any) -> None:
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(12)
    x = rng.normal([3.0, -1e4, 0.0], [2.0, 50.0, 1e-3], (200, 3))
    df = spark.createDataFrame(
        [tuple(float(v) for v in r) for r in x], "p double, q double, r double"
    )
    state = MXNormState.create(["p", "q", "r"], eps=1e-8).update(batch_moments(df, ["p", "q", "r"]))
    sk = StandardScaler().fit(x)
    np.testing.assert_allclose(state.mean, sk.mean_, rtol=1e-13, atol=0)
    np.testing.assert_allclose(state.var, sk.var_, rtol=1e-12, atol=0)
    for engine in ENGINES:
        got = normalize(df, state, ["p", "q", "r"], engine=engine).collect()
        z = np.array([list(r) for r in got])
        # ours divides by sqrt(var + eps), StandardScaler by sqrt(var)
        unscaled = z * np.sqrt(state.var + 1e-8) / np.sqrt(state.var)
        np.testing.assert_allclose(unscaled, sk.transform(x), rtol=1e-10, atol=1e-12)


def test_fallback_fills_features_without_state(spark: Any) -> None:
    df = spark.createDataFrame([(1.0, 10.0), (3.0, 14.0)], "a double, b double")
    before = MXNormState.create(["a", "b"]).update(Moments.from_array(np.array([[2.0, NAN]])))
    after = before.update(Moments.from_array(np.array([[1.0, 10.0], [3.0, 14.0]])))
    with pytest.raises(NotFittedError, match=r"\['b'\]"):
        normalize(df, before)
    got = normalize(df, before, fallback=after).collect()
    mean, scale = before.normalization_constants(fallback=after)
    assert bits([list(r) for r in got]) == bits(
        (np.array([[1.0, 10.0], [3.0, 14.0]]) - mean) / scale
    )


def test_bad_arguments_fail_before_any_job(spark: Any) -> None:
    df = spark.createDataFrame([(1.0, 2.0, [1.0, 2.0])], "a double, b double, f array<double>")
    state = MXNormState.create(["a", "b"]).update(Moments.from_array(np.array([[1.0, 2.0]])))
    with pytest.raises(InvalidParameterError, match="output_cols must list one name per input"):
        normalize(df, state, ["a", "b"], ["za"])
    with pytest.raises(InvalidParameterError, match="handle_invalid must be one of"):
        normalize(df, state, handle_invalid="drop")
    with pytest.raises(InvalidParameterError, match="engine must be one of"):
        normalize(df, state, engine="numba")
    with pytest.raises(FeatureMismatchError, match="1 column"):
        normalize(df, state, ["a"])
    with pytest.raises(MissingColumnError, match=r"\['zz'\]"):
        normalize(df, state, ["a", "zz"])
    with pytest.raises(InvalidParameterError, match="output_col goes with input_col"):
        normalize(df, state, ["a", "b"], output_col="z")


@pytest.mark.parametrize("engine", ENGINES)
def test_vector_of_wrong_length_fails_naming_the_column(spark: Any, engine: str) -> None:
    df = spark.createDataFrame([([1.0, 2.0, 3.0],)], "f array<double>")
    state = MXNormState.create(["f[0]", "f[1]"]).update(Moments.from_array(np.eye(2)))
    with pytest.raises(Exception, match="column 'f' holds a vector whose length is not 2"):
        normalize(df, state, input_col="f", engine=engine).collect()
