"""A backfill model's history on disk: columnar (Parquet of arrays), bit for bit, and the
JSON history of older saved models still loads (tests/data/model-history-json, saved by
the writer of that format)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mxnorm_spark import CorruptStateError, InvalidParameterError, MXNormState
from mxnorm_spark.batch.apply import BackfillHistory
from mxnorm_spark.core.history import StateHistory
from mxnorm_spark.ml.estimator import MXNorm, MXNormModel

pytestmark = pytest.mark.spark
DATA = Path(__file__).resolve().parents[1] / "data"
FIELDS = ("count", "shift", "delta", "m2")


def bits(a: Any) -> list[int]:
    return np.ascontiguousarray(a, dtype=np.float64).view(np.int64).ravel().tolist()


def rows_of(frame: Any, cols: list[str]) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in frame.orderBy("id").select("id", *cols).collect()]


def same_floats(a: list[tuple[Any, ...]], b: list[tuple[Any, ...]]) -> bool:
    """Rows equal, floats bit for bit (NaN included), nulls where nulls."""

    def key(r: tuple[Any, ...]) -> list[Any]:
        return [v.hex() if isinstance(v, float) else v for v in r]

    return [key(r) for r in a] == [key(r) for r in b]


def assert_same_table(got: pa.Table | None, want: pa.Table | None) -> None:
    """Same columns and values, floats bit for bit (NaN equals NaN here)."""
    assert got is not None and want is not None
    assert got.schema == want.schema and got.num_rows == want.num_rows
    for name in want.column_names:
        a, b = got.column(name).combine_chunks(), want.column(name).combine_chunks()
        if pa.types.is_list(a.type):
            a, b = a.flatten(), b.flatten()
        if pa.types.is_floating(a.type):
            assert bits(a.to_numpy(zero_copy_only=False)) == bits(b.to_numpy(zero_copy_only=False))
        else:
            assert a.to_pylist() == b.to_pylist(), name


@pytest.fixture(scope="module")
def frame(spark: Any) -> Any:
    """40 batch values (int ``b``), out of order over 3 partitions; ``c`` missing in the
    first batches, NaN and nulls scattered, a 1e9 offset on ``a``."""
    rng = np.random.default_rng(31)
    rows = []
    for i in range(400):
        b = (i * 7) % 40
        a = 1e9 + rng.normal(b / 4, 1.0 + b % 3)
        c = None if b < 3 or i % 13 == 0 else float(rng.normal(-2.0, 0.5))
        a_value = float("nan") if i % 17 == 0 else float(a)
        rows.append((i, b, a_value, c))
    return spark.createDataFrame(rows, "id long, b int, a double, c double").repartition(3)


def assert_same_history(got: BackfillHistory, want: BackfillHistory) -> None:
    assert got.batch_values.to_pylist() == want.batch_values.to_pylist()
    g, w = got.states, want.states
    assert g.start.to_json() == w.start.to_json()
    assert bits(g.mean) == bits(w.mean) and bits(g.var) == bits(w.var)
    for x, y in zip(g.totals, w.totals, strict=True):
        assert bits(x) == bits(y)
    assert got.table is not None and want.table is not None
    assert got.table.rows.tolist() == want.table.rows.tolist()
    for name in FIELDS:
        assert bits(getattr(got.table, name)) == bits(getattr(want.table, name)), name


@pytest.mark.parametrize("at", ["after", "before"])
def test_save_load_round_trip_is_columnar_and_bit_identical(
    frame: Any, tmp_path: Path, at: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    est = MXNorm(inputCols=["a", "c"], outputCols=["za", "zc"], batchCol="b", applyAt=at)
    model = est.setAlpha(0.2).setVarUpdate("mixture").fit(frame)
    before = rows_of(model.transform(frame), ["za", "zc"])
    model.write().save(str(tmp_path / "m"))
    # One Parquet file of one row per batch value, no state JSON per batch.
    (part,) = (tmp_path / "m" / "history_columns").glob("part-*.parquet")
    stored = pq.read_table(part)
    assert stored.num_rows == 40
    assert stored.schema.field("mean").type == pa.list_(pa.field("element", pa.float64(), False))
    (text,) = (tmp_path / "m" / "history").glob("part-*")
    assert text.read_text().count("mxnorm_spark.MXNormState") == 1  # the fold's start only

    # Loading makes one state (the last, checked against the saved state), not one per
    # batch value, and transform none.
    made: list[int] = []
    real = StateHistory.state
    monkeypatch.setattr(StateHistory, "state", lambda s, i: made.append(i) or real(s, i))
    loaded = MXNormModel.load(str(tmp_path / "m"))
    after = rows_of(loaded.transform(frame), ["za", "zc"])
    assert made == [-1]
    monkeypatch.undo()

    assert isinstance(loaded._history, BackfillHistory)
    assert isinstance(model._history, BackfillHistory)
    assert_same_history(loaded._history, model._history)
    assert loaded.state.to_json() == model.state.to_json()
    assert same_floats(after, before) and len(after) == 400
    assert [v for v, _ in loaded.history] == list(range(40))
    assert [s.to_json() for _, s in loaded.history] == [s.to_json() for _, s in model.history]
    assert loaded.batch_values() == model.batch_values() == list(range(40))
    when = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    assert_same_table(loaded._history.history_table(when), model._history.history_table(when))
    assert loaded.history_table().num_rows == 80
    # Saved again from the loaded model: the same files' contents.
    loaded.write().overwrite().save(str(tmp_path / "m2"))
    (again,) = (tmp_path / "m2" / "history_columns").glob("part-*.parquet")
    assert_same_table(pq.read_table(again), stored)


@pytest.mark.parametrize(
    ("kind", "make"),
    [
        ("timestamp", lambda b: dt.datetime(2024, 3, 1, 12, 30) + dt.timedelta(hours=7 * b)),
        ("string", lambda b: f"batch-{b:03d}"),
        ("decimal(12,3)", lambda b: Decimal(b) / Decimal(8)),
        ("date", lambda b: dt.date(2023, 12, 25) + dt.timedelta(days=b)),
    ],
)
def test_batch_types_round_trip(spark: Any, tmp_path: Path, kind: str, make: Any) -> None:
    rng = np.random.default_rng(7)
    rows = [(i, make(i % 9), float(rng.normal(i % 9, 1.0))) for i in range(90)]
    df = spark.createDataFrame(rows, f"id long, b {kind}, x double").repartition(2)
    model = MXNorm(inputCols=["x"], outputCols=["z"], batchCol="b", applyAt="before").fit(df)
    model.write().save(str(tmp_path / "m"))
    loaded = MXNormModel.load(str(tmp_path / "m"))
    assert isinstance(loaded._history, BackfillHistory)
    assert loaded.batch_values() == model.batch_values()
    # Spark hands timestamps to Arrow in UTC: compare those as instants.
    instants = [v.replace(tzinfo=None) if kind == "timestamp" else v for v in model.batch_values()]
    if kind != "timestamp" or dt.datetime.now().astimezone().utcoffset() == dt.timedelta(0):
        assert instants == sorted({make(i) for i in range(9)})
    assert_same_history(loaded._history, model._history)  # type: ignore[arg-type]
    assert same_floats(rows_of(loaded.transform(df), ["z"]), rows_of(model.transform(df), ["z"]))


def test_json_history_of_an_older_model_still_loads(spark: Any, tmp_path: Path) -> None:
    saved = DATA / "model-history-json"
    given = json.loads((DATA / "model-history-json.json").read_text())
    (text,) = (saved / "history").glob("part-*")
    doc = json.loads(text.read_text())
    want = [MXNormState.from_json(e["state"]) for e in doc["batches"]]
    days = [dt.date.fromisoformat(e["batch"]["date"]) for e in doc["batches"]]

    model = MXNormModel.load(str(saved))
    assert isinstance(model._history, BackfillHistory)  # made columnar on load
    assert model.batch_values() == days and len(days) == 6
    assert [s.to_json() for _, s in model.history] == [s.to_json() for s in want]
    assert model.batch_moments == []  # not in that format
    with pytest.raises(InvalidParameterError, match="holds no batch moments"):
        model.history_table()
    df = spark.createDataFrame(
        [tuple(r) for r in given["rows"]], "d string, id int, a double, c double"
    ).selectExpr("CAST(d AS DATE) AS day", "id", "a", "c")
    got = rows_of(model.transform(df), ["za", "zc"])
    expected = [
        tuple(None if v is None else float.fromhex(v) if isinstance(v, str) else v for v in r)
        for r in given["expected"]
    ]
    assert same_floats(got, expected) and model.getApplyAt() == "before"
    # Saved again, it is written in columns and loads the same.
    model.write().save(str(tmp_path / "m"))
    assert (tmp_path / "m" / "history_columns").is_dir()
    again = MXNormModel.load(str(tmp_path / "m"))
    assert [s.to_json() for _, s in again.history] == [s.to_json() for s in want]
    assert same_floats(rows_of(again.transform(df), ["za", "zc"]), expected)


def test_a_damaged_history_is_refused(frame: Any, tmp_path: Path) -> None:
    model = MXNorm(inputCols=["a", "c"], batchCol="b").fit(frame)
    for name, damage in [
        ("short", lambda t: t.slice(0, t.num_rows - 1)),
        ("edited", lambda t: t.set_column(t.schema.get_field_index("mean"), "mean", t["var"])),
    ]:
        where = tmp_path / name
        model.write().save(str(where))
        (part,) = (where / "history_columns").glob("part-*.parquet")
        pq.write_table(damage(pq.read_table(part)), part)
        for crc in (where / "history_columns").glob(".*.crc"):
            crc.unlink()
        with pytest.raises(CorruptStateError, match="history_columns"):
            MXNormModel.load(str(where))
    shutil.rmtree(tmp_path / "short")


def test_a_history_that_is_not_one_fold_is_kept_as_given(spark: Any, tmp_path: Path) -> None:
    """States that one fold from a fresh state cannot make stay a list, saved as JSON."""
    from pyspark.sql import types as T

    from mxnorm_spark import Moments

    s1 = MXNormState.create(["x"]).update(Moments.from_array(np.array([[1.0], [2.0]])))
    s2 = s1.update(Moments.from_array(np.array([[4.0]])), batch_id=9)  # another batch id
    model = MXNormModel.from_state(s2, batchCol="b")
    model._history = [(1, s1), (2, s2)]
    model._batch_type = T.IntegerType()
    model.write().save(str(tmp_path / "m"))
    assert not (tmp_path / "m" / "history_columns").exists()
    loaded = MXNormModel.load(str(tmp_path / "m"))
    assert isinstance(loaded._history, list)
    assert [(v, s.to_json()) for v, s in loaded.history] == [(1, s1.to_json()), (2, s2.to_json())]
