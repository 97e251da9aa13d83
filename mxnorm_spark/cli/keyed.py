"""Per-key MXNorm on the command line: ``fit --key-cols``, keyed ``transform``, ``export-keys``.

    mxnorm-spark fit --input data/ --cols a,b --key-cols sensor --batch-col day --state model/
    mxnorm-spark transform --input data/ --state model/ --output out/
    mxnorm-spark export-keys model/ serving/ [--overwrite]

``fit --key-cols`` writes a keyed model directory (:meth:`KeyedModel.write`: ``states/``,
``global_history/``, ``global.json``, ``keyed.json``) where a plain fit writes its state
file. A directory is recognised by its marker ``keyed.json`` and the type tag in it: a
keyed model, or a serving export (:meth:`KeyedModel.export`). The per-key states stay in
Spark: the commands count the keys, they never collect them.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    FitConfig,
    SparkSettings,
    TransformConfig,
    config_from_args,
    load_config,
)
from mxnorm_spark.cli.config_fields import add_arguments
from mxnorm_spark.core.choices import (
    KEYED_EXPORT_TYPE,
    KEYED_MODEL_TYPE,
    KEYED_STREAM_TYPE,
    KEYS_DIR,
)
from mxnorm_spark.core.errors import ConfigError, CorruptStateError
from mxnorm_spark.store import FileSystem, LocalFileSystem, filesystem, is_local, local_path

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from mxnorm_spark.keyed.backfill import KeyedModel

MARKER = "keyed.json"
MODEL_PARTS = "states/, global_history/, global.json, keyed.json"
# Where KeyedMXNormModel.save puts its keyed model directory, beside Spark ML's metadata/.
ML_KEYED_DIR = "keyed"


# ---- what a directory holds ----------------------------------------------------------------
def _fs(path: str, spark: SparkSession | None) -> tuple[FileSystem, str]:
    fs = filesystem(path, spark)
    return fs, local_path(path) if isinstance(fs, LocalFileSystem) else path


def keyed_marker(path: str, spark: SparkSession | None = None) -> dict[str, Any] | None:
    """The ``keyed.json`` document of directory ``path``, or None when it has none.

    Local paths and ``s3://``/``gs://``/``abfs://`` need no Spark; Hadoop URIs do.
    """
    fs, root = _fs(path, spark)
    try:
        data = fs.read_bytes(fs.join(root, MARKER))
    except NotADirectoryError:  # a file, e.g. a state JSON
        return None
    if data is None:
        return None
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise CorruptStateError(f"{path}/{MARKER} is not valid JSON ({exc})") from None
    return doc if isinstance(doc, dict) else {"type": type(doc).__name__}


def model_marker(path: str, spark: SparkSession | None = None) -> dict[str, Any] | None:
    """As :func:`keyed_marker`, and for a saved ``MXNorm(keyCols=...)`` model (Spark ML
    ``metadata/`` beside the keyed model directory ``keyed/``) the marker of ``keyed/``."""
    meta = keyed_marker(path, spark)
    if meta is None and _ml_model_dir(path, spark):
        fs, root = _fs(path, spark)
        meta = keyed_marker(fs.join(root, ML_KEYED_DIR), spark)
    return meta


def _ml_model_dir(path: str, spark: SparkSession | None) -> bool:
    """Whether ``path`` is what ``KeyedMXNormModel.save`` writes."""
    fs, root = _fs(path, spark)
    if not fs.exists(fs.join(root, "metadata")):
        return False
    meta = keyed_marker(fs.join(root, ML_KEYED_DIR), spark)
    return meta is not None and meta.get("type") == KEYED_MODEL_TYPE


def _not_a_model(path: str, meta: dict[str, Any] | None, spark: SparkSession | None) -> str:
    """Why ``path`` is not a keyed model directory, for the error message."""
    fs, root = _fs(path, spark)
    if meta is not None and meta.get("type") == KEYED_EXPORT_TYPE:
        return "it is a serving export (export-keys writes these), not the model it came from"
    if meta is not None:
        return f"its {MARKER} has the type tag {meta.get('type')!r}, not {KEYED_MODEL_TYPE!r}"
    if not fs.exists(root):
        return "no such file or directory"
    if not fs.is_dir(root):
        return "it is a file (fit --key-cols writes a directory)"
    return f"it has no {MARKER} (fit --key-cols writes one)"


def check_model_target(path: str, spark: SparkSession | None = None) -> None:
    """``fit --key-cols --state PATH`` creates a directory or replaces a keyed model, only."""
    fs, root = _fs(path, spark)
    if not fs.exists(root) or (fs.is_dir(root) and not fs.list_names(root)):
        return
    meta = keyed_marker(path, spark)
    if meta is None or meta.get("type") != KEYED_MODEL_TYPE:
        raise ConfigError(
            f"--state {path} is not a keyed model directory ({_not_a_model(path, meta, spark)}); "
            f"with --key-cols fit writes a directory ({MODEL_PARTS}) and replaces only an "
            "earlier keyed model: choose a new path"
        )


def _read_model(spark: SparkSession, path: str) -> KeyedModel:
    """The keyed model of ``path``; of a saved ``KeyedMXNormModel``, with its params."""
    if _ml_model_dir(path, spark):
        from mxnorm_spark.ml.keyed import KeyedMXNormModel  # Spark: not for inspect/report

        return KeyedMXNormModel.load(path).keyed
    from mxnorm_spark.keyed.backfill import KeyedModel

    return KeyedModel.read(spark, path)


def _write_replacing(write: Any, path: str, spark: SparkSession) -> None:
    """``write(path)`` over an earlier model or export: its marker goes first (and comes
    back last), so a rewrite that fails half way leaves nothing that reads as whole."""
    fs, root = _fs(path, spark)
    marker = fs.join(root, MARKER)
    if fs.exists(marker):
        fs.delete(marker)
    write(path)


def check_key_columns(df: DataFrame, keys: tuple[str, ...], source: str) -> None:
    missing = [k for k in keys if k not in df.columns]
    if missing:
        raise ConfigError(
            f"key column(s) {missing} not found in --input {source}; it has columns {df.columns}"
        )


# ---- fit --key-cols ------------------------------------------------------------------------
def run_fit_keyed(cfg: FitConfig, settings: SparkSettings) -> int:
    """``mxnorm-spark fit --key-cols``: per-key states in one pass, written as a model directory."""
    assert cfg.key_cols is not None and cfg.cols is not None  # FitConfig: keys need cols
    check_input_path(cfg.input, fmt=cfg.format)
    if cfg.output is not None:
        check_output_path(cfg.output, cfg.mode)
    if is_local(cfg.state):
        check_model_target(cfg.state)
        check_writable(cfg.state, "--state")
    out_format = cfg.output_format or cfg.format
    with (
        JobSession(settings, "mxnorm-spark fit") as spark,
        explained_read_failures(cfg.format, cfg.read_options, spark),
    ):
        if not is_local(cfg.state):
            check_model_target(cfg.state, spark)
        df = read_table(spark, cfg.input, cfg.format, cfg.read_options)
        check_key_columns(df, cfg.key_cols, cfg.input)
        from mxnorm_spark.keyed.backfill import fit_keyed

        fitted = fit_keyed(
            df,
            list(cfg.cols),
            list(cfg.key_cols),
            cfg.batch_col,
            options=cfg.state_options,
            min_key_rows=1 if cfg.min_key_rows is None else cfg.min_key_rows,
            apply_at=cfg.apply_at or "after",
            engine=cfg.engine,
        )
        _write_replacing(lambda p: fitted.write(p, overwrite=True), cfg.state, spark)
        # Read back: the key count and --output use the Parquet just written, not a second
        # pass of the per-key fit.
        model = _read_model(spark, cfg.state)
        keys = model.key_states.count()
        if cfg.output is not None:
            # As for a plain fit, these two name and filter this output only.
            out = replace(model, handle_invalid=cfg.handle_invalid or "keep",
                          output_cols=cfg.output_cols).transform(df)  # fmt: skip
            with removed_on_failure(cfg.output, spark):
                write_table(out, cfg.output, out_format, cfg.mode, cfg.write_options)
    assert model.global_state is not None
    batches = [v for v, _ in model.global_history or []] if cfg.batch_col else ["whole input"]
    print(
        f"fitted {len(model.features)} feature(s) per key of {list(model.key_cols)} on "
        f"{cfg.input}: {keys:,} key(s), {describe_batches(batches)}"
    )
    print(f"global state (the fallback below min_key_rows={model.min_key_rows}):")
    print(inspect_table(model.global_state))
    print(f"keyed model written to {cfg.state} ({MODEL_PARTS})")
    if cfg.output is not None:
        print(f"normalized input written to {cfg.output} ({out_format})")
    return 0


# ---- transform with a keyed model ----------------------------------------------------------
def keyed_source(cfg: TransformConfig, spark: SparkSession | None = None) -> dict[str, Any] | None:
    """The ``keyed.json`` of ``--state`` when it is a keyed model directory, None for a
    state file or state directory; an error when the settings do not fit what it is."""
    meta = model_marker(cfg.state, spark)
    if meta is None:
        if cfg.key_cols is not None or cfg.min_key_rows is not None:
            raise ConfigError(
                f"--state {cfg.state} is not a keyed model directory "
                f"({_not_a_model(cfg.state, None, spark)}); key_cols and min_key_rows "
                "apply to the directory fit --key-cols writes"
            )
        return None
    if meta.get("type") != KEYED_MODEL_TYPE:
        raise ConfigError(
            f"--state {cfg.state} is not a keyed model directory "
            f"({_not_a_model(cfg.state, meta, spark)}); transform reads the directory fit "
            "--key-cols writes"
        )
    keys, features = tuple(meta["key_cols"]), tuple(meta["features"])
    if cfg.key_cols is not None and cfg.key_cols != keys:
        raise ConfigError(
            f"--state {cfg.state} is keyed by {list(keys)}, not by key_cols {list(cfg.key_cols)}"
        )
    if cfg.input_col is not None:
        raise ConfigError(
            f"--state {cfg.state} is a keyed model of the scalar columns {list(features)}; "
            "input_col does not apply"
        )
    if cfg.cols is not None and cfg.cols != features:
        raise ConfigError(
            f"a keyed model normalizes all its features {list(features)}, in that order; "
            f"cols {list(cfg.cols)} must be exactly those or be left out"
        )
    return meta


def transform_keyed(cfg: TransformConfig, spark: SparkSession, out_format: str) -> str:
    """Normalize ``--input`` per key with the keyed model of ``--state``; the summary line.

    ``handle_invalid``, ``min_key_rows`` and ``output_cols`` of the command win over the
    model's, as the params of a fitted ``KeyedMXNormModel`` may change.
    """
    model = _read_model(spark, cfg.state)
    model = replace(
        model,
        handle_invalid=cfg.handle_invalid,
        min_key_rows=model.min_key_rows if cfg.min_key_rows is None else cfg.min_key_rows,
        output_cols=model.output_cols if cfg.output_cols is None else cfg.output_cols,
    )
    df = read_table(spark, cfg.input, cfg.format, cfg.read_options)
    check_key_columns(df, model.key_cols, cfg.input)
    write_table(model.transform(df), cfg.output, out_format, cfg.mode, cfg.write_options)
    n = len(model.global_history or []) or 1
    return (
        f"normalized {len(model.features)} feature(s) of {cfg.input} per key of "
        f"{list(model.key_cols)} with the keyed model in {cfg.state} ({n} batch(es) fitted, "
        f"global fallback below min_key_rows={model.min_key_rows}); wrote {out_format} to "
        f"{cfg.output}"
    )


# ---- export-keys ---------------------------------------------------------------------------
def _export_source(spark: SparkSession, source: str, out_dir: str, *, overwrite: bool) -> str:
    """Write the serving export of ``source`` to ``out_dir``; what was exported.

    The one place that knows which directories export: a keyed model directory (fit
    --key-cols), or a keyed stream's state directory (stream --key-cols: its newest
    committed micro-batch). Anything else is an error that names what ``source`` is not.
    """
    meta = model_marker(source, spark)
    fs, root = _fs(source, spark)
    stream_meta = keyed_marker(fs.join(root, KEYS_DIR), spark) if meta is None else None
    if stream_meta is not None and stream_meta.get("type") == KEYED_STREAM_TYPE:
        batch = {}

        def export(path: str) -> None:
            from mxnorm_spark.streaming.keyed import export_latest

            batch["id"] = export_latest(spark, source, path, overwrite=overwrite)

        _write_replacing(export, out_dir, spark)
        return (
            f"the per-key state of {len(stream_meta['features'])} feature(s) per key of "
            f"{stream_meta['key_cols']} as of micro-batch {batch['id']}"
        )
    if meta is not None and meta.get("type") == KEYED_MODEL_TYPE:
        model = _read_model(spark, source)
        _write_replacing(lambda p: model.export(p, overwrite=overwrite), out_dir, spark)
        return (
            f"the keyed model of {len(model.features)} feature(s) per key of {list(model.key_cols)}"
        )
    raise ConfigError(
        f"MODEL_DIR {source} is neither a keyed model directory nor a keyed stream's state "
        f"directory ({_not_a_model(source, meta, spark)})"
    )


def check_export_target(source: str, out_dir: str, overwrite: bool) -> None:
    """Before Spark (local OUT_DIR): it is new, or --overwrite replaces an earlier export."""
    if not is_local(out_dir):
        return
    fs, root = _fs(out_dir, None)
    if is_local(source) and Path(root).resolve() == Path(local_path(source)).resolve():
        raise ConfigError(f"OUT_DIR {out_dir} is MODEL_DIR itself; choose another directory")
    if not fs.exists(root) or (fs.is_dir(root) and not fs.list_names(root)):
        return
    if not overwrite:
        raise ConfigError(
            f"OUT_DIR {out_dir} already exists; choose another path or pass --overwrite"
        )
    meta = keyed_marker(out_dir)
    if meta is None or meta.get("type") != KEYED_EXPORT_TYPE:
        raise ConfigError(
            f"OUT_DIR {out_dir} holds something other than a serving export (no {MARKER} of "
            f"type {KEYED_EXPORT_TYPE!r}); --overwrite replaces only an earlier export"
        )


def run_export_keys(args: argparse.Namespace) -> int:
    config = load_config(args.config) if args.config else None
    settings = config_from_args(SparkSettings, args, config, "spark")
    check_input_path(args.model_dir, "MODEL_DIR")
    check_export_target(args.model_dir, args.out_dir, args.overwrite)
    check_writable(args.out_dir, "OUT_DIR")
    with JobSession(settings, "mxnorm-spark export-keys") as spark:
        what = _export_source(spark, args.model_dir, args.out_dir, overwrite=args.overwrite)
    print(f"exported {what} from {args.model_dir} to {args.out_dir}")
    print("(keys.parquet, global.json, keyed.json; serve it with mxnorm_spark.serving.load)")
    return 0


def add_export_keys_parser(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "export-keys",
        help="write the serving export of a keyed model or keyed stream state directory",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Read a keyed model directory (what fit --key-cols writes, or a saved\n"
            "MXNorm(keyCols=...) model), or the state directory of a keyed stream\n"
            "(stream --key-cols: its newest committed micro-batch; not one with\n"
            "--batch-col or --event-time, whose per-key states\n"
            "mxnorm_spark.streaming.keyed_events.read_key_states reads), and\n"
            "write its serving export to OUT_DIR: keys.parquet (each key's constants per\n"
            "feature),\n"
            "global.json (the global state, the fallback) and keyed.json (written last).\n"
            "mxnorm_spark.serving.load(OUT_DIR) scores rows from it without Spark, bit for\n"
            "bit as transform does for rows of no fitted batch.\n\n"
            "example:\n"
            "  mxnorm-spark export-keys models/sensors serving/sensors --overwrite"
        ),
    )
    parser.add_argument(
        "model_dir",
        metavar="MODEL_DIR",
        help="a keyed model directory, or a keyed stream's --state",
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="the export directory to write")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an earlier export in OUT_DIR"
    )
    parser.add_argument(
        "--config",
        metavar="FILE.toml",
        help="read Spark settings from the [spark] table of this TOML file; flags win over it",
    )
    add_arguments(
        parser.add_argument_group("Spark (also the [spark] table of --config)"), SparkSettings
    )
    parser.set_defaults(handler=run_export_keys)
