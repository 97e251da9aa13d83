"""Per-entity state: one MXNorm state per key in one pass, kept in Spark (:mod:`.backfill`),
and the kernels that fold every key's batches in the Python workers (:mod:`.kernel` for
the backfill, :mod:`.stream_kernel` for a stream's micro-batch)."""

from mxnorm_spark.keyed.backfill import (
    KeyedModel,
    fit_keyed,
)

__all__ = [
    "KeyedModel",
    "fit_keyed",
]
