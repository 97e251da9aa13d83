"""What the ``mxnorm-spark`` commands share: path checks, table I/O, the job's session.

Below :mod:`mxnorm_spark.cli.commands` and :mod:`mxnorm_spark.cli.keyed`, so both use it without
importing each other the wrong way.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mxnorm_spark.cli.config import DEFAULT_READ_OPTIONS, DEFAULT_WRITE_OPTIONS, SparkSettings
from mxnorm_spark.core.errors import ConfigError, NotFittedError
from mxnorm_spark.core.state import MXNormState
from mxnorm_spark.store import is_local, local_path

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def _has_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[{")


def check_input_path(path: str, flag: str = "--input") -> None:
    """Fail before Spark starts when a local input path does not exist."""
    if is_local(path) and not _has_glob(path) and not Path(local_path(path)).exists():
        raise ConfigError(f"{flag} {path}: no such file or directory")


def check_output_path(path: str, mode: str, flag: str = "--output") -> None:
    if mode == "errorifexists" and is_local(path) and Path(local_path(path)).exists():
        raise ConfigError(
            f"{flag} {path} already exists; choose another path or pass --mode overwrite"
        )


def read_table(
    spark: SparkSession, path: str, fmt: str, options: dict[str, str] | Any
) -> DataFrame:
    opts = {**DEFAULT_READ_OPTIONS.get(fmt, {}), **dict(options)}
    return spark.read.format(fmt).options(**opts).load(path)


def write_table(df: DataFrame, path: str, fmt: str, mode: str, options: Any) -> None:
    opts = {**DEFAULT_WRITE_OPTIONS.get(fmt, {}), **dict(options)}
    # Spark Connect's Python client takes "error" but not its synonym "errorifexists".
    mode = "error" if mode == "errorifexists" else mode
    df.write.format(fmt).mode(mode).options(**opts).save(path)


class JobSession:
    """The SparkSession of one command; stopped at the end only if the command made it."""

    def __init__(self, settings: SparkSettings, app_name: str) -> None:
        self.settings, self.app_name = settings, app_name
        self.owned = False

    def __enter__(self) -> SparkSession:
        from pyspark.sql import SparkSession

        from mxnorm_spark.cli.session import quiet_task_failures, session_from_settings

        self.owned = SparkSession.getActiveSession() is None
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
