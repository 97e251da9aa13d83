"""Where does the time of the ``arrow`` engine go? Writes ``bench/PROFILE.md``.

    .venv/bin/python -m bench.profile_arrow [--quick] [--reps 3] [--no-py-spy]

One session with the benchmark's Spark settings, on the wide16 input (5M x 16 doubles).
Each stage is timed alone (median of ``reps`` after a warm-up on one file):

- the floors: scanning the Parquet input into a noop sink; a ``mapInArrow`` that only
  receives the record batches (JVM -> Python transfer) and one that sends them back
  unchanged (the round trip every Arrow UDF pays);
- the moments pass and the normalization pass of each engine (``sql``, ``arrow``);
- the same numpy / pyarrow kernels the arrow engine runs, in this one process on arrays
  already in memory (the Python compute, without Spark);
- with py-spy (``pip install py-spy``), a sampling profile of the Python workers during
  the arrow moments and normalization passes: where their CPU time goes.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench.cases import SPARK_CONF, make_session
from bench.data import DATA_DIR, FULL, QUICK, ensure_dataset, parquet_files

BENCH_DIR = Path(__file__).resolve().parent


def _median_time(fn: Callable[[], Any], reps: int) -> tuple[float, float, float]:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), max(times)


def _receive_only(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    rows = 0
    for rb in batches:
        rows += rb.num_rows
    yield pa.record_batch({"rows": pa.array([rows], pa.int64())})


def _echo(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    yield from batches


def _daemon_pid() -> int | None:
    """The pyspark.daemon process under this driver's JVM (its workers are its children)."""
    for child in psutil.Process().children(recursive=True):
        try:
            if "pyspark.daemon" in " ".join(child.cmdline()):
                return int(child.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def _py_spy(action: Callable[[], Any], out: Path) -> list[str] | str:
    """Run ``action`` under py-spy attached to the Python workers; top frames by own time."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    pid = _daemon_pid()
    if not Path(exe).exists():
        return "py-spy not installed (pip install py-spy)"
    if pid is None:
        return "no pyspark.daemon process found"
    proc = subprocess.Popen(
        [
            exe,
            "record",
            "--pid",
            str(pid),
            "--subprocesses",
            "--format",
            "raw",
            "--rate",
            "200",
            "--output",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)  # py-spy attaches before the work starts
    action()
    time.sleep(0.5)
    proc.send_signal(2)  # SIGINT: py-spy writes its output and exits
    _, err = proc.communicate(timeout=60)
    if not out.exists():
        return f"py-spy failed: {err.strip()[-300:]}"
    own: collections.Counter[str] = collections.Counter()
    phase: collections.Counter[str] = collections.Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if "daemon.py" in frames[-1]:
            continue  # the daemon waiting for work, not a worker
        n = int(count)
        total += n
        own[_short(frames[-1])] += n
        phase[_phase(frames)] += n
    if total == 0:
        return "py-spy recorded no samples"
    by_phase = [f"{100 * n / total:5.1f}%  {name}" for name, n in phase.most_common()]
    by_frame = [f"{100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(12)]
    return [
        "by phase (innermost recognized frame):",
        *by_phase,
        "",
        "by frame (own time):",
        *by_frame,
    ]


def _phase(frames: list[str]) -> str:
    for f in reversed(frames):
        if "mxnorm_spark" in f:
            return "mxnorm_spark kernels (numpy / pyarrow.compute)"
        if "load_stream" in f:
            return "Arrow IPC read from the JVM (load_stream)"
        if "dump_stream" in f:
            return "Arrow IPC write to the JVM (dump_stream)"
    return "PySpark worker glue and the rest"


def _short(frame: str) -> str:
    # "function (path/to/file.py:123)" -> "function (file.py:123)"
    name, _, where = frame.partition(" (")
    return f"{name} ({Path(where.rstrip(')')).name})" if where else name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile_arrow", description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--no-py-spy", action="store_true")
    p.add_argument("--out", type=Path, default=BENCH_DIR / "PROFILE.md")
    args = p.parse_args(argv)

    from pyspark.sql import types as T

    from mxnorm_spark import MXNormState
    from mxnorm_spark.batch.aggregate import batch_moments
    from mxnorm_spark.batch.apply import normalize
    from mxnorm_spark.core.moments import Moments

    ds = (QUICK if args.quick else FULL)["wide16"]
    path = ensure_dataset(ds, DATA_DIR)
    spark = make_session("bench-profile-arrow")
    cols = ds.columns
    one_file = str(parquet_files(path)[0])

    def frame(src: str) -> Any:
        return spark.read.parquet(src)

    state_holder: dict[str, MXNormState] = {}

    def moments(engine: str, src: str) -> Callable[[], Any]:
        def run() -> None:
            m = batch_moments(frame(src), cols, engine=engine)
            state_holder["s"] = MXNormState.create(cols).update(m)

        return run

    def norm(engine: str, src: str) -> Callable[[], Any]:
        def run() -> None:
            out = normalize(frame(src), state_holder["s"], cols, engine=engine)
            out.write.format("noop").mode("overwrite").save()

        return run

    rows_schema = T.StructType([T.StructField("rows", T.LongType())])

    def scan(src: str) -> Callable[[], Any]:
        return lambda: frame(src).write.format("noop").mode("overwrite").save()

    def receive(src: str) -> Callable[[], Any]:
        return lambda: frame(src).mapInArrow(_receive_only, rows_schema).collect()

    def echo(src: str) -> Callable[[], Any]:
        return lambda: (
            frame(src)
            .mapInArrow(_echo, frame(src).schema)
            .write.format("noop")
            .mode("overwrite")
            .save()
        )

    stages: list[tuple[str, Callable[[str], Callable[[], Any]]]] = [
        ("scan Parquet -> noop (JVM only)", scan),
        ("mapInArrow receive only (JVM -> Python)", receive),
        ("mapInArrow echo -> noop (JVM -> Python -> JVM)", echo),
        ("moments, engine=sql", lambda s: moments("sql", s)),
        ("moments, engine=arrow", lambda s: moments("arrow", s)),
        ("normalize -> noop, engine=sql", lambda s: norm("sql", s)),
        ("normalize -> noop, engine=arrow", lambda s: norm("arrow", s)),
    ]
    timings: list[tuple[str, tuple[float, float, float]]] = []
    for name, make in stages:
        make(one_file)()  # warm-up on one file
        timings.append((name, _median_time(make(str(path)), args.reps)))
        print(f"{name}: {timings[-1][1][0]:.2f} s", flush=True)

    # The Python compute alone: the arrow engine's kernels on in-memory arrays, one process.
    table = pq.read_table(path)
    mat = np.vstack([table.column(c).to_numpy() for c in cols])
    chunk = 10_000  # spark.sql.execution.arrow.maxRecordsPerBatch default
    local: list[tuple[str, tuple[float, float, float]]] = []
    local.append(
        (
            "Moments.from_columns, whole matrix",
            _median_time(lambda: Moments.from_columns(mat), args.reps),
        )
    )

    def per_chunk() -> None:
        acc = Moments.empty(len(cols))
        for i in range(0, mat.shape[1], chunk):
            acc = acc.merge(Moments.from_columns(mat[:, i : i + chunk]))

    local.append(
        (f"Moments.from_columns + merge per {chunk}-row batch", _median_time(per_chunk, args.reps))
    )
    mean, scale = state_holder["s"].normalization_constants()
    arrays = [table.column(c).combine_chunks() for c in cols]

    def kernel() -> None:
        for j, a in enumerate(arrays):
            pc.divide(pc.subtract(a, mean[j]), scale[j])

    local.append(("pyarrow subtract/divide per column", _median_time(kernel, args.reps)))
    for name, t in local:
        print(f"{name}: {t[0]:.2f} s", flush=True)

    profile: list[str] | str = "skipped (--no-py-spy)"
    if not args.no_py_spy:
        with tempfile.TemporaryDirectory() as tmp:

            def both() -> None:
                moments("arrow", str(path))()
                norm("arrow", str(path))()

            profile = _py_spy(both, Path(tmp) / "raw.txt")
    spark.stop()

    lines = [
        "# Where the arrow engine's time goes",
        "",
        f"`python -m bench.profile_arrow{' --quick' if args.quick else ''}` on "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {ds.rows:,} rows x {ds.features} doubles "
        f"(wide16), {args.reps} repetitions after a warm-up, load average "
        f"{psutil.getloadavg()[0]:.1f} on {psutil.cpu_count()} cores. Spark settings as in "
        "RESULTS.md: " + ", ".join(f"`{k}={v}`" for k, v in SPARK_CONF.items()) + ".",
        "",
        "| stage (Spark, local[2]) | median s | min-max s |",
        "|---|---:|---:|",
        *[f"| {n} | {t[0]:.2f} | {t[1]:.2f}-{t[2]:.2f} |" for n, t in timings],
        "",
        "| the arrow engine's kernels in one process, data in memory, one core | median s |",
        "|---|---:|",
        *[f"| {n} | {t[0]:.2f} |" for n, t in local],
        "",
        "## py-spy: Python workers during the arrow moments + normalize passes",
        "",
        "Share of the workers' busy samples (the daemon's own loop excluded):",
        "",
    ]
    lines += ["    " + x for x in profile] if isinstance(profile, list) else [profile]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
