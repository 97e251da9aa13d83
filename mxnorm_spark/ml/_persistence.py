"""Saving and loading :class:`~mxnorm_spark.ml.MXNorm` and its model, PySpark-style.

A model directory holds Spark ML's ``metadata``, ``state`` (the state JSON, checksummed)
and, after a backfill, the history in columns: ``history_columns`` (Parquet, one row per
batch value: its index ``i``, the value in the batch column's own type, its ``rows`` and
merged moments, and the state after it as arrays of one double per feature) and
``history`` (a JSON text naming the format, the batch type and the fold's start state).
Everything is written and read by Spark, so the directory lives where the cluster writes
(the Connect server's file system on Spark Connect), and the arrays go to and come from
Spark as Arrow, without one Python object per batch value. ``overwrite()`` works on Spark
Connect too.

Models saved before the columnar format (``history`` holding one state JSON per batch
value, batch values tagged so that they load back exactly) still load.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.ml.util import DefaultParamsReader, DefaultParamsWriter, MLReader, MLWriter
from pyspark.sql import SparkSession
from pyspark.sql import types as T

from mxnorm_spark.batch.apply import BackfillHistory
from mxnorm_spark.core.errors import CorruptStateError, InvalidParameterError
from mxnorm_spark.core.history import StateHistory
from mxnorm_spark.core.state import MXNormState
from mxnorm_spark.engines.partials import BatchTable
from mxnorm_spark.store import filesystem, is_classic

__all__ = ["EstimatorWriter", "ModelReader", "ModelWriter"]

# The history before the columnar format: one state JSON per batch value. Still read, and
# written only for a history that is not one fold from a fresh state (fit never makes one).
_HISTORY_TYPE = "mxnorm_spark.MXNormModel.history"
_COLUMNAR_TYPE = "mxnorm_spark.MXNormModel.history.columnar"
_COLUMNS_DIR = "history_columns"
_MOMENTS = ("count", "shift", "delta", "m2")
_STATES = ("mean", "var", "total_count", "total_shift", "total_delta", "total_m2")
_ELEMENTS = pa.list_(pa.field("element", pa.float64(), nullable=False))


def _encode_batch(value: Any) -> dict[str, Any]:
    """A batch value as tagged JSON (exact for ints, floats, decimals, dates, times)."""
    if isinstance(value, bool):
        return {"bool": value}
    if isinstance(value, int):
        return {"int": value}
    if isinstance(value, float):
        return {"float": value.hex()}
    if isinstance(value, Decimal):
        return {"decimal": str(value)}
    if isinstance(value, _dt.datetime):
        return {"datetime": value.isoformat()}
    if isinstance(value, _dt.date):
        return {"date": value.isoformat()}
    if isinstance(value, str):
        return {"str": value}
    raise InvalidParameterError(f"cannot persist batch value {value!r} of type {type(value)}")


def _decode_batch(tagged: dict[str, Any]) -> Any:
    ((kind, v),) = tagged.items()
    decoders: dict[str, Any] = {
        "bool": bool,
        "int": int,
        "float": float.fromhex,
        "decimal": Decimal,
        "datetime": _dt.datetime.fromisoformat,
        "date": _dt.date.fromisoformat,
        "str": str,
    }
    return decoders[kind](v)


def _write_text(spark: SparkSession, path: str, text: str) -> None:
    spark.createDataFrame([(text,)], "value string").coalesce(1).write.text(path)


def _read_text(spark: SparkSession, path: str) -> str:
    row = spark.read.text(path, wholetext=True).first()
    if row is None:
        raise CorruptStateError(f"{path} is empty")
    return str(row[0])


class _OverwriteWithoutJVM(MLWriter):
    """``overwrite()`` that also works on Spark Connect.

    PySpark deletes the old directory through the JVM; on Connect there is none, so the
    store's file system deletes it (a local path is the Connect server's when it runs on
    this machine; object-store URIs are the same everywhere).
    """

    def _handleOverwrite(self, path: str) -> None:
        if is_classic(self.sparkSession):
            super()._handleOverwrite(path)
            return
        fs = filesystem(path, self.sparkSession)
        if fs.exists(path):
            fs.delete(path, recursive=True)


class EstimatorWriter(_OverwriteWithoutJVM, DefaultParamsWriter):
    pass


class ModelWriter(_OverwriteWithoutJVM):
    def __init__(self, instance: Any) -> None:
        super().__init__()
        self.instance = instance

    def saveImpl(self, path: str) -> None:
        model, spark = self.instance, self.sparkSession
        DefaultParamsWriter.saveMetadata(model, path, spark)
        _write_text(spark, os.path.join(path, "state"), model.state.to_json())
        history = model._history
        if not len(history):
            return
        assert model._batch_type is not None
        if isinstance(history, BackfillHistory):
            _write_columns(spark, path, history, model._batch_type)
            return
        doc = {
            "type": _HISTORY_TYPE,
            "batch_type": model._batch_type.json(),
            "batches": [{"batch": _encode_batch(b), "state": s.to_json()} for b, s in history],
        }
        _write_text(spark, os.path.join(path, "history"), json.dumps(doc, allow_nan=False))


class ModelReader(MLReader[Any]):
    def __init__(self, model_class: type[Any]) -> None:
        super().__init__()
        self.model_class = model_class

    def load(self, path: str) -> Any:
        spark = self.sparkSession
        metadata = DefaultParamsReader.loadMetadata(path, spark)
        state_path = os.path.join(path, "state")
        state = MXNormState.from_json(_read_text(spark, state_path), source=state_path)
        history: Any = []
        batch_type = None
        history_path = os.path.join(path, "history")
        if _exists(spark, history_path):
            doc = json.loads(_read_text(spark, history_path))
            kind = doc.get("type") if isinstance(doc, dict) else None
            if kind not in (_HISTORY_TYPE, _COLUMNAR_TYPE):
                raise CorruptStateError(f"{history_path} is not an MXNorm model history")
            batch_type = T._parse_datatype_json_string(doc["batch_type"])
            if kind == _COLUMNAR_TYPE:
                history = _read_columns(spark, path, doc, state)
            else:  # the model's constructor makes it columnar when it can
                history = [
                    (_decode_batch(e["batch"]), MXNormState.from_json(e["state"], history_path))
                    for e in doc["batches"]
                ]
        model = self.model_class(state, history, batch_type)
        model._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(model, metadata)
        return model


def _exists(spark: SparkSession, path: str) -> bool:
    return filesystem(path, spark).exists(path)


# ---- the history in columns ----------------------------------------------------------------
def _write_columns(
    spark: SparkSession, path: str, history: BackfillHistory, batch_type: T.DataType
) -> None:
    """``history_columns`` (Parquet, made from Arrow) and ``history``, which describes it."""
    h, t = history.states, history.table
    doubles = T.ArrayType(T.DoubleType(), containsNull=False)
    arrays: dict[str, Any] = {
        "i": pa.array(np.arange(len(history), dtype=np.int64)),
        "batch": history.batch_values,
    }
    fields = [T.StructField("i", T.LongType(), False), T.StructField("batch", batch_type, True)]
    if t is not None:
        arrays["rows"] = pa.array(np.asarray(t.rows, dtype=np.int64))
        fields.append(T.StructField("rows", T.LongType(), False))
        arrays |= {f: _lists(getattr(t, f)) for f in _MOMENTS}
    arrays |= {f: _lists(x) for f, x in zip(_STATES, (h.mean, h.var, *h.totals), strict=True)}
    fields += [T.StructField(f, doubles, False) for f in arrays if f not in ("i", "batch", "rows")]
    frame = spark.createDataFrame(pa.table(arrays), T.StructType(fields))
    frame.coalesce(1).write.parquet(os.path.join(path, _COLUMNS_DIR))
    doc = {
        "type": _COLUMNAR_TYPE,
        "batch_type": batch_type.json(),
        "batches": len(history),
        "moments": t is not None,
        "start": h.start.to_json(),
    }
    _write_text(spark, os.path.join(path, "history"), json.dumps(doc, allow_nan=False))


def _read_columns(
    spark: SparkSession, path: str, doc: dict[str, Any], state: MXNormState
) -> BackfillHistory:
    """The :class:`BackfillHistory` of ``history_columns``, checked: one row per batch
    index, one double per feature in every array, and the last row equal to ``state``."""
    where = os.path.join(path, _COLUMNS_DIR)
    start = MXNormState.from_json(doc["start"], source=os.path.join(path, "history"))
    table = spark.read.parquet(where).toArrow()
    n, k = int(doc["batches"]), start.n_features
    table = table.take(pc.sort_indices(table, sort_keys=[("i", "ascending")]))
    if table.num_rows != n or not np.array_equal(table.column("i").to_numpy(), np.arange(n)):
        raise CorruptStateError(f"{where} does not hold the rows of batches 0..{n - 1}")
    mean, var, *totals = (_matrix(table, f, k, where) for f in _STATES)
    states = StateHistory(start, mean, var, (totals[0], totals[1], totals[2], totals[3]))
    values = table.column("batch").combine_chunks()
    moments = None
    if doc["moments"]:
        rows = table.column("rows").to_numpy()
        count, shift, delta, m2 = (_matrix(table, f, k, where) for f in _MOMENTS)
        moments = BatchTable(values, rows, count, shift, delta, m2)
    history = BackfillHistory(values, states, moments)
    if history.final.to_json() != state.to_json():
        raise CorruptStateError(f"{where} does not end in the model's state ({path}/state)")
    return history


def _lists(x: np.ndarray) -> pa.Array:
    """Rows x k float64 as a list column, one list of k doubles per row."""
    n, k = x.shape
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * k)
    flat = pa.array(np.ascontiguousarray(x, dtype=np.float64).reshape(-1))
    return pa.ListArray.from_arrays(offsets, flat).cast(_ELEMENTS)


def _matrix(table: pa.Table, name: str, k: int, where: str) -> np.ndarray:
    """A list column of ``table`` as rows x k float64; every row must hold k doubles."""
    if name not in table.column_names:
        raise CorruptStateError(f"{where} has no column {name!r}")
    column = table.column(name).combine_chunks()
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if column.null_count or not (lengths == k).all():
        raise CorruptStateError(f"{where}: column {name!r} does not hold {k} doubles in every row")
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=np.float64).reshape(-1, k)
