"""Where a stream's per-key state should live, measured: ``python -m bench.keyed_state_store``.

The same file stream (``--batches`` micro-batches of ``--rows`` rows over ``--keys`` keys,
``--features`` columns) runs twice, one after the other in one process:

* ``snapshot``: ``MXNormStream(keys=KeyOptions(...))``, the per-key state as one Parquet
  snapshot per micro-batch, folded by a vectorized ``mapInArrow`` kernel (what
  ``mxnorm_spark.streaming.keyed`` does), with the normalized output written;
* ``transformWithStateInPandas``: Spark's own state store (RocksDB), one ``ValueState``
  per key holding the EMA mean and variance per feature, updated in ``handleInputRows``
  (called once per key and micro-batch), emitting the normalized rows, written by a
  plain ``foreachBatch``. Its update is a minimal EMA (mean and population variance of the
  rows of the key, no exact pivoted moments, no global fallback): a lower bound of what
  the same semantics would cost there.

Prints the median ``triggerExecution`` per micro-batch (the first excluded) of each.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pandas as pd


def _session() -> Any:
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (
        SparkSession.builder.master("local[2]")
        .appName("mxnorm-bench-keyed-state-store")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", "4g")
        .config(
            "spark.sql.streaming.stateStore.providerClass",
            "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider",
        )
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _files(spark: Any, path: str, args: argparse.Namespace) -> None:
    from pyspark.sql import functions as F

    for b in range(args.batches):
        df = spark.range(args.rows).select(
            (F.col("id") % args.keys).alias("key"),
            *(
                (F.lit(10.0) + F.randn(seed=100 * b + j)).alias(f"f{j}")
                for j in range(args.features)
            ),
        )
        df.coalesce(1).write.mode("overwrite").parquet(f"{path}/tmp")
        (part,) = [n for n in os.listdir(f"{path}/tmp") if n.endswith(".parquet")]
        os.replace(f"{path}/tmp/{part}", f"{path}/in/b{b:03d}.parquet")
        t = 1_000_000_000 + 10 * b
        os.utime(f"{path}/in/b{b:03d}.parquet", (t, t))
        shutil.rmtree(f"{path}/tmp")


def _processor(features: list[str], alpha: float, eps: float) -> Any:
    from pyspark.sql.streaming import StatefulProcessor, StatefulProcessorHandle

    class EmaPerKey(StatefulProcessor):  # type: ignore[misc]
        def init(self, handle: StatefulProcessorHandle) -> None:
            schema = ", ".join(f"m{j} double, v{j} double" for j in range(len(features)))
            self.state = handle.getValueState("ema", schema)

        def handleInputRows(
            self, key: Any, rows: Iterator[pd.DataFrame], timerValues: Any
        ) -> Iterator[pd.DataFrame]:
            pdf = pd.concat(list(rows), ignore_index=True)
            x = pdf[features]
            mean, var = x.mean().to_numpy(), x.var(ddof=0).to_numpy()
            if self.state.exists():
                old = self.state.get()
                om, ov = old[0::2], old[1::2]
                mean = [(1 - alpha) * a + alpha * b for a, b in zip(om, mean, strict=True)]
                var = [(1 - alpha) * a + alpha * b for a, b in zip(ov, var, strict=True)]
            self.state.update(tuple(v for pair in zip(mean, var, strict=True) for v in pair))
            scale = [(v + eps) ** 0.5 for v in var]
            out = pdf[["key"]].copy()
            for j, f in enumerate(features):
                out[f] = (pdf[f] - mean[j]) / scale[j]
            yield out

        def close(self) -> None:
            pass

    return EmaPerKey()


def _durations(query: Any) -> list[float]:
    return [
        p["durationMs"]["triggerExecution"] / 1000
        for p in query.recentProgress
        if p["numInputRows"]
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--features", type=int, default=4)
    args = p.parse_args(argv)

    from pyspark.sql import types as T

    from mxnorm_spark.core.state import StateOptions
    from mxnorm_spark.streaming.keyed import KeyOptions
    from mxnorm_spark.streaming.updater import MXNormStream

    load = os.getloadavg()[0]
    spark = _session()
    work = tempfile.mkdtemp(prefix="mxbench-tws-")
    features = [f"f{j}" for j in range(args.features)]
    try:
        os.makedirs(f"{work}/in")
        _files(spark, work, args)
        schema = T.StructType(
            [T.StructField("key", T.LongType())]
            + [T.StructField(f, T.DoubleType()) for f in features]
        )

        def source() -> Any:
            return (
                spark.readStream.schema(schema)
                .option("maxFilesPerTrigger", 1)
                .parquet(f"{work}/in")
            )

        stream = MXNormStream(
            spark, f"{work}/state", cols=features, output=f"{work}/out",
            options=StateOptions(alpha=0.1), progress=None, keys=KeyOptions(("key",)),
        )  # fmt: skip
        t0 = time.perf_counter()
        writer = stream.attach(source().writeStream).option("checkpointLocation", f"{work}/chk1")
        query = writer.trigger(availableNow=True).start()
        query.awaitTermination()
        ours, ours_wall = _durations(query), time.perf_counter() - t0

        def write(df: Any, batch_id: int) -> None:
            df.write.mode("overwrite").parquet(f"{work}/tws-out/{batch_id}")

        t0 = time.perf_counter()
        tws = (
            source()
            .groupBy("key")
            .transformWithStateInPandas(
                statefulProcessor=_processor(features, 0.1, 1e-8),
                outputStructType=schema,
                outputMode="Update",
                timeMode="None",
            )
        )
        writer = tws.writeStream.foreachBatch(write).option("checkpointLocation", f"{work}/chk2")
        query = writer.trigger(availableNow=True).start()
        query.awaitTermination()
        theirs, theirs_wall = _durations(query), time.perf_counter() - t0
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average (1 min) at start {load:.2f}, at end {os.getloadavg()[0]:.2f}")
    print(f"{args.batches} micro-batches of {args.rows:,} rows over {args.keys:,} keys, "
          f"{args.features} features, local[2]")  # fmt: skip
    print("| per-key state | median s per micro-batch (first excluded) | all, s | wall s |")
    print("|---|---:|---:|---:|")
    for name, d, wall in (
        ("snapshot (ours)", ours, ours_wall),
        ("transformWithStateInPandas", theirs, theirs_wall),
    ):
        listed = ", ".join(f"{x:.1f}" for x in d)
        print(f"| {name} | {statistics.median(d[1:] or d):.1f} | {listed} | {wall:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
