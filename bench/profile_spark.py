"""The vector and array rows: ours against MLlib, and each change before / after, in CPU.

    .venv/bin/python -m bench.profile_spark [--reps 2] [--files 4]

One Spark session with the benchmark's settings, the first ``--files`` files of the
``make bench`` inputs vec64 (array<double>) and its VectorUDT twin. Each round runs every
timed call below once, interleaved; after a warm-up round, ``reps`` rounds. Each call is
timed in wall time and in CPU seconds (this process, its JVM and the Python workers under
it, from psutil): on a machine shared by many jobs, the CPU a call costs moves far less
than its wall time. The "before" calls put back what the code did before (the size probe
on a large input; the vector output made by wrapping the whole ``CASE`` in
``to_vector``), in this process only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import psutil

from bench.cases import Context, make_session
from bench.data import parquet_files
from bench.run import BENCH, UDT
from bench.shapes import SHAPE_CASES, ensure_input


def _cpu(me: psutil.Process) -> float:
    total = float(sum(me.cpu_times()[:2]))
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):  # a worker that just exited
            total += float(sum(child.cpu_times()[:2]))
    return total


def _calls(ctx: Context, files: int) -> dict[str, Callable[[], object]]:
    from pyspark.sql import functions as F

    from mxnorm_spark.batch import aggregate
    from mxnorm_spark.engines import sql as sql_engine
    from mxnorm_spark.engines.columns import ARRAY_COL, sql_name, to_vector
    from mxnorm_spark.engines.constants import vector_length_message
    from mxnorm_spark.ml import MXNorm

    spark = ctx.spark
    arr, udt = BENCH["vec64"], UDT["bench"]
    pa_ = [str(p) for p in parquet_files(ensure_input(spark, arr))][:files]
    pu = [str(p) for p in parquet_files(ensure_input(spark, udt))][:files]
    known_large, new_vector = aggregate._known_large, sql_engine.normalize_vector

    def old_vector(df: Any, spec: Any, output: str, constants: Any, *, check: bool) -> Any:
        name, dim = spec.input_col, constants.n_features
        a = sql_name(ARRAY_COL)
        means, scales = constants.sql_arrays()
        at = "element_at({}, i + 1)"
        vals = f"transform({a}, (x, i) -> (x - {at.format(means)}) / {at.format(scales)})"
        length = sql_engine._sql_text(vector_length_message(name, dim))
        out = F.expr(
            f"CASE WHEN {a} IS NULL THEN NULL WHEN size({a}) != {dim} "
            f"THEN raise_error({length}) ELSE {vals} END"
        )
        return df.withColumn(output, to_vector(out)).drop(ARRAY_COL)

    def fit(paths: list[str], probe: bool) -> Any:
        aggregate._known_large = (lambda *a: False) if probe else known_large  # type: ignore[assignment]
        try:
            return MXNorm(inputCol="v", outputCol="z").fit(spark.read.parquet(*paths))
        finally:
            aggregate._known_large = known_large  # type: ignore[assignment]

    model = fit(pu, False)

    def transform(old: bool) -> None:
        sql_engine.normalize_vector = old_vector if old else new_vector  # type: ignore[assignment]
        try:
            out = model.transform(spark.read.parquet(*pu)).select("z")
            out.write.format("noop").mode("overwrite").save()
        finally:
            sql_engine.normalize_vector = new_vector  # type: ignore[assignment]

    return {
        "array: fit, with the probe (before)": lambda: fit(pa_, True),
        "array: fit, no probe (after)": lambda: fit(pa_, False),
        "VectorUDT: fit, with the probe (before)": lambda: fit(pu, True),
        "VectorUDT: fit, no probe (after)": lambda: fit(pu, False),
        "VectorUDT: transform, to_vector(CASE) (before)": lambda: transform(True),
        "VectorUDT: transform, vector in the last branch (after)": lambda: transform(False),
        "array: e2e MLlib": lambda: SHAPE_CASES["mllib"](ctx, arr, pa_, "noop", ""),
        "array: e2e ours": lambda: SHAPE_CASES["ours"](ctx, arr, pa_, "noop", ""),
        "VectorUDT: e2e MLlib": lambda: SHAPE_CASES["mllib"](ctx, udt, pu, "noop", ""),
        "VectorUDT: e2e ours": lambda: SHAPE_CASES["ours"](ctx, udt, pu, "noop", ""),
    }


def _span(v: list[float]) -> str:
    return f"{statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile_spark", description=__doc__)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--files", type=int, default=4, help="files of each input (of 8)")
    args = p.parse_args(argv)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    ctx = Context(make_session("profile-spark"))
    calls = _calls(ctx, args.files)
    me = psutil.Process()
    wall: dict[str, list[float]] = {k: [] for k in calls}
    cpu: dict[str, list[float]] = {k: [] for k in calls}
    for rep in range(args.reps + 1):
        for key, fn in calls.items():
            c0, t0 = _cpu(me), time.perf_counter()
            fn()
            if rep:
                wall[key].append(time.perf_counter() - t0)
                cpu[key].append(_cpu(me) - c0)
        print(f"round {rep} done, load {os.getloadavg()[0]:.1f}", flush=True)
    ctx.spark.stop()
    print("| timed call | wall s median (min-max) | CPU s median (min-max) |")
    print("|---|---:|---:|")
    for key in calls:
        print(f"| {key} | {_span(wall[key])} | {_span(cpu[key])} |")
    for what in ("array", "VectorUDT"):
        ml, us = f"{what}: e2e MLlib", f"{what}: e2e ours"
        w = [a / b for a, b in zip(wall[ml], wall[us], strict=True)]
        c = [a / b for a, b in zip(cpu[ml], cpu[us], strict=True)]
        print(f"- {what}: ours / MLlib throughput, wall {_span(w)}x, CPU {_span(c)}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
