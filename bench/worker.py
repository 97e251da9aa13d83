"""One benchmark case in a fresh process: ``python -m bench.worker SPEC.json RESULT.json``.

Each (case, dataset) pair gets its own process, hence its own JVM: no case profits from
classes loaded, code JIT-compiled or Python workers started by another. In that process:
start the session (timed apart), run one warm-up per sink on one file of the dataset (same
schema and code path; it loads classes, JIT-compiles and starts Python workers), check the
warm-up's Parquet output is a z-score, then ``reps`` timed rounds over the whole dataset,
the sinks interleaved inside each round so drift on a shared machine hits both alike.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.cases import CASES, SPARK_CASES, Context, check_output, make_session, mxnorm_api
from bench.data import Dataset, parquet_files
from bench.memory import PeakMemory, Peaks


def _rows(paths: list[Path]) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in paths)


def run(
    spec: dict[str, Any], progress: Callable[[dict[str, Any]], object] | None = None
) -> dict[str, Any]:
    name = spec["case"]
    ds = Dataset(**spec["dataset"])
    data = Path(spec["data_path"])
    work = Path(spec["work_dir"])
    sinks: list[str] = spec["sinks"]
    reps: int = spec["reps"]
    case = CASES[name]
    result: dict[str, Any] = {"case": name, "dataset": ds.name, "rows": ds.rows, "sinks": {}}
    if name.startswith("mxnorm"):
        result["api"] = mxnorm_api()

    t0 = time.perf_counter()
    spark = make_session(f"bench-{name}-{ds.name}") if name in SPARK_CASES else None
    result["startup_s"] = time.perf_counter() - t0
    ctx = Context(spark)

    files = parquet_files(data)
    warm_source = [str(files[0])]
    warm_rows = _rows(files[:1])
    out = {sink: str(work / f"{name}-{ds.name}-{sink}") for sink in sinks}
    for sink in sinks:
        t0 = time.perf_counter()
        case(ctx, ds, warm_source, sink, out[sink])
        result["sinks"][sink] = {"warmup_s": time.perf_counter() - t0, "times": [], "peak_mib": {}}
        if sink == "parquet":
            result["check"] = check_output(out[sink], ds, warm_rows)

    peaks: dict[str, Peaks] = {sink: Peaks() for sink in sinks}
    for _ in range(reps):
        for sink in sinks:
            mem = PeakMemory()
            with mem:
                t0 = time.perf_counter()
                case(ctx, ds, [str(data)], sink, out[sink])
                elapsed = time.perf_counter() - t0
            result["sinks"][sink]["times"].append(elapsed)
            peaks[sink] = peaks[sink].max(mem.peaks)
            result["sinks"][sink]["peak_mib"] = peaks[sink].as_mib()
            if progress is not None:  # a run stopped by the time limit keeps what it measured
                progress(result)
    for sink, peak in peaks.items():
        result["sinks"][sink]["peak_mib"] = peak.as_mib()

    for path in out.values():
        shutil.rmtree(path, ignore_errors=True)
    if spark is not None:
        spark.stop()
    return result


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(args[0]).read_text())
    out = Path(args[1])
    try:
        result = run(spec, lambda r: out.write_text(json.dumps(r, indent=1)))
    except Exception as exc:
        result = {
            "case": spec["case"],
            "dataset": spec["dataset"]["name"],
            "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300],
            "traceback": traceback.format_exc(),
        }
    out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
