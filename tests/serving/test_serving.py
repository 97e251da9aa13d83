"""Serving without Spark: the same output as the Spark engines, bit for bit.

Every Spark result here is compared with :mod:`mxnorm_spark.serving` on the same input by
the float64 bits of each value and the null mask, never approximately.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mxnorm_spark import InvalidValueError, Moments, MXNormState
from mxnorm_spark.core.errors import (
    CorruptStateError,
    FeatureMismatchError,
    InvalidParameterError,
    StateNotFoundError,
)
from mxnorm_spark.serving import Normalizer, load
from mxnorm_spark.store import StateStore, write_state

ROOT = Path(__file__).resolve().parents[2]
ENGINES = ["sql", "arrow", "auto"]
MODES = ["keep", "skip", "error"]
# Every mode on both engines; "auto" (which picks one of them) with the default mode.
ENGINE_MODES = [(e, m) for e in ["sql", "arrow"] for m in MODES] + [("auto", "keep")]
NAN, INF = float("nan"), float("inf")
SCALARS = ["a", "b", "c", "d"]


# ---- data ------------------------------------------------------------------------------
def scalar_rows(invalid: bool) -> list[tuple[Any, ...]]:
    """Rows of (id, a double, b long, c float, d decimal) around large offsets."""
    rng = np.random.default_rng(7)
    rows: list[tuple[Any, ...]] = []
    for i in range(40):
        rows.append(
            (
                i,
                1e9 + float(rng.normal()),
                int(2**60 + int(rng.integers(-1000, 1000)) * 977),
                float(np.float32(rng.normal() * 3)),
                Decimal(f"{rng.normal() * 1e4:.6f}"),
            )
        )
    rows.append((40, -0.0, 0, -0.0, Decimal("0.000001")))
    if invalid:
        rows += [
            (41, None, 5, 1.5, Decimal("1.5")),
            (42, NAN, None, 2.5, None),
            (43, INF, 7, NAN, Decimal("2.5")),
            (44, -INF, 8, -INF, Decimal("3.5")),
            (45, 1e9, 9, INF, Decimal("4.5")),
        ]
    return rows


SCALAR_SCHEMA = "id long, a double, b long, c float, d decimal(20,6)"


def fitted_state(rows: list[tuple[Any, ...]], n: int, names: list[str], **kw: Any) -> MXNormState:
    """A state fitted on the finite rows, then one more batch so EMA rounding shows."""
    x = np.array([[float(v) for v in r[1 : 1 + n]] for r in rows[:40]])
    state = MXNormState.create(names, **kw).update(Moments.from_array(x[:25]))
    return state.update(Moments.from_array(x[25:] * 1.0000001))


@pytest.fixture(scope="module")
def scalar_state() -> MXNormState:
    return fitted_state(scalar_rows(False), 4, SCALARS, alpha=0.3)


def array_rows(invalid: bool) -> list[tuple[Any, ...]]:
    rng = np.random.default_rng(11)
    rows: list[tuple[Any, ...]] = [
        (i, [float(v) for v in rng.normal(size=3) * [1.0, 1e3, 1e-3] + [1e9, 0.0, 5.0]])
        for i in range(40)
    ]
    if invalid:
        rows += [
            (41, None),
            (42, [1.0, None, 2.0]),
            (43, [NAN, 1.0, 2.0]),
            (44, [1.0, INF, 2.0]),
            (45, [1.0, 2.0, -INF]),
        ]
    return rows


def vector_rows(invalid: bool) -> list[tuple[Any, ...]]:
    from pyspark.ml.linalg import Vectors

    rows: list[tuple[Any, ...]] = [
        (i, Vectors.dense(v) if i % 3 else Vectors.sparse(3, {1: v[1], 2: v[2]}))
        for i, v in array_rows(False)
    ]
    if invalid:
        rows += [
            (41, None),
            (43, Vectors.dense([NAN, 1.0, 2.0])),
            (44, Vectors.dense([1.0, INF, 2.0])),
        ]
    return rows


def vec_state(rows: list[tuple[Any, ...]], name: str) -> MXNormState:
    x = np.array([list(r[1]) if isinstance(r[1], list) else r[1].toArray() for r in rows[:40]])
    names = [f"{name}[{j}]" for j in range(3)]
    s = MXNormState.create(names, alpha=0.5).update(Moments.from_array(x[:20]))
    return s.update(Moments.from_array(x[20:]))


# ---- comparison ------------------------------------------------------------------------
def bits(values: Any) -> bytes:
    return np.asarray(values, dtype=np.float64).tobytes()


def assert_same_column(expected: Any, actual: Any, name: str) -> None:
    """Two Arrow columns of doubles, or of lists / vector structs of doubles: same nulls,
    same bits."""
    import pyarrow as pa

    e, a = (c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c for c in (expected, actual))
    if pa.types.is_struct(e.type):
        e, a = e.field("values"), a.field("values")
        assert expected.null_count == actual.null_count, name
    assert e.to_pylist() is not None
    assert np.array_equal(e.is_null(), a.is_null()), name
    if pa.types.is_list(e.type) or pa.types.is_large_list(e.type):
        assert e.value_lengths().to_pylist() == a.value_lengths().to_pylist(), name
        e, a = e.flatten(), a.flatten()
        assert np.array_equal(e.is_null(), a.is_null()), name
    valid = ~np.asarray(e.is_null())
    ev = np.asarray(e.to_numpy(zero_copy_only=False), dtype=np.float64)[valid]
    av = np.asarray(a.to_numpy(zero_copy_only=False), dtype=np.float64)[valid]
    assert bits(ev) == bits(av), (name, ev[ev != av], av[ev != av])


def assert_same_table(expected: Any, actual: Any, cols: list[str]) -> None:
    assert expected.column_names == actual.column_names
    assert expected.column("id").to_pylist() == actual.column("id").to_pylist()
    for c in cols:
        assert_same_column(expected.column(c), actual.column(c), c)


def assert_same_pandas(expected: Any, actual: Any, cols: list[str]) -> None:
    """Spark's Arrow output against serving's pandas output: a null is NaN in pandas."""
    assert list(actual.columns) == expected.column_names
    for c in cols:
        col = expected.column(c).combine_chunks()
        nulls = np.asarray(col.is_null())
        e = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
        a = actual[c].to_numpy(dtype=np.float64)
        assert np.isnan(a[nulls]).all(), c
        assert bits(e[~nulls]) == bits(a[~nulls]), c


def normalize(*args: Any, **kw: Any) -> Any:
    from mxnorm_spark.batch.apply import normalize as spark_normalize

    return spark_normalize(*args, **kw)


def spark_out(df: Any, state: MXNormState, engine: str, mode: str, **kw: Any) -> Any:
    out = normalize(df, state, engine=engine, handle_invalid=mode, **kw)
    return out.orderBy("id").toArrow()


# ---- scalar columns --------------------------------------------------------------------
@pytest.mark.spark
@pytest.mark.parametrize(("engine", "mode"), ENGINE_MODES)
def test_scalar_columns_match_spark_bit_for_bit(
    spark: Any, tmp_path: Path, scalar_state: MXNormState, engine: str, mode: str
) -> None:
    rows = scalar_rows(invalid=mode != "error")
    df = spark.createDataFrame(rows, SCALAR_SCHEMA)
    outs = ["za", "b", "zc", "zd"]
    expected = spark_out(df, scalar_state, engine, mode, cols=SCALARS, output_cols=outs)
    path = write_state(scalar_state, tmp_path / "state.json")
    norm = load(path, output_cols=outs, handle_invalid=mode)
    source = df.orderBy("id").toArrow()
    actual = norm.transform(source)
    assert_same_table(expected, actual, outs)
    assert_same_pandas(expected, norm.transform(source.to_pandas()), outs)
    # One row at a time gives the same bits as the whole table.
    by_row = [norm.transform_row(r) for r in source.to_pylist()]
    kept = [r for r in by_row if r is not None]
    for c in outs:
        assert_same_column(actual.column(c), _arrow_column([r[c] for r in kept]), c)


def _arrow_column(values: list[Any]) -> Any:
    import pyarrow as pa

    return pa.chunked_array([pa.array(values, type=pa.float64())])


@pytest.mark.spark
@pytest.mark.parametrize("engine", ["sql", "arrow"])
def test_error_mode_raises_like_spark(
    spark: Any, tmp_path: Path, scalar_state: MXNormState, engine: str
) -> None:
    df = spark.createDataFrame(scalar_rows(invalid=True), SCALAR_SCHEMA)
    with pytest.raises(Exception, match=r"holds .* value and handle_invalid='error'"):
        spark_out(df, scalar_state, engine, "error", cols=SCALARS)
    norm = Normalizer(scalar_state, handle_invalid="error")
    table = df.toArrow()
    with pytest.raises(InvalidValueError, match=r"column '.' holds (a null|a NaN|an infinite)"):
        norm.transform(table)
    with pytest.raises(InvalidValueError, match="column 'a' holds a null value"):
        norm.transform_row({"a": None, "b": 1, "c": 1.0, "d": Decimal(1)})
    with pytest.raises(InvalidValueError, match="column 'c' holds a NaN value"):
        norm.transform_row({"a": 1.0, "b": 1, "c": NAN, "d": Decimal(1)})
    with pytest.raises(InvalidValueError, match="column 'd' holds an infinite value"):
        norm.transform_row({"a": 1.0, "b": 1, "c": 1.0, "d": -INF})


# ---- vector and array columns ----------------------------------------------------------
@pytest.mark.spark
@pytest.mark.parametrize(("engine", "mode"), ENGINE_MODES)
def test_array_column_matches_spark_bit_for_bit(
    spark: Any, tmp_path: Path, engine: str, mode: str
) -> None:
    rows = array_rows(invalid=mode != "error")
    state = vec_state(rows, "v")
    df = spark.createDataFrame(rows, "id long, v array<double>")
    expected = spark_out(df, state, engine, mode, input_col="v", output_col="z")
    norm = load(write_state(state, tmp_path / "s.json"), output_col="z", handle_invalid=mode)
    source = df.orderBy("id").toArrow()
    actual = norm.transform(source)
    assert_same_table(expected, actual, ["z"])
    by_row = [norm.transform_row(r) for r in source.to_pylist()]
    kept = [r for r in by_row if r is not None]
    assert len(kept) == actual.num_rows
    for r, z in zip(kept, actual.column("z").to_pylist(), strict=True):
        assert r["z"] is None if z is None else bits(_none_nan(r["z"])) == bits(_none_nan(z))
    pandas_out = norm.transform(source.to_pandas())
    assert [_none_nan(v) is None for v in pandas_out["z"]] == [z is None for z in kept_z(actual)]


def _none_nan(v: Any) -> Any:
    return None if v is None else [NAN if x is None else x for x in v]


def kept_z(table: Any) -> list[Any]:
    return list(table.column("z").to_pylist())


@pytest.mark.spark
@pytest.mark.parametrize(("engine", "mode"), ENGINE_MODES)
def test_vector_column_matches_spark_bit_for_bit(
    spark: Any, tmp_path: Path, engine: str, mode: str
) -> None:
    from pyspark.ml.functions import vector_to_array
    from pyspark.ml.linalg import DenseVector
    from pyspark.sql import functions as F

    rows = vector_rows(invalid=mode != "error")
    state = vec_state(rows, "vec")
    df = spark.createDataFrame(rows, ["id", "vec"])
    out = normalize(df, state, engine=engine, handle_invalid=mode)  # features vec[i], in place
    # Spark's toArrow fails on a null vector row: compare the values as arrays.
    as_array = F.when(F.col("vec").isNotNull(), vector_to_array("vec"))
    expected = out.withColumn("vec", as_array).orderBy("id").toArrow()
    norm = load(write_state(state, tmp_path / "s.json"), handle_invalid=mode)
    source = vector_struct_table(rows)
    actual = norm.transform(source)
    assert actual.column("vec").type == source.column("vec").type
    assert_same_column(
        expected.column("vec"), actual.column("vec").combine_chunks().field("values"), "vec"
    )
    # pandas holds pyspark vectors (as toPandas gives them); serving returns dense vectors.
    pdf = df.orderBy("id").toPandas()
    got = norm.transform(pdf)["vec"].tolist()
    want = expected.column("vec").to_pylist()
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert (g is None) == (w is None)
        if g is not None:
            assert isinstance(g, DenseVector)
            assert bits(g.toArray()) == bits(w)
    by_row = [norm.transform_row(r) for r in pdf.to_dict("records")]
    kept = [r for r in by_row if r is not None]
    assert len(kept) == len(want)
    for r, w in zip(kept, want, strict=True):
        assert (r["vec"] is None) == (w is None)
        if w is not None:
            assert bits(r["vec"].toArray()) == bits(w)


def vector_struct_table(rows: list[tuple[Any, ...]]) -> Any:
    """Vectors as Spark stores them in Parquet and Arrow: struct(type, size, indices, values)."""
    import pyarrow as pa
    from pyspark.ml.linalg import SparseVector

    cells: list[Any] = []
    for _, v in rows:
        if v is None:
            cells.append(None)
        elif isinstance(v, SparseVector):
            cells.append(
                {
                    "type": 0,
                    "size": v.size,
                    "indices": v.indices.tolist(),
                    "values": v.values.tolist(),
                }
            )
        else:
            cells.append({"type": 1, "size": None, "indices": None, "values": v.toArray().tolist()})
    vec_type = pa.struct(
        [
            pa.field("type", pa.int8(), nullable=False),
            ("size", pa.int32()),
            ("indices", pa.list_(pa.field("element", pa.int32(), nullable=False))),
            ("values", pa.list_(pa.field("element", pa.float64(), nullable=False))),
        ]
    )
    ids = [r[0] for r in rows]
    return pa.table({"id": pa.array(ids, pa.int64()), "vec": pa.array(cells, vec_type)})


def test_vector_rows_of_another_length_fail() -> None:
    s = MXNormState.create(["v[0]", "v[1]"]).update(Moments.from_array([[0.0, 1.0], [2.0, 3.0]]))
    for mode in MODES:
        norm = Normalizer(s, handle_invalid=mode)
        with pytest.raises(FeatureMismatchError, match="length is not 2"):
            norm.transform_row({"v": [1.0, 2.0, 3.0]})
    assert Normalizer(s).transform_row({"v": None}) == {"v": None}
    assert Normalizer(s, handle_invalid="skip").transform_row({"v": [1.0, None]}) is None


# ---- sources: state directory and saved model -------------------------------------------
@pytest.mark.spark
@pytest.mark.parametrize("engine", ["sql", "arrow"])
def test_state_directory_newest_and_pinned(spark: Any, tmp_path: Path, engine: str) -> None:
    rows = scalar_rows(invalid=True)
    df = spark.createDataFrame(rows, SCALAR_SCHEMA)
    x = np.array([[float(v) for v in r[1:5]] for r in rows[:40]])
    store = StateStore(tmp_path / "states")
    state = MXNormState.create(SCALARS, alpha=0.2)
    versions = {}
    for b in range(4):
        state = state.update(Moments.from_array(x[b * 10 : (b + 1) * 10]), batch_id=b)
        store.commit(b, state)
        versions[b] = state
    source = df.orderBy("id").toArrow()
    for batch_id, expected_state in [(None, versions[3]), (1, versions[1])]:
        norm = load(tmp_path / "states", batch_id=batch_id)
        assert norm.state.last_batch_id == expected_state.last_batch_id
        expected = spark_out(df, expected_state, engine, "keep")
        assert_same_table(expected, norm.transform(source), SCALARS)
    with pytest.raises(StateNotFoundError, match="no version for batch 9"):
        load(tmp_path / "states", batch_id=9)


@pytest.mark.spark
@pytest.mark.parametrize("engine", ["sql", "arrow"])
def test_saved_model_directory(spark: Any, tmp_path: Path, engine: str) -> None:
    from mxnorm_spark.ml.estimator import MXNorm, MXNormModel

    fit_df = spark.createDataFrame(scalar_rows(invalid=False), SCALAR_SCHEMA)
    model = MXNorm(
        inputCols=SCALARS, outputCols=["w", "x", "y", "z"], handleInvalid="skip", engine=engine
    ).fit(fit_df)
    model.write().save(str(tmp_path / "model"))
    loaded = MXNormModel.load(str(tmp_path / "model"))
    df = spark.createDataFrame(scalar_rows(invalid=True), SCALAR_SCHEMA)
    expected = loaded.transform(df).orderBy("id").toArrow()
    norm = load(tmp_path / "model")
    assert norm.handle_invalid == "skip"
    actual = norm.transform(df.orderBy("id").toArrow())
    assert_same_table(expected, actual, ["w", "x", "y", "z"])

    # A vector model with no outputCol writes Spark's default output column.
    rows = array_rows(invalid=True)
    adf = spark.createDataFrame(rows, "id long, v array<double>")
    vmodel = MXNorm(inputCol="v", alpha=0.5, engine=engine).fit(
        spark.createDataFrame(rows[:40], "id long, v array<double>")
    )
    vmodel.write().save(str(tmp_path / "vmodel"))
    out_col = MXNormModel.load(str(tmp_path / "vmodel")).getOutputCol()
    expected = vmodel.transform(adf).orderBy("id").toArrow()
    actual = load(tmp_path / "vmodel").transform(adf.orderBy("id").toArrow())
    assert out_col in actual.column_names
    assert_same_table(expected, actual, [out_col])
    with pytest.raises(InvalidParameterError, match="batch id selects a version"):
        load(tmp_path / "model", batch_id=1)


def test_load_refuses_what_is_not_a_state(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorruptStateError, match="not a state file, a state directory"):
        load(tmp_path / "empty")
    with pytest.raises(StateNotFoundError, match="not found"):
        load(tmp_path / "missing.json")


def test_transform_row_keeps_other_keys_and_replaces_in_place() -> None:
    s = MXNormState.create(["a"]).update(Moments.from_array([[1.0], [3.0]]))
    row = {"id": "k", "a": 3}
    out = Normalizer(s).transform_row(row)
    assert out == {"id": "k", "a": (3.0 - 2.0) / float(np.sqrt(1.0 + 1e-8))}
    assert row == {"id": "k", "a": 3}


# ---- no pyspark in the process ---------------------------------------------------------
def run_without_pyspark(code: str) -> subprocess.CompletedProcess[str]:
    prelude = "import sys\nsys.modules['pyspark'] = None  # importing pyspark now fails\n"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-c", prelude + code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.spark
@pytest.mark.slow
def test_serving_runs_where_pyspark_cannot_be_imported(
    spark: Any, tmp_path: Path, scalar_state: MXNormState
) -> None:
    import pyarrow.parquet as pq

    from mxnorm_spark.ml.estimator import MXNormModel

    write_state(scalar_state, tmp_path / "state.json")
    MXNormModel.from_state(scalar_state, outputCols=["w", "x", "y", "z"]).write().save(
        str(tmp_path / "model")
    )
    df = spark.createDataFrame(scalar_rows(invalid=True), SCALAR_SCHEMA)
    pq.write_table(df.orderBy("id").toArrow(), tmp_path / "rows.parquet")
    expected = spark_out(df, scalar_state, "sql", "keep", output_cols=["w", "x", "y", "z"])
    code = f"""
import json
import pyarrow.parquet as pq
import mxnorm_spark.serving.loading as serving
assert "pandas" not in sys.modules
try:
    import pyspark
except ImportError:
    pass
else:
    raise SystemExit("pyspark imported")
table = pq.read_table({str(tmp_path / "rows.parquet")!r})
out = {{}}
for name in ["state.json", "model"]:
    norm = serving.load({str(tmp_path)!r} + "/" + name)
    t = norm.transform(table)
    row = norm.transform_row(table.slice(3, 1).to_pylist()[0])
    out[name] = {{
        "columns": t.column_names,
        "table": {{c: [None if v is None else v.hex() for v in t.column(c).to_pylist()]
                  for c in t.column_names[-4:]}},
        "row": {{k: v.hex() for k, v in row.items() if isinstance(v, float)}},
    }}
print(json.dumps(out))
"""
    proc = run_without_pyspark(code)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    state_out = result["state.json"]
    assert state_out["columns"] == ["id", *SCALARS]
    model_out = result["model"]
    assert model_out["columns"] == ["id", *SCALARS, "w", "x", "y", "z"]
    for c in ["w", "x", "y", "z"]:
        want = [None if v is None else float(v).hex() for v in expected.column(c).to_pylist()]
        assert model_out["table"][c] == want
        assert model_out["row"][c] == want[3]


@pytest.mark.slow
def test_spark_modules_name_the_extra_when_pyspark_is_missing() -> None:
    for module in ["mxnorm_spark.ml", "mxnorm_spark.batch.apply", "mxnorm_spark.engines.columns"]:
        proc = run_without_pyspark(
            f"try:\n    import {module}\nexcept ImportError as e:\n    print(e)\n"
            "else:\n    raise SystemExit('imported')\n"
        )
        assert proc.returncode == 0, proc.stderr
        assert "mxnorm-spark with its [spark] extra" in proc.stdout, proc.stdout
