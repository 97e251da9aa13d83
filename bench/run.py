"""Run the benchmarks and write ``RESULTS.md``, ``results.png`` and ``results.json``.

    .venv/bin/python -m bench.run            # every target, < 10 min on a quiet 2-core machine
    .venv/bin/python -m bench.run --full     # every case on full-size inputs (~40 min)
    .venv/bin/python -m bench.run --quick    # small inputs, for development (~2-3 min)

Sections run one after the other and each is printed as it finishes: the numpy core
against the seed loop and the keyed serving lookup (no Spark), the batch inputs (wide16,
wide256, vec64), vec64 as a VectorUDT column, the streaming comparison, the backfill fit
ratio, the keyed stream. The targets
table (``bench/targets.py``) gives a verdict for each, from ratios measured in this run.

Inputs are generated once under ``bench/data/`` (gitignored). Every (case, dataset) runs
in a fresh process (see ``bench/worker.py`` for why and what one process does); the
streaming comparison runs one fresh process per implementation (``bench/stream_worker.py``);
the backfill fits run in one more (``bench/backfill_scaling.py``, ``run_pair``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from bench.cases import CASES, SINKS, SPARK_CONF, spark_env
from bench.data import DATA_DIR, FULL, QUICK, Dataset, ensure_dataset
from bench.report import readme_table, section_markdown, write_report
from bench.targets import BACKFILL_VALUES

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
# Spark cases first in the order users meet them; ours last so a missing engine (still
# being written) does not hide the baselines.
ALL_CASES = ["mllib", "sql", "numpy", "mxnorm-auto", "mxnorm-sql", "mxnorm-arrow"]
# `make bench` runs what the targets need: ours and MLlib everywhere, plus hand-written SQL
# and the single-process floor on wide16 (the README table). --full runs every case.
TARGET_CASES = {
    "wide16": ["mllib", "sql", "numpy", "mxnorm-auto"],
    "wide256": ["mllib", "mxnorm-auto"],
    "vec64": ["mllib", "mxnorm-auto"],
}
# `make bench`: wide16 at the size its targets are set on; wide256 and vec64 cut to what
# fits the 10 minutes on 2 cores (each still 8 files, so 8 tasks over 2 cores).
BENCH = {
    "wide16": FULL["wide16"],
    "wide256": replace(FULL["wide256"], rows=100_000, files=8),
    "vec64": replace(FULL["vec64"], rows=400_000, files=8),
}
BACKFILL_ROWS = {"quick": 200_000, "bench": 2_000_000, "full": 2_000_000}
# The 64-dim vector as a VectorUDT column: written by Spark from the array<double> input of
# the same name and size (bench/shapes.py), so it reuses vec64's files.
UDT = {mode: replace(table["vec64"], udt=True) for mode, table in (
    ("quick", QUICK), ("bench", {"vec64": replace(FULL["vec64"], rows=400_000, files=8)}),
    ("full", FULL))}  # fmt: skip
# The keyed stream (bench/keyed_scale.py): micro-batches of `stream_rows` over `keys` keys.
KEYED_STREAM = {
    "quick": {"keys": 20_000, "stream_rows": 20_000, "stream_batches": 3},
    "bench": {"keys": 1_000_000, "stream_rows": 1_000_000, "stream_batches": 3},
    "full": {"keys": 1_000_000, "stream_rows": 1_000_000, "stream_batches": 5},
}

METHOD = [
    "- End to end, timed with `time.perf_counter` in the driver: `spark.read.parquet` of the "
    "dataset directory, the statistics (a Spark job), the normalization and the write. "
    "The noop sink is `df.write.format('noop')` (every row computed, nothing stored); the "
    "Parquet sink overwrites a directory on the local disk. Each tool writes only its "
    "normalized output, in its natural shape (MLlib: one vector column).",
    "- One fresh process (so one fresh JVM) per case and dataset, all with the Spark settings "
    "above: no case profits from classes, JIT-compiled code or Python workers of another. "
    "In that process a warm-up per sink runs on one file of the dataset (same schema and "
    "code path, 1/8 to 1/12 of the rows: it loads classes, compiles and starts Python "
    "workers), its Parquet output is read back and checked to be a z-score of every "
    "feature (`output` column), then the timed repetitions run on the whole dataset with "
    "the two sinks interleaved in each round.",
    "- Ratios are pair by pair: repetition i of a case against repetition i of the "
    "baseline in the same run, median (min-max) of those ratios. `x MLlib` is a throughput "
    "ratio (higher is better); `time / SQL` a time ratio (lower is better).",
    "- A case still running after `--timeout` seconds (default 300) is stopped with its JVM; "
    "the table keeps the repetitions it finished and says so in `output` (a full-data pass "
    "that never finished shows as failed).",
    "- Peak memory: a psutil thread samples every 0.1 s the RSS of the driver, of the JVM "
    "and of all Python processes under the JVM (summed; forked workers share pages, so "
    "this is an upper bound), maximum over the timed repetitions.",
    "- MLlib's StandardScaler divides by the sample (n - 1) standard deviation; the others "
    "by the population one plus eps = 1e-8 (MXNorm's definition). Same cost.",
    "- Single process: `pyarrow.parquet.read_table` (multithreaded read), numpy two-pass "
    "mean and variance per column, `(x - mean) / scale`, `pyarrow.parquet.write_table` for "
    "the Parquet sink (nothing written for noop). It is the floor no Spark job on this "
    "machine can beat, not a distributed alternative.",
    "- `make bench` runs wide16 at full size and wide256 / vec64 at reduced sizes so the "
    "whole run stays under 10 minutes on 2 cores; `make bench-full` (`--full`) runs every "
    "case on 500k x 256 and 1M x 64. The load average before and after each section is in "
    "the table under Machine and load.",
]

STREAMING_NOTE = (
    "Each micro-batch is one Parquet file of the given size (file source, "
    "`maxFilesPerTrigger=1`, `trigger(availableNow=True)`); latency is Spark's "
    "`triggerExecution` duration per batch, the first batch(es) of each stream excluded as "
    "warm-up. `mxnorm` is the project's streaming normalizer (state update, state commit, "
    "normalized Parquet output); `plain` is a `foreachBatch` that only appends the batch to "
    "Parquet. Overhead = median(mxnorm) - median(plain), and for micro-batches over 1k rows "
    "also as a share of median(plain). The throughput stream reads the wide16 dataset, one "
    "file per micro-batch: rows / wall time from `start()` to the end."
)

BACKFILL_NOTE = (
    "`MXNorm(inputCols=f0..f7, batchCol='batch').fit(df)` (engine auto) on 8 doubles (two "
    "with a 1e9 offset) in 16 Parquet files, `batch = row % B` so every partition holds every "
    "batch value. Both inputs in one fresh process (`local[2]`, 16 partitions), one warm-up "
    "fit on one file of each, then the timed fits interleaved (the order alternating round "
    "by round); the ratio is pair by pair, the median. Fit CPU is the driver's, the JVM's "
    "and the Python workers'. `make bench-backfill` measures 2,000 and 500,000 values too, "
    "with the transform, the save and the load (bench/BACKFILL.md)."
)


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": psutil.cpu_count(logical=True),
        "memory_gib": psutil.virtual_memory().total / 2**30,
        "os": f"{platform.system()} {platform.release()}",
    }


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("pyspark", "pyarrow", "numpy", "pandas"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "missing"
    try:
        java = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False)
        out["java"] = java.stderr.splitlines()[0].split('"')[1]
    except (OSError, IndexError):
        out["java"] = "unknown"
    try:
        out["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        out["commit"] = "unknown"
    return out


def _launch(module: list[str], spec: dict[str, Any], log: Path, timeout: float) -> dict[str, Any]:
    """Run ``python -m MODULE... SPEC RESULT`` in a fresh process; return its result dict."""
    with tempfile.TemporaryDirectory(prefix="mxbench-") as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        with log.open("a") as fh:
            fh.write(f"\n==== {' '.join(module)} {json.dumps(spec)}\n")
            fh.flush()
            # Its own process group, so a timeout also ends the worker's JVM and Python workers.
            proc = subprocess.Popen(
                [sys.executable, "-m", *module, str(spec_path), str(result_path)],
                cwd=ROOT,
                env=spark_env(),
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                code: int | str = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                code = f"timed out after {timeout:.0f} s"
        if result_path.exists():
            result = dict(json.loads(result_path.read_text()))
            if isinstance(code, str):
                result["check"] = f"{code}, after the repetitions shown"
            return result
        return {"error": f"worker exited with {code} and no result (see {log})"}


def _progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _summary_line(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"FAILED: {r['error']}"
    parts = []
    for sink, v in r["sinks"].items():
        times = sorted(v["times"])
        if times:
            parts.append(f"{sink} median {times[len(times) // 2]:.2f} s")
    return ", ".join(parts) + f" (check: {r.get('check', '-')})"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small inputs, for development")
    size.add_argument("--full", action="store_true", help="every case, full-size inputs")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions (>= 3)")
    p.add_argument("--cases", default="", help="comma-separated cases (default: per dataset)")
    p.add_argument(
        "--datasets", default="wide16,wide256,vec64", help="comma-separated batch inputs"
    )
    p.add_argument("--no-streaming", action="store_true", help="skip the streaming comparison")
    p.add_argument("--no-backfill", action="store_true", help="skip the backfill fit ratio")
    p.add_argument("--no-core", action="store_true", help="skip the numpy core and keyed serving")
    p.add_argument("--no-udt", action="store_true", help="skip the VectorUDT input")
    p.add_argument("--no-keyed-stream", action="store_true", help="skip the keyed stream")
    p.add_argument("--out-dir", type=Path, default=BENCH_DIR, help="where the report goes")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR, help="where inputs are generated")
    p.add_argument("--work-dir", type=Path, default=BENCH_DIR / "work", help="scratch outputs")
    p.add_argument(
        "--timeout", type=float, default=300, help="seconds per case (a process); stops it there"
    )
    p.add_argument("--note", default="", help="a sentence added under the title of RESULTS.md")
    args = p.parse_args(argv)
    args.mode = "quick" if args.quick else "full" if args.full else "bench"
    if args.reps < 1:
        p.error("--reps must be at least 1")
    unknown = {c for c in args.cases.split(",") if c} - set(CASES)
    if unknown:
        p.error(f"unknown case(s) {sorted(unknown)}; valid: {sorted(CASES)}")
    unknown = {d for d in args.datasets.split(",") if d} - set(datasets_for(args.mode))
    if unknown:
        p.error(f"unknown dataset(s) {sorted(unknown)}; valid: {sorted(datasets_for(args.mode))}")
    return args


def datasets_for(mode: str) -> dict[str, Dataset]:
    return {"quick": QUICK, "full": FULL}.get(mode, BENCH)


def cases_for(mode: str, dataset: str, chosen: str = "") -> list[str]:
    """``--cases`` if given, else every case (``--full``) or those the targets need."""
    if chosen:
        return chosen.split(",")
    return ALL_CASES if mode == "full" else TARGET_CASES.get(dataset, ALL_CASES)


class Run:
    """The results of one run so far, written out after every step: an interrupted run
    still leaves what it measured."""

    def __init__(self, args: argparse.Namespace, argv: list[str] | None, chosen: list[Dataset]):
        self.args = args
        self.started = time.perf_counter()
        self.log = args.work_dir / "bench.log"
        command = (
            os.environ.get("MXBENCH_COMMAND")
            or (
                "python -m bench.run " + shlex.join(argv if argv is not None else sys.argv[1:])
            ).strip()
        )
        meta = {
            "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "command": command,
            "mode": args.mode,
            "reps": args.reps,
            "load_start": os.getloadavg()[0],
            "machine": machine(),
            "versions": versions(),
            "spark_conf": SPARK_CONF,
            "method": METHOD,
            "streaming_note": STREAMING_NOTE,
            "backfill_note": BACKFILL_NOTE,
            "note": args.note,
        }
        self.results: dict[str, Any] = {
            "meta": meta,
            "datasets": [asdict(ds) for ds in chosen],
            "batch": [],
            "streaming": [],
            "backfill": None,
            "core": None,
            "udt": None,
            "keyed_stream": None,
            "sections": [],
        }

    def save(self, complete: bool = False) -> None:
        meta = self.results["meta"]
        meta["wall_s"] = time.perf_counter() - self.started
        meta["load_end"] = os.getloadavg()[0]
        meta["complete"] = complete
        self.args.out_dir.mkdir(parents=True, exist_ok=True)
        (self.args.out_dir / "results.json").write_text(json.dumps(self.results, indent=1))
        write_report(self.results, self.args.out_dir)

    def section(self, name: str, body: Callable[[], None]) -> None:
        """Run one section, note its wall time and the load around it, print its tables."""
        before, t0 = os.getloadavg(), time.perf_counter()
        body()
        wall, after = time.perf_counter() - t0, os.getloadavg()
        self.results["sections"].append(
            {"name": name, "wall_s": wall, "load_before": before, "load_after": after}
        )
        self.save()
        _progress(f"{name} done in {wall:.0f} s (load average {before[0]:.2f} -> {after[0]:.2f})")
        print("\n".join(section_markdown(self.results, name)) + "\n", flush=True)

    def launch(self, module: list[str], spec: dict[str, Any]) -> dict[str, Any]:
        return _launch(module, spec, self.log, timeout=self.args.timeout)


def run_dataset(run: Run, ds: Dataset, path: Path) -> None:
    for case in cases_for(run.args.mode, ds.name, run.args.cases):
        _progress(f"{ds.name}: {case} ...")
        spec = {
            "case": case,
            "dataset": asdict(ds),
            "data_path": str(path),
            "work_dir": str(run.args.work_dir),
            "sinks": list(SINKS),
            "reps": run.args.reps,
        }
        r = run.launch(["bench.worker"], spec)
        r.setdefault("case", case)
        r.setdefault("dataset", ds.name)
        run.results["batch"].append(r)
        _progress(f"{ds.name}: {case}: {_summary_line(r)}")
        run.save()


def run_streaming(run: Run) -> None:
    from bench.stream_worker import stream_plan

    args = run.args
    plan = stream_plan(args.quick, args.data_dir, datasets_for(args.mode)["wide16"])
    for impl in ("plain", "mxnorm"):
        _progress(f"streaming: {impl} ...")
        spec = {"impl": impl, "plan": plan, "work_dir": str(args.work_dir)}
        r = run.launch(["bench.stream_worker"], spec)
        r.setdefault("impl", impl)
        run.results["streaming"].append(r)
        _progress(f"streaming: {impl}: {r.get('error', 'done')}")
        run.save()
    shutil.rmtree(args.work_dir / "stream", ignore_errors=True)


def run_backfill(run: Run) -> None:
    from bench.backfill_scaling import ensure_data

    rows = BACKFILL_ROWS[run.args.mode]
    paths = {str(b): str(ensure_data(rows, b, run.args.data_dir)) for b in BACKFILL_VALUES}
    values = " and ".join(f"{b:,}" for b in BACKFILL_VALUES)
    _progress(f"backfill: fit with {values} batch values, {rows:,} rows ...")
    r = run.launch(["bench.backfill_scaling", "--pair"], {"paths": paths, "reps": run.args.reps})
    run.results["backfill"] = {"rows": rows, **r}
    _progress(f"backfill: {r.get('error', 'done')}")


def run_core(run: Run) -> None:
    """No Spark: the numpy core against the seed loop, then the keyed serving lookup, each
    in a fresh process (the second pins itself to one core)."""
    spec = {"quick": run.args.quick}
    _progress("core: the numpy core against the seed loop ...")
    seed = run.launch(["bench.core_vs_seed", "--worker"], spec)
    _progress("core: keyed serving, 1M keys ..." if not run.args.quick else "core: keyed serving")
    keyed = run.launch(["bench.serving_keyed", "--worker"], spec)
    run.results["core"] = {"seed": seed, "keyed_serving": keyed}


def run_udt(run: Run) -> None:
    ds = UDT[run.args.mode]  # its array twin is generated under bench/data/ if missing
    _progress(f"vec64-udt: {ds.rows:,} rows as a VectorUDT column ...")
    spec = {"dataset": asdict(ds), "reps": run.args.reps, "cases": ["mllib", "ours"]}
    run.results["udt"] = run.launch(["bench.shapes", "--worker"], spec)


def run_keyed_stream(run: Run) -> None:
    spec = KEYED_STREAM[run.args.mode]
    _progress(
        f"keyed stream: {spec['stream_batches']} micro-batches of {spec['stream_rows']:,} rows "
        f"over {spec['keys']:,} keys ..."
    )
    run.results["keyed_stream"] = run.launch(["bench.keyed_scale", "--worker"], spec)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    table = datasets_for(args.mode)
    chosen = [table[n] for n in args.datasets.split(",") if n]
    args.work_dir.mkdir(parents=True, exist_ok=True)
    run = Run(args, argv, chosen)
    run.log.write_text("")
    _progress(f"inputs under {args.data_dir} (generated once)")
    if not args.no_core:
        run.section("core", partial(run_core, run))
    paths = {ds.name: ensure_dataset(ds, args.data_dir) for ds in chosen}
    for ds in chosen:
        run.section(ds.name, partial(run_dataset, run, ds, paths[ds.name]))
    if not args.no_streaming:
        run.section("streaming", partial(run_streaming, run))
    if not args.no_udt:
        run.section("vec64-udt", partial(run_udt, run))
    if not args.no_backfill:
        run.section("backfill", partial(run_backfill, run))
    if not args.no_keyed_stream:
        run.section("keyed-stream", partial(run_keyed_stream, run))
    run.save(complete=True)
    _progress(
        f"wrote {args.out_dir}/RESULTS.md and results.png in {run.results['meta']['wall_s']:.0f} s"
    )
    print("\n".join(readme_table(run.results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
