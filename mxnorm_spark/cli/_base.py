"""What the ``mxnorm-spark`` commands share: path checks, table I/O, the job's session.

Below :mod:`mxnorm_spark.cli.commands` and :mod:`mxnorm_spark.cli.keyed`, so both use it without
importing each other the wrong way.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mxnorm_spark.cli.config import DEFAULT_READ_OPTIONS, DEFAULT_WRITE_OPTIONS, SparkSettings
from mxnorm_spark.core.errors import ConfigError, NotFittedError
from mxnorm_spark.core.state import MXNormState
from mxnorm_spark.store import FileSystem, filesystem, is_local, local_path, unwritable_reason

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def _has_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[{")


def check_input_path(path: str, flag: str = "--input", fmt: str | None = None) -> None:
    """Fail before Spark starts when a local input path does not exist, or (``fmt``) when
    its files are plainly of another format than ``--format`` says."""
    if not is_local(path) or _has_glob(path):
        return
    if not Path(local_path(path)).exists():
        raise ConfigError(f"{flag} {path}: no such file or directory")
    if fmt is not None:
        sample = _first_data_file(Path(local_path(path)))
        if sample is not None:
            # Here, not at the top: the streaming package needs pyspark (inspect does not).
            from mxnorm_spark.streaming.sources import check_file_format

            check_file_format(str(sample), fmt, f"{flag} {path}", fix="pass --format {}")


def _first_data_file(path: Path) -> Path | None:
    """The first file Spark would read under ``path`` (it skips names starting with _ or .)."""
    if path.is_file():
        return path
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith(("_", ".")))
        for name in sorted(files):
            if not name.startswith(("_", ".")):
                return Path(root) / name
    return None


def check_output_path(path: str, mode: str, flag: str = "--output") -> None:
    """Fail before Spark starts when a local output exists (under errorifexists) or
    cannot be written."""
    if mode == "errorifexists" and is_local(path) and Path(local_path(path)).exists():
        raise ConfigError(
            f"{flag} {path} already exists; choose another path or pass --mode overwrite"
        )
    check_writable(path, flag)


def check_writable(path: str, flag: str, *, directory: bool = True) -> None:
    """Fail before Spark starts when nothing can be written at a local ``path`` (a
    directory, or with ``directory=False`` a file). URIs are left to the store, which
    checks them when it writes."""
    reason = unwritable_reason(path, directory=directory)
    if reason is not None:
        raise ConfigError(f"{flag} {path} is not writable: {reason}; choose another location")


def read_table(
    spark: SparkSession, path: str, fmt: str, options: dict[str, str] | Any
) -> DataFrame:
    opts = {**DEFAULT_READ_OPTIONS.get(fmt, {}), **dict(options)}
    return spark.read.format(fmt).options(**opts).load(path)


# How a command says what to do about a malformed csv/json record.
MALFORMED_FIX = (
    "fix or remove that record, or pass --read-option mode=DROPMALFORMED to drop such "
    "records (mode=PERMISSIVE reads their missing fields as nulls)"
)


# Spark's CSV reader parses only the columns a query uses (column pruning): a row with
# too few or too many fields then goes unnoticed even in FAILFAST mode. Off while a
# command reads CSV in that mode, so that every row is checked against the header.
_CSV_PRUNING = "spark.sql.csv.parser.columnPruning.enabled"


@contextmanager
def explained_read_failures(
    fmt: str, options: Mapping[str, str], spark: SparkSession | None = None
) -> Iterator[None]:
    """Check every csv row under FAILFAST (the default), and turn Spark's failure to parse
    a csv/json record into a :class:`~mxnorm_spark.core.errors.MalformedRecordError` naming
    the file and the record."""
    opts = {**DEFAULT_READ_OPTIONS.get(fmt, {}), **dict(options)}
    strict = fmt == "csv" and opts.get("mode", "").upper() == "FAILFAST" and spark is not None
    before = spark.conf.get(_CSV_PRUNING, None) if strict and spark is not None else None
    if strict and spark is not None:
        spark.conf.set(_CSV_PRUNING, "false")
    try:
        yield
    except Exception as exc:
        if fmt not in ("csv", "json"):
            raise
        from mxnorm_spark.streaming.sources import malformed_record_error

        error = malformed_record_error(str(exc), fmt, opts, MALFORMED_FIX, spark)
        if error is None:
            raise
        raise error from None
    finally:
        if strict and spark is not None:
            with suppress(Exception):  # a stopped session keeps nothing to restore
                if before is None:
                    spark.conf.unset(_CSV_PRUNING)
                else:
                    spark.conf.set(_CSV_PRUNING, before)


@contextmanager
def removed_on_failure(path: str, spark: SparkSession | None = None) -> Iterator[None]:
    """A new output that a failing command leaves behind (Spark keeps the directory of a
    failed write) is removed, so that the same command can simply be run again."""
    where = local_path(path) if is_local(path) else path
    fs: FileSystem | None = None
    try:
        found = filesystem(path, spark)
        existed, fs = found.exists(where), found
    except Exception:  # a scheme only Spark's own writer reaches (hdfs:// on Connect)
        existed = True
    try:
        yield
    except BaseException:
        if fs is not None and not existed:
            with suppress(Exception):  # the failure being raised is the one to report
                if fs.exists(where):
                    fs.delete(where, recursive=True)
        raise


def write_table(
    df: DataFrame, path: str, fmt: str, mode: str, options: Any, *, scores: Sequence[str] = ()
) -> None:
    """Write ``df``. Parquet stores the z-score columns ``scores`` without dictionary unless
    the options set dictionaries: z-scores hardly repeat, and a wide output's writer hashes
    every value into dictionaries it then drops (256 columns: about half the write's CPU)."""
    from mxnorm_spark.streaming.sinks import no_dictionary

    opts = {**DEFAULT_WRITE_OPTIONS.get(fmt, {}), **dict(options)}
    if fmt == "parquet" and not any("dictionary" in k for k in opts):
        opts |= no_dictionary(scores)
    # Spark Connect's Python client takes "error" but not its synonym "errorifexists".
    mode = "error" if mode == "errorifexists" else mode
    df.write.format(fmt).mode(mode).options(**opts).save(path)


class JobSession:
    """The SparkSession of one command; stopped at the end only if the command made it."""

    def __init__(self, settings: SparkSettings, app_name: str) -> None:
        self.settings, self.app_name = settings, app_name
        self.owned = False

    def __enter__(self) -> SparkSession:
        from pyspark import SparkContext
        from pyspark.sql import SparkSession

        from mxnorm_spark.cli.session import quiet_task_failures, session_from_settings

        # The active session is per thread: a command run from another thread of a process
        # that holds a session must not stop it, so a running SparkContext counts too.
        running = getattr(SparkContext, "_active_spark_context", None) is not None
        self.owned = SparkSession.getActiveSession() is None and not running
        self.spark = session_from_settings(self.settings, self.app_name)
        if self.settings.log_level in ("WARN", "ERROR"):
            quiet_task_failures(self.spark)
        return self.spark

    def __exit__(self, *exc: object) -> None:
        if self.owned:
            self.spark.stop()


def describe_batches(values: list[Any]) -> str:
    if not values:
        return "0 batches"
    if len(values) == 1:
        return f"1 batch ({values[0]!r})"
    return f"{len(values)} batches ({values[0]!r} .. {values[-1]!r})"


def inspect_table(state: MXNormState) -> str:
    """The state's options, then per feature: mean, var, the scale transform divides by, rows."""
    try:
        scale: Any = state.normalization_constants()[1]
    except NotFittedError:
        scale = None  # some feature has seen no valid value: transform would refuse
    head = state.summary().splitlines()[0]
    width = max(7, *(len(f) for f in state.features))
    lines = [head, f"{'feature':<{width}}  {'mean':>22}  {'var':>22}  {'scale':>22}  {'rows':>12}"]
    for j, f in enumerate(state.features):
        shown = "not fitted" if scale is None else f"{scale[j]:.15g}"
        lines.append(
            f"{f:<{width}}  {state.mean[j]:>22.15g}  {state.var[j]:>22.15g}  {shown:>22}  "
            f"{int(state.count[j]):>12d}"
        )
    return "\n".join(lines)
