"""Per-key MXNorm at scale, beside plain Spark: ``python -m bench.keyed_scale``.

Two comparisons, each timed in one process with the cases interleaved (``--reps``
rounds), ratios pair by pair:

* **backfill**: ``--rows`` (10M) x ``--features`` (8) columns of ``1e9 + N(0, 1)``, ``--keys``
  (1M, uniform) and ``--batches`` (10) batch values, read from Parquet:
  ``fit_keyed(...).states`` (exact moments per (key, batch) and the fold of every key) to a
  noop sink, against ``groupBy(key, batch).agg(avg, var_pop)`` (Spark's moments, no fold).
  Target: within 2x.
* **stream**: micro-batches of ``--stream-rows`` (1M) rows, every key of ``--keys`` once
  per micro-batch, through ``MXNormStream(keys=KeyOptions(...))`` (global and per-key
  state, snapshot, normalized Parquet output), against a plain ``foreachBatch`` body that
  joins the micro-batch with a ``--keys``-row table on the key and writes Parquet. Both
  are called per micro-batch on the same DataFrames; the first micro-batch (which creates
  every key) is reported apart. Target: within 3x.

With ``--memory-keys 100000,1000000`` it also runs a backfill (``--memory-rows``, 2M) and
two stream micro-batches at each key count (same rows) in a fresh process each and reports
the peak RSS of the Python driver and of the JVM: the driver holds no per-key data, so
its memory must not grow with the number of keys. Writes nothing to the repository;
prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _session(partitions: int, driver_memory: str) -> Any:
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (
        SparkSession.builder.master(os.environ.get("MXBENCH_MASTER", "local[2]"))
        .appName("mxnorm-bench-keyed-scale")
        .config("spark.sql.shuffle.partitions", str(partitions))
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", driver_memory)
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _generate(spark: Any, path: str, args: argparse.Namespace) -> None:
    from pyspark.sql import functions as F

    rows, keys, batches, features = args.rows, args.keys, args.batches, args.features
    df = spark.range(rows).select(
        F.pmod(F.xxhash64("id"), F.lit(keys)).alias("key"),
        (F.col("id") % batches).cast("int").alias("day"),
        *((F.lit(1e9) + F.randn(seed=j)).alias(f"f{j}") for j in range(features)),
    )
    df.write.mode("overwrite").parquet(path)


def _stream_batches(spark: Any, path: str, args: argparse.Namespace, n: int) -> None:
    """``n`` micro-batch files of ``--stream-rows`` rows, the keys cycling through ``--keys``."""
    from pyspark.sql import functions as F

    rows, keys, features = args.stream_rows, args.keys, args.features
    for b in range(n):
        df = spark.range(rows).select(
            (F.col("id") % keys).alias("key"),
            *((F.lit(1e9) + F.randn(seed=100 * b + j)).alias(f"f{j}") for j in range(features)),
        )
        df.write.mode("overwrite").parquet(f"{path}/b{b}")


def _timed(run: Any) -> float:
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def _backfill(spark: Any, data: str, features: list[str], reps: int) -> dict[str, list[float]]:
    from pyspark.sql import functions as F

    from mxnorm_spark.keyed.backfill import fit_keyed

    df = spark.read.parquet(data)
    aggs = [F.avg(c) for c in features] + [F.var_pop(c) for c in features]

    def plain() -> None:
        df.groupBy("key", "day").agg(*aggs).write.format("noop").mode("overwrite").save()

    def ours() -> None:
        model = fit_keyed(df, features, ["key"], "day", min_key_rows=1)
        model.states.write.format("noop").mode("overwrite").save()

    times: dict[str, list[float]] = {"groupBy.agg": [], "fit_keyed": []}
    for rep in range(reps):
        times["groupBy.agg"].append(_timed(plain))
        times["fit_keyed"].append(_timed(ours))
        _progress(f"backfill round {rep}", times, "fit_keyed", "groupBy.agg")
    return times


def _progress(what: str, times: dict[str, list[float]], ours: str, base: str) -> None:
    """One line per measurement as it is taken (a long run shows its figures as it goes)."""
    a, b = times[ours][-1], times[base][-1]
    print(
        f"{what}: {base} {b:.1f} s, {ours} {a:.1f} s, {a / b:.2f}x (load {os.getloadavg()[0]:.1f})",
        flush=True,
    )


def _stream(
    spark: Any, work: str, features: list[str], keys: int, n: int
) -> dict[str, list[float]]:
    batches = f"{work}/batches"
    from pyspark.sql import functions as F

    from mxnorm_spark.core.state import StateOptions
    from mxnorm_spark.streaming.keyed import KeyOptions
    from mxnorm_spark.streaming.updater import MXNormStream

    table = spark.range(keys).select(
        F.col("id").alias("key"),
        *(F.lit(float(j)).alias(f"t{j}") for j in range(len(features))),
    )
    table.write.mode("overwrite").parquet(f"{work}/table")
    stream = MXNormStream(
        spark,
        f"{work}/state",
        cols=features,
        output=f"{work}/out",
        options=StateOptions(alpha=0.1),
        progress=None,
        keys=KeyOptions(("key",)),
    )

    def plain(df: Any, b: int) -> None:
        lookup = spark.read.parquet(f"{work}/table")
        df.join(lookup, "key", "left").write.mode("overwrite").parquet(f"{work}/plain/b{b}")

    times: dict[str, list[float]] = {"plain": [], "mxnorm": []}
    for b in range(n):
        df = spark.read.parquet(f"{batches}/b{b}")
        times["plain"].append(_timed(lambda: plain(df, b)))  # noqa: B023
        times["mxnorm"].append(_timed(lambda: stream.foreach_batch(df, b)))  # noqa: B023
        _progress(f"stream micro-batch {b}", times, "mxnorm", "plain")
    return times


class _PeakRss:
    """Peak RSS of this process and of its child JVM, sampled every 0.1 s."""

    def __init__(self) -> None:
        import psutil

        self.me = psutil.Process()
        self.peak = {"python": 0, "jvm": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.peak["python"] = max(self.peak["python"], self.me.memory_info().rss)
            for child in self.me.children(recursive=True):
                try:
                    if "java" in child.name():
                        self.peak["jvm"] = max(self.peak["jvm"], child.memory_info().rss)
                except Exception:  # a worker that just ended
                    continue

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {k: v / 2**20 for k, v in self.peak.items()}


def _memory_child(args: argparse.Namespace) -> int:
    """One fit and one stream micro-batch at ``--keys``; prints the peak RSS as JSON."""
    rss = _PeakRss()
    spark = _session(args.partitions, args.driver_memory)
    work = tempfile.mkdtemp(prefix="mxbench-keyed-mem-")
    features = [f"f{j}" for j in range(args.features)]
    try:
        _generate(spark, f"{work}/data", args)
        _stream_batches(spark, f"{work}/batches", args, 2)
        base = rss.peak.copy()
        _backfill(spark, f"{work}/data", features, 1)
        _stream(spark, work, features, args.keys, 2)
        peak = rss.stop()
        print(json.dumps({"keys": args.keys, "after_data": base, "peak": peak}))
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _memory(args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    for keys in (int(k) for k in args.memory_keys.split(",")):
        cmd = [
            sys.executable, "-m", "bench.keyed_scale", "--memory-child", "--keys", str(keys),
            "--rows", str(args.memory_rows), "--stream-rows", str(args.stream_rows),
            "--batches", str(args.batches), "--features", str(args.features),
            "--partitions", str(args.partitions), "--driver-memory", args.driver_memory,
        ]  # fmt: skip
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
        out.append(json.loads(r.stdout.strip().splitlines()[-1]))
    return out


def _ratio_line(name: str, times: dict[str, list[float]], ours: str, base: str, part: slice) -> str:
    a, b = times[ours][part], times[base][part]
    ratios = [x / y for x, y in zip(a, b, strict=True)]
    return (
        f"| {name} | {statistics.median(b):.1f} | {statistics.median(a):.1f} | "
        f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |"
    )


def stream_worker(args: argparse.Namespace, spec_path: str, result_path: str) -> int:
    """``--worker SPEC RESULT``: the stream comparison alone, for ``bench/run.py``; the
    spec sets ``keys``, ``stream_rows`` and ``stream_batches``."""
    for name, value in json.loads(Path(spec_path).read_text()).items():
        setattr(args, name, value)
    spark = _session(args.partitions, args.driver_memory)
    work = tempfile.mkdtemp(prefix="mxbench-keyed-")
    try:
        _stream_batches(spark, f"{work}/batches", args, args.stream_batches)
        stream = _stream(spark, work, [f"f{j}" for j in range(args.features)], args.keys,
                         args.stream_batches)  # fmt: skip
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)
    result = {"keys": args.keys, "rows": args.stream_rows, "features": args.features, **stream}
    Path(result_path).write_text(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--keys", type=int, default=1_000_000)
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--features", type=int, default=8)
    p.add_argument("--stream-rows", type=int, default=1_000_000)
    p.add_argument("--stream-batches", type=int, default=4)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--partitions", type=int, default=16)
    p.add_argument("--driver-memory", default="6g")
    p.add_argument("--memory-keys", default="", help="e.g. 100000,1000000")
    p.add_argument("--memory-rows", type=int, default=2_000_000, help="backfill rows of those runs")
    p.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--skip-backfill", action="store_true", help="the stream comparison only")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)  # SPEC RESULT (bench/run.py)
    args = p.parse_args(argv)
    if args.memory_child:
        return _memory_child(args)
    if args.worker:
        return stream_worker(args, *args.worker)

    load = os.getloadavg()[0]
    spark = _session(args.partitions, args.driver_memory)
    work = tempfile.mkdtemp(prefix="mxbench-keyed-")
    features = [f"f{j}" for j in range(args.features)]
    try:
        backfill: dict[str, list[float]] = {"groupBy.agg": [], "fit_keyed": []}
        if not args.skip_backfill:
            _generate(spark, f"{work}/data", args)
            backfill = _backfill(spark, f"{work}/data", features, args.reps)
        n_stream = args.stream_batches
        _stream_batches(spark, f"{work}/batches", args, n_stream)
        stream = _stream(spark, work, features, args.keys, n_stream)
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average (1 min) at start {load:.2f}, at end {os.getloadavg()[0]:.2f}")
    print(f"backfill: {args.rows:,} rows x {args.features} features, {args.keys:,} keys, "
          f"{args.batches} batches; stream: {args.stream_rows:,}-row micro-batches over "
          f"{args.keys:,} keys; local[2], {args.partitions} shuffle partitions")  # fmt: skip
    print("\n| case | plain median s | ours median s | ours / plain (min-max) |")
    print("|---|---:|---:|---:|")
    lines = [
        ("backfill: fit_keyed vs groupBy.agg", backfill, "fit_keyed", "groupBy.agg", slice(None)),
        ("stream, first micro-batch (creates every key)", stream, "mxnorm", "plain", slice(0, 1)),
        ("stream, later micro-batches", stream, "mxnorm", "plain", slice(1, None)),
    ]
    for line in lines:
        if line[1][line[2]][line[4]]:
            print(_ratio_line(*line))
    print(f"\nraw seconds: {json.dumps({'backfill': backfill, 'stream': stream})}")
    if args.memory_keys:
        print("\n| keys | driver Python peak MiB | JVM peak MiB |")
        print("|---:|---:|---:|")
        for m in _memory(args):
            print(f"| {m['keys']:,} | {m['peak']['python']:.0f} | {m['peak']['jvm']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
