"""The ``mxnorm-spark`` command: fit, transform, inspect, report, export-keys (and stream).

    mxnorm-spark fit --input data/ --cols a,b,c [--batch-col day] --state state.json
    mxnorm-spark transform --input data/ --state state.json --output out/
    mxnorm-spark inspect state.json [--json] [--batch-id N]
    mxnorm-spark report state.json --out report.html [--k 3]
    mxnorm-spark export-keys model/ serving/     (a keyed model: fit --key-cols, cli_keyed)

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
import sys
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mxnorm_spark._version import __version__
from mxnorm_spark.cli._base import (
    JobSession,
    check_input_path,
    check_output_path,
    check_writable,
    describe_batches,
    explained_read_failures,
    inspect_table,
    read_table,
    removed_on_failure,
    write_table,
)
from mxnorm_spark.cli.config import (
    DEFAULT_READ_OPTIONS,
    DEFAULT_WRITE_OPTIONS,
    FitConfig,
    SparkSettings,
    StreamConfig,
    TransformConfig,
    config_from_args,
    load_config,
)
from mxnorm_spark.cli.config_fields import add_arguments
from mxnorm_spark.cli.feast import add_feast_views_parser
from mxnorm_spark.cli.keyed import (
    add_export_keys_parser,
    keyed_marker,
    keyed_source,
    run_fit_keyed,
    transform_keyed,
)
from mxnorm_spark.cli.messages import cli_message
from mxnorm_spark.core.errors import (
    ConfigError,
    StateNotFoundError,
)
from mxnorm_spark.core.state import MXNormState
from mxnorm_spark.store import (
    StateStore,
    filesystem,
    is_local,
    local_path,
    read_state,
    state_file_writer,
    write_state,
)
from mxnorm_spark.store.history import write_history

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from mxnorm_spark.streaming.sources import FileSource
    from mxnorm_spark.streaming.updater import MXNormStream

C = TypeVar("C")
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C


# ---- helpers shared by the commands -------------------------------------------------------
def save_state(state: MXNormState, path: str, spark: SparkSession | None = None) -> str:
    """Write the state JSON file of ``--state``, replacing it atomically (see write_state)."""
    _check_state_target(path)
    return write_state(state, path, spark)


def state_exists(path: str, spark: SparkSession | None = None) -> bool:
    """Whether a file (or anything) is at ``path`` already: fit says when it replaces it."""
    return filesystem(path, spark).exists(local_path(path) if is_local(path) else path)


def load_state(
    path: str,
    spark: SparkSession | None = None,
    flag: str = "--state",
    *,
    batch_id: int | None = None,
) -> MXNormState:
    """A state file, or the newest version in a state directory (see read_state).

    Local paths and ``s3://``/``gs://``/``abfs://`` URIs need no Spark; other schemes
    (``hdfs://``, ``s3a://``) are read through ``spark``'s Hadoop file system.
    """
    if is_local(path) and not Path(local_path(path)).exists():
        raise StateNotFoundError(f"{flag} {path} not found (no such file or directory)")
    return read_state(path, spark, batch_id=batch_id)


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
        help="fit an MXNorm state (or one per key) on a table and write it",
        description=(
            "Read a table, compute per-batch moments in one distributed pass, fold them\n"
            "into an MXNorm state and write the state JSON. Without --batch-col the whole\n"
            "input is one batch; with it, each distinct value is one batch, in ascending\n"
            "order (backfill). With --output, also write the normalized input.\n\n"
            "With --key-cols, one state per key (and the global state, the fallback of\n"
            "unseen keys, null keys and keys under --min-key-rows), kept in Spark: --state\n"
            "is then a keyed model directory (states/, global_history/, global.json,\n"
            "keyed.json), created, or replaced if it holds a keyed model. transform reads\n"
            "it; export-keys writes its serving export.\n\n"
            "examples:\n"
            "  mxnorm-spark fit --input events.parquet --cols a,b --batch-col day \\\n"
            "      --alpha 0.1 --state state.json\n"
            "  mxnorm-spark fit --input events.parquet --cols a,b --batch-col day \\\n"
            "      --key-cols sensor --min-key-rows 20 --state models/sensors"
        ),
    )


def add_transform_parser(subparsers: Any) -> None:
    add_command(
        subparsers,
        "transform",
        TransformConfig,
        run_transform,
        help="normalize a table with a fitted state (or a keyed model, per key)",
        description=(
            "Normalize the state's features in a table as (x - mean) / sqrt(var + eps) and\n"
            "write the result (other columns are kept). By default the columns are the\n"
            "state's features and are replaced in place. A keyed model directory (fit\n"
            "--key-cols) is recognised by its keyed.json and normalizes each row with its\n"
            "key's state as of its batch, or the global state (see docs/guides/keyed.md).\n\n"
            "example:\n"
            "  mxnorm-spark transform --input events.parquet --state state.json \\\n"
            "      --output normalized/ --mode overwrite"
        ),
    )


def add_stream_parser(subparsers: Any) -> None:
    parser = add_command(
        subparsers,
        "stream",
        StreamConfig,
        run_stream,
        help="normalize a stream of files micro-batch by micro-batch, state exactly once",
        description=(
            "Watch a directory for new parquet/csv/json files with Structured Streaming. Per\n"
            "micro-batch: fold its moments into the MXNorm state, commit the state as\n"
            "STATE/v-<batch id>.json, normalize the batch and write it to\n"
            "OUTPUT/batch_id=<batch id>/. A restart after a crash resumes from the\n"
            "checkpoint: no batch is folded twice and no row is lost or duplicated.\n"
            "With --batch-col (or --event-time and --window) the batch is the data's: a\n"
            "batch folds when the watermark (largest batch value seen minus --lateness)\n"
            "passes it, and each row is normalized with the state before its batch\n"
            "(--apply-at before); with --key-cols too, per key under one watermark for\n"
            "all keys (docs/guides/event-time.md).\n\n"
            "example:\n"
            "  mxnorm-spark stream --input incoming/ --format parquet --cols a,b \\\n"
            "      --output normalized/ --state state/ --checkpoint chk/ \\\n"
            "      --max-files-per-trigger 1 --available-now"
        ),
    )
    # A short alias of --initial-state.
    parser.add_argument("--init-state", dest="initial_state", help=argparse.SUPPRESS)


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
    parser.add_argument(
        "--batch-id",
        type=_batch_id,
        metavar="N",
        help="with a state directory: the version committed for micro-batch N "
        "(default: the newest)",
    )
    parser.set_defaults(handler=run_inspect)


def add_report_parser(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "report",
        help="chart a state's per-batch history and list its drift events (no Spark needed)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Read the per-batch history a stream (STATE_DIR/_history/) or fit\n"
            "(STATE.history/ beside STATE.json) records, and write a report: FILE.html is one\n"
            "self-contained page (summary, drift events, one chart per feature of the state\n"
            "mean +/- 1 sd and the batch means over the batches); FILE.png just the charts.\n"
            "A drift event is a batch mean more than K state standard deviations from the\n"
            "state mean before that batch. Needs the [report] extra (matplotlib).\n\n"
            "example:\n"
            "  mxnorm-spark report state/ --out report.html --k 4"
        ),
    )
    parser.add_argument("state", metavar="STATE_PATH", help="state JSON file or state directory")
    parser.add_argument(
        "--out", required=True, metavar="FILE", help="report file: .html (a page) or .png"
    )
    parser.add_argument(
        "--k",
        type=float,
        default=3.0,
        metavar="K",
        help="drift threshold in state standard deviations (default: 3)",
    )
    parser.set_defaults(handler=run_report)


# The subcommands, in --help order.
COMMANDS: list[Callable[[Any], None]] = [
    add_fit_parser,
    add_transform_parser,
    add_stream_parser,
    add_export_keys_parser,
    add_inspect_parser,
    add_report_parser,
    add_feast_views_parser,
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
def _check_state_target(path: str) -> None:
    if is_local(path) and Path(local_path(path)).is_dir():
        keyed = " (it holds a keyed model: add --key-cols)" if keyed_marker(path) else ""
        raise ConfigError(
            f"--state {path} is a directory{keyed}; fit writes one JSON file, e.g. "
            f"{Path(local_path(path)) / 'state.json'} "
            "(a stream can start from it with --initial-state)"
        )


def run_fit(cfg: FitConfig, settings: SparkSettings) -> int:
    from mxnorm_spark.ml.estimator import MXNorm

    if cfg.key_cols is not None:
        return run_fit_keyed(cfg, settings)
    check_input_path(cfg.input, fmt=cfg.format)
    _check_state_target(cfg.state)
    check_writable(cfg.state, "--state", directory=False)
    if cfg.output is not None:
        check_output_path(cfg.output, cfg.mode)
    with (
        JobSession(settings, "mxnorm-spark fit") as spark,
        explained_read_failures(cfg.format, cfg.read_options, spark),
    ):
        df = read_table(spark, cfg.input, cfg.format, cfg.read_options)
        estimator = MXNorm(
            inputCols=None if cfg.cols is None else list(cfg.cols),
            outputCols=None if cfg.output_cols is None else list(cfg.output_cols),
            inputCol=cfg.input_col,
            # Without a name the vector output would get Spark's generated default name.
            outputCol=cfg.output_col or cfg.input_col,
            alpha=cfg.state_options.alpha,
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
        batches = model.batch_values() if cfg.batch_col else ["whole input"]
        out_format = cfg.output_format or cfg.format
        from mxnorm_spark.streaming.progress import fault

        replaced = state_exists(cfg.state, spark)
        cleanup = nullcontext() if cfg.output is None else removed_on_failure(cfg.output, spark)
        with cleanup:
            if cfg.output is not None:
                scores = () if cfg.input_col else state.features
                write_table(
                    model.transform(df), cfg.output, out_format, cfg.mode, cfg.write_options,
                    scores=scores,
                )
            # One run at a time writes the state and its history (a second one stops here).
            with state_file_writer(cfg.state, spark):
                fault("fit_write", 0, spark)
                written = save_state(state, cfg.state, spark)
                # Beside the file (<state>.history/); a rerun replaces the old state's history.
                write_history(cfg.state, model.history_table(), spark, state_file=True)
    print(f"fitted {state.n_features} feature(s) on {cfg.input}: {describe_batches(batches)}")
    print(inspect_table(state))
    print(f"state written to {written}" + (" (it replaced the state there)" if replaced else ""))
    if cfg.output is not None:
        print(f"normalized input written to {cfg.output} ({out_format})")
    return 0


def run_transform(cfg: TransformConfig, settings: SparkSettings) -> int:
    from mxnorm_spark.batch.apply import normalize

    check_input_path(cfg.input, fmt=cfg.format)
    check_output_path(cfg.output, cfg.mode)
    # A local state (or keyed model) is read and verified before Spark starts; a remote
    # one needs Spark.
    local = is_local(cfg.state)
    keyed = keyed_source(cfg) if local else None
    state = load_state(cfg.state) if local and keyed is None else None
    out_format = cfg.output_format or cfg.format
    with (
        JobSession(settings, "mxnorm-spark transform") as spark,
        explained_read_failures(cfg.format, cfg.read_options, spark),
        removed_on_failure(cfg.output, spark),
    ):
        if not local:
            keyed = keyed_source(cfg, spark)
        if keyed is not None:
            done = transform_keyed(cfg, spark, out_format)
        else:
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
            scores = () if cfg.input_col else (cfg.output_cols or cfg.cols or state.features)
            write_table(out, cfg.output, out_format, cfg.mode, cfg.write_options, scores=scores)
            done = (
                f"normalized {state.n_features} feature(s) of {cfg.input} with the state in "
                f"{cfg.state} ({state.batches_seen} batch(es) seen); wrote {out_format} to "
                f"{cfg.output}"
            )
    print(done)
    return 0


def _file_stream(cfg: StreamConfig, spark: SparkSession) -> tuple[FileSource, MXNormStream]:
    """The file source and the exactly-once updater of ``mxnorm-spark stream``."""
    # Imported here: inspect and report run without Spark (a numpy-only install).
    from mxnorm_spark.streaming.sources import FileSource
    from mxnorm_spark.streaming.updater import MXNormStream, StreamOutput

    source = FileSource(
        cfg.input,
        cfg.format,
        {**DEFAULT_READ_OPTIONS.get(cfg.format, {}), **dict(cfg.read_options)},
        schema=cfg.schema,
        max_files_per_trigger=cfg.max_files_per_trigger,
    )
    out_format = cfg.output_format or cfg.format
    output = StreamOutput(
        path=cfg.output,
        format=out_format,
        write_options={**DEFAULT_WRITE_OPTIONS.get(out_format, {}), **dict(cfg.write_options)},
        cols=cfg.output_cols,
        col=cfg.output_col,
    )
    from mxnorm_spark.streaming.keyed import KeyOptions

    options = cfg.state_options
    stream = MXNormStream(
        spark,
        StateStore(cfg.state, spark, retention=cfg.retention),
        cols=cfg.cols,
        input_col=cfg.input_col,
        output=output,
        options=options,
        apply_at=cfg.apply_at,
        handle_invalid=cfg.handle_invalid,
        engine=cfg.engine,
        initial_state=cfg.initial_state,
        keys=None
        if cfg.key_cols is None
        else KeyOptions(
            cfg.key_cols,
            1 if cfg.min_key_rows is None else cfg.min_key_rows,
            cfg.evict_after,
        ),
        event_time=cfg.event_time_spec,
    )
    return source, stream


def run_stream(cfg: StreamConfig, settings: SparkSettings) -> int:
    """``mxnorm-spark stream``: a file stream normalized with exactly-once MXNorm state."""
    # Spark's console progress bar would overwrite the per-batch progress lines.
    # Adaptive execution is off in streaming queries anyway (Spark warns once when it is on).
    quiet = {
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.adaptive.enabled": "false",
        **dict(settings.conf),
    }
    for path, flag in ((cfg.state, "--state"), (cfg.output, "--output"),
                       (cfg.checkpoint, "--checkpoint")):  # fmt: skip
        check_writable(path, flag)
    with JobSession(replace(settings, conf=quiet), "mxnorm-spark stream") as spark:
        source, stream = _file_stream(cfg, spark)
        df = source.read(spark, cfg.cols, cfg.input_col)
        trigger = "available-now" if cfg.available_now else (cfg.trigger_interval or "continuous")
        print(
            f"[mxnorm] streaming {cfg.format} files from {cfg.input} ({trigger}); state in "
            f"{cfg.state}, output in {cfg.output}",
            flush=True,
        )
        reports = stream.run(
            df,
            cfg.checkpoint,
            available_now=cfg.available_now,
            trigger_interval=cfg.trigger_interval,
            source=source,
            end_of_input=cfg.close_open_batches,
        )
        state = stream.store.latest()
        rows = sum(r.rows for r in reports)
        if stream.interrupted:
            last = "none" if state is None else f"batch {state.last_batch_id}"
            print(
                f"[mxnorm] stopped by Ctrl-C after {len(reports)} micro-batch(es), {rows:,} "
                f"rows; state committed up to {last}",
                flush=True,
            )
            return EXIT_INTERRUPTED
        print(f"[mxnorm] stream stopped after {len(reports)} micro-batch(es), {rows:,} rows")
        if state is not None:
            print(state.summary())
    return 0


def _batch_id(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a batch id (a whole number >= 0), got {text!r}")
    return int(text)


def run_inspect(args: argparse.Namespace) -> int:
    if (
        args.batch_id is not None
        and is_local(args.state)
        and Path(local_path(args.state)).is_file()
    ):
        raise ConfigError(
            f"--batch-id selects a version of a state directory; {args.state} is one state file"
        )
    state = load_state(args.state, flag="STATE_PATH", batch_id=args.batch_id)
    if args.json:
        sys.stdout.write(state.to_json())
    else:
        print(inspect_table(state))
    return 0


def run_report(args: argparse.Namespace) -> int:
    from mxnorm_spark.report.drift import write_report

    if not args.k > 0 or args.k == float("inf"):
        raise ConfigError(f"--k must be a positive number of standard deviations, got {args.k}")
    check_writable(args.out, "--out", directory=False)
    events = write_report(args.state, args.out, k=args.k)
    for event in events:
        print(f"drift: {event.describe()}")
    print(f"report written to {args.out} ({len(events)} drift event(s) at k={args.k:g})")
    return 0


# ---- entry point ------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mxnorm-spark`` and ``python -m mxnorm_spark``; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        message = cli_message(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
