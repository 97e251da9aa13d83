"""Soak: a long file stream and a long keyed stream, watched for drift (not a test).

    nice .venv/bin/python -m bench.soak [--batches 2000] [--keyed-batches 500] [--rows 200]
        [--only plain|keyed] [--out DIR]
    .venv/bin/python -m bench.soak --report-from DIR/samples-plain.csv DIR/samples-keyed.csv

Writes ``--batches`` small Parquet files and streams them one per micro-batch
(available-now, ``retention=10``), then ``--keyed-batches`` through a keyed stream (50
keys). After every micro-batch it samples the batch's duration (the stream's own report),
the driver's RSS, the JVM heap in use (after the batch, no forced GC; every 50th batch also
after a full GC: what is retained), the wall time since the last sample and the number of
files under the state directory (and, apart, under Spark's checkpoint, which Spark prunes
itself: ``spark.sql.streaming.minBatchesToRetain``, 100), with the machine's one-minute
load average beside them. Writes ``bench/soak/soak.png`` (one panel per measure, per
stream), the samples as ``bench/soak/samples-<stream>.csv`` (a line per micro-batch, as it
comes) and ``bench/soak/RESULTS.md`` with the
drift of each measure: the median of the last hundred batches against the first hundred
after a warm-up of ``--warmup`` of the planned run (5%: 100 batches of 2,000, 25 of 500; a
run cut short keeps the warm-up of its plan), so that
the JVM's code generation and JIT and the first compactions are behind it. The target is
flat: less than 10% drift. On a shared machine latency follows the load: the load column
tells a slower machine from a slower stream.
"""

from __future__ import annotations

import argparse
import os
import shutil
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

    def __init__(self, spark: Any, state_dir: Path, checkpoint: Path, log: Path) -> None:
        import psutil

        self.proc = psutil.Process()
        self.runtime = spark._jvm.java.lang.Runtime.getRuntime()  # classic only: a bench
        self.state_dir = state_dir
        self.checkpoint = checkpoint
        self.log = log.open("w")  # a sample a line as it comes: a run cut short keeps them
        self.log.write(CSV_HEADER + "\n")
        self.rows: list[tuple[float, ...]] = []
        self.t0 = time.perf_counter()

    def __call__(self, report: Any) -> None:
        heap = (self.runtime.totalMemory() - self.runtime.freeMemory()) / 2**20
        rss = self.proc.memory_info().rss / 2**20
        files = count_files(self.state_dir)
        history = count_files(self.state_dir / "_history")
        self.rows.append((report.batch_id, report.seconds, rss, heap, files,
                          count_files(self.checkpoint), os.getloadavg()[0], history,
                          time.perf_counter() - self.t0,
                          self._live_heap(report.batch_id)))  # fmt: skip
        self.log.write(",".join(f"{v:.6g}" for v in self.rows[-1]) + "\n")
        self.log.flush()
        if report.batch_id % 100 == 0:
            elapsed = time.perf_counter() - self.t0
            print(f"[soak] {self.state_dir.name} batch {report.batch_id}: "
                  f"{report.seconds:.3f} s, rss {rss:.0f} MiB, heap {heap:.0f} MiB, "
                  f"{files} files ({history} history), load {self.rows[-1][6]:.2f}, "
                  f"{elapsed:.0f} s", flush=True)  # fmt: skip

    def _live_heap(self, batch_id: int) -> float:
        """Every 50th batch, the heap in use after a full GC (what is retained); else NaN."""
        if batch_id % 50 != 49:
            return float("nan")
        self.runtime.gc()
        return float(self.runtime.totalMemory() - self.runtime.freeMemory()) / 2**20


CSV_HEADER = ("batch_id,seconds,rss_mib,heap_mib,state_files,checkpoint_files,load1,"
              "history_files,elapsed_s,live_heap_mib")  # fmt: skip


def run_stream(
    spark: Any, work: Path, name: str, batches: int, rows: int, *, keyed: bool, out: Path
) -> Any:
    from mxnorm_spark.core.state import StateOptions
    from mxnorm_spark.store import StateStore
    from mxnorm_spark.streaming.keyed import KeyOptions
    from mxnorm_spark.streaming.updater import MXNormStream

    inp = work / f"{name}-in"
    write_files(inp, batches, rows, keys=50, seed=7)
    state = work / f"{name}-state"
    checkpoint = work / f"{name}-chk"
    out.mkdir(parents=True, exist_ok=True)
    sampler = Sampler(spark, state, checkpoint, out / f"samples-{name}.csv")
    stream = MXNormStream(
        spark, StateStore(str(state), retention=10), cols=FEATURES,
        output=str(work / f"{name}-out"), options=StateOptions(alpha=0.05), progress=sampler,
        keys=KeyOptions(("k",), evict_after=100) if keyed else None,
    )  # fmt: skip
    schema = spark.read.parquet(str(inp)).schema
    df = spark.readStream.schema(schema).option("maxFilesPerTrigger", "1").parquet(str(inp))
    stream.run(df, str(checkpoint))
    return np.array(sampler.rows, dtype=np.float64)


def warmup(n: int, share: float) -> int:
    """Batches left out at the start: ``share`` of the run, at least ten."""
    return max(10, round(n * share))


def window(n: int, skip: int) -> int:
    """Batches compared at each end: a hundred, fewer for a short run (no overlap)."""
    return max(1, min(100, (n - skip) // 2))


def drift(values: np.ndarray, skip: int) -> tuple[float, float, float]:
    """Median of the first window (after ``skip`` of warm-up) and of the last; the drift."""
    w = window(len(values), skip)
    first = float(np.nanmedian(values[skip : skip + w]))  # NaN: a batch not sampled
    last = float(np.nanmedian(values[-w:]))
    return first, last, (last - first) / first if first else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--keyed-batches", type=int, default=500)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--warmup",
        type=float,
        default=0.05,
        help="share of each run left out at the start (at least ten batches)",
    )
    parser.add_argument("--only", choices=["plain", "keyed"], help="run one of the streams")
    parser.add_argument(
        "--report-from",
        type=Path,
        nargs="+",
        metavar="CSV",
        help="no run: report the samples-<stream>.csv files of earlier runs",
    )
    parser.add_argument("--command", help="with --report-from: the command of those runs")
    args = parser.parse_args(argv)
    # The warm-up of each stream: a share of the planned run, also for a run cut short.
    skips = {
        "file": warmup(args.batches, args.warmup),
        "keyed": warmup(args.keyed_batches, args.warmup),
    }
    if args.report_from:
        results = {}
        for path in args.report_from:
            rows = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
            kind = "keyed stream" if "keyed" in path.name else "file stream"
            results[f"{kind}, {len(rows)} batches"] = rows
        report(results, args.out, args.command or "python -m bench.soak", skips)
        return 0

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master("local[2]").appName("mxnorm-soak")
        .config("spark.sql.shuffle.partitions", "4").config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1").config("spark.driver.memory", "1g")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )  # fmt: skip
    spark.sparkContext.setLogLevel("ERROR")
    work = Path(tempfile.mkdtemp(prefix="mxnorm-soak-"))
    command = " ".join(["python -m bench.soak", *(argv or sys.argv[1:])])
    results: dict[str, np.ndarray] = {}
    try:  # the report is rewritten after each stream: a long run stopped early keeps one
        if args.only != "keyed":
            results[f"file stream, {args.batches} batches"] = run_stream(
                spark, work, "plain", args.batches, args.rows, keyed=False, out=args.out
            )
            report(results, args.out, command, skips)
        if args.only != "plain":
            results[f"keyed stream, {args.keyed_batches} batches"] = run_stream(
                spark, work, "keyed", args.keyed_batches, args.rows, keyed=True, out=args.out
            )
            report(results, args.out, command, skips)
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


MEASURES = [
    (1, "latency per micro-batch (s)"),
    (2, "driver RSS (MiB)"),
    (3, "JVM heap in use (MiB)"),
    (4, "files under the state directory"),
    (5, "files under the Spark checkpoint"),
    (6, "load average (1 min)"),
]


def report(results: dict[str, np.ndarray], out: Path, command: str, skips: dict[str, int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    measures = list(MEASURES)
    if all(rows.shape[1] > 8 for rows in results.values()):
        # The wall time from one batch's sample to the next: its own work and Spark's
        # trigger (planning, the source's listing, the offset and commit logs).
        results = {
            k: np.column_stack([v, np.diff(v[:, 8], prepend=0.0)]) for k, v in results.items()
        }
        wall = next(iter(results.values())).shape[1] - 1
        measures.insert(1, (wall, "wall time between micro-batches (s)"))
    if all(rows.shape[1] > 9 for rows in results.values()):
        measures.insert(4, (9, "JVM heap after a full GC, every 50th batch (MiB)"))
    fig, axes = plt.subplots(len(measures), len(results), figsize=(6 * len(results), 12),
                             squeeze=False, sharex="col")  # fmt: skip
    lines = ["# Soak", "", f"Command: `{command}` (local[2], shared 2-core machine).", "",
             "Median of the first hundred micro-batches after a warm-up (`--warmup` of the "
             "planned run, 5% by default, at least ten: the warm-up column) against the last "
             "hundred (fewer in a "
             "short run: the window column); target: less than 10% drift. The load average "
             "is the machine's, shared with other jobs.", "",
             "| stream | measure | warm-up | window | first | last | drift |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for col, (name, rows) in enumerate(results.items()):
        skip = skips[name.split()[0]]
        for r, (idx, label) in enumerate(measures):
            ax = axes[r][col]
            some = ~np.isnan(rows[:, idx])
            ax.plot(rows[some, 0], rows[some, idx], lw=0.6, marker="." if idx == 9 else None)
            ax.axvline(rows[min(skip, len(rows) - 1), 0], color="grey", lw=0.5, ls=":")
            ax.set_ylabel(label)
            if r == 0:
                ax.set_title(name)
            first, last, d = drift(rows[:, idx], skip)
            verdict = "flat" if abs(d) < 0.10 else "DRIFT"
            lines.append(f"| {name} | {label} | {skip} | {window(len(rows), skip)} | "
                         f"{first:.4g} | {last:.4g} | {d:+.1%} ({verdict}) |")  # fmt: skip
        axes[-1][col].set_xlabel("micro-batch")
    fig.tight_layout()
    fig.savefig(out / "soak.png", dpi=90)
    (out / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
