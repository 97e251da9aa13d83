"""Backfill cost against the number of batch values.

``python -m bench.backfill_scaling [--quick] [--cases 100,2000,20000] [--big 500000]``

The input is 2M rows x 8 double features (``--quick``: 200k rows) in 16 Parquet files (16
partitions), with an integer ``batch`` column of B distinct values spread over every
partition (``batch = row % B``: the worst case, every partition holds every batch value).
Each case B runs in a fresh process (its own JVM) with the Spark settings of
``bench/cases.py`` (``local[2]``), one warm-up, then ``--reps`` repetitions of
``MXNorm(batchCol="batch").fit`` and of ``model.transform`` into the noop sink, timed
separately. The cases are interleaved round by round (one process per case and round) so
drift on a shared machine hits them alike. Peak RSS (psutil, sampled every 0.1 s) is the
driver's Python process plus its JVM, over the fit and the transform. Fit CPU is the CPU
time of the driver, its JVM and the Python workers over each fit: on a shared machine it
moves less than the wall time. After the timed fits the model is saved (its history in
columns) and loaded once: save and load seconds and the size of the history on disk.
The load average is read before and after the run.

``--big`` adds one case (default 500,000 values) run with ``spark.driver.memory=4g``
(``--big 0`` skips it). Writes ``bench/BACKFILL.md`` (``--out``) with the table and the
ratio fit(20,000) / fit(100), target <= 1.5.

``make bench`` measures the same ratio cheaper (``run_pair``, through ``--pair SPEC
RESULT``): fits only, 100 and 20,000 values in one process, interleaved rep by rep.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.cases import SPARK_CONF, spark_env
from bench.data import DATA_DIR

FEATURES = 8
FILES = 16
TARGET_RATIO = 1.5
ROOT = Path(__file__).resolve().parent


def ensure_data(rows: int, batches: int, root: Path = DATA_DIR) -> Path:
    """``rows`` x 8 doubles and ``batch = row % batches`` in 16 files (generated once)."""
    path = root / f"backfill-{rows}-{batches}"
    marker = path / "_done"
    if marker.exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    base, extra = divmod(rows, FILES)
    start = 0
    for i in range(FILES):
        n = base + (1 if i < extra else 0)
        rng = np.random.default_rng([14, 4, i])
        ids = np.arange(start, start + n, dtype=np.int64)
        cols: dict[str, Any] = {"batch": pa.array(ids % batches)}
        for j in range(FEATURES):
            # 1e9 offsets on some features: the exactness of the path under load.
            offset = 1e9 if j % 4 == 3 else 10.0 * j
            cols[f"f{j}"] = pa.array(offset + rng.standard_normal(n) * (1 + j / 4))
        pq.write_table(pa.table(cols), path / f"part-{i:03d}.parquet", row_group_size=n)
        start += n
    marker.write_text("ok")
    return path


# ---- one case in its own process -----------------------------------------------------------
def _session(driver_memory: str) -> Any:
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName("bench-backfill")
    # One partition per file (16), as in the measurement: without this Spark packs
    # the small files into 2 partitions.
    conf = {**SPARK_CONF, "spark.driver.memory": driver_memory}
    conf["spark.sql.files.openCostInBytes"] = str(256 * 2**20)
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _estimator() -> Any:
    from mxnorm_spark.ml.estimator import MXNorm

    cols = [f"f{j}" for j in range(FEATURES)]
    return MXNorm(inputCols=cols, outputCols=[f"z{j}" for j in range(FEATURES)], batchCol="batch")


def _first_file(spark: Any, data: str) -> Any:
    return spark.read.parquet(str(sorted(Path(data).glob("part-*.parquet"))[0]))


def run_case(data: str, reps: int, driver_memory: str) -> dict[str, Any]:
    """Warm-up, then ``reps`` timed fits and transforms; peak RSS of driver + JVM."""
    from bench.memory import PeakMemory
    from mxnorm_spark.ml.estimator import MXNormModel

    spark = _session(driver_memory)
    est = _estimator()
    df = spark.read.parquet(data)
    partitions = df.rdd.getNumPartitions()
    warm = _first_file(spark, data)
    est.fit(warm).transform(warm).write.format("noop").mode("overwrite").save()
    fits, transforms, cpus = [], [], []
    with PeakMemory() as mem:
        for _ in range(reps):
            c0, t0 = _tree_cpu(), time.perf_counter()
            model = est.fit(df)
            fits.append(time.perf_counter() - t0)
            cpus.append(_tree_cpu() - c0)
            t0 = time.perf_counter()
            model.transform(df).write.format("noop").mode("overwrite").save()
            transforms.append(time.perf_counter() - t0)
    batches = model.state.batches_seen
    saved = _save_and_load(model, MXNormModel)
    spark.stop()
    peak = mem.peaks
    return {
        "fit_s": fits,
        "fit_cpu_s": cpus,
        "transform_s": transforms,
        **saved,
        "partitions": partitions,
        "batches": batches,
        "peak_driver_mib": peak.driver / 2**20,
        "peak_jvm_mib": peak.jvm / 2**20,
        "peak_mib": (peak.driver + peak.jvm) / 2**20,
    }


def run_pair(
    spark: Any,
    paths: dict[str, str],
    reps: int,
    progress: Callable[[dict[str, Any]], object] | None = None,
    warmup: bool = True,
) -> dict[str, Any]:
    """Fits only, every input in one session, interleaved rep by rep (``make bench``).

    One JVM for all inputs costs one start-up instead of one per input and round, and puts
    each pair of fits side by side in time, so drift on a shared machine hits both alike.
    The order inside a round alternates, so neither input always runs on a warmer JVM.
    """
    from bench.memory import PeakMemory

    est = _estimator()
    for data in paths.values() if warmup else []:
        est.fit(_first_file(spark, data))
    dfs = {key: spark.read.parquet(data) for key, data in paths.items()}
    out: dict[str, Any] = {key: {"fit_s": [], "fit_cpu_s": []} for key in paths}
    result = {"values": out, "partitions": next(iter(dfs.values())).rdd.getNumPartitions()}
    with PeakMemory() as mem:
        for i in range(reps):
            for key in list(dfs) if i % 2 == 0 else list(reversed(dfs)):
                c0, t0 = _tree_cpu(), time.perf_counter()
                model = est.fit(dfs[key])
                out[key]["fit_s"].append(time.perf_counter() - t0)
                out[key]["fit_cpu_s"].append(_tree_cpu() - c0)
                out[key]["batches"] = model.state.batches_seen
                result["peak_driver_mib"] = mem.peaks.driver / 2**20
                result["peak_jvm_mib"] = mem.peaks.jvm / 2**20
                if progress is not None:  # a run stopped by the time limit keeps these
                    progress(result)
    result["peak_driver_mib"] = mem.peaks.driver / 2**20
    result["peak_jvm_mib"] = mem.peaks.jvm / 2**20
    return result


def pair_worker(spec_path: str, result_path: str) -> None:
    """``--pair SPEC RESULT``: ``run_pair`` in a fresh process, for ``bench/run.py``."""
    spec = json.loads(Path(spec_path).read_text())
    out = Path(result_path)
    try:
        spark = _session(spec.get("driver_memory", SPARK_CONF["spark.driver.memory"]))
        result = run_pair(
            spark, spec["paths"], spec["reps"], lambda r: out.write_text(json.dumps(r))
        )
        spark.stop()
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}
    out.write_text(json.dumps(result, indent=1))


def _tree_cpu() -> float:
    """CPU seconds so far of this process and every process below it (JVM, workers)."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            c = p.cpu_times()
        except psutil.Error:
            continue
        total += c.user + c.system + c.children_user + c.children_system
    return total


def _save_and_load(model: Any, model_class: Any) -> dict[str, float]:
    """Seconds to save and to load the model, and the MiB of its history on disk."""
    where = Path(tempfile.mkdtemp(prefix="bench-backfill-model-"))
    try:
        t0 = time.perf_counter()
        model.write().save(str(where / "m"))
        t1 = time.perf_counter()
        loaded = model_class.load(str(where / "m"))
        t2 = time.perf_counter()
        assert loaded.state.to_json() == model.state.to_json()
        files = [f for f in (where / "m").rglob("*") if f.is_file() and "history" in str(f)]
        size = sum(f.stat().st_size for f in files) / 2**20
        return {"save_s": t1 - t0, "load_s": t2 - t1, "history_mib": size}
    finally:
        shutil.rmtree(where, ignore_errors=True)


def _launch(data: Path, reps: int, driver_memory: str, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.backfill_scaling", "--worker", str(data)]
    cmd += ["--reps", str(reps), "--driver-memory", driver_memory]
    try:
        done = subprocess.run(
            cmd, env=spark_env(), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [x for x in done.stdout.splitlines() if x.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": f"exit {done.returncode}: {done.stderr.strip()[-400:]}"}
    return dict(json.loads(lines[-1]))


# ---- the report ----------------------------------------------------------------------------
def _merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[-1]["error"]}
    return {
        "fit_s": [t for r in ok for t in r["fit_s"]],
        "fit_cpu_s": [t for r in ok for t in r["fit_cpu_s"]],
        "transform_s": [t for r in ok for t in r["transform_s"]],
        "save_s": statistics.median(r["save_s"] for r in ok),
        "load_s": statistics.median(r["load_s"] for r in ok),
        "history_mib": ok[0]["history_mib"],
        "partitions": ok[0]["partitions"],
        "batches": ok[0]["batches"],
        "peak_mib": max(r["peak_mib"] for r in ok),
        "peak_driver_mib": max(r["peak_driver_mib"] for r in ok),
        "peak_jvm_mib": max(r["peak_jvm_mib"] for r in ok),
    }


def _row(b: int, r: dict[str, Any], memory: str) -> str:
    if "error" in r:
        return f"| {b:,} | {memory} | failed: {r['error']} | | | | | |"

    def span(ts: list[float]) -> str:
        return f"{statistics.median(ts):.2f} ({min(ts):.2f}-{max(ts):.2f})"

    return (
        f"| {b:,} | {memory} | {span(r['fit_s'])} | {span(r['fit_cpu_s'])} | "
        f"{span(r['transform_s'])} | "
        f"{r['peak_mib']:,.0f} ({r['peak_driver_mib']:,.0f} / {r['peak_jvm_mib']:,.0f}) | "
        f"{r['save_s']:.2f} / {r['load_s']:.2f} ({r['history_mib']:,.2f} MiB) | "
        f"{r['partitions']} |"
    )


def write_report(out: Path, args: argparse.Namespace, results: dict[int, Any], wall: float) -> str:
    rows, cases = args.rows, sorted(results)
    lines = [
        "# Backfill scaling: fit and transform time against the number of batch values",
        "",
        f"Run on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with "
        f"`python -m bench.backfill_scaling {' '.join(args.argv)}`".rstrip()
        + f" ({wall:.0f} s in all).",
        "",
        f"- {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}, commit {_commit()}",
        f"- input: {rows:,} rows x {FEATURES} double features (two with a 1e9 offset), "
        f"{FILES} Parquet files, `batch = row % B` (every partition holds every batch value)",
        f"- Spark: `local[2]`, the settings of `bench/cases.py`; `spark.driver.memory` as "
        f"listed; one process per case and round, {args.rounds} round(s) of {args.reps} "
        "repetition(s) after a warm-up, cases interleaved",
        "- fit: `MXNorm(inputCols=f0..f7, batchCol='batch').fit(df)` (engine `auto`); "
        "transform: `model.transform(df)` into the noop sink",
        "- peak RSS: Python driver + JVM (driver / JVM), psutil every 0.1 s; fit CPU: "
        "driver + JVM + Python workers",
        "- save / load: `model.write().save` and `MXNormModel.load` once, history on disk "
        "(`history_columns` Parquet and its `history` description)",
        f"- load average (1, 5, 15 min) before the run {_load(args.load_before)}, after "
        f"{_load(os.getloadavg())}, on {os.cpu_count()} cores",
        "",
        "| batch values | driver memory | fit s, median (min-max) | fit CPU s, median "
        "(min-max) | transform s, median (min-max) | peak RSS MiB (driver / JVM) | save / "
        "load s (history) | partitions |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for b in cases:
        lines.append(
            _row(b, results[b], "4g" if b == args.big else SPARK_CONF["spark.driver.memory"])
        )
    lo, hi = min(cases), 20_000 if 20_000 in results else max(c for c in cases if c != args.big)
    ok = "error" not in results[lo] and "error" not in results[hi]
    if ok:
        lines.append("")
        for what, key in (("fit", "fit_s"), ("fit CPU", "fit_cpu_s")):
            ratio = statistics.median(results[hi][key]) / statistics.median(results[lo][key])
            verdict = "met" if ratio <= TARGET_RATIO else f"MISSED by {ratio / TARGET_RATIO:.2f}x"
            lines.append(
                f"{what}({hi:,}) / {what}({lo:,}) = **{ratio:.2f}** (target <= {TARGET_RATIO}): "
                f"{verdict}  "
            )
    text = "\n".join(lines) + "\n"
    out.write_text(text)
    return text


def _load(avg: tuple[float, float, float]) -> str:
    return ", ".join(f"{x:.1f}" for x in avg)


def _commit() -> str:
    got = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    return got.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m bench.backfill_scaling")
    p.add_argument("--quick", action="store_true", help="200k rows, one round")
    p.add_argument("--cases", default="100,2000,20000", help="batch value counts")
    p.add_argument("--big", type=int, default=None, help="the 4g case (default 500,000, --quick 0)")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--reps", type=int, default=1, help="repetitions per process")
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--out", type=Path, default=ROOT / "BACKFILL.md")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--pair", nargs=2, help=argparse.SUPPRESS)
    p.add_argument(
        "--driver-memory", default=SPARK_CONF["spark.driver.memory"], help=argparse.SUPPRESS
    )
    args = p.parse_args(argv)
    if args.pair:
        pair_worker(*args.pair)
        return 0
    if args.worker:
        print(json.dumps(run_case(args.worker, args.reps, args.driver_memory)))
        return 0
    args.argv = argv
    args.load_before = os.getloadavg()
    args.rows = 200_000 if args.quick else 2_000_000
    args.rounds = args.rounds or (1 if args.quick else 3)
    if args.big is None:
        args.big = 0 if args.quick else 500_000
    cases = [int(c) for c in args.cases.split(",") if c]
    start = time.perf_counter()
    runs: dict[int, list[dict[str, Any]]] = {b: [] for b in cases}
    for i in range(args.rounds):
        for b in cases:
            got = _launch(ensure_data(args.rows, b), args.reps, "2g", args.timeout)
            print(f"round {i + 1} batches {b:,}: {json.dumps(got)[:300]}", flush=True)
            runs[b].append(got)
    results = {b: _merge(r) for b, r in runs.items()}
    if args.big:
        got = _launch(ensure_data(args.rows, args.big), args.reps, "4g", args.timeout)
        print(f"batches {args.big:,} (4g): {json.dumps(got)[:300]}", flush=True)
        results[args.big] = _merge([got])
    print(write_report(args.out, args, results, time.perf_counter() - start))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
