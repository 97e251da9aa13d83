"""Soak: a long file stream and a long keyed stream, watched for drift (not a test).

    nice .venv/bin/python -m bench.soak [--batches 2000] [--keyed-batches 500] [--rows 200]

Writes ``--batches`` small Parquet files and streams them one per micro-batch
(available-now, ``retention=10``), then ``--keyed-batches`` through a keyed stream (50
keys). After every micro-batch it samples the batch's duration (the stream's own report),
the driver's RSS, the JVM heap in use (after the batch, no forced GC) and the number of
files under the state directory. Writes ``bench/soak/soak.png`` (one panel per measure,
per stream) and ``bench/soak/RESULTS.md`` with the drift of each measure: the median of
the last hundred batches against the first hundred (the first ten left out as warm-up).
The target is flat: less than 10% drift.
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
import pyarrow as pa
import pyarrow.parquet as pq

OUT = Path(__file__).resolve().parent / "soak"
FEATURES = ["a", "b", "c"]


def write_files(directory: Path, n: int, rows: int, keys: int, seed: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        t = pa.table(
            {
                "id": np.arange(i * rows, (i + 1) * rows, dtype=np.int64),
                "k": rng.integers(0, keys, rows).astype(np.int64),
                "a": rng.normal(0.0, 1.0, rows),
                "b": 1e9 + rng.normal(0.0, 1.0, rows),
                "c": rng.exponential(2.0, rows),
            }
        )
        path = directory / f"f{i:06d}.parquet"
        pq.write_table(t, path)
        os.utime(path, (1_000_000_000 + i, 1_000_000_000 + i))


def count_files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


class Sampler:
    """The stream's progress callback: one sample per micro-batch."""

    def __init__(self, spark: Any, state_dir: Path) -> None:
        import psutil

        self.proc = psutil.Process()
        self.runtime = spark._jvm.java.lang.Runtime.getRuntime()  # classic only: a bench
        self.state_dir = state_dir
        self.rows: list[tuple[int, float, float, float, int]] = []
        self.t0 = time.perf_counter()

    def __call__(self, report: Any) -> None:
        heap = (self.runtime.totalMemory() - self.runtime.freeMemory()) / 2**20
        rss = self.proc.memory_info().rss / 2**20
        self.rows.append(
            (report.batch_id, report.seconds, rss, heap, count_files(self.state_dir))
        )
        if report.batch_id % 100 == 0:
            elapsed = time.perf_counter() - self.t0
            print(f"[soak] {self.state_dir.name} batch {report.batch_id}: "
                  f"{report.seconds:.3f} s, rss {rss:.0f} MiB, heap {heap:.0f} MiB, "
                  f"{self.rows[-1][4]} files, {elapsed:.0f} s", flush=True)  # fmt: skip


def run_stream(spark: Any, work: Path, name: str, batches: int, rows: int, *, keyed: bool) -> Any:
    from mxnorm_spark.core.state import StateOptions
    from mxnorm_spark.store import StateStore
    from mxnorm_spark.streaming.keyed import KeyOptions
    from mxnorm_spark.streaming.updater import MXNormStream

    inp = work / f"{name}-in"
    write_files(inp, batches, rows, keys=50, seed=7)
    state = work / f"{name}-state"
    sampler = Sampler(spark, state)
    stream = MXNormStream(
        spark, StateStore(str(state), retention=10), cols=FEATURES,
        output=str(work / f"{name}-out"), options=StateOptions(alpha=0.05), progress=sampler,
        keys=KeyOptions(("k",), evict_after=100) if keyed else None,
    )  # fmt: skip
    schema = spark.read.parquet(str(inp)).schema
    df = spark.readStream.schema(schema).option("maxFilesPerTrigger", "1").parquet(str(inp))
    stream.run(df, str(work / f"{name}-chk"))
    return np.array(sampler.rows, dtype=np.float64)


def window(n: int) -> int:
    """Batches compared at each end: a hundred, fewer for a short run (no overlap)."""
    return max(1, min(100, (n - 10) // 2))


def drift(values: np.ndarray) -> tuple[float, float, float]:
    """Median of the first window (after ten of warm-up) and of the last one; the drift."""
    w = window(len(values))
    first = float(statistics.median(values[10 : 10 + w]))
    last = float(statistics.median(values[-w:]))
    return first, last, (last - first) / first if first else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--keyed-batches", type=int, default=500)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master("local[2]").appName("mxnorm-soak")
        .config("spark.sql.shuffle.partitions", "4").config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1").config("spark.driver.memory", "1g")
        .getOrCreate()
    )  # fmt: skip
    spark.sparkContext.setLogLevel("ERROR")
    work = Path(tempfile.mkdtemp(prefix="mxnorm-soak-"))
    command = " ".join(["python -m bench.soak", *(argv or sys.argv[1:])])
    results: dict[str, np.ndarray] = {}
    try:  # the report is rewritten after each stream: a long run stopped early keeps one
        results[f"file stream, {args.batches} batches"] = run_stream(
            spark, work, "plain", args.batches, args.rows, keyed=False
        )
        report(results, args.out, command)
        results[f"keyed stream, {args.keyed_batches} batches"] = run_stream(
            spark, work, "keyed", args.keyed_batches, args.rows, keyed=True
        )
        report(results, args.out, command)
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


MEASURES = [
    (1, "latency per micro-batch (s)"),
    (2, "driver RSS (MiB)"),
    (3, "JVM heap in use (MiB)"),
    (4, "files under the state directory"),
]


def report(results: dict[str, np.ndarray], out: Path, command: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(len(MEASURES), len(results), figsize=(6 * len(results), 10),
                             squeeze=False, sharex="col")  # fmt: skip
    lines = ["# Soak", "", f"Command: `{command}` (local[2], shared 2-core machine).", "",
             "Median of the first hundred micro-batches (after ten of warm-up) against the "
             "last hundred (fewer in a short run: the window column); target: less than "
             "10% drift.", "",
             "| stream | measure | window | first | last | drift |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for col, (name, rows) in enumerate(results.items()):
        for r, (idx, label) in enumerate(MEASURES):
            ax = axes[r][col]
            ax.plot(rows[:, 0], rows[:, idx], lw=0.6)
            ax.set_ylabel(label)
            if r == 0:
                ax.set_title(name)
            first, last, d = drift(rows[:, idx])
            verdict = "flat" if abs(d) < 0.10 else "DRIFT"
            lines.append(f"| {name} | {label} | {window(len(rows))} | {first:.4g} | "
                         f"{last:.4g} | {d:+.1%} ({verdict}) |")  # fmt: skip
        axes[-1][col].set_xlabel("micro-batch")
    fig.tight_layout()
    fig.savefig(out / "soak.png", dpi=90)
    (out / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
