"""Per-key MXNorm beside the plain Spark aggregation: ``python -m bench.keyed``.

On generated rows (``--rows``, default 1M; ``--keys``, default 100k, one key holding half
of the rows; ``--batches`` days; ``--features`` columns of ``1e9 + N(0, 1)``) it times,
each as a ``noop`` write (the whole plan runs, nothing is kept):

* ``groupBy(key, batch).agg(avg, var_pop)``: Spark's own per-(key, batch) moments, with
  no fold over batches and Welford's digits (``var_pop``);
* ``fit_keyed(...).states``: exact moments per (key, batch) and the fold of every key's
  batches (the per-key state before and after each batch), one pass;
* ``KeyedModel.transform``: the per-key normalization (shuffle joins on the key).

Prints one line per case (seconds, rows/s) and, for a few keys, the relative error of the
variance of their first batch from each path against float64 two-pass on the driver.
The 10M-row / 1M-key runs are in bench/keyed_scale.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import numpy as np


def _session(shuffle_partitions: int) -> Any:
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (
        SparkSession.builder.master(os.environ.get("MXBENCH_MASTER", "local[*]"))
        .appName("mxnorm-bench-keyed")
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", "4g")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _data(spark: Any, rows: int, keys: int, batches: int, features: int) -> Any:
    from pyspark.sql import functions as F

    df = spark.range(rows).withColumn(
        "key",
        F.when(F.col("id") % 2 == 0, F.lit(0)).otherwise(F.pmod(F.xxhash64("id"), F.lit(keys))),
    )
    df = df.withColumn("day", (F.col("id") * 7 % batches).cast("int"))
    cols = {f"f{j}": F.lit(1e9) + F.randn(seed=j) for j in range(features)}
    return df.withColumns(cols).drop("id").cache()


def _time(label: str, run: Any, rows: int) -> float:
    t0 = time.perf_counter()
    run()
    dt = time.perf_counter() - t0
    print(f"{label:<44} {dt:8.2f} s  {rows / dt / 1e6:7.2f} M rows/s", flush=True)
    return dt


def _accuracy(df: Any, states: Any, features: list[str]) -> None:
    """Variance of a few keys' first batch: var_pop and fit_keyed against two-pass."""
    from pyspark.sql import functions as F

    first = states.where("batches_seen = 1").orderBy(F.desc("rows")).limit(3).collect()
    for r in first:
        sel = df.where((F.col("key") == r["key"]) & (F.col("day") == r["day"]))
        x = np.array(sel.select(features[0]).collect(), dtype=np.float64)[:, 0]
        ref = float(((x - x.mean()) ** 2).mean())
        pop = sel.agg(F.var_pop(features[0])).collect()[0][0]
        ours = float(r["var"][0])
        print(
            f"key {r['key']} day {r['day']} ({x.shape[0]} rows): var_pop rel err "
            f"{abs(pop - ref) / ref:.1e}, fit_keyed {abs(ours - ref) / ref:.1e}"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--features", type=int, default=4)
    p.add_argument("--partitions", type=int, default=16)
    args = p.parse_args(argv)

    from pyspark.sql import functions as F

    from mxnorm_spark.core.state import StateOptions
    from mxnorm_spark.keyed.backfill import fit_keyed

    spark = _session(args.partitions)
    df = _data(spark, args.rows, args.keys, args.batches, args.features)
    n = df.count()
    features = [f"f{j}" for j in range(args.features)]
    print(
        f"{n} rows, <= {args.keys} keys (one holds half), {args.batches} batches, "
        f"{args.features} features, {args.partitions} shuffle partitions"
    )
    aggs = [F.avg(c) for c in features] + [F.var_pop(c) for c in features]
    _time(
        "groupBy(key, day).agg(avg, var_pop)",
        lambda: df.groupBy("key", "day").agg(*aggs).write.format("noop").mode("overwrite").save(),
        n,
    )
    model = fit_keyed(df, features, ["key"], "day", options=StateOptions(), min_key_rows=10)
    _time(
        "fit_keyed states (moments + fold)",
        lambda: model.states.write.format("noop").mode("overwrite").save(),
        n,
    )
    states = model.states.persist()
    states.count()
    model.states = states
    _time(
        "KeyedModel.transform (states cached)",
        lambda: model.transform(df).write.format("noop").mode("overwrite").save(),
        n,
    )
    _accuracy(df, states, features)
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
