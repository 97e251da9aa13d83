"""mxnorm_spark: exact, streaming-native MXNorm (EMA z-score) normalization for Spark.

The math lives in :mod:`mxnorm_spark.moments` and :mod:`mxnorm_spark.state` (numpy only);
the Spark layers import pyspark lazily, so the serving path needs no JVM.
"""

from mxnorm_spark.errors import (
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
from mxnorm_spark.moments import Moments
from mxnorm_spark.state import MXNormState

__version__ = "0.1.0"

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
    "UnsupportedSchemaVersionError",
    "__version__",
]
