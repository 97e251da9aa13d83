"""The Spark ML model of per-key MXNorm: ``MXNorm(..., keyCols=[...]).fit(df)``.

:class:`KeyedMXNormModel` wraps a :class:`~mxnorm_spark.keyed.KeyedModel`: the per-key
states stay a Spark DataFrame, saved as Parquet under the model directory (``keyed/``,
beside Spark ML's ``metadata``), never collected to the driver. ``transform`` follows the
rules of :mod:`mxnorm_spark.keyed` (per-key constants through a shuffle join on the key,
the global state for null keys, unseen keys and keys under ``minKeyRows``). The params a
fitted model may still change: ``outputCols``, ``applyAt``, ``handleInvalid``,
``minKeyRows``.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import mxnorm_spark.spark_extra  # noqa: F401  (before pyspark: names the [spark] extra if missing)

from pyspark.ml import Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCols, HasOutputCols
from pyspark.ml.util import (
    DefaultParamsReader,
    DefaultParamsWriter,
    MLReadable,
    MLReader,
    MLWritable,
    MLWriter,
)
from pyspark.sql import DataFrame

from mxnorm_spark.core.errors import InvalidParameterError
from mxnorm_spark.core.state import MXNormState, StateOptions
from mxnorm_spark.keyed.backfill import KeyedModel, fit_keyed
from mxnorm_spark.ml._params import HasBatchParams
from mxnorm_spark.ml._persistence import _OverwriteWithoutJVM

__all__ = ["KeyedMXNormModel", "fit_keyed_model", "to_min_key_rows"]


def to_min_key_rows(value: Any) -> int:
    """``minKeyRows``: an int >= 0 (0 and 1 both mean "any state of the key")."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidParameterError(f"minKeyRows must be an int >= 0, got {value!r}")
    return int(value)


class _KeyedParams(HasInputCols, HasOutputCols, HasBatchParams):
    keyCols: Param[list[str]] = Param(
        Params._dummy(),
        "keyCols",
        "columns whose values name an entity: one MXNorm state per key",
        typeConverter=TypeConverters.toListString,
    )
    minKeyRows: Param[int] = Param(
        Params._dummy(),
        "minKeyRows",
        "a key's feature uses the global state until the key has this many valid values",
        typeConverter=to_min_key_rows,
    )

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._setDefault(minKeyRows=1, applyAt="after", handleInvalid="keep")


def fit_keyed_model(
    dataset: DataFrame,
    cols: list[str],
    key_cols: list[str],
    batch_col: str | None,
    options: StateOptions,
    *,
    engine: str = "auto",
) -> KeyedMXNormModel:
    """What ``MXNorm._fit`` returns with ``keyCols`` set (params are copied in after)."""
    return KeyedMXNormModel(
        fit_keyed(dataset, cols, key_cols, batch_col, options=options, engine=engine)
    )


class KeyedMXNormModel(Model, _KeyedParams, MLReadable["KeyedMXNormModel"], MLWritable):
    """Per-key MXNorm states (a DataFrame) and the global state; see the module doc."""

    def __init__(self, keyed: KeyedModel | None = None) -> None:
        super().__init__()
        self._keyed = keyed

    @property
    def keyed(self) -> KeyedModel:
        """The :class:`KeyedModel` with this model's params applied."""
        if self._keyed is None:
            raise InvalidParameterError("this KeyedMXNormModel holds no states; fit or load one")
        outs = self.getOrDefault(self.outputCols) if self.isSet(self.outputCols) else None
        return replace(
            self._keyed,
            min_key_rows=self.getOrDefault(self.minKeyRows),
            apply_at=self.getOrDefault(self.applyAt),
            handle_invalid=self.getOrDefault(self.handleInvalid),
            output_cols=None if outs is None else tuple(outs),
        )

    @property
    def states(self) -> DataFrame:
        """One row per (key, batch) (see :class:`KeyedModel`)."""
        states = self.keyed.states
        assert states is not None
        return states

    @property
    def key_states(self) -> DataFrame:
        return self.keyed.key_states

    @property
    def global_state(self) -> MXNormState:
        state = self.keyed.global_state
        assert state is not None
        return state

    def export(self, path: str, *, overwrite: bool = False) -> None:
        """The serving export (:meth:`KeyedModel.export`)."""
        self.keyed.export(path, overwrite=overwrite)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        return self.keyed.transform(dataset)

    def setOutputCols(self, value: list[str]) -> KeyedMXNormModel:
        return self._set(outputCols=value)  # type: ignore[no-any-return]

    def setApplyAt(self, value: str) -> KeyedMXNormModel:
        return self._set(applyAt=value)  # type: ignore[no-any-return]

    def setHandleInvalid(self, value: str) -> KeyedMXNormModel:
        return self._set(handleInvalid=value)  # type: ignore[no-any-return]

    def setMinKeyRows(self, value: int) -> KeyedMXNormModel:
        return self._set(minKeyRows=value)  # type: ignore[no-any-return]

    def copy(self, extra: Any = None) -> KeyedMXNormModel:
        that: KeyedMXNormModel = super().copy(extra)
        that._keyed = self._keyed
        return that

    def write(self) -> MLWriter:
        return _KeyedModelWriter(self)

    @classmethod
    def read(cls) -> MLReader[KeyedMXNormModel]:
        return _KeyedModelReader()


class _KeyedModelWriter(_OverwriteWithoutJVM):
    def __init__(self, instance: KeyedMXNormModel) -> None:
        super().__init__()
        self.instance = instance

    def saveImpl(self, path: str) -> None:
        model = self.instance
        DefaultParamsWriter.saveMetadata(model, path, self.sparkSession)
        if model._keyed is None:
            raise InvalidParameterError("this KeyedMXNormModel holds no states to save")
        model._keyed.write(os.path.join(path, "keyed"))


class _KeyedModelReader(MLReader[KeyedMXNormModel]):
    def load(self, path: str) -> KeyedMXNormModel:
        spark = self.sparkSession
        metadata = DefaultParamsReader.loadMetadata(path, spark)
        model = KeyedMXNormModel(KeyedModel.read(spark, os.path.join(path, "keyed")))
        model._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(model, metadata)
        return model


# Saved stages record their class as ``module.name``: the public path, as for MXNormModel
# (models saved under the former ``mxnorm_spark.ml.keyed`` path still load through it).
KeyedMXNormModel.__module__ = "mxnorm_spark.ml"
