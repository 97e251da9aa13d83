"""Vector, array and wide inputs against MLlib, in one Spark process; writes bench/SHAPES.md.

    .venv/bin/python -m bench.shapes            # every shape, 3 repetitions (~20 min)
    .venv/bin/python -m bench.shapes --quick    # small inputs, for development
    .venv/bin/python -m bench.shapes --shapes arr64,wide256 --reps 5

Every shape runs MLlib's StandardScaler (withMean, withStd; a VectorAssembler for scalar
columns), hand-written Spark SQL and ``MXNorm`` (engine ``auto``), each fit + transform
end to end from Parquet, interleaved: in each repetition every case runs once per sink
(noop, then Parquet) before the next repetition starts, so load on a shared machine falls
on all of them alike. Ratios are pair by pair within a repetition. Times print as they
come; the table and the verdict per target go to ``bench/SHAPES.md``.

Targets: ours >= 1.3x MLlib's throughput on every shape and sink; wide16 >=
2.5x MLlib's and no slower than the hand-written SQL.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.cases import (
    CASES,
    EPS,
    SINKS,
    SPARK_CONF,
    Context,
    _write,
    check_output,
    make_session,
)
from bench.data import SHAPES, SHAPES_QUICK, Dataset, dataset_dir, ensure_dataset, parquet_files

BENCH_DIR = Path(__file__).resolve().parent
Case = Callable[[Context, Dataset, list[str], str, str], None]


def mllib(ctx: Context, ds: Dataset, source: list[str], sink: str, out: str) -> None:
    """MLlib StandardScaler; a VectorUDT input is read as it is."""
    if not ds.udt:
        CASES["mllib"](ctx, ds, source, sink, out)
        return
    from pyspark.ml.feature import StandardScaler

    df = ctx.spark.read.parquet(*source)
    scaler = StandardScaler(withMean=True, withStd=True, inputCol="v", outputCol="z")
    _write(scaler.fit(df).transform(df).select("z"), sink, out)


def sql(ctx: Context, ds: Dataset, source: list[str], sink: str, out: str) -> None:
    """Hand-written SQL (avg/var_pop, then expressions); a vector goes through arrays."""
    if not ds.udt:
        CASES["sql"](ctx, ds, source, sink, out)
        return
    from pyspark.ml.functions import array_to_vector, vector_to_array
    from pyspark.sql import functions as F

    df = ctx.spark.read.parquet(*source).select(vector_to_array("v").alias("a"))
    aggs = [f(F.col("a")[i]) for i in range(ds.features) for f in (F.avg, F.var_pop)]
    row = df.agg(*aggs).first()
    means = F.array(*[F.lit(float(row[2 * j])) for j in range(ds.features)])
    scales = [math.sqrt(float(row[2 * j + 1]) + EPS) for j in range(ds.features)]
    scale_arr = F.array(*[F.lit(s) for s in scales])
    z = F.transform(
        "a", lambda x, i: (x - F.element_at(means, i + 1)) / F.element_at(scale_arr, i + 1)
    )
    _write(df.select(array_to_vector(z).alias("z")), sink, out)


# The hand-written SQL of 1000 features is 2000 aggregate expressions: 60-80 s to plan and
# compile even at 4,000 rows, so it runs up to this many features only.
SQL_MAX_FEATURES = 256
SHAPE_CASES: dict[str, Case] = {"mllib": mllib, "sql": sql, "ours": CASES["mxnorm-auto"]}


def ensure_input(spark: Any, ds: Dataset) -> Path:
    """The Parquet input of ``ds``; a VectorUDT one is written by Spark from its array twin."""
    if not ds.udt:
        return ensure_dataset(ds)
    from pyspark.ml.functions import array_to_vector

    path = dataset_dir(ds)
    marker = path / "_bench_dataset.json"
    twin = ensure_dataset(replace(ds, udt=False))
    if marker.exists():
        return path
    if path.exists():
        shutil.rmtree(path)
    arrays = spark.read.parquet(*[str(p) for p in parquet_files(twin)])
    arrays.select(array_to_vector("v").alias("v")).write.parquet(str(path))
    for i, part in enumerate(sorted(path.glob("part-*.parquet"))):
        part.rename(path / f"part-{i:03d}.parquet")
    marker.write_text((twin / "_bench_dataset.json").read_text())
    return path


def _timed(case: Case, ctx: Context, ds: Dataset, source: list[str], *where: str) -> float:
    start = time.perf_counter()
    case(ctx, ds, source, *where)
    return time.perf_counter() - start


def run_shape(
    ctx: Context, ds: Dataset, reps: int, scratch: Path, cases: list[str]
) -> dict[tuple[str, str], list[float]]:
    """Warm up every case on one file (checking its output), then ``reps`` interleaved rounds."""
    path = ensure_input(ctx.spark, ds)
    files = [str(p) for p in parquet_files(path)]
    one = replace(ds, rows=_rows(ctx, files[:1]))
    if ds.features > SQL_MAX_FEATURES:
        cases = [c for c in cases if c != "sql"]
    for name in cases:
        out = str(scratch / f"{ds.name}-{name}-warm")
        for sink in SINKS:
            _timed(SHAPE_CASES[name], ctx, one, files[:1], sink, out)
        print(f"  warm-up {name}: output {check_output(out, one, one.rows)}", flush=True)
    times: dict[tuple[str, str], list[float]] = {(c, s): [] for c in cases for s in SINKS}
    for rep in range(reps):
        for sink in SINKS:
            line = []
            for name in cases:
                out = str(scratch / f"{ds.name}-{name}")
                t = _timed(SHAPE_CASES[name], ctx, ds, [str(path)], sink, out)
                times[(name, sink)].append(t)
                line.append(f"{name} {t:6.2f}s")
            ratios = _pair_ratios(times, sink, rep)
            print(f"  rep {rep + 1} {sink:7s} " + "  ".join(line) + f"  | {ratios}", flush=True)
    return times


def _rows(ctx: Context, files: list[str]) -> int:
    return int(ctx.spark.read.parquet(*files).count())


def _pair_ratios(times: dict[tuple[str, str], list[float]], sink: str, rep: int) -> str:
    t = {c: v[rep] for (c, s), v in times.items() if s == sink and len(v) > rep}
    parts = []
    if "ours" in t and "mllib" in t:
        parts.append(f"ours/MLlib throughput {t['mllib'] / t['ours']:.2f}x")
    if "ours" in t and "sql" in t:
        parts.append(f"ours/SQL time {t['ours'] / t['sql']:.2f}")
    return ", ".join(parts)


def _median_ratio(a: list[float], b: list[float]) -> tuple[float, float, float]:
    r = [x / y for x, y in zip(a, b, strict=False)]
    return statistics.median(r), min(r), max(r)


def _load() -> str:
    p = Path("/proc/loadavg")
    return p.read_text().split(" ")[0] if p.exists() else "?"


def report(
    results: dict[str, tuple[Dataset, dict[tuple[str, str], list[float]]]],
    command: str,
    loads: tuple[str, str],
    reps: int,
) -> str:
    lines = [
        "# Vector, array and wide inputs: MXNorm (engine auto) against MLlib and SQL",
        "",
        f"Command: `{command}` ({reps} interleaved repetitions per shape, one Spark process, "
        f"local[2]); load average (1 min) {loads[0]} at start, {loads[1]} at end, on 2 cores "
        "shared with other work: only the ratios within one run mean anything.",
        "",
        "Spark settings: " + ", ".join(f"`{k}={v}`" for k, v in SPARK_CONF.items()) + ".",
        "",
        "Fit + transform end to end from Parquet: MLlib `StandardScaler(withMean, withStd)` "
        "(VectorAssembler for scalar columns, `array_to_vector` for arrays; output one vector "
        "column); hand-written SQL (avg/var_pop aggregation, then `(x - mean) / std`); ours "
        "`MXNorm(...).fit(df).transform(df)`, output in the input's kind (vector, array or "
        "double columns). Ratios are pair by pair within a repetition: median (min-max). "
        f"SQL runs on shapes of at most {SQL_MAX_FEATURES} features (beyond, its "
        "aggregation of 2 expressions per feature takes over a minute to compile).",
        "",
        "| shape | sink | MLlib s | SQL s | ours s | ours / MLlib throughput | ours / SQL time "
        "| target | verdict |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for name, (ds, times) in results.items():
        for sink in SINKS:
            ml, sq, us = (times.get((c, sink), []) for c in ("mllib", "sql", "ours"))
            if not us:
                continue
            thr = _median_ratio(ml, us) if ml else (math.nan,) * 3
            rel = _median_ratio(us, sq) if sq else (math.nan,) * 3
            goal = 2.5 if name == "wide16" else 1.3
            ok = thr[0] >= goal and (name != "wide16" or rel[0] <= 1.0)
            target = f">= {goal}x MLlib" + (", <= SQL time" if name == "wide16" else "")
            lines.append(
                f"| {name} ({ds.rows:,} x {ds.features}{', vector' if ds.udt else ''}"
                f"{', array' if ds.vector and not ds.udt else ''}) | {sink} "
                f"| {_med(ml)} | {_med(sq)} | {_med(us)} "
                f"| {_ratio(thr, 'x')} "
                f"| {_ratio(rel, '')} | {target} "
                f"| {'met' if ok else 'missed'} |"
            )
    return "\n".join(lines) + "\n"


def _ratio(r: tuple[float, float, float], unit: str) -> str:
    return "-" if math.isnan(r[0]) else f"{r[0]:.2f}{unit} ({r[1]:.2f}-{r[2]:.2f})"


def _med(v: list[float]) -> str:
    return f"{statistics.median(v):.2f}" if v else "-"


def shape_worker(spec_path: str, result_path: str) -> int:
    """``--worker SPEC RESULT``: one shape (``dataset``, a Dataset as a dict; ``reps``;
    ``cases``) in this fresh process, for ``bench/run.py``: the times per case and sink."""
    spec = json.loads(Path(spec_path).read_text())
    ds = Dataset(**spec["dataset"])
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    ctx = Context(make_session("mxnorm-shapes"))
    try:
        with tempfile.TemporaryDirectory(prefix="mxshapes-") as tmp:
            times = run_shape(ctx, ds, int(spec["reps"]), Path(tmp), list(spec["cases"]))
    finally:
        ctx.spark.stop()
    out = {"dataset": spec["dataset"], "times": {f"{c}|{s}": v for (c, s), v in times.items()}}
    Path(result_path).write_text(json.dumps(out))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small inputs, for development")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated shapes")
    parser.add_argument("--cases", default=",".join(SHAPE_CASES), help="comma-separated cases")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", default=str(BENCH_DIR / "SHAPES.md"), help="the report")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)  # SPEC RESULT (bench/run.py)
    args = parser.parse_args(argv)
    if args.worker:
        return shape_worker(*args.worker)
    table = SHAPES_QUICK if args.quick else SHAPES
    names = [s for s in args.shapes.split(",") if s]
    cases = [c for c in args.cases.split(",") if c]
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    command = "python -m bench.shapes " + " ".join(argv if argv is not None else sys.argv[1:])
    start_load = _load()
    ctx = Context(make_session("mxnorm-shapes"))
    results: dict[str, tuple[Dataset, dict[tuple[str, str], list[float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="mxshapes-") as tmp:
        for name in names:
            ds = table[name]
            print(f"{name}: {ds.rows:,} rows x {ds.features} (load {_load()})", flush=True)
            results[name] = (ds, run_shape(ctx, ds, args.reps, Path(tmp), cases))
            text = report(results, command.strip(), (start_load, _load()), args.reps)
            Path(args.out).write_text(text)
    print(text, flush=True)
    ctx.spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
