"""The former path of :mod:`mxnorm_spark.streaming.sources`, kept so that code written against it
goes on importing; new code imports :mod:`mxnorm_spark.streaming.sources`."""

from mxnorm_spark.streaming.sources import (
    CORRUPT_COLUMN,
    FILE_COLUMN,
    INTERNAL_COLUMNS,
    FileSource,
    count_and_check_batch,
    explain_read_failure,
)

__all__ = [
    "CORRUPT_COLUMN",
    "FILE_COLUMN",
    "INTERNAL_COLUMNS",
    "FileSource",
    "count_and_check_batch",
    "explain_read_failure",
]
