"""The streaming comparison, one implementation per fresh process.

    python -m bench.stream_worker SPEC.json RESULT.json

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


def stream_plan(quick: bool, data_dir: Path, throughput: Dataset) -> dict[str, Any]:
    """Generate the stream inputs (once) and describe them for the workers."""
    latency = []
    for rows, files, warm in QUICK_SIZES if quick else FULL_SIZES:
        ds = Dataset(f"stream{rows}", rows * files, 16, vector=False, files=files)
        latency.append(
            {
                "rows": rows,
                "warmup": warm,
                "dataset": asdict(ds),
                "path": str(ensure_dataset(ds, data_dir)),
            }
        )
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
    from mxnorm_spark.streaming import MXNormStream

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


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
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


if __name__ == "__main__":
    sys.exit(main())
