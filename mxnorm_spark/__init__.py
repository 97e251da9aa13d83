"""mxnorm_spark: exact, streaming-native MXNorm (EMA z-score) normalization for Spark.

One subpackage per concept, lowest layer first: :mod:`~mxnorm_spark.core` (the math, numpy
only), :mod:`~mxnorm_spark.store` (all file I/O), :mod:`~mxnorm_spark.serving` (no Spark),
:mod:`~mxnorm_spark.report`; then the Spark layers, which need the ``[spark]`` extra:
:mod:`~mxnorm_spark.engines`, :mod:`~mxnorm_spark.batch`, :mod:`~mxnorm_spark.keyed`,
:mod:`~mxnorm_spark.streaming`, :mod:`~mxnorm_spark.ml` and :mod:`~mxnorm_spark.cli`.
Importing this package imports no Spark.
"""

from mxnorm_spark._version import __version__
from mxnorm_spark.core.errors import (
    CorruptStateError,
    EmptyInputError,
    FeatureMismatchError,
    InvalidParameterError,
    InvalidValueError,
    MissingColumnError,
    MXNormError,
    NonNumericError,
    NotFittedError,
    ShapeError,
    StateNotFoundError,
    UnsupportedSchemaVersionError,
)
from mxnorm_spark.core.moments import Moments
from mxnorm_spark.core.state import MXNormState, StateOptions

__all__ = [
    "CorruptStateError",
    "EmptyInputError",
    "FeatureMismatchError",
    "InvalidParameterError",
    "InvalidValueError",
    "MXNormError",
    "MXNormState",
    "MissingColumnError",
    "Moments",
    "NonNumericError",
    "NotFittedError",
    "ShapeError",
    "StateNotFoundError",
    "StateOptions",
    "UnsupportedSchemaVersionError",
    "__version__",
]
