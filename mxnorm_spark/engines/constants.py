"""What both engines normalize with: the ``(mean, scale)`` constants of every feature, and the
messages of the values they reject (the same text from the JVM and the Python workers)."""

from __future__ import annotations

from dataclasses import dataclass

import mxnorm_spark.spark_extra  # noqa: F401  (before pyspark: names the [spark] extra if missing)

import numpy as np
from pyspark.sql import Column
from pyspark.sql import functions as F

from mxnorm_spark.engines.columns import sql_double, sql_name


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

    def sql_arrays(self) -> tuple[str, str]:
        """Every feature's mean and scale as two ``array<double>`` SQL expressions (array
        literals of exact doubles, or the per-row columns)."""
        if self.mean is not None and self.scale is not None:
            return tuple(  # type: ignore[return-value]
                f"array({', '.join(sql_double(v) for v in x)})" for x in (self.mean, self.scale)
            )
        return sql_name(str(self.mean_col)), sql_name(str(self.scale_col))

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
