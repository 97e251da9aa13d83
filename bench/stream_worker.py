"""The streaming comparison, one implementation per fresh process.

    python -m bench.stream_worker SPEC.json RESULT.json
    python -m bench.stream_worker --compare [--rounds 2] [--rows 1000 100000 1000000]

``--compare`` runs plain, mxnorm, plain, mxnorm, ... (each in a fresh process, latency
streams only) and prints each median per micro-batch as it comes, with the load average.

``impl`` is ``plain`` (a ``foreachBatch`` that only writes each micro-batch to Parquet,
one directory per batch id, as an idempotent sink must) or ``mxnorm`` (the project's
streaming normalizer: moments, state update and durable commit, normalization, the same
kind of write). Each stream reads a directory of equally sized Parquet files with
``maxFilesPerTrigger=1`` and ``availableNow``, so every micro-batch is exactly one file.
Latency per micro-batch is Spark's own ``triggerExecution`` duration.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.cases import make_session
from bench.data import Dataset, ensure_dataset
from bench.memory import PeakMemory, Peaks

# (rows per micro-batch, files = micro-batches, warm-up batches excluded from the figures)
FULL_SIZES = [(1_000, 30, 5), (100_000, 6, 1), (1_000_000, 4, 1)]
QUICK_SIZES = [(1_000, 6, 2), (20_000, 4, 1)]


def stream_plan(
    quick: bool, data_dir: Path, throughput: Dataset | None, rows: list[int] | None = None
) -> dict[str, Any]:
    """Generate the stream inputs (once) and describe them for the workers."""
    latency = []
    for n, files, warm in QUICK_SIZES if quick else FULL_SIZES:
        if rows is not None and n not in rows:
            continue
        ds = Dataset(f"stream{n}", n * files, 16, vector=False, files=files)
        latency.append(
            {
                "rows": n,
                "warmup": warm,
                "dataset": asdict(ds),
                "path": str(ensure_dataset(ds, data_dir)),
            }
        )
    if throughput is None:
        return {"latency": latency}
    tp = {"dataset": asdict(throughput), "path": str(ensure_dataset(throughput, data_dir))}
    return {"latency": latency, "throughput": tp}


def _plain_sink(out: str) -> Any:
    def write(batch_df: Any, batch_id: int) -> None:
        batch_df.write.mode("overwrite").parquet(f"{out}/batch_id={batch_id}")

    return write


def _start(spark: Any, impl: str, ds: Dataset, src: str, work: Path) -> Any:
    """Start one stream over ``src`` with ``impl``; return the StreamingQuery."""
    from pyspark.sql import types as T

    schema = T.StructType([T.StructField(c, T.DoubleType()) for c in ds.columns])
    stream = spark.readStream.schema(schema).option("maxFilesPerTrigger", 1).parquet(src)
    out, checkpoint, state = work / "out", work / "checkpoint", work / "state"
    if impl == "plain":
        writer = stream.writeStream.foreachBatch(_plain_sink(str(out)))
    else:
        writer = _mxnorm_writer(spark, stream, ds.columns, str(out), str(state))
    return writer.option("checkpointLocation", str(checkpoint)).trigger(availableNow=True).start()


def _mxnorm_writer(spark: Any, stream: Any, cols: list[str], out: str, state: str) -> Any:
    from mxnorm_spark.streaming.updater import MXNormStream

    updater = MXNormStream(spark, state, cols=cols, output=out, progress=None)
    return updater.attach(stream.writeStream)


def _run_stream(
    spark: Any, impl: str, ds: Dataset, src: str, work: Path
) -> tuple[list[int], float]:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    query = _start(spark, impl, ds, src, work)
    query.awaitTermination()
    wall = time.perf_counter() - t0
    if query.exception() is not None:
        raise RuntimeError(f"stream failed: {query.exception()}")
    durations = [
        int(p["durationMs"]["triggerExecution"])
        for p in query.recentProgress
        if p["numInputRows"] > 0
    ]
    shutil.rmtree(work, ignore_errors=True)
    return durations, wall


def run(spec: dict[str, Any]) -> dict[str, Any]:
    impl = spec["impl"]
    plan = spec["plan"]
    work = Path(spec["work_dir"]) / "stream" / impl
    result: dict[str, Any] = {"impl": impl, "latency": {}}
    t0 = time.perf_counter()
    spark = make_session(f"bench-stream-{impl}")
    result["startup_s"] = time.perf_counter() - t0
    peaks = Peaks()
    for item in plan["latency"]:
        ds = Dataset(**item["dataset"])
        with PeakMemory() as mem:
            durations, wall = _run_stream(spark, impl, ds, item["path"], work)
        peaks = peaks.max(mem.peaks)
        result["latency"][str(item["rows"])] = {
            "all_ms": durations,
            "timed_ms": durations[item["warmup"] :],
            "wall_s": wall,
        }
    result["peak_mib"] = peaks.as_mib()
    if "throughput" not in plan:
        spark.stop()
        return result
    ds = Dataset(**plan["throughput"]["dataset"])
    with PeakMemory() as mem:
        durations, wall = _run_stream(spark, impl, ds, plan["throughput"]["path"], work)
    peaks = peaks.max(mem.peaks)
    result["throughput"] = {
        "rows": ds.rows,
        "batches": len(durations),
        "batch_ms": durations,
        "wall_s": wall,
    }
    result["peak_mib"] = peaks.as_mib()
    spark.stop()
    return result


def compare(rounds: int, rows: list[int], data_dir: Path, work_dir: Path) -> None:
    """Plain and mxnorm interleaved, fresh processes; one line per stream as it ends."""
    import os
    import statistics
    import subprocess
    import tempfile

    from bench.cases import spark_env

    plan = stream_plan(False, data_dir, None, rows)
    medians: dict[tuple[str, str], list[float]] = {}
    order = ["plain"] + ["mxnorm", "plain"] * rounds
    for impl in order:
        with tempfile.TemporaryDirectory() as tmp:
            spec, out = Path(tmp) / "spec.json", Path(tmp) / "result.json"
            spec.write_text(json.dumps({"impl": impl, "plan": plan, "work_dir": str(work_dir)}))
            before = os.getloadavg()[0]
            cmd = [sys.executable, "-m", "bench.stream_worker", str(spec), str(out)]
            subprocess.run(cmd, env=spark_env(), check=True, capture_output=True)
            result = json.loads(out.read_text())
        if "error" in result:
            print(f"{impl}: {result['error']}", flush=True)
            continue
        for size, r in result["latency"].items():
            m = statistics.median(r["timed_ms"])
            medians.setdefault((impl, size), []).append(m)
            print(
                f"{impl:7s} rows={size:>8s} median={m:7.0f} ms  batches={r['timed_ms']}  "
                f"load {before:.1f} -> {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    for size in [str(r["rows"]) for r in plan["latency"]]:
        p, x = medians.get(("plain", size), []), medians.get(("mxnorm", size), [])
        if p and x:
            mp, mx = statistics.median(p), statistics.median(x)
            print(
                f"rows={size:>8s}: plain {mp:.0f} ms, mxnorm {mx:.0f} ms, overhead "
                f"{mx - mp:+.0f} ms ({100 * (mx - mp) / mp:+.0f}%)",
                flush=True,
            )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "--compare":
        import argparse

        from bench.data import DATA_DIR

        parser = argparse.ArgumentParser(prog="bench.stream_worker --compare")
        parser.add_argument("--rounds", type=int, default=2)
        parser.add_argument("--rows", type=int, nargs="+", default=[r for r, _, _ in FULL_SIZES])
        parser.add_argument("--work-dir", type=Path, default=None)
        parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
        opts = parser.parse_args(args[1:])
        work = opts.work_dir or Path(tempfile_dir())
        compare(opts.rounds, opts.rows, opts.data_dir, work)
        return 0
    spec = json.loads(Path(args[0]).read_text())
    try:
        result = run(spec)
    except Exception as exc:
        result = {
            "impl": spec["impl"],
            "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300],
            "traceback": traceback.format_exc(),
        }
    Path(args[1]).write_text(json.dumps(result, indent=1))
    return 0


def tempfile_dir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="mxnorm-stream-bench-")


if __name__ == "__main__":
    sys.exit(main())
