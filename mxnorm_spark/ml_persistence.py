"""Saving and loading :class:`~mxnorm_spark.ml.MXNorm` and its model, PySpark-style.

A model directory holds Spark ML's ``metadata`` plus ``state`` (the state JSON, checksummed)
and, after a backfill, ``history`` (the state after each batch value, values tagged so that
they load back exactly), each one text file written by Spark, so the directory lives where
the cluster writes (the Connect server's file system on Spark Connect). ``overwrite()``
works on Spark Connect too.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from decimal import Decimal
from typing import Any

from pyspark.ml.util import DefaultParamsReader, DefaultParamsWriter, MLReader, MLWriter
from pyspark.sql import SparkSession
from pyspark.sql import types as T

from mxnorm_spark.errors import CorruptStateError, InvalidParameterError
from mxnorm_spark.state import MXNormState
from mxnorm_spark.store import filesystem, is_classic

__all__ = ["EstimatorWriter", "ModelReader", "ModelWriter"]


_HISTORY_TYPE = "mxnorm_spark.MXNormModel.history"


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
        model = self.instance
        DefaultParamsWriter.saveMetadata(model, path, self.sparkSession)
        _write_text(self.sparkSession, os.path.join(path, "state"), model.state.to_json())
        if model.history:
            assert model._batch_type is not None
            doc = {
                "type": _HISTORY_TYPE,
                "batch_type": model._batch_type.json(),
                "batches": [
                    {"batch": _encode_batch(b), "state": s.to_json()} for b, s in model.history
                ],
            }
            text = json.dumps(doc, allow_nan=False)
            _write_text(self.sparkSession, os.path.join(path, "history"), text)


class ModelReader(MLReader[Any]):
    def __init__(self, model_class: type[Any]) -> None:
        super().__init__()
        self.model_class = model_class

    def load(self, path: str) -> Any:
        spark = self.sparkSession
        metadata = DefaultParamsReader.loadMetadata(path, spark)
        state_path = os.path.join(path, "state")
        state = MXNormState.from_json(_read_text(spark, state_path), source=state_path)
        history: list[tuple[Any, MXNormState]] = []
        batch_type = None
        history_path = os.path.join(path, "history")
        if _exists(spark, history_path):
            doc = json.loads(_read_text(spark, history_path))
            if not isinstance(doc, dict) or doc.get("type") != _HISTORY_TYPE:
                raise CorruptStateError(f"{history_path} is not an MXNorm model history")
            batch_type = T._parse_datatype_json_string(doc["batch_type"])
            for entry in doc["batches"]:
                s = MXNormState.from_json(entry["state"], source=history_path)
                history.append((_decode_batch(entry["batch"]), s))
        model = self.model_class(state, history, batch_type)
        model._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(model, metadata)
        return model


def _exists(spark: SparkSession, path: str) -> bool:
    return filesystem(path, spark).exists(path)
