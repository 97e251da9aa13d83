"""The closed sets of option values, defined once (no Spark import).

The public API, the config files and the command line all check against these tuples,
so a value valid in one place is valid in all of them.

>>> check_choice("engine", "sql", ENGINES)
'sql'
>>> check_choice("engine", "gpu", ENGINES)
Traceback (most recent call last):
...
mxnorm_spark.errors.InvalidParameterError: engine must be one of ['auto', 'arrow', 'sql'], got 'gpu'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from mxnorm_spark.errors import InvalidParameterError

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
# Table formats the jobs read and write.
FORMATS = ("parquet", "csv", "json")


def check_choice(name: str, value: Any, valid: Sequence[str]) -> str:
    """``value`` if it is one of ``valid``, else an error naming ``name`` and the choices."""
    if value not in valid:
        raise InvalidParameterError(f"{name} must be one of {list(valid)}, got {value!r}")
    return str(value)


# Type tags of the per-key directories and the per-key directory of a stream's state: plain
# names, so that the command line recognises a directory without importing Spark.
KEYED_MODEL_TYPE = "mxnorm_spark.KeyedModel"
KEYED_EXPORT_TYPE = "mxnorm_spark.KeyedExport"
KEYED_STREAM_TYPE = "mxnorm_spark.KeyedStream"
KEYS_DIR = "_keys"
