"""The former path of :mod:`mxnorm_spark.core.errors`, kept so that code written against it
goes on importing; new code imports :mod:`mxnorm_spark.core.errors`."""

from mxnorm_spark.core.errors import (
    ConfigError,
    CorruptStateError,
    EmptyInputError,
    FeatureMismatchError,
    InvalidParameterError,
    InvalidValueError,
    MissingColumnError,
    MXNormError,
    NonNumericError,
    NotFittedError,
    SchemaMismatchError,
    ShapeError,
    StateConflictError,
    UnsupportedSchemaVersionError,
    error_in_text,
)

__all__ = [
    "ConfigError",
    "CorruptStateError",
    "EmptyInputError",
    "FeatureMismatchError",
    "InvalidParameterError",
    "InvalidValueError",
    "MXNormError",
    "MissingColumnError",
    "NonNumericError",
    "NotFittedError",
    "SchemaMismatchError",
    "ShapeError",
    "StateConflictError",
    "UnsupportedSchemaVersionError",
    "error_in_text",
]
