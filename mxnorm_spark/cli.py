"""The ``mxnorm-spark`` command: fit, transform, inspect (and stream).

    mxnorm-spark fit --input data/ --cols a,b,c [--batch-col day] --state state.json
    mxnorm-spark transform --input data/ --state state.json --output out/
    mxnorm-spark inspect state.json [--json]

Every flag of fit/transform/stream can also come from ``--config FILE.toml`` (the table
named after the command, plus ``[spark]``); flags win over the file. Bad input (config,
paths, columns, types, options; checked before Spark runs a job wherever possible) prints
one ``error: ...`` line and exits with status 2; an unexpected failure keeps its traceback
and exits with status 1.

Adding a command: write ``add_<name>_parser(subparsers)`` that calls :func:`add_command`
with its config dataclass and a ``run(config, spark_settings) -> int`` function, and list
it in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import re
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

from mxnorm_spark import __version__
from mxnorm_spark import errors as _errors
from mxnorm_spark.config import (
    DEFAULT_READ_OPTIONS,
    DEFAULT_WRITE_OPTIONS,
    FitConfig,
    SparkSettings,
    TransformConfig,
    add_arguments,
    config_from_args,
    load_config,
)
from mxnorm_spark.errors import ConfigError, MXNormError, NotFittedError
from mxnorm_spark.state import MXNormState
from mxnorm_spark.streaming import add_stream_parser

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

C = TypeVar("C")
EXIT_USAGE = 2


# ---- helpers shared by the commands -------------------------------------------------------
def _is_local(path: str) -> bool:
    scheme = urlparse(path).scheme
    # One-letter schemes are Windows drive letters, not URIs.
    return scheme in ("", "file") or len(scheme) == 1


def _local_path(path: str) -> Path:
    return Path(urlparse(path).path if path.startswith("file:") else path)


def _has_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[{")


def check_input_path(path: str, flag: str = "--input") -> None:
    """Fail before Spark starts when a local input path does not exist."""
    if _is_local(path) and not _has_glob(path) and not _local_path(path).exists():
        raise ConfigError(f"{flag} {path}: no such file or directory")


def check_output_path(path: str, mode: str, flag: str = "--output") -> None:
    if mode == "errorifexists" and _is_local(path) and _local_path(path).exists():
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
    df.write.format(fmt).mode(mode).options(**opts).save(path)


def save_state(state: MXNormState, path: str, spark: SparkSession | None = None) -> str:
    """Write one state JSON file, replacing it; remote URIs go through Spark's Hadoop FS.

    Locally the file is written under a temporary name and renamed (atomic). Remotely the
    new file is complete before the old one is replaced.
    """
    if _is_local(path):
        target = _local_path(path)
        _check_state_target(path)
        return str(state.save(target))
    if spark is None:
        raise ConfigError(f"--state {path}: a remote state path needs a SparkSession")
    from mxnorm_spark.store import HadoopFileSystem

    fs = HadoopFileSystem(spark, path)
    parent, _, name = path.rstrip("/").rpartition("/")
    tmp = f"{parent}/.{name}.{uuid.uuid4().hex}.tmp"
    fs.write_bytes(tmp, state.to_json().encode("utf-8"))
    if fs.exists(path):
        fs.delete(path)
    if not fs.rename(tmp, path):
        raise ConfigError(f"--state {path}: could not rename {tmp} into place")
    return fs.qualified(path)


def load_state(path: str, spark: SparkSession | None = None, flag: str = "--state") -> MXNormState:
    """A state file, or the newest version in a state directory (a stream's store).

    Remote paths (``hdfs://``, ``s3a://``...) need ``spark``; there a path ending in
    ``.json`` is a file and anything else a state directory.
    """
    from mxnorm_spark.store import StateStore

    if _is_local(path):
        local = _local_path(path)
        if not local.exists():
            raise ConfigError(f"{flag} {path}: no such file or directory")
        if not local.is_dir():
            return MXNormState.load(local)
        store = StateStore(local)
    elif spark is None:
        raise ConfigError(f"{flag} {path}: reading a remote state needs Spark; copy it locally")
    elif path.endswith(".json"):
        from mxnorm_spark.store import HadoopFileSystem

        data = HadoopFileSystem(spark, path).read_bytes(path)
        if data is None:
            raise ConfigError(f"{flag} {path}: no such file")
        return MXNormState.from_json(data, source=f"state file {path}")
    else:
        store = StateStore(path, spark)
    state = store.latest() or store.initial()
    if state is None:
        raise ConfigError(
            f"{flag} {path} is a directory without a committed state version (v-<batch id>.json)"
        )
    return state


# ---- command registration ---------------------------------------------------------------
def _add_spark_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Spark (also the [spark] table of --config)")
    add_arguments(group, SparkSettings)


def add_command(
    subparsers: Any,
    name: str,
    cls: type[C],
    run: Callable[[C, SparkSettings], int],
    *,
    help: str,
    description: str,
) -> argparse.ArgumentParser:
    """Add a subcommand whose flags are the fields of ``cls`` (table ``[name]`` of --config)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help=help,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        metavar="FILE.toml",
        help=f"read settings from the [{name}] and [spark] tables of this TOML file; "
        "flags win over it",
    )
    add_arguments(parser, cls)
    _add_spark_flags(parser)

    def handler(args: argparse.Namespace) -> int:
        config = load_config(args.config) if args.config else None
        cfg = config_from_args(cls, args, config, name)
        return run(cfg, config_from_args(SparkSettings, args, config, "spark"))

    parser.set_defaults(handler=handler)
    return parser


def add_fit_parser(subparsers: Any) -> None:
    add_command(
        subparsers,
        "fit",
        FitConfig,
        run_fit,
        help="fit an MXNorm state on a table and write it as JSON",
        description=(
            "Read a table, compute per-batch moments in one distributed pass, fold them\n"
            "into an MXNorm state and write the state JSON. Without --batch-col the whole\n"
            "input is one batch; with it, each distinct value is one batch, in ascending\n"
            "order (backfill). With --output, also write the normalized input.\n\n"
            "example:\n"
            "  mxnorm-spark fit --input events.parquet --cols a,b --batch-col day \\\n"
            "      --alpha 0.1 --state state.json"
        ),
    )


def add_transform_parser(subparsers: Any) -> None:
    add_command(
        subparsers,
        "transform",
        TransformConfig,
        run_transform,
        help="normalize a table with a fitted state",
        description=(
            "Normalize the state's features in a table as (x - mean) / sqrt(var + eps) and\n"
            "write the result (other columns are kept). By default the columns are the\n"
            "state's features and are replaced in place.\n\n"
            "example:\n"
            "  mxnorm-spark transform --input events.parquet --state state.json \\\n"
            "      --output normalized/ --mode overwrite"
        ),
    )


def add_inspect_parser(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "inspect",
        help="print a saved state (no Spark needed)",
        description="Verify the checksum of a state file (or of the newest version in a "
        "state directory) and print its options and, per feature, the mean, the variance, "
        "the scale transform divides by (sqrt(var + eps) or per --zero-variance) and the "
        "valid values seen.",
    )
    parser.add_argument("state", metavar="STATE_PATH", help="state JSON file or state directory")
    parser.add_argument(
        "--json", action="store_true", help="print the verified state document as JSON"
    )
    parser.set_defaults(handler=run_inspect)


# The subcommands, in --help order. The `stream` command (Structured Streaming) is
# registered by mxnorm_spark.streaming.
COMMANDS: list[Callable[[Any], None]] = [
    add_fit_parser,
    add_transform_parser,
    add_stream_parser,
    add_inspect_parser,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mxnorm-spark",
        description="MXNorm (EMA z-score) normalization for Apache Spark.",
        epilog="Run 'mxnorm-spark COMMAND --help' for the flags of a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS:
        register(subparsers)
    return parser


# ---- the commands -----------------------------------------------------------------------
class _JobSession:
    """The SparkSession of one command; stopped at the end only if the command made it."""

    def __init__(self, settings: SparkSettings, app_name: str) -> None:
        self.settings, self.app_name = settings, app_name
        self.owned = False

    def __enter__(self) -> SparkSession:
        from pyspark.sql import SparkSession

        from mxnorm_spark.session import session_from_settings

        self.owned = SparkSession.getActiveSession() is None
        self.spark = session_from_settings(self.settings, self.app_name)
        return self.spark

    def __exit__(self, *exc: object) -> None:
        if self.owned:
            self.spark.stop()


def _check_state_target(path: str) -> None:
    if _is_local(path) and _local_path(path).is_dir():
        raise ConfigError(
            f"--state {path} is a directory; fit writes one JSON file, e.g. "
            f"{_local_path(path) / 'state.json'} (a stream can start from it with --initial-state)"
        )


def _describe_batches(values: list[Any]) -> str:
    if not values:
        return "0 batches"
    if len(values) == 1:
        return f"1 batch ({values[0]!r})"
    return f"{len(values)} batches ({values[0]!r} .. {values[-1]!r})"


def run_fit(cfg: FitConfig, settings: SparkSettings) -> int:
    from mxnorm_spark.ml import MXNorm

    check_input_path(cfg.input)
    _check_state_target(cfg.state)
    if cfg.output is not None:
        check_output_path(cfg.output, cfg.mode)
    with _JobSession(settings, "mxnorm-spark fit") as spark:
        df = read_table(spark, cfg.input, cfg.format, cfg.read_options)
        estimator = MXNorm(
            inputCols=None if cfg.cols is None else list(cfg.cols),
            outputCols=None if cfg.output_cols is None else list(cfg.output_cols),
            inputCol=cfg.input_col,
            # Without a name the vector output would get Spark's generated default name.
            outputCol=cfg.output_col or cfg.input_col,
            alpha=cfg.alpha,
            epsilon=cfg.eps,
            batchCol=cfg.batch_col,
            applyAt=cfg.apply_at or "after",
            handleInvalid=cfg.handle_invalid or "keep",
            varUpdate=cfg.var_update,
            decay=cfg.decay,
            zeroVariance=cfg.zero_variance,
            engine=cfg.engine,
        )
        model = estimator.fit(df)
        state = model.state
        batches = [value for value, _ in model.history] if cfg.batch_col else ["whole input"]
        out_format = cfg.output_format or cfg.format
        if cfg.output is not None:
            write_table(model.transform(df), cfg.output, out_format, cfg.mode, cfg.write_options)
        written = save_state(state, cfg.state, spark)
    print(f"fitted {state.n_features} feature(s) on {cfg.input}: {_describe_batches(batches)}")
    print(inspect_table(state))
    print(f"state written to {written}")
    if cfg.output is not None:
        print(f"normalized input written to {cfg.output} ({out_format})")
    return 0


def run_transform(cfg: TransformConfig, settings: SparkSettings) -> int:
    from mxnorm_spark.apply import normalize

    check_input_path(cfg.input)
    check_output_path(cfg.output, cfg.mode)
    # A local state is read (and verified) before Spark starts; a remote one needs Spark.
    state = load_state(cfg.state) if _is_local(cfg.state) else None
    out_format = cfg.output_format or cfg.format
    with _JobSession(settings, "mxnorm-spark transform") as spark:
        state = state or load_state(cfg.state, spark)
        df = read_table(spark, cfg.input, cfg.format, cfg.read_options)
        out = normalize(
            df,
            state,
            cfg.cols,
            cfg.output_cols,
            input_col=cfg.input_col,
            output_col=cfg.output_col,
            handle_invalid=cfg.handle_invalid,
            engine=cfg.engine,
        )
        write_table(out, cfg.output, out_format, cfg.mode, cfg.write_options)
    print(
        f"normalized {state.n_features} feature(s) of {cfg.input} with the state in "
        f"{cfg.state} ({state.batches_seen} batch(es) seen); wrote {out_format} to {cfg.output}"
    )
    return 0


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


def run_inspect(args: argparse.Namespace) -> int:
    state = load_state(args.state, flag="STATE_PATH")
    if args.json:
        sys.stdout.write(state.to_json())
    else:
        print(inspect_table(state))
    return 0


# ---- errors -----------------------------------------------------------------------------
_ERROR_NAMES = "|".join(
    name
    for name, obj in vars(_errors).items()
    if isinstance(obj, type) and issubclass(obj, MXNormError)
)
_REMOTE_ERROR = re.compile(rf"(?:mxnorm_spark\.errors\.)?({_ERROR_NAMES}): (.+)")


def error_message(exc: BaseException) -> str | None:
    """The one-line message for an expected failure, or None for a bug (keep its traceback).

    Errors raised inside Spark's Python workers come back wrapped in a Java exception; the
    MXNorm error inside is found by its class name.
    """
    if isinstance(exc, MXNormError):
        return str(exc)
    text = str(exc)
    match = _REMOTE_ERROR.search(text)
    if match is not None:
        message = match.group(2)
        # SQL-side errors carry the class name in the message too, and Spark appends
        # its SQLSTATE: keep only the MXNorm sentence.
        while (inner := _REMOTE_ERROR.match(message)) is not None:
            message = inner.group(2)
        return re.sub(r"\s*SQLSTATE: \w+\s*$", "", message).strip()
    try:
        from pyspark.errors import AnalysisException
    except ImportError:  # pragma: no cover - pyspark is a dependency
        return None
    if isinstance(exc, AnalysisException):
        return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mxnorm-spark`` and ``python -m mxnorm_spark``; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        message = error_message(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
