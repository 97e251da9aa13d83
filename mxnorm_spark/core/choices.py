"""The closed sets of option values, defined once (no Spark import).

The public API, the config files and the command line all check against these tuples,
so a value valid in one place is valid in all of them.

>>> check_choice("engine", "sql", ENGINES)
'sql'
>>> check_choice("engine", "gpu", ENGINES)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
mxnorm_spark.core.errors.InvalidParameterError: engine must be one of [...], got 'gpu'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from mxnorm_spark.core.errors import InvalidParameterError

VarUpdate = Literal["ema", "mixture"]
Decay = Literal["batch", "rows"]
ZeroVariance = Literal["eps", "unit", "zero"]
ApplyAt = Literal["after", "before"]
HandleInvalid = Literal["keep", "error", "skip"]
Engine = Literal["auto", "arrow", "sql"]

VAR_UPDATES = ("ema", "mixture")
DECAYS = ("batch", "rows")
ZERO_VARIANCE_POLICIES = ("eps", "unit", "zero")
APPLY_AT = ("after", "before")
# What normalization does with a null, NaN or infinite input value.
HANDLE_INVALID = ("keep", "error", "skip")
ENGINES = ("auto", "arrow", "sql")
# What an event-time stream (Spark or Beam) does with rows of a batch or window it has
# already folded: count and drop them, or fail.
LATE_ROWS = ("drop", "error")
# Table formats the jobs read and write.
FORMATS = ("parquet", "csv", "json")


def check_choice(name: str, value: Any, valid: Sequence[str]) -> str:
    """``value`` if it is one of ``valid``, else an error naming ``name`` and the choices."""
    if value not in valid:
        raise InvalidParameterError(f"{name} must be one of {list(valid)}, got {value!r}")
    return str(value)


# The thresholds of engine ``auto``, here (no Spark import) so that the stream's per-batch
# choices (stream_reads) and the engines read the same numbers.
# Spark compiles no whole-stage code for an operator with more than 100 input or output
# fields (spark.sql.codegen.maxFields). More than this many features are therefore
# aggregated as one row per (partition, feature), with four fields, not three fields per
# feature (measured 1.5x faster on 256 columns); ``auto`` takes the arrow engine there.
WIDE_FEATURES = 32
# Inputs of at most this many values are computed on the driver by ``auto``: one small
# ``collect`` and numpy, instead of a distributed job of two stages (a micro-batch of 1k
# rows: ~50 ms instead of ~250 ms, measured). Rows cross py4j as Python objects, so the
# limit stays small.
LOCAL_VALUES = 32_768
# A stream's micro-batch of at most this many values (rows x columns, any column type
# counting one; 16 MiB of doubles) is read to the driver as Arrow in one job, normalized
# there and written as one Parquet file (stream_local): one Spark job instead of two or
# three. Measured on local[2], 16 double columns: 1k rows 0.1 s less per micro-batch than
# the Spark path, 100k rows 0.3-0.4 s less (bench/RESULTS.md, Streaming).
DRIVER_BATCH_VALUES = 2_097_152


# Type tags of the per-key directories and the per-key directory of a stream's state: plain
# names, so that the command line recognises a directory without importing Spark.
KEYED_MODEL_TYPE = "mxnorm_spark.KeyedModel"
KEYED_EXPORT_TYPE = "mxnorm_spark.KeyedExport"
KEYED_STREAM_TYPE = "mxnorm_spark.KeyedStream"
KEYS_DIR = "_keys"
