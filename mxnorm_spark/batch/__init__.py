"""Batch jobs over the engines: moments of a DataFrame, whole or per batch value
(:mod:`.aggregate`), and normalization with a state or a per-batch history (:mod:`.apply`)."""

from mxnorm_spark.batch.aggregate import (
    batch_moments,
    batch_moments_and_rows,
    moments_by_batch,
)
from mxnorm_spark.batch.apply import (
    normalize,
    normalize_per_batch,
)

__all__ = [
    "batch_moments",
    "batch_moments_and_rows",
    "moments_by_batch",
    "normalize",
    "normalize_per_batch",
]
