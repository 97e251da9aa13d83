"""The former path of :mod:`mxnorm_spark.core.moments`, kept so that code written against it
goes on importing; new code imports :mod:`mxnorm_spark.core.moments`."""

from mxnorm_spark.core.moments import (
    Fields,
    FloatArray,
    Moments,
    as_float_matrix,
    merge_fields,
    merge_running,
)

__all__ = [
    "Fields",
    "FloatArray",
    "Moments",
    "as_float_matrix",
    "merge_fields",
    "merge_running",
]
