"""Named errors. Each is a ``ValueError`` so callers that catch ``ValueError`` keep working.

Messages name the parameter or column, what was wrong, and what is valid.
"""

from __future__ import annotations

from collections.abc import Iterable


class MXNormError(ValueError):
    """Base of every error this package raises for bad input or bad state."""


class InvalidParameterError(MXNormError):
    """A parameter (alpha, eps, an option name, ...) is outside its valid range."""


class FeatureMismatchError(MXNormError):
    """Moments, arrays or columns do not match the features of a state."""


class NonNumericError(MXNormError):
    """An array or column holds values that are not real numbers."""


class ShapeError(MXNormError):
    """An array has the wrong number of dimensions."""


class CorruptStateError(MXNormError):
    """A persisted state is unreadable, truncated or fails its checksum."""


class UnsupportedSchemaVersionError(CorruptStateError):
    """A persisted state was written with a schema version this release cannot read."""


class NotFittedError(MXNormError):
    """Normalization was asked for a feature that has no state yet."""


class MissingColumnError(MXNormError):
    """A requested column is not in the DataFrame."""

    def __init__(self, missing: Iterable[str], present: Iterable[str]) -> None:
        self.missing = list(missing)
        self.present = list(present)
        super().__init__(
            f"column(s) {self.missing} not found; the DataFrame has columns {self.present}"
        )


class EmptyInputError(MXNormError):
    """The input has no rows (or no valid value in any feature) where some are required."""


class InvalidValueError(MXNormError):
    """``handleInvalid='error'`` met a null, NaN or infinite value."""


class ConfigError(InvalidParameterError):
    """A job configuration (TOML file or command-line flag) is missing, unknown or invalid."""


class StateConflictError(MXNormError):
    """A state directory does not belong to this writer or stream (versions are immutable)."""


class SchemaMismatchError(MXNormError):
    """An input file does not match the schema a stream reads (missing or non-numeric column)."""
