"""Run the benchmarks and write ``bench/RESULTS.md``, ``bench/results.png``, ``bench/results.json``.

    .venv/bin/python -m bench.run            # wide16 + streaming, < 10 min on 2 cores
    .venv/bin/python -m bench.run --datasets wide16,wide256,vec64   # every input, ~33 min
    .venv/bin/python -m bench.run --quick    # small inputs, for development (~2 min)

Inputs are generated once under ``bench/data/`` (gitignored). Every (case, dataset) runs
in a fresh process (see ``bench/worker.py`` for why and what one process does); the
streaming comparison runs one fresh process per implementation (``bench/stream_worker.py``).
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
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from bench.cases import CASES, SINKS, SPARK_CONF, spark_env
from bench.data import DATA_DIR, FULL, QUICK, Dataset, ensure_dataset
from bench.report import readme_table, write_report

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
# Spark cases first in the order users meet them; ours last so a missing engine (still
# being written) does not hide the baselines.
DEFAULT_CASES = ["mllib", "sql", "numpy", "mxnorm-auto", "mxnorm-sql", "mxnorm-arrow"]

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
]

STREAMING_NOTE = (
    "Each micro-batch is one Parquet file of the given size (file source, "
    "`maxFilesPerTrigger=1`, `trigger(availableNow=True)`); latency is Spark's "
    "`triggerExecution` duration per batch, the first batch(es) of each stream excluded as "
    "warm-up. `mxnorm` is the project's streaming normalizer (state update, state commit, "
    "normalized Parquet output); `plain` is a `foreachBatch` that only appends the batch to "
    "Parquet. Overhead = median(mxnorm) - median(plain). The throughput stream reads the "
    "wide16 dataset, one file per micro-batch: rows / wall time from `start()` to the end."
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


def _launch(module: str, spec: dict[str, Any], log: Path, timeout: float) -> dict[str, Any]:
    """Run ``python -m module SPEC RESULT`` in a fresh process; return its result dict."""
    with tempfile.TemporaryDirectory(prefix="mxbench-") as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        with log.open("a") as fh:
            fh.write(f"\n==== {module} {json.dumps(spec)}\n")
            fh.flush()
            # Its own process group, so a timeout also ends the worker's JVM and Python workers.
            proc = subprocess.Popen(
                [sys.executable, "-m", module, str(spec_path), str(result_path)],
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
    p.add_argument("--quick", action="store_true", help="small inputs, for development")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions (>= 3)")
    p.add_argument("--cases", default=",".join(DEFAULT_CASES), help="comma-separated cases")
    p.add_argument(
        "--datasets",
        default="wide16",
        help="comma-separated datasets: wide16 (default: the targets), wide256, vec64",
    )
    p.add_argument("--no-streaming", action="store_true", help="skip the streaming comparison")
    p.add_argument("--out-dir", type=Path, default=BENCH_DIR, help="where the report goes")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR, help="where inputs are generated")
    p.add_argument("--work-dir", type=Path, default=BENCH_DIR / "work", help="scratch outputs")
    p.add_argument(
        "--timeout", type=float, default=300, help="seconds per case (a process); stops it there"
    )
    p.add_argument("--note", default="", help="a sentence added under the title of RESULTS.md")
    args = p.parse_args(argv)
    if args.reps < 1:
        p.error("--reps must be at least 1")
    unknown = set(args.cases.split(",")) - set(CASES)
    if unknown:
        p.error(f"unknown case(s) {sorted(unknown)}; valid: {sorted(CASES)}")
    table = QUICK if args.quick else FULL
    unknown = set(args.datasets.split(",")) - set(table)
    if unknown:
        p.error(f"unknown dataset(s) {sorted(unknown)}; valid: {sorted(table)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    table = QUICK if args.quick else FULL
    chosen: list[Dataset] = [table[n] for n in args.datasets.split(",")]
    cases = args.cases.split(",")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    log = args.work_dir / "bench.log"
    log.write_text("")
    _progress(f"inputs under {args.data_dir} (generated once)")
    paths = {ds.name: ensure_dataset(ds, args.data_dir) for ds in chosen}

    command = (
        os.environ.get("MXBENCH_COMMAND")
        or ("python -m bench.run " + shlex.join(argv if argv is not None else sys.argv[1:])).strip()
    )
    machine_info, version_info = machine(), versions()

    def save(
        batch: list[dict[str, Any]], streaming: list[dict[str, Any]], complete: bool = False
    ) -> dict[str, Any]:
        """Write the report so far: an interrupted run still leaves what it measured."""
        results = {
            "meta": {
                "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
                "command": command,
                "mode": "quick" if args.quick else "full",
                "reps": args.reps,
                "wall_s": time.perf_counter() - started,
                "load_start": load_start,
                "load_end": os.getloadavg()[0],
                "machine": machine_info,
                "versions": version_info,
                "spark_conf": SPARK_CONF,
                "method": METHOD,
                "streaming_note": STREAMING_NOTE,
                "note": args.note,
                "complete": complete,
            },
            "datasets": [asdict(ds) for ds in chosen],
            "batch": batch,
            "streaming": streaming,
        }
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "results.json").write_text(json.dumps(results, indent=1))
        write_report(results, args.out_dir)
        return results

    batch: list[dict[str, Any]] = []
    for ds in chosen:
        for case in cases:
            _progress(f"{ds.name}: {case} ...")
            spec = {
                "case": case,
                "dataset": asdict(ds),
                "data_path": str(paths[ds.name]),
                "work_dir": str(args.work_dir),
                "sinks": list(SINKS),
                "reps": args.reps,
            }
            r = _launch("bench.worker", spec, log, timeout=args.timeout)
            r.setdefault("case", case)
            r.setdefault("dataset", ds.name)
            batch.append(r)
            _progress(f"{ds.name}: {case}: {_summary_line(r)}")
            save(batch, [])

    streaming: list[dict[str, Any]] = []
    if not args.no_streaming:
        from bench.stream_worker import stream_plan

        plan = stream_plan(args.quick, args.data_dir, table["wide16"])
        for impl in ("plain", "mxnorm"):
            _progress(f"streaming: {impl} ...")
            r = _launch(
                "bench.stream_worker",
                {"impl": impl, "plan": plan, "work_dir": str(args.work_dir)},
                log,
                timeout=args.timeout,
            )
            r.setdefault("impl", impl)
            streaming.append(r)
            _progress(f"streaming: {impl}: {r.get('error', 'done')}")
            save(batch, streaming)

    results = save(batch, streaming, complete=True)
    shutil.rmtree(args.work_dir / "stream", ignore_errors=True)
    _progress(
        f"wrote {args.out_dir}/RESULTS.md and results.png in {results['meta']['wall_s']:.0f} s"
    )
    print("\n".join(readme_table(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
