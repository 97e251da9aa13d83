"""Named errors. Each is a ``ValueError`` so callers that catch ``ValueError`` keep working.

Messages name the parameter or column, what was wrong, and what is valid.
"""

from __future__ import annotations

import re
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


class StateNotFoundError(MXNormError):
    """No state is where one was asked for: no file, or a state directory without the
    version asked for (or without any). Nothing is damaged, unlike CorruptStateError."""


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


class LateRowsError(MXNormError):
    """An event-time stream (Spark or Beam) met rows of a batch or window it has already
    folded (``late_rows='error'``), or rows without a batch value."""


class MalformedRecordError(SchemaMismatchError):
    """A csv or json record cannot be parsed into the input's columns (e.g. a csv row with
    more or fewer fields than the header)."""


class ValueRangeError(MXNormError):
    """Finite input values whose mean or variance is beyond float64 (about 1.8e308)."""


class ServerLostError(MXNormError):
    """The Spark Connect server stopped answering while a job or stream ran on it."""


class StoreUnavailableError(MXNormError):
    """The file system or object store under a state kept failing (5xx, timeouts, resets)
    after every retry of the store's retry policy; the operation did not complete."""


def _error_classes() -> dict[str, type[MXNormError]]:
    found: dict[str, type[MXNormError]] = {}
    for name, obj in list(globals().items()):
        if isinstance(obj, type) and issubclass(obj, MXNormError):
            found[name] = obj
    return found


def error_in_text(text: str) -> MXNormError | None:
    """The MXNorm error named in a failure's text (a Spark worker's or a Connect server's
    traceback travels as text), rebuilt as its class with its own message; None if none.

    >>> error_in_text("... mxnorm_spark.core.errors.InvalidValueError: column 'a' holds NaN ...")
    InvalidValueError("column 'a' holds NaN ...")
    """
    classes = _error_classes()
    pattern = re.compile(rf"(?:mxnorm_spark\.errors\.)?({'|'.join(classes)}): (.+)")
    match = pattern.search(text)
    if match is None:
        return None
    name, message = match.group(1), match.group(2)
    # SQL-side errors carry the class name in the message too: keep the innermost sentence.
    while (inner := pattern.match(message)) is not None:
        name, message = inner.group(1), inner.group(2)
    # Spark appends its SQLSTATE to the message.
    message = re.sub(r"\s*SQLSTATE: \w+\s*$", "", message).strip()
    cls = classes[name]
    if cls is MissingColumnError:  # its constructor takes the column lists
        error: MXNormError = MXNormError.__new__(cls)
        MXNormError.__init__(error, message)
        return error
    return cls(message)


def server_lost_error(exc: BaseException, state: str) -> ServerLostError | None:
    """The named error for a Spark Connect server that went away (gRPC UNAVAILABLE), or
    None for any other failure."""
    text = str(exc)
    module = type(exc).__module__
    if not module.startswith(("pyspark.errors", "grpc")):
        return None
    if not any(m in text for m in ("UNAVAILABLE", "Connection refused", "Socket closed")):
        return None
    first = text.strip().splitlines()[0][:200] if text.strip() else type(exc).__name__
    return ServerLostError(
        f"the Spark Connect server stopped answering while the stream ran ({first}). "
        f"Nothing is lost: state {state} holds every committed micro-batch, and the query "
        "replays the one in flight exactly once. Restart the server, then run the same "
        "command again (same checkpoint)"
    )
