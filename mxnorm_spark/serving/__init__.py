"""Normalization with no Spark and no JVM: :func:`load` a state file, a stream's state
directory, a saved model or a per-key export, and score pandas, Arrow tables or single rows
bit-identically to the Spark output (:mod:`.loading`, :mod:`.normalizer`, :mod:`.keyed`,
:mod:`.values`)."""

from mxnorm_spark.serving.keyed import (
    KeyedNormalizer,
)
from mxnorm_spark.serving.loading import (
    load,
)
from mxnorm_spark.serving.normalizer import (
    Normalizer,
)

__all__ = [
    "KeyedNormalizer",
    "Normalizer",
    "load",
]
