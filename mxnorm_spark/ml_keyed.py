"""The former path of :mod:`mxnorm_spark.ml.keyed`, kept so that code written against it
goes on importing; new code imports :mod:`mxnorm_spark.ml.keyed`."""

from mxnorm_spark.ml.keyed import (
    KeyedMXNormModel,
    fit_keyed_model,
    to_min_key_rows,
)

__all__ = [
    "KeyedMXNormModel",
    "fit_keyed_model",
    "to_min_key_rows",
]
