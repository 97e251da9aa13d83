"""Spark ML params that the MXNorm estimator and both its models (global and per key) share,
declared once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mxnorm_spark.spark_extra  # noqa: F401  (before pyspark: names the [spark] extra if missing)

from pyspark.ml.param import Param, Params, TypeConverters

from mxnorm_spark.core.choices import APPLY_AT, HANDLE_INVALID, check_choice

__all__ = ["HasBatchParams", "choice_converter"]


def choice_converter(name: str, valid: Sequence[str]) -> Any:
    """A Param type converter that accepts only ``valid`` (a bad value fails at set time)."""

    def convert(value: Any) -> str:
        return check_choice(name, value, valid)

    return convert


class HasBatchParams(Params):
    """``batchCol``, ``applyAt`` and ``handleInvalid``."""

    batchCol: Param[str] = Param(
        Params._dummy(),
        "batchCol",
        "column whose distinct values are the batches, folded in ascending order",
        typeConverter=TypeConverters.toString,
    )
    applyAt: Param[str] = Param(
        Params._dummy(),
        "applyAt",
        "normalize a batch with the state 'after' it (default) or 'before' it",
        typeConverter=choice_converter("applyAt", APPLY_AT),
    )
    handleInvalid: Param[str] = Param(
        Params._dummy(),
        "handleInvalid",
        "null/NaN/inf input values: 'keep' (pass through), 'error' (fail naming the "
        "column), 'skip' (drop the row)",
        typeConverter=choice_converter("handleInvalid", HANDLE_INVALID),
    )

    def getBatchCol(self) -> str | None:
        return self.getOrDefault(self.batchCol) if self.isDefined(self.batchCol) else None

    def getApplyAt(self) -> str:
        return self.getOrDefault(self.applyAt)

    def getHandleInvalid(self) -> str:
        return self.getOrDefault(self.handleInvalid)
