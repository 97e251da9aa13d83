"""Where does the default engine's time go? Writes ``bench/PROFILE_SQL.md``.

    .venv/bin/python -m bench.profile_sql [--reps 5] [--quick]

One session with the benchmark's Spark settings, on the wide16 input (5M x 16 doubles).
Every stage below is one Spark job (or two, with a shuffle) timed alone, the stages
interleaved in each round so drift on a shared machine hits all alike; median and min-max
of ``reps`` rounds after a warm-up round. The stages split the end-to-end fit + transform
into its parts and set ours beside what hand-written SQL does:

- reading: the Parquet input into a noop sink (the floor of every pass);
- statistics: hand-written SQL's one global ``avg``/``var_pop``; the same sums as ours
  in one global aggregation; ours grouped by partition id, raw (the clean-data pass) and
  with every value tested (the pass data with null/NaN/inf gets); the ``limit`` job that
  gives ``auto`` its pivot;
- normalization: the column expressions into a noop sink.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.cases import SPARK_CONF, make_session
from bench.data import DATA_DIR, FULL, QUICK, ensure_dataset

BENCH_DIR = Path(__file__).resolve().parent
MAX = "1.7976931348623157E308D"


def stages(spark: Any, path: str) -> dict[str, Callable[[], object]]:
    from pyspark.sql import functions as F

    from mxnorm_spark.batch.aggregate import _local_probe, resolve_input

    def df() -> Any:
        return spark.read.parquet(path)

    cols = df().columns
    raw = [f"`{c}` - 0.5D AS d{j}" for j, c in enumerate(cols)]
    tested = [
        f"CASE WHEN abs(`{c}`) <= {MAX} THEN `{c}` - 0.5D END AS d{j}" for j, c in enumerate(cols)
    ]
    sums = [a for j in range(len(cols)) for a in (f"sum(d{j})", f"sum(d{j} * d{j})")]
    counts = [f"count(d{j})" for j in range(len(cols))]
    flag = "bool_or(" + " OR ".join(f"`{c}` IS NULL" for c in cols) + ")"

    def grouped(proj: list[str], aggs: list[str]) -> Callable[[], object]:
        def run() -> object:
            d = df().selectExpr("spark_partition_id() AS pid", *proj, *cols)
            return d.groupBy("pid").agg(*[F.expr(a) for a in aggs]).collect()

        return run

    def global_(proj: list[str], aggs: list[str]) -> Callable[[], object]:
        return lambda: df().selectExpr(*proj).agg(*[F.expr(a) for a in aggs]).collect()

    def probe() -> object:
        d = df()
        return _local_probe(d, resolve_input(d, cols, None), None)

    def noop(d: Any) -> None:
        d.write.format("noop").mode("overwrite").save()

    return {
        "read: Parquet -> noop": lambda: noop(df()),
        "hand-written SQL: global avg, var_pop": lambda: (
            df().agg(*[f(F.col(c)) for c in cols for f in (F.avg, F.var_pop)]).collect()
        ),
        "global: count(1), sum, sum of squares": global_(raw, ["count(1)", *sums]),
        "ours, clean data: by partition, raw sums + null flag": grouped(
            raw, ["count(1)", flag, *sums]
        ),
        "ours, invalid values: by partition, tested, count per feature": grouped(
            tested, ["count(1)", *sums, *counts]
        ),
        "ours: limit job (pivot, small-input probe)": probe,
        "normalize: column expressions -> noop": lambda: noop(
            df().select(*[((F.col(c) - 0.5) / 2.0).alias(c) for c in cols])
        ),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile_sql", description=__doc__)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="the small wide16 input")
    p.add_argument("--out", type=Path, default=BENCH_DIR / "PROFILE_SQL.md")
    args = p.parse_args(argv)
    ds = (QUICK if args.quick else FULL)["wide16"]
    path = str(ensure_dataset(ds, DATA_DIR))
    load_start = os.getloadavg()[0]
    spark = make_session("profile-sql")
    todo = stages(spark, path)
    for fn in todo.values():  # warm-up round
        fn()
    times: dict[str, list[float]] = {name: [] for name in todo}
    for _ in range(args.reps):
        for name, fn in todo.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    spark.stop()
    settings = ", ".join(f"`{k}={v}`" for k, v in SPARK_CONF.items())
    lines = [
        "# Where the default engine's time goes",
        "",
        f"`python -m bench.profile_sql{' --quick' if args.quick else ''} --reps {args.reps}` "
        f"on {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {ds.rows:,} rows x "
        f"{ds.features} doubles ({ds.name}), load average {load_start:.1f} at the start on "
        f"{os.cpu_count()} cores. Spark settings as in RESULTS.md: {settings}. Every stage "
        "reads the Parquet input again (`spark.read.parquet`, included).",
        "",
        "| stage | median s | min-max s |",
        "|---|---:|---:|",
    ]
    for name, ts in times.items():
        lines.append(f"| {name} | {statistics.median(ts):.2f} | {min(ts):.2f}-{max(ts):.2f} |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
