"""The former path of :mod:`mxnorm_spark.streaming.progress`, kept so that code written against it
goes on importing; new code imports :mod:`mxnorm_spark.streaming.progress`."""

from mxnorm_spark.streaming.progress import (
    FAULT_ENV,
    FAULT_POINTS,
    BatchReport,
    fault,
    largest_mean_change,
    print_report,
)

__all__ = [
    "FAULT_ENV",
    "FAULT_POINTS",
    "BatchReport",
    "fault",
    "largest_mean_change",
    "print_report",
]
