"""The one-line message of an expected failure of a command, in the command line's terms.

An MXNorm error (also one raised in a Spark worker or on a Spark Connect server, which
comes back as text), an ``AnalysisException``, or a missing extra is expected: the command
prints ``error: <message>`` and exits with status 2. Anything else is a bug and keeps its
traceback. Messages written for Python callers name parameters (``handle_invalid='error'``);
here they name the flags (``--handle-invalid error``).
"""

from __future__ import annotations

from mxnorm_spark.cli.config import FitConfig, StreamConfig, TransformConfig
from mxnorm_spark.cli.config_fields import flag_table, with_flags
from mxnorm_spark.core.errors import ConfigError, MXNormError, error_in_text

__all__ = ["cli_message", "error_message"]

# The Spark ML params that name a flag of fit/transform (messages of the estimator).
_ML_PARAM_FLAGS = {
    "inputCols": "--cols",
    "inputCol": "--input-col",
    "outputCols": "--output-cols",
    "outputCol": "--output-col",
    "handleInvalid": "--handle-invalid",
    "batchCol": "--batch-col",
    "applyAt": "--apply-at",
    "varUpdate": "--var-update",
    "zeroVariance": "--zero-variance",
    "keyCols": "--key-cols",
    "minKeyRows": "--min-key-rows",
}


def cli_message(exc: BaseException) -> str | None:
    """:func:`error_message` with the Python parameters it names given as the command's
    flags (``handle_invalid='error'`` -> ``--handle-invalid error``). A ConfigError is
    already written for the command line (or for a config file's keys)."""
    message = error_message(exc)
    if message is None or isinstance(exc, ConfigError):
        return message
    flags = {**flag_table(FitConfig, TransformConfig, StreamConfig), **_ML_PARAM_FLAGS}
    return with_flags(message, flags)


def error_message(exc: BaseException) -> str | None:
    """The one-line message for an expected failure, or None for a bug (keep its traceback).

    Errors raised inside Spark's Python workers come back wrapped in a Java exception; the
    MXNorm error inside is found by its class name.
    """
    if isinstance(exc, MXNormError):
        return str(exc)
    text = str(exc)
    if isinstance(exc, ImportError) and "install mxnorm-spark with its [" in text:
        return text  # an extra this command needs is not installed (spark_extra, report)
    found = error_in_text(text)
    if found is not None:
        return str(found)
    try:
        from pyspark.errors import AnalysisException
    except ImportError:  # pragma: no cover - pyspark is a dependency
        return None
    if isinstance(exc, AnalysisException):
        return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return None
