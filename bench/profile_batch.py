"""The batch rows stage by stage: ours against MLlib, in wall and CPU seconds.

    .venv/bin/python -m bench.profile_batch [--reps 2] [--only udt,array,wide256]

One Spark session with the benchmark's settings (``bench/cases.py``), the ``make bench``
inputs: vec64 as VectorUDT (``--udt-files`` of its 2 files, 200k rows each), vec64 as
``array<double>`` (``--array-files`` of 8, 50k rows each) and wide256 (all 8 files,
100k rows). Each fit and each transform is timed alone (the model it transforms with is
fitted once beforehand), next to the read and the conversions they pay, and the end to
end cases of ``make bench``. After a warm-up round, ``reps`` rounds run every call once,
interleaved. CPU seconds are this process, its JVM and the Python workers under it
(psutil): on a shared machine they move far less than wall time. ``--only`` picks the
inputs; ``--calls`` (substrings) the calls.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import psutil

from bench.cases import Context, make_session
from bench.data import parquet_files
from bench.profile_spark import _cpu, _span
from bench.run import BENCH, UDT
from bench.shapes import SHAPE_CASES, ensure_input

Calls = dict[str, Callable[[], object]]


def _noop(df: Any) -> None:
    df.write.format("noop").mode("overwrite").save()


def _udt_calls(ctx: Context, files: int) -> Calls:
    from pyspark.ml.feature import StandardScaler
    from pyspark.ml.functions import array_to_vector, vector_to_array
    from pyspark.ml.stat import Summarizer
    from pyspark.sql import functions as F

    from mxnorm_spark.ml import MXNorm

    spark, udt = ctx.spark, UDT["bench"]
    paths = [str(p) for p in parquet_files(ensure_input(spark, udt))][:files]

    def read() -> Any:
        return spark.read.parquet(*paths)

    ml = StandardScaler(withMean=True, withStd=True, inputCol="v", outputCol="z")
    ml_model = ml.fit(read())
    ours = MXNorm(inputCol="v", outputCol="z")
    model = ours.fit(read())
    arrow = model.copy({model.engine: "arrow"})
    summary = Summarizer.metrics("mean", "variance", "count").summary(F.col("v"))
    return {
        "udt: read -> noop": lambda: _noop(read()),
        "udt: vector_to_array -> noop": lambda: _noop(read().select(vector_to_array(F.col("v")))),
        "udt: vector_to_array, array_to_vector -> noop": lambda: _noop(
            read().select(array_to_vector(vector_to_array(F.col("v"))))
        ),
        "udt: MLlib fit": lambda: ml.fit(read()),
        "udt: ours fit": lambda: ours.fit(read()),
        "udt: Summarizer by partition": lambda: (
            read().groupBy(F.spark_partition_id()).agg(summary).collect()
        ),
        "udt: MLlib transform -> noop": lambda: _noop(ml_model.transform(read()).select("z")),
        "udt: ours transform -> noop": lambda: _noop(model.transform(read()).select("z")),
        "udt: ours transform, arrow engine -> noop": lambda: _noop(
            arrow.transform(read()).select("z")
        ),
        "udt: e2e MLlib": lambda: SHAPE_CASES["mllib"](ctx, udt, paths, "noop", ""),
        "udt: e2e ours": lambda: SHAPE_CASES["ours"](ctx, udt, paths, "noop", ""),
    }


def _array_calls(ctx: Context, files: int) -> Calls:
    from pyspark.ml.feature import StandardScaler
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    from mxnorm_spark.ml import MXNorm

    spark, arr = ctx.spark, BENCH["vec64"]
    paths = [str(p) for p in parquet_files(ensure_input(spark, arr))][:files]

    def read() -> Any:
        return spark.read.parquet(*paths)

    def assembled() -> Any:
        return read().select(array_to_vector(F.col("v")).alias("v"))

    ml = StandardScaler(withMean=True, withStd=True, inputCol="v", outputCol="z")
    ml_model = ml.fit(assembled())
    ours = MXNorm(inputCol="v", outputCol="z")
    model = ours.fit(read())
    return {
        "array: read -> noop": lambda: _noop(read()),
        "array: array_to_vector -> noop": lambda: _noop(assembled()),
        "array: MLlib fit": lambda: ml.fit(assembled()),
        "array: ours fit": lambda: ours.fit(read()),
        "array: MLlib transform -> noop": lambda: _noop(
            ml_model.transform(assembled()).select("z")
        ),
        "array: ours transform -> noop": lambda: _noop(model.transform(read()).select("z")),
        "array: e2e MLlib": lambda: SHAPE_CASES["mllib"](ctx, arr, paths, "noop", ""),
        "array: e2e ours": lambda: SHAPE_CASES["ours"](ctx, arr, paths, "noop", ""),
    }


def _wide_calls(ctx: Context, out: str) -> Calls:
    from pyspark.ml.feature import StandardScaler, VectorAssembler

    from mxnorm_spark.ml import MXNorm

    spark, ds = ctx.spark, BENCH["wide256"]
    paths = [str(p) for p in parquet_files(ensure_input(spark, ds))]
    cols, outputs = ds.columns, [f"{c}_z" for c in ds.columns]

    def read() -> Any:
        return spark.read.parquet(*paths)

    def assembled() -> Any:
        return VectorAssembler(inputCols=cols, outputCol="features").transform(read())

    ml = StandardScaler(withMean=True, withStd=True, inputCol="features", outputCol="z")
    ml_model = ml.fit(assembled())
    ours = MXNorm(inputCols=cols, outputCols=outputs)
    model = ours.fit(read())

    def parquet(df: Any, dictionary: bool = True) -> None:
        df.write.mode("overwrite").option("parquet.enable.dictionary", dictionary).parquet(out)

    return {
        "wide256: read -> noop": lambda: _noop(read()),
        "wide256: read -> parquet": lambda: parquet(read()),
        "wide256: read -> parquet, no dictionary": lambda: parquet(read(), False),
        "wide256: MLlib fit": lambda: ml.fit(assembled()),
        "wide256: ours fit": lambda: ours.fit(read()),
        "wide256: MLlib transform -> noop": lambda: _noop(
            ml_model.transform(assembled()).select("z")
        ),
        "wide256: ours transform -> noop": lambda: _noop(model.transform(read()).select(*outputs)),
        "wide256: MLlib transform -> parquet": lambda: parquet(
            ml_model.transform(assembled()).select("z")
        ),
        "wide256: ours transform -> parquet": lambda: parquet(
            model.transform(read()).select(*outputs)
        ),
        "wide256: ours transform -> parquet, no dictionary": lambda: parquet(
            model.transform(read()).select(*outputs), False
        ),
        "wide256: e2e MLlib noop": lambda: SHAPE_CASES["mllib"](ctx, ds, paths, "noop", out),
        "wide256: e2e ours noop": lambda: SHAPE_CASES["ours"](ctx, ds, paths, "noop", out),
        "wide256: e2e MLlib parquet": lambda: _write_case("mllib", ctx, ds, paths, out),
        "wide256: e2e ours parquet": lambda: _write_case("ours", ctx, ds, paths, out),
    }


def _write_case(name: str, ctx: Context, ds: Any, paths: list[str], out: str) -> None:
    SHAPE_CASES[name](ctx, ds, paths, "parquet", out)


def _ratio(wall: dict[str, list[float]], a: str, b: str) -> str:
    if a not in wall or b not in wall:
        return ""
    return _span([x / y for x, y in zip(wall[a], wall[b], strict=True)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile_batch", description=__doc__)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--only", default="udt,array,wide256", help="inputs, comma-separated")
    p.add_argument("--calls", default="", help="only calls containing one of these (commas)")
    p.add_argument("--udt-files", type=int, default=1, help="files of the VectorUDT input (of 2)")
    p.add_argument("--array-files", type=int, default=4, help="files of the array input (of 8)")
    args = p.parse_args(argv)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    ctx = Context(make_session("profile-batch"))
    only = set(args.only.split(","))
    calls: Calls = {}
    with tempfile.TemporaryDirectory(prefix="mx-profile-batch-") as tmp:
        if "udt" in only:
            calls |= _udt_calls(ctx, args.udt_files)
        if "array" in only:
            calls |= _array_calls(ctx, args.array_files)
        if "wide256" in only:
            calls |= _wide_calls(ctx, os.path.join(tmp, "out"))
        wanted = [w for w in args.calls.split(",") if w]
        calls = {k: f for k, f in calls.items() if not wanted or any(w in k for w in wanted)}
        me = psutil.Process()
        wall: dict[str, list[float]] = {k: [] for k in calls}
        cpu: dict[str, list[float]] = {k: [] for k in calls}
        loads = []
        for rep in range(args.reps + 1):
            for key, fn in calls.items():
                c0, t0 = _cpu(me), time.perf_counter()
                fn()
                w, c = time.perf_counter() - t0, _cpu(me) - c0
                if rep:
                    wall[key].append(w)
                    cpu[key].append(c)
                load = os.getloadavg()[0]
                print(f"  round {rep} | {key} | {w:.2f} | {c:.2f} | load {load:.1f}", flush=True)
            loads.append(os.getloadavg()[0])
            print(f"round {rep} done, load {loads[-1]:.1f}", flush=True)
    ctx.spark.stop()
    print(f"load (1 min) after each round: {', '.join(f'{x:.1f}' for x in loads)}")
    print("| timed call | wall s median (min-max) | CPU s median (min-max) |")
    print("|---|---:|---:|")
    for key in calls:
        print(f"| {key} | {_span(wall[key])} | {_span(cpu[key])} |")
    pairs = [
        ("udt", "udt: e2e MLlib", "udt: e2e ours"),
        ("array", "array: e2e MLlib", "array: e2e ours"),
        ("wide256 noop", "wide256: e2e MLlib noop", "wide256: e2e ours noop"),
        ("wide256 parquet", "wide256: e2e MLlib parquet", "wide256: e2e ours parquet"),
    ]
    for what, ml, us in pairs:
        if ml in calls and us in calls:
            print(
                f"- {what}: ours / MLlib throughput, wall {_ratio(wall, ml, us)}x, "
                f"CPU {_ratio(cpu, ml, us)}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
