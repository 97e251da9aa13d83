"""The former path of :mod:`mxnorm_spark.batch.apply`, kept so that code written against it
goes on importing; new code imports :mod:`mxnorm_spark.batch.apply`."""

from mxnorm_spark.batch.apply import (
    HANDLE_INVALID,
    BackfillHistory,
    BatchConstants,
    Constants,
    normalize,
    normalize_per_batch,
    to_vector,
)

__all__ = [
    "HANDLE_INVALID",
    "BackfillHistory",
    "BatchConstants",
    "Constants",
    "normalize",
    "normalize_per_batch",
    "to_vector",
]
