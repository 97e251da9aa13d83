"""Typed job configuration: TOML files and command-line flags, validated into frozen dataclasses.

A config file has one table per command plus Spark settings; every key is optional in
the file and any of them can be given (or overridden) by the matching command-line flag:

    [spark]                       # SparkSettings
    master = "local[2]"
    [spark.conf]
    "spark.sql.shuffle.partitions" = "8"

    [fit]                         # FitConfig
    input = "data/events.parquet"
    cols = ["temperature", "pressure"]
    batch_col = "day"
    state = "state/mxnorm.json"

    [transform]                   # TransformConfig
    [stream]                      # StreamConfig

Each dataclass field carries its flag and help text in its metadata, so the CLI parsers
are generated from the same fields the file is checked against: a flag exists exactly
when the config key does (``--batch-col`` is ``batch_col``). Unknown tables or keys are
rejected with the list of valid ones; values are checked for type and range before any
Spark work starts. Paths are used as written (relative paths resolve against the current
directory, as in Spark).

>>> cfg = parse_config_text('[fit]\\ninput = "in"\\nstate = "s.json"\\ncols = ["a", "b"]')
>>> fit = resolve(FitConfig, cfg.sections["fit"], {"alpha": 0.5})
>>> fit.cols, fit.alpha, fit.format
(('a', 'b'), 0.5, 'parquet')
>>> parse_config_text('[fit]\\nalpah = 0.5')  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
mxnorm_spark.core.errors.ConfigError: <config>: unknown key 'alpah' in [fit]; valid keys: alpha, ...
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

from mxnorm_spark.cli.config_fields import (
    FROM_TEXT,
    boolean,
    check_flags,
    check_section,
    fail,
    fields,
    flag_name,
    flag_table,
    flag_values,
    int_at_least,
    interval,
    names,
    number_text,
    one_of,
    opt,
    options,
    read_text,
    required,
    text,
    with_flags,
)

# Re-exported: the session reads Spark properties files through this module.
from mxnorm_spark.cli.config_fields import read_properties as read_properties  # noqa: PLC0414
from mxnorm_spark.core.choices import (
    APPLY_AT,
    DECAYS,
    ENGINES,
    FORMATS,
    HANDLE_INVALID,
    LATE_ROWS,
    VAR_UPDATES,
    ZERO_VARIANCE_POLICIES,
)
from mxnorm_spark.core.errors import ConfigError, InvalidParameterError
from mxnorm_spark.core.event_time import EventTime, parse_interval
from mxnorm_spark.core.state import StateOptions, alpha_from_half_life, check_alpha, check_eps

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

# The config keys that make up a StateOptions value.
STATE_OPTION_KEYS = ("alpha", "eps", "var_update", "decay", "zero_variance")
WRITE_MODES = ("errorifexists", "overwrite", "append", "ignore")
LOG_LEVELS = ("ALL", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", "OFF")

# Read options used for a format unless the user gives their own: CSV without a header,
# with every column a string or with malformed rows read as nulls (PERMISSIVE, where a
# stream rejects them) is never what a normalization job wants.
DEFAULT_READ_OPTIONS: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {"csv": MappingProxyType({"header": "true", "inferSchema": "true", "mode": "FAILFAST"})}
)
DEFAULT_WRITE_OPTIONS: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {"csv": MappingProxyType({"header": "true"})}
)


def _alpha(value: Any, key: str) -> float | None:
    try:
        return check_alpha(value)
    except InvalidParameterError as exc:
        if isinstance(value, str):
            raise fail(key, 'a number in (0, 1] or "cumulative"', value) from None
        raise ConfigError(f"{key}: {exc}") from None


def _alpha_text(value: str, key: str) -> Any:
    if value == "cumulative":
        return value
    return number_text(value, key, 'a number in (0, 1] or "cumulative"')


def _eps(value: Any, key: str) -> float:
    if isinstance(value, str):
        raise fail(key, "a positive number", value)
    try:
        return check_eps(value)
    except InvalidParameterError as exc:
        raise ConfigError(f"{key}: {exc}") from None


FROM_TEXT[_alpha] = _alpha_text


def _half_life(value: Any, key: str) -> float:
    if isinstance(value, str):
        raise fail(key, "a positive number", value)
    try:
        alpha_from_half_life(value)
    except InvalidParameterError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    return float(value)


FROM_TEXT[_half_life] = lambda v, k: number_text(v, k, "a positive number")


def _state_options(cfg: Any) -> StateOptions:
    """The five state options of a job config (alpha from half_life when given)."""
    values = {k: getattr(cfg, k) for k in STATE_OPTION_KEYS}
    if cfg.half_life is not None:
        if cfg.alpha != 0.1:
            raise ConfigError("give alpha or half_life, not both")
        values["alpha"] = alpha_from_half_life(cfg.half_life)
    return StateOptions(**values)


def _lateness(value: Any, key: str) -> Any:
    """A number (the batch column's units) or an interval text such as "10 minutes"."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise fail(key, 'a number >= 0 or an interval such as "10 minutes"', value)
    if isinstance(value, str):
        parse_interval(value, key)
    elif value < 0:
        raise fail(key, 'a number >= 0 or an interval such as "10 minutes"', value)
    return value


def _lateness_text(value: str, key: str) -> Any:
    stripped = value.strip().lstrip("+-").replace(".", "", 1)
    return number_text(value, key, "a number") if stripped.isdigit() else value


FROM_TEXT[_lateness] = _lateness_text
FROM_TEXT[_eps] = lambda v, k: number_text(v, k, "a positive number")

_FORMAT = one_of(FORMATS, fold=str.lower)
_ENGINE = one_of(ENGINES, fold=str.lower)
_HELP_ALPHA = 'EMA weight of each batch, in (0, 1], or "cumulative" for exact running moments'
_HELP_ENGINE = (
    "moments/normalization engine: auto, arrow or sql (moments agree within 1e-12, "
    "normalized scalar columns bit for bit)"
)
_HELP_COLS = "comma-separated numeric columns to normalize (or use --input-col)"
_HELP_INPUT_COL = "one vector or array<double> column to normalize instead of --cols"
_HELP_READ = (
    "reader option KEY=VALUE, repeatable (csv: header=true, inferSchema=true, mode=FAILFAST)"
)
_HELP_WRITE = (
    "writer option KEY=VALUE, repeatable (csv default: header=true; parquet z-score columns: "
    "no dictionary unless an option sets dictionaries)"
)


@dataclass(frozen=True)
class SparkSettings:
    """``[spark]``: how the SparkSession is built
    (:func:`mxnorm_spark.cli.session.build_session`)."""

    master: str | None = opt(
        text, "Spark master, e.g. local[2] (default: from spark-submit, else local[*])"
    )
    remote: str | None = opt(
        text,
        "Spark Connect server, e.g. sc://127.0.0.1:15002 (default: $SPARK_REMOTE, else a "
        "classic session); local[N] starts a Connect server inside this process",
        metavar="URL",
    )
    app_name: str | None = opt(text, "Spark application name")
    log_level: str = opt(one_of(LOG_LEVELS, fold=str.upper), "Spark log level", default="WARN")
    properties_file: str | None = opt(
        text,
        "Spark properties file (spark-defaults.conf format), e.g. conf/spark-local.conf",
        metavar="FILE",
    )
    conf: Mapping[str, str] = opt(
        options,
        "Spark property KEY=VALUE, repeatable; wins over --properties-file",
        default={},
        metavar="KEY=VALUE",
        repeat=True,
    )


def _check_columns(cfg: Any, cols_key: str = "cols", col_key: str = "input_col") -> None:
    cols, col = getattr(cfg, cols_key), getattr(cfg, col_key)
    if cols is not None and col is not None:
        raise ConfigError(
            f"give either {cols_key} (scalar columns) or {col_key} (one vector column), not both"
        )


def _check_outputs(cfg: Any) -> None:
    if cfg.output_cols is not None:
        if cfg.input_col is not None:
            raise ConfigError("output_cols goes with cols; with input_col use output_col")
        if cfg.cols is not None and len(cfg.output_cols) != len(cfg.cols):
            raise ConfigError(
                f"output_cols has {len(cfg.output_cols)} names but cols has {len(cfg.cols)}: "
                "give one output column per input column"
            )
    if cfg.output_col is not None and cfg.cols is not None:
        raise ConfigError("output_col goes with input_col; with cols use output_cols")


def _check_options(cfg: Any) -> None:
    if cfg.half_life is not None and cfg.alpha != 0.1:
        raise ConfigError("give alpha or half_life, not both")
    if cfg.alpha is None and (cfg.var_update != "ema" or cfg.decay != "batch"):
        raise ConfigError(
            'alpha "cumulative" computes exact running moments; it takes no var_update or '
            f"decay option (got var_update={cfg.var_update!r}, decay={cfg.decay!r})"
        )


@dataclass(frozen=True)
class FitConfig:
    """``[fit]``: read a table, fold it into an MXNorm state, write the state JSON."""

    input: str = required(text, "input path (file or directory)", metavar="PATH")
    state: str = required(
        text,
        "where to write the fitted state JSON; with --key-cols, the keyed model directory "
        "(created, or replaced if it holds a keyed model)",
        metavar="STATE_PATH",
    )
    cols: tuple[str, ...] | None = opt(names, _HELP_COLS, metavar="A,B,C")
    input_col: str | None = opt(text, _HELP_INPUT_COL, metavar="COL")
    batch_col: str | None = opt(
        text,
        "backfill: one batch per distinct value of this column, in ascending order "
        "(default: the whole input is one batch)",
        metavar="COL",
    )
    key_cols: tuple[str, ...] | None = opt(
        names,
        "one state per distinct value of these columns (a key; with the global state as "
        "the fallback), written as a keyed model directory to --state",
        metavar="A,B",
    )
    min_key_rows: int | None = opt(
        int_at_least(0),
        "with --key-cols: a key's feature uses the global state until the key has N valid "
        "values of it (default: 1)",
        metavar="N",
    )
    format: str = opt(_FORMAT, "input format: parquet, csv or json", default="parquet")
    alpha: float | None = opt(_alpha, _HELP_ALPHA, default=0.1)
    half_life: float | None = opt(
        _half_life, "instead of --alpha: half-life in batches (rows with --decay rows), "
        "alpha = 1 - 0.5**(1/half_life)", metavar="H",
    )  # fmt: skip
    eps: float = opt(_eps, "added to the variance before the square root", default=1e-8)
    var_update: str = opt(
        one_of(VAR_UPDATES), "variance update: ema (reference) or mixture", default="ema"
    )
    decay: str = opt(
        one_of(DECAYS),
        "batch: alpha per batch; rows: 1-(1-alpha)**rows per batch",
        default="batch",
    )
    zero_variance: str = opt(
        one_of(ZERO_VARIANCE_POLICIES),
        "zero-variance features: eps (divide by sqrt(eps)), unit (scale 1) or zero (output 0)",
        default="eps",
    )
    engine: str = opt(_ENGINE, _HELP_ENGINE, default="auto")
    read_options: Mapping[str, str] = opt(
        options, _HELP_READ, default={}, metavar="KEY=VALUE", repeat=True, flag="--read-option"
    )
    output: str | None = opt(
        text,
        "also write the normalized input here: with --batch-col each batch with its own "
        "state (see --apply-at), else with the fitted state",
        metavar="PATH",
    )
    output_format: str | None = opt(_FORMAT, "format of --output (default: --format)")
    output_cols: tuple[str, ...] | None = opt(
        names,
        "with --output: output column names (default: replace the input columns)",
        metavar="A,B,C",
    )
    output_col: str | None = opt(
        text, "with --output and --input-col: output column (default: replace it)", metavar="COL"
    )
    apply_at: str | None = opt(
        one_of(APPLY_AT),
        "with --output and --batch-col: normalize each batch with the state after it "
        "(default) or before it (point-in-time: no look-ahead); with --key-cols also kept "
        "in the model for transform",
    )
    handle_invalid: str | None = opt(
        one_of(HANDLE_INVALID),
        "with --output: null/NaN/inf values: keep (default), error or skip the row",
    )
    mode: str = opt(
        one_of(WRITE_MODES, fold=str.lower),
        "with --output: if it exists: errorifexists, overwrite, append or ignore",
        default="errorifexists",
    )
    write_options: Mapping[str, str] = opt(
        options,
        "with --output: " + _HELP_WRITE,
        default={},
        metavar="KEY=VALUE",
        repeat=True,
        flag="--write-option",
    )

    @property
    def state_options(self) -> StateOptions:
        """The five state options as one validated value."""
        return _state_options(self)

    def __post_init__(self) -> None:
        _check_columns(self)
        if self.cols is None and self.input_col is None:
            raise ConfigError("fit needs cols (scalar columns) or input_col (a vector column)")
        _check_options(self)
        _check_keys(self)
        if self.min_key_rows is not None and self.key_cols is None:
            raise ConfigError("min_key_rows only applies with key_cols (one state per key)")
        if self.output is None:
            # A keyed model keeps apply_at for its later transforms.
            only = [k for k in _OUTPUT_ONLY if not (self.key_cols and k == "apply_at")]
            given = [k for k in only if getattr(self, k) is not None] + (
                ["write_options"] if self.write_options else []
            )
            if given:
                raise ConfigError(
                    f"{', '.join(given)} only apply to the normalized output: add output=PATH"
                )
        _check_outputs(self)


_OUTPUT_ONLY = ("output_format", "output_cols", "output_col", "apply_at", "handle_invalid")


def _check_keys(cfg: Any) -> None:
    """A key names an entity of scalar rows: not a feature, not the batch, not a vector."""
    keys, batch = cfg.key_cols or (), getattr(cfg, "batch_col", None)
    event_time = getattr(cfg, "event_time", None)
    if keys and cfg.input_col is not None:
        raise ConfigError(
            "key_cols needs scalar feature columns (cols); per-key states of a vector "
            f"column (input_col {cfg.input_col!r}) are not supported"
        )
    shared = [k for k in keys if k in (*(cfg.cols or ()), batch, event_time)]
    if shared:
        raise ConfigError(
            f"key_cols and cols/batch_col{'/event_time' * (event_time is not None)} share "
            f"{shared}: a key column names the entity and cannot also be a feature or the "
            "batch column"
        )


@dataclass(frozen=True)
class TransformConfig:
    """``[transform]``: normalize a table with a fitted state and write the result."""

    input: str = required(text, "input path (file or directory)", metavar="PATH")
    state: str = required(text, "state JSON file, or a state directory", metavar="STATE_PATH")
    output: str = required(text, "output path", metavar="PATH")
    format: str = opt(_FORMAT, "input format: parquet, csv or json", default="parquet")
    output_format: str | None = opt(_FORMAT, "output format (default: --format)")
    cols: tuple[str, ...] | None = opt(
        names, "columns to normalize (default: the state's features)", metavar="A,B,C"
    )
    input_col: str | None = opt(text, _HELP_INPUT_COL, metavar="COL")
    output_cols: tuple[str, ...] | None = opt(
        names, "output column names (default: replace the input columns)", metavar="A,B,C"
    )
    output_col: str | None = opt(
        text, "output column for --input-col (default: replace it)", metavar="COL"
    )
    handle_invalid: str = opt(
        one_of(HANDLE_INVALID),
        "null/NaN/inf values: keep (stay as they are), error, or skip the row",
        default="keep",
    )
    engine: str = opt(_ENGINE, _HELP_ENGINE, default="auto")
    key_cols: tuple[str, ...] | None = opt(
        names,
        "require --state to be a keyed model keyed by exactly these columns (a keyed "
        "model directory is normalized per key even without this)",
        metavar="A,B",
    )
    min_key_rows: int | None = opt(
        int_at_least(0),
        "with a keyed model: use a key's constants of a feature from N valid values on "
        "(default: the model's min_key_rows)",
        metavar="N",
    )
    mode: str = opt(
        one_of(WRITE_MODES, fold=str.lower),
        "if the output exists: errorifexists, overwrite, append or ignore",
        default="errorifexists",
    )
    read_options: Mapping[str, str] = opt(
        options, _HELP_READ, default={}, metavar="KEY=VALUE", repeat=True, flag="--read-option"
    )
    write_options: Mapping[str, str] = opt(
        options, _HELP_WRITE, default={}, metavar="KEY=VALUE", repeat=True, flag="--write-option"
    )

    def __post_init__(self) -> None:
        _check_columns(self)
        _check_outputs(self)
        _check_keys(self)


@dataclass(frozen=True)
class StreamConfig:
    """``[stream]``: normalize a file stream micro-batch by micro-batch, state exactly once."""

    input: str = required(text, "input directory watched for new files", metavar="DIR")
    output: str = required(text, "output directory (one directory per batch id)", metavar="DIR")
    state: str = required(
        text, "state directory (one committed version per batch id)", metavar="DIR"
    )
    checkpoint: str = required(text, "Structured Streaming checkpoint directory", metavar="DIR")
    format: str = opt(_FORMAT, "input format: parquet, csv or json", default="parquet")
    output_format: str | None = opt(_FORMAT, "output format (default: --format)")
    cols: tuple[str, ...] | None = opt(names, _HELP_COLS, metavar="A,B,C")
    input_col: str | None = opt(text, _HELP_INPUT_COL, metavar="COL")
    output_cols: tuple[str, ...] | None = opt(
        names, "output column names (default: replace the input columns)", metavar="A,B,C"
    )
    output_col: str | None = opt(
        text, "output column for --input-col (default: replace it)", metavar="COL"
    )
    alpha: float | None = opt(_alpha, _HELP_ALPHA, default=0.1)
    half_life: float | None = opt(
        _half_life, "instead of --alpha: half-life in batches (rows with --decay rows), "
        "alpha = 1 - 0.5**(1/half_life)", metavar="H",
    )  # fmt: skip
    eps: float = opt(_eps, "added to the variance before the square root", default=1e-8)
    var_update: str = opt(
        one_of(VAR_UPDATES), "variance update: ema (reference) or mixture", default="ema"
    )
    decay: str = opt(
        one_of(DECAYS), "batch: alpha per batch; rows: 1-(1-alpha)**rows", default="batch"
    )
    zero_variance: str = opt(
        one_of(ZERO_VARIANCE_POLICIES),
        "zero-variance features: eps, unit or zero",
        default="eps",
    )
    apply_at: str = opt(
        one_of(APPLY_AT),
        "normalize each micro-batch with the state after it (default) or before it",
        default="after",
    )
    handle_invalid: str = opt(
        one_of(HANDLE_INVALID), "null/NaN/inf values: keep, error or skip", default="keep"
    )
    engine: str = opt(_ENGINE, _HELP_ENGINE, default="auto")
    initial_state: str | None = opt(
        text,
        "warm start from this state (e.g. written by fit) when the state directory is empty",
        metavar="STATE_PATH",
    )
    max_files_per_trigger: int | None = opt(
        int_at_least(1), "at most N new files per micro-batch", metavar="N"
    )
    schema: str | None = opt(
        text,
        'the input\'s columns as DDL, e.g. "day int, a double, b double" (default: from the '
        "oldest file present at start; with it, the stream can start before any file arrives)",
        metavar="DDL",
    )
    available_now: bool = opt(
        boolean,
        "process every file available now, in micro-batches, then stop",
        default=False,
        switch=True,
    )
    trigger_interval: str | None = opt(
        interval,
        'run a micro-batch every interval, e.g. "10s" (default: as fast as possible)',
        metavar="INTERVAL",
    )
    retention: int | None = opt(
        int_at_least(2),
        "keep only the newest N >= 2 state versions (default: keep all)",
        metavar="N",
    )
    key_cols: tuple[str, ...] | None = opt(
        names, "also one state per key of these columns (in STATE/_keys/; with --batch-col "
        "or --event-time, in each committed state version)", metavar="A,B",
    )  # fmt: skip
    min_key_rows: int | None = opt(
        int_at_least(0), "with --key-cols: global state until a key has N values (1)", metavar="N"
    )
    evict_after: int | None = opt(
        int_at_least(1), "with --key-cols: drop keys unseen for N micro-batches (not with "
        "--batch-col or --event-time)", metavar="N",
    )  # fmt: skip
    batch_col: str | None = opt(
        text, "event-time batches: the batch is this column's value, not the micro-batch "
        "(with --key-cols: per key, under one watermark for all keys)",
        metavar="COL",
    )  # fmt: skip
    event_time: str | None = opt(
        text, "event-time batches: tumbling --window windows of this timestamp column",
        metavar="COL",
    )  # fmt: skip
    window: str | None = opt(text, 'with --event-time: the window, e.g. "1 hour"', metavar="SIZE")
    lateness: int | float | str | None = opt(
        _lateness, 'how far behind the largest batch value rows may arrive: a number in '
        '--batch-col units, or an interval such as "10 minutes" (default 0)', metavar="L",
    )  # fmt: skip
    late_rows: str = opt(
        one_of(LATE_ROWS), "rows of an already folded batch: drop (counted) or error",
        default="drop",
    )  # fmt: skip
    lineage_col: str | None = opt(
        text, "output column: the batch value of the state each row was normalized with "
        "(with --key-cols: of its key's state)",
        metavar="COL",
    )  # fmt: skip
    close_open_batches: bool = opt(
        boolean, "at the end of an --available-now run, fold every open batch (end of input)",
        default=False, switch=True,
    )  # fmt: skip
    read_options: Mapping[str, str] = opt(
        options, _HELP_READ, default={}, metavar="KEY=VALUE", repeat=True, flag="--read-option"
    )
    write_options: Mapping[str, str] = opt(
        options, _HELP_WRITE, default={}, metavar="KEY=VALUE", repeat=True, flag="--write-option"
    )

    @property
    def state_options(self) -> StateOptions:
        """The five state options as one validated value."""
        return _state_options(self)

    @property
    def event_time_spec(self) -> EventTime | None:
        """The event-time batches asked for, or None (one batch per micro-batch)."""
        if self.batch_col is None and self.event_time is None:
            return None
        return EventTime(
            batch_col=self.batch_col,
            event_time=self.event_time,
            window=self.window,
            lateness=0 if self.lateness is None else self.lateness,
            late_rows=self.late_rows,
            lineage_col=self.lineage_col,
        )

    def __post_init__(self) -> None:
        try:
            self.event_time_spec  # noqa: B018 (validates the event-time settings)
        except InvalidParameterError as exc:
            raise ConfigError(str(exc)) from None
        given = (
            [k for k in ("window", "lineage_col") if getattr(self, k) is not None]
            + ["lateness"] * (self.lateness is not None)
            + ["close_open_batches"] * bool(self.close_open_batches)
        )
        if given and self.event_time_spec is None:
            raise ConfigError(f"{', '.join(given)} only apply with batch_col or event_time")
        _check_columns(self)
        _check_options(self)
        _check_outputs(self)
        _check_keys(self)
        given = [k for k in ("min_key_rows", "evict_after") if getattr(self, k) is not None]
        if given and self.key_cols is None:
            raise ConfigError(f"{', '.join(given)} only apply with key_cols (one state per key)")
        if self.evict_after is not None and self.event_time_spec is not None:
            raise ConfigError(
                "evict_after counts micro-batches, which follow the trigger, not the data: "
                "a keyed event-time stream (batch_col or event_time) keeps every key"
            )
        if self.cols is None and self.input_col is None:
            raise ConfigError("stream needs cols (scalar columns) or input_col (a vector column)")
        if self.available_now and self.trigger_interval is not None:
            raise ConfigError("give either available_now or trigger_interval, not both")


SECTIONS: Mapping[str, type[Any]] = MappingProxyType(
    {
        "spark": SparkSettings,
        "fit": FitConfig,
        "transform": TransformConfig,
        "stream": StreamConfig,
    }
)

T = TypeVar("T")


@dataclass(frozen=True)
class ConfigFile:
    """A parsed config file: per table, the keys it sets (already type-checked)."""

    source: str
    sections: Mapping[str, Mapping[str, Any]]

    def section(self, name: str) -> Mapping[str, Any]:
        return self.sections.get(name, MappingProxyType({}))


def parse_config_text(text: str, source: str = "<config>") -> ConfigFile:
    """Parse and type-check a TOML config (every table, so typos fail whatever the command)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    sections: dict[str, Mapping[str, Any]] = {}
    for name, table in doc.items():
        if name not in SECTIONS:
            raise ConfigError(
                f"{source}: unknown table [{name}]; valid tables: "
                + ", ".join(f"[{s}]" for s in SECTIONS)
            )
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: {name} must be a table ([{name}]), got {table!r}")
        try:
            sections[name] = MappingProxyType(check_section(SECTIONS[name], table, f"[{name}]"))
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    return ConfigFile(source=source, sections=MappingProxyType(sections))


def load_config(path: str | os.PathLike[str]) -> ConfigFile:
    """Read a TOML config file; a missing or unreadable file is a :class:`ConfigError`."""
    return parse_config_text(read_text(path, "config file"), source=str(path))


def resolve(
    cls: type[T],
    from_file: Mapping[str, Any] | None = None,
    from_flags: Mapping[str, Any] | None = None,
    where: str | None = None,
) -> T:
    """Merge file values with flag values (flags win) and build the validated config.

    File values must have their TOML types; flag values may be the flags' text. ``None``
    flag values mean "not given". ``where`` names the config table in messages (default:
    ``[fit] of a --config file``).
    """
    known = fields(cls)
    where = where or f"{_table_of(cls)} of a --config file"
    merged = check_section(cls, from_file or {}, where)
    merged.update(check_flags(cls, {k: v for k, v in (from_flags or {}).items() if v is not None}))
    missing = [
        name
        for name, f in known.items()
        if name not in merged
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        flags = ", ".join(flag_name(known[m]) for m in missing)
        raise ConfigError(f"missing {flags} (or set {', '.join(missing)} in {where})")
    try:
        return cls(**merged)
    except ConfigError:
        raise
    except InvalidParameterError as exc:
        raise ConfigError(str(exc)) from None


def _table_of(cls: type[Any]) -> str:
    for name, c in SECTIONS.items():
        if c is cls:
            return f"[{name}]"
    return cls.__name__


def config_from_args(
    cls: type[T], args: argparse.Namespace, config: ConfigFile | None, table: str
) -> T:
    """The config for one command: table ``[table]`` of ``--config``, overridden by flags."""
    from_file = config.section(table) if config is not None else None
    where = f"[{table}] of {config.source}" if config is not None else None
    try:
        return resolve(cls, from_file, flag_values(args, cls), where)
    except ConfigError as exc:  # from a file, its keys are the names to fix; else the flags
        raise exc if config else ConfigError(with_flags(str(exc), flag_table(cls))) from None
