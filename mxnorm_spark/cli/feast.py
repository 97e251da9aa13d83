"""``mxnorm-spark feast-views``: the Feast feature views of a fitted model or a stream.

For a saved backfill model (``MXNorm(batchCol=...)``, global or with ``keyCols``) it writes
the state history (and, with ``--rows``, the point-in-time normalized rows) as Parquet
sources under ``REPO/data/sources/``, and the Feast definitions (``mxnorm_features.py``,
``feature_store.yaml``) under ``REPO``; for a stream's state directory, the state after
each committed batch from its commit time on. Then ``feast -c REPO apply``. See
:mod:`mxnorm_spark.feast`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
from typing import Any

from mxnorm_spark.core.errors import ConfigError

__all__ = ["add_feast_views_parser", "run_feast_views"]


def _period(text: str) -> dt.timedelta:
    units = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
    try:
        value, unit = float(text[:-1]), units[text[-1]]
    except (KeyError, ValueError, IndexError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a period: a number and a unit, e.g. 1d, 6h, 15m, 30s"
        ) from None
    return dt.timedelta(**{unit: value})


def _instant(text: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 instant, e.g. 2026-01-01T00:00:00+00:00"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def add_feast_views_parser(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "feast-views",
        help="write the Feast feature views of a fitted model or a stream's state directory",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Publish a saved MXNorm backfill model (--model) or a stream's state directory\n"
            "(--state-dir) to a local Feast repo: Parquet sources with event timestamps and\n"
            "the definitions module, then run `feast -c REPO apply`. Needs the [feast] extra.\n"
            "Batch values that are dates or timestamps start at themselves (UTC); integer\n"
            "batch values start at --origin + value * --period.\n\n"
            "examples:\n"
            "  mxnorm-spark feast-views --model model/ --repo features/ \\\n"
            "      --origin 2026-01-01T00:00:00+00:00 --period 1d\n"
            "  mxnorm-spark feast-views --state-dir state/ --repo features/ --outputs a_z,b_z"
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="MODEL_DIR", help="a saved MXNormModel directory")
    source.add_argument("--state-dir", metavar="STATE_DIR", help="a stream's state directory")
    parser.add_argument("--repo", required=True, metavar="DIR", help="the Feast repo to write")
    parser.add_argument("--name", default="mxnorm", help="name of the view set (default mxnorm)")
    parser.add_argument("--origin", type=_instant, help="start of integer batch value 0")
    parser.add_argument(
        "--period", type=_period, default=dt.timedelta(days=1), help="batch length (default 1d)"
    )
    parser.add_argument(
        "--outputs", help="comma-separated output names (state directories; models bring theirs)"
    )
    parser.add_argument("--offline", choices=("file", "spark"), default="file")
    parser.add_argument("--rows", metavar="DATA", help="Parquet data to publish normalized")
    parser.add_argument("--entity-cols", help="comma-separated entity columns of --rows")
    parser.set_defaults(handler=run_feast_views)


def run_feast_views(args: argparse.Namespace) -> int:
    from mxnorm_spark.feast import BatchClock, publish_model, publish_stream

    if args.state_dir is not None:
        if not args.outputs:
            raise ConfigError("--state-dir needs --outputs: one output name per feature")
        spec = publish_stream(
            args.state_dir, args.repo, outputs=args.outputs.split(","), name=args.name
        )
    else:
        from mxnorm_spark.cli._base import JobSession
        from mxnorm_spark.cli.config import SparkSettings
        from mxnorm_spark.ml.estimator import MXNormModel
        from mxnorm_spark.ml.keyed import KeyedMXNormModel

        clock = BatchClock(origin=args.origin, period=args.period)
        with JobSession(SparkSettings(), "mxnorm-feast-views") as spark:
            keyed = os.path.isdir(os.path.join(args.model, "keyed"))
            model: Any = (KeyedMXNormModel if keyed else MXNormModel).load(args.model)
            rows = spark.read.parquet(args.rows) if args.rows else None
            entity = args.entity_cols.split(",") if args.entity_cols else None
            spec = publish_model(
                model,
                args.repo,
                clock=clock,
                name=args.name,
                rows=rows,
                entity_cols=entity,
                offline=args.offline,
            )
    print(f"Feast repo written to {args.repo}: views {spec.name}_state", end="")
    print(f", {spec.name}_key_state" if spec.keyed else "", end="")
    print(f", {spec.name}_rows" if spec.rows_path else "", end="")
    print(f" and the on-demand view {spec.name}; next: feast -c {args.repo} apply")
    return 0
