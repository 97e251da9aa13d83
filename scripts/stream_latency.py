"""Per-micro-batch latency of an MXNorm file stream (median over batches, warm-up excluded).

    .venv/bin/python scripts/stream_latency.py --rows 1000 100000 --batches 8

For each row count: writes ``--batches + 1`` parquet files of that many rows (three
features), streams them with ``maxFilesPerTrigger=1`` (available-now), and reports the
duration of each micro-batch as Spark's query progress measures it (``triggerExecution``:
planning the batch plus the whole ``foreachBatch`` call: read + count, moments, state
commit, normalization + write), the same clock on classic Spark and on Spark Connect
(``--remote sc://HOST:PORT``). The first batch (JIT and Python worker start-up) is
reported apart and left out of the median.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mxnorm_spark.cli.demo import write_demo_files
from mxnorm_spark.cli.session import build_session
from mxnorm_spark.streaming.sources import FileSource
from mxnorm_spark.streaming.updater import MXNormStream

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

FEATURES = ["temperature", "pressure", "latency_ms"]


def measure(spark: SparkSession, rows: int, batches: int, workdir: Path) -> list[float]:
    root = workdir / f"rows-{rows}"
    shutil.rmtree(root, ignore_errors=True)
    write_demo_files(root / "input", range(batches + 1), rows)
    source = FileSource(str(root / "input"), "parquet", max_files_per_trigger=1)
    stream = MXNormStream(
        spark,
        str(root / "state"),
        cols=FEATURES,
        output=str(root / "output"),
        progress=None,
    )
    df = source.read(spark, FEATURES)
    query = stream.start(df, str(root / "checkpoint"), available_now=True, source=source)
    stream.await_termination(query)
    progress = [p for p in query.recentProgress if _field(p, "numInputRows")]
    assert [_field(p, "numInputRows") for p in progress] == [rows] * (batches + 1), progress
    return [_field(p, "durationMs")["triggerExecution"] / 1000 for p in progress]


def _field(progress: Any, name: str) -> Any:
    # A progress is a dict-like object on classic Spark and has attributes on Connect.
    value = getattr(progress, name, None)
    return progress[name] if value is None else value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 100_000])
    parser.add_argument("--batches", type=int, default=8, help="measured batches per size")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--remote", default=None, help="Spark Connect URL instead of --master")
    parser.add_argument("--workdir", default=None, help="(default: a temporary directory)")
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="mxnorm-latency-"))
    spark = build_session(
        "mxnorm-stream-latency",
        None if args.remote else args.master,
        {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"},
        log_level="ERROR",
        remote=args.remote,
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    where = f"remote={args.remote}" if args.remote else f"master={args.master}"
    print(f"{where} cpus={os.cpu_count()} load(1 min)={load:.1f}")
    try:
        for rows in args.rows:
            t0 = time.perf_counter()
            seconds = measure(spark, rows, args.batches, workdir)
            steady = seconds[1:]
            print(
                f"rows/batch={rows:>9,}  median={statistics.median(steady):.3f} s  "
                f"min={min(steady):.3f} s  max={max(steady):.3f} s  "
                f"first batch={seconds[0]:.3f} s  ({len(steady)} batches, "
                f"wall {time.perf_counter() - t0:.1f} s)",
                flush=True,
            )
    finally:
        spark.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
