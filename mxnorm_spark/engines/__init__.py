"""The two engines, one module each: :mod:`.sql` (JVM expressions) and :mod:`.arrow`
(numpy / pyarrow in the Python workers), for both moments and normalization.

This module holds what they share and hand back to :mod:`mxnorm_spark.aggregate` and
:mod:`mxnorm_spark.apply`: the per-partition moments, the normalization constants and the
messages of the values they reject.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import mxnorm_spark.spark_extra  # noqa: F401  (before pyspark: names the [spark] extra if missing)

import numpy as np
from pyspark.sql import Column
from pyspark.sql import functions as F

from mxnorm_spark.columns import sql_double, sql_name
from mxnorm_spark.moments import Moments


# ---- moments -----------------------------------------------------------------------------
@dataclass(frozen=True)
class PartitionMoments:
    """The moments of one partition (of one ``batch`` value, or None without a batch column)
    and the number of its rows, valid or not."""

    batch: Any
    partition: int
    rows: int
    moments: Moments


def batch_key(value: Any) -> Any:
    """A batch value as a dict key: NaN (which equals nothing) becomes one key."""
    if isinstance(value, float) and math.isnan(value):
        return ("nan",)
    return value


# ---- normalization -----------------------------------------------------------------------
@dataclass(frozen=True)
class Constants:
    """The ``(mean, scale)`` of every feature: float64 literals, or per row.

    Per-row constants live in two ``array<double>`` columns of the DataFrame (one element
    per feature), as a per-batch transform joins them in.
    """

    n_features: int
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None
    mean_col: str | None = None
    scale_col: str | None = None

    @classmethod
    def literal(cls, mean: np.ndarray, scale: np.ndarray) -> Constants:
        return cls(int(mean.shape[0]), np.asarray(mean), np.asarray(scale))

    def mean_expr(self, j: int) -> Column:
        if self.mean is not None:
            return F.lit(float(self.mean[j]))
        return F.get(F.col(str(self.mean_col)), j)

    def scale_expr(self, j: int) -> Column:
        if self.scale is not None:
            return F.lit(float(self.scale[j]))
        return F.get(F.col(str(self.scale_col)), j)

    def sql(self, j: int) -> tuple[str, str]:
        """Feature ``j``'s mean and scale as SQL text (exact literals, or array elements)."""
        if self.mean is not None and self.scale is not None:
            return sql_double(self.mean[j]), sql_double(self.scale[j])
        return (
            f"get({sql_name(str(self.mean_col))}, {j})",
            f"get({sql_name(str(self.scale_col))}, {j})",
        )


def invalid_value_message(column: str, kind: str) -> str:
    return (
        f"InvalidValueError: column {column!r} holds {kind} value and handle_invalid='error'; "
        "clean the data, or use handle_invalid='keep' (pass it through) or 'skip' (drop the row)"
    )


def vector_length_message(column: str, dim: int) -> str:
    return (
        f"FeatureMismatchError: column {column!r} holds a vector whose length is not {dim}, "
        f"the number of features of the MXNorm state"
    )
