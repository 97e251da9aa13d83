"""The benchmarked pipelines: read Parquet, compute statistics, normalize, write to a sink.

Every case is a function ``case(ctx, ds, source, sink, out) -> None`` that runs the whole
pipeline once; the worker times it. ``source`` is a list of Parquet paths (the dataset
directory for timed runs, one of its files for the warm-up). All Spark cases share one set
of session settings (``SPARK_CONF``) and write only their normalized output, in the shape
each tool produces naturally (MLlib: one ``vector`` column; the others: double columns, or
one ``array<double>`` column for the vector dataset).
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.data import Dataset

EPS = 1e-8
SINKS = ("noop", "parquet")

SPARK_CONF = {
    "spark.master": "local[2]",
    "spark.driver.memory": "2g",
    "spark.driver.host": "127.0.0.1",
    "spark.ui.enabled": "false",
    "spark.sql.shuffle.partitions": "4",
    "spark.default.parallelism": "2",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.python.worker.reuse": "true",
    "spark.ui.showConsoleProgress": "false",
}


def spark_env() -> dict[str, str]:
    """Environment for anything that starts a JVM: loopback only, workers on this Python."""
    env = dict(os.environ)
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    env["PYSPARK_PYTHON"] = sys.executable
    env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    return env


def make_session(app: str) -> Any:
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app)
    for key, value in SPARK_CONF.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


@dataclass
class Context:
    spark: Any  # SparkSession, or None for the single-process case


CaseFn = Callable[[Context, Dataset, list[str], str, str], None]


def _write(df: Any, sink: str, out: str) -> None:
    if sink == "noop":
        df.write.format("noop").mode("overwrite").save()
    else:
        df.write.mode("overwrite").parquet(out)


# --- Spark MLlib ------------------------------------------------------------------------


def mllib(ctx: Context, ds: Dataset, source: list[str], sink: str, out: str) -> None:
    from pyspark.ml.feature import StandardScaler, VectorAssembler
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    df = ctx.spark.read.parquet(*source)
    if ds.vector:
        assembled = df.select(array_to_vector(F.col("v")).alias("features"))
    else:
        assembled = VectorAssembler(inputCols=ds.columns, outputCol="features").transform(df)
    # MLlib divides by the sample (n - 1) standard deviation; the cost is the same.
    scaler = StandardScaler(withMean=True, withStd=True, inputCol="features", outputCol="z")
    _write(scaler.fit(assembled).transform(assembled).select("z"), sink, out)


# --- hand-written Spark SQL: one agg of avg/var_pop, then column expressions ------------


def sql(ctx: Context, ds: Dataset, source: list[str], sink: str, out: str) -> None:
    from pyspark.sql import functions as F

    df = ctx.spark.read.parquet(*source)
    if ds.vector:
        exprs = [F.col("v")[i] for i in range(ds.features)]
    else:
        exprs = [F.col(c) for c in ds.columns]
    aggs = [f(e) for e in exprs for f in (F.avg, F.var_pop)]
    row = df.agg(*aggs).first()
    means = [float(row[2 * j]) for j in range(ds.features)]
    scales = [math.sqrt(float(row[2 * j + 1]) + EPS) for j in range(ds.features)]
    if ds.vector:
        mean_arr = F.array(*[F.lit(m) for m in means])
        scale_arr = F.array(*[F.lit(s) for s in scales])
        z = F.transform(
            "v", lambda x, i: (x - F.element_at(mean_arr, i + 1)) / F.element_at(scale_arr, i + 1)
        )
        result = df.select(z.alias("v"))
    else:
        result = df.select(
            *[
                ((F.col(c) - F.lit(m)) / F.lit(s)).alias(c)
                for c, m, s in zip(ds.columns, means, scales, strict=True)
            ]
        )
    _write(result, sink, out)


# --- this project -----------------------------------------------------------------------


def mxnorm_api() -> str:
    """``estimator`` (``MXNorm().fit().transform()``) when ml.py exists, else ``functions``."""
    try:
        importlib.import_module("mxnorm_spark.ml")
    except ImportError:
        return "functions"
    return "estimator"


def _mxnorm(engine: str) -> CaseFn:
    def case(ctx: Context, ds: Dataset, source: list[str], sink: str, out: str) -> None:
        df = ctx.spark.read.parquet(*source)
        if ds.vector:
            cols, outputs = None, ["z"]
            kw: dict[str, Any] = {"input_col": "v", "output_col": "z"}
        else:
            cols, outputs = ds.columns, [f"{c}_z" for c in ds.columns]
            kw = {"output_cols": outputs}
        if mxnorm_api() == "estimator":
            # Imported by name: ml.py may not exist yet (then the functions below are used).
            MXNorm = importlib.import_module("mxnorm_spark.ml").MXNorm
            if ds.vector:
                est = MXNorm(inputCol="v", outputCol="z", engine=engine)
            else:
                est = MXNorm(inputCols=cols, outputCols=outputs, engine=engine)
            result = est.fit(df).transform(df)
        else:
            from mxnorm_spark import MXNormState
            from mxnorm_spark.batch.aggregate import batch_moments, feature_names
            from mxnorm_spark.batch.apply import normalize

            in_kw: dict[str, Any] = {"input_col": "v"} if ds.vector else {}
            moments = batch_moments(df, cols, engine=engine, **in_kw)
            state = MXNormState.create(feature_names(df, cols, **in_kw)).update(moments)
            result = normalize(df, state, cols, engine=engine, **{**in_kw, **kw})
        _write(result.select(*outputs), sink, out)

    case.__name__ = f"mxnorm_{engine}"
    return case


# --- the single-process limit: pyarrow + numpy ------------------------------------------


def numpy_pyarrow(ctx: Context, ds: Dataset, source: list[str], sink: str, out: str) -> None:
    table = (
        pq.read_table(source[0])
        if len(source) == 1
        else pa.concat_tables([pq.read_table(s) for s in source])
    )
    if ds.vector:
        values = table.column("v").combine_chunks().flatten().to_numpy()
        x = values.reshape(-1, ds.features)
        mean = x.mean(axis=0)
        scale = np.sqrt(x.var(axis=0) + EPS)
        z = ((x - mean) / scale).reshape(-1)
        offsets = pa.array(np.arange(0, z.shape[0] + 1, ds.features, dtype=np.int32))
        result = pa.table({"v": pa.ListArray.from_arrays(offsets, pa.array(z))})
    else:
        cols = {}
        for name in ds.columns:
            c = table.column(name).to_numpy()
            m = c.mean()
            s = math.sqrt(float(((c - m) ** 2).mean()) + EPS)
            cols[name] = pa.array((c - m) / s)
        result = pa.table(cols)
    if sink == "parquet":
        Path(out).mkdir(parents=True, exist_ok=True)
        pq.write_table(result, Path(out) / "part-0.parquet")


CASES: dict[str, CaseFn] = {
    "mllib": mllib,
    "sql": sql,
    "numpy": numpy_pyarrow,
    "mxnorm-auto": _mxnorm("auto"),
    "mxnorm-sql": _mxnorm("sql"),
    "mxnorm-arrow": _mxnorm("arrow"),
}
SPARK_CASES = frozenset(CASES) - {"numpy"}

LABELS = {
    "mllib": "MLlib VectorAssembler + StandardScaler",
    "sql": "hand-written Spark SQL (avg/var_pop + expressions)",
    "numpy": "single process: pyarrow + numpy",
    "mxnorm-auto": "mxnorm_spark, engine=auto (default)",
    "mxnorm-sql": "mxnorm_spark, engine=sql",
    "mxnorm-arrow": "mxnorm_spark, engine=arrow",
}


# --- output check -----------------------------------------------------------------------


def check_output(out: str, ds: Dataset, rows: int) -> str:
    """Read a Parquet sink back and check it is a z-score of every feature.

    Returns "ok" or a description of what is wrong. Tolerances allow MLlib's sample
    standard deviation (a factor sqrt((n-1)/n) on the spread).
    """
    table = pq.read_table(out)
    if table.num_rows != rows:
        return f"{table.num_rows} rows written, expected {rows}"
    if table.num_columns == 1:
        col = table.column(0).combine_chunks()
        if pa.types.is_struct(col.type):  # pyspark.ml vector: struct<type,size,indices,values>
            col = col.field("values")
        x = col.flatten().to_numpy(zero_copy_only=False).reshape(rows, -1)
    else:
        x = np.column_stack([c.to_numpy() for c in table.columns])
    if x.shape[1] != ds.features:
        return f"{x.shape[1]} features written, expected {ds.features}"
    mean_err = float(np.max(np.abs(x.mean(axis=0))))
    sd_err = float(np.max(np.abs(x.std(axis=0) - 1.0)))
    if not (mean_err < 1e-9 and sd_err < max(1e-6, 2.0 / rows)):
        return f"not a z-score: max |mean| = {mean_err:.2e}, max |sd - 1| = {sd_err:.2e}"
    return "ok"
