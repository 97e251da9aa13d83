"""Event-time batches against micro-batch batches: time per micro-batch, one process.

    python -m bench.event_time                 # 1k and 100k rows per micro-batch
    python -m bench.event_time --full          # and 1M (not for CI)
    python -m bench.event_time --kernel-only   # the exact partials against float moments

Each micro-batch is one Parquet file of ``rows`` rows and 8 double features, handed to
``MXNormStream.foreach_batch`` as Spark would (``spark.read.parquet``): the micro-batch
stream (``apply_at="before"``, its default path: small batches on the driver) and the
event-time stream with a ``day`` column whose micro-batch ``k`` holds days ``k .. k+o-1``
and lateness ``o - 1``, so ``o`` batches (1 to 3) stay open and one folds per micro-batch.
The modes run interleaved, micro-batch by micro-batch, so a change of machine load hits
both; the figure is the median over the micro-batches after the warm-up, and the ratio
is event-time over micro-batch mode.

``--kernel-only`` times the numpy work alone: :func:`exact_partials` (exact, order
independent) against ``Moments.from_array`` (float two-pass, what micro-batch mode folds)
on the same array, per group count (rows of the groups interleaved, as in the stream
bench). It counts this process's CPU time (``time.process_time``, best of 5): on a shared,
loaded machine wall time mostly measures the other processes.
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
from typing import Any

import numpy as np

FEATURES = 8
# rows per micro-batch -> (micro-batches, warm-up micro-batches left out of the median)
SIZES = {1_000: (12, 3), 100_000: (6, 2), 1_000_000: (4, 1)}


def write_batches(root: Path, rows: int, batches: int, open_batches: int) -> list[Path]:
    import pandas as pd

    rng = np.random.default_rng(rows + open_batches)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(batches):
        x = rng.normal(5.0, 2.0, (rows, FEATURES))
        df = pd.DataFrame(x, columns=[f"f{j}" for j in range(FEATURES)])
        df["day"] = k + (np.arange(rows) % open_batches)
        path = root / f"b{k:03d}.parquet"
        df.to_parquet(path, index=False)
        paths.append(path)
    return paths


def time_streams(spark: Any, rows: int, open_counts: list[int]) -> dict[str, Any]:
    from mxnorm_spark.core.event_time import EventTime
    from mxnorm_spark.core.state import StateOptions
    from mxnorm_spark.streaming.updater import MXNormStream

    batches, warm = SIZES[rows]
    root = Path(tempfile.mkdtemp(prefix="mx_event_bench_"))
    cols = [f"f{j}" for j in range(FEATURES)]
    try:
        inputs = {o: write_batches(root / f"in{o}", rows, batches, o) for o in open_counts}
        streams: dict[str, tuple[Any, list[Path]]] = {}
        streams["micro-batch"] = (
            MXNormStream(
                spark, str(root / "mb_state"), cols=cols, output=str(root / "mb_out"),
                apply_at="before", options=StateOptions(alpha=0.1), progress=None,
            ),
            inputs[open_counts[0]],
        )  # fmt: skip
        for o in open_counts:
            spec = EventTime(batch_col="day", lateness=o - 1)
            stream = MXNormStream(
                spark, str(root / f"et{o}_state"), cols=cols, output=str(root / f"et{o}_out"),
                apply_at="before", options=StateOptions(alpha=0.1), progress=None,
                event_time=spec,
            )  # fmt: skip
            streams[f"event-time, {o} open"] = (stream, inputs[o])
        seconds: dict[str, list[float]] = {name: [] for name in streams}
        for k in range(batches):
            for name, (stream, paths) in streams.items():
                df = spark.read.parquet(str(paths[k]))
                t0 = time.perf_counter()
                stream.foreach_batch(df, k)
                seconds[name].append(time.perf_counter() - t0)
        medians = {name: statistics.median(s[warm:]) for name, s in seconds.items()}
        base = medians["micro-batch"]
        return {
            "rows": rows,
            "median_s": medians,
            "ratio": {name: m / base for name, m in medians.items()},
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def time_kernel(rows: int, groups: int, repeats: int = 5) -> dict[str, float]:
    from mxnorm_spark.core.moments import Moments
    from mxnorm_spark.core.open_batches import exact_partials

    rng = np.random.default_rng(1)
    x = rng.normal(5.0, 2.0, (rows, FEATURES))
    codes = np.arange(rows) % groups

    def best(run: Any) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.process_time()
            run()
            times.append(time.process_time() - t0)
        return min(times)

    exact = best(lambda: exact_partials(x, codes, groups))
    floats = best(lambda: [Moments.from_array(x[codes == g]) for g in range(groups)])
    return {"exact_s": exact, "float_s": floats, "ratio": exact / floats}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also 1M rows per micro-batch")
    parser.add_argument("--kernel-only", action="store_true", help="numpy kernels only")
    parser.add_argument("--no-kernel", action="store_true", help="streams only")
    parser.add_argument("--open", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args(argv)
    sizes = [1_000, 100_000, 1_000_000] if args.full else [1_000, 100_000]
    print(f"load average {os.getloadavg()}", flush=True)
    for rows in [] if args.no_kernel else sizes:
        for groups in args.open:
            k = time_kernel(rows, groups)
            print(
                f"kernel {rows:>9,} rows x {FEATURES}, {groups} batch(es): exact "
                f"{k['exact_s'] * 1e3:8.1f} ms CPU, float {k['float_s'] * 1e3:7.1f} ms "
                f"({k['ratio']:.1f}x)",
                flush=True,
            )
    if args.kernel_only:
        return 0
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.adaptive.enabled", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    for rows in sizes:
        result = time_streams(spark, rows, args.open)
        for name, median in result["median_s"].items():
            print(
                f"stream {rows:>9,} rows x {FEATURES}: {name:<22} {median:6.3f} s per "
                f"micro-batch ({result['ratio'][name]:.2f}x)",
                flush=True,
            )
    print(f"load average {os.getloadavg()}", flush=True)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
