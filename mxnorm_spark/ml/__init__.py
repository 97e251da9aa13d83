"""Spark ML stages: the :class:`MXNorm` estimator and :class:`MXNormModel`
(:mod:`.estimator`), and :class:`KeyedMXNormModel`, what ``MXNorm(keyCols=...)`` fits
(:mod:`.keyed`)."""

from mxnorm_spark.ml.estimator import (
    MXNorm,
    MXNormModel,
)
from mxnorm_spark.ml.keyed import (
    KeyedMXNormModel,
)

__all__ = [
    "KeyedMXNormModel",
    "MXNorm",
    "MXNormModel",
]
