"""Where the time of the stream, backfill and keyed-stream rows goes: ``python -m
bench.profile_stream {stream [ROWS [PASSES]],backfill,kernel}`` (bench/PROFILE_STREAM.md).

* ``stream``: the ROWS-row micro-batches of ``make bench`` (default 1000000:
  ``bench/data/stream1000000-*``; 100000 and 1000 are generated if missing), each written
  once by a plain Parquet write and once through ``MXNormStream.foreach_batch``,
  interleaved in one process, PASSES times over the files (default 1); wall time of the
  state reads, the driver read of a small batch (``_small_batch``), the moments job, the
  history record, the commit, the normalized write (``_write``, of which ``_publish`` is
  the Spark path's write).
* ``backfill``: ``MXNorm(batchCol=...).fit`` on 100 and 20,000 batch values (the inputs of
  ``make bench``) with the partials merged on the driver (default) and through Spark
  (``DRIVER_MERGE_PARTIALS = 0``), interleaved in one process; wall and CPU (driver + JVM
  + workers); checks that both give the same final state, bit for bit.
* ``kernel``: one task of the keyed stream's one job, no Spark: 62,500 rows and as many
  keys (1M over 16 partitions), 8 features; CPU per section, median of 5.

Prints its figures; writes nothing to the repository.
"""

from __future__ import annotations

import functools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.data import DATA_DIR

Timings = dict[str, list[float]]


def _timed(
    store: Timings, name: str, fn: Callable[..., Any], clock: Any = time.perf_counter
) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = clock()
        try:
            return fn(*args, **kwargs)
        finally:
            store.setdefault(name, []).append(clock() - t0)

    return wrapper


def _load() -> str:
    return ", ".join(f"{v:.1f}" for v in os.getloadavg())


def _stream_files(rows: int) -> list[Path]:
    from bench.data import Dataset, ensure_dataset
    from bench.stream_worker import FULL_SIZES

    files = sorted(DATA_DIR.glob(f"stream{rows}-*/part-*.parquet"))
    if files:
        return files
    count = {n: f for n, f, _ in FULL_SIZES}.get(rows)
    if count is None or rows >= 1_000_000:  # the 1M inputs are 4 GB: make bench writes them
        raise SystemExit(f"no bench/data/stream{rows}-*: run make bench first")
    ds = Dataset(f"stream{rows}", rows * count, 16, vector=False, files=count)
    return sorted(ensure_dataset(ds).glob("part-*.parquet"))


def stream(rows: int = 1_000_000, passes: int = 1) -> None:
    from bench.cases import make_session
    from mxnorm_spark.batch import aggregate
    from mxnorm_spark.streaming.updater import MXNormStream

    files = _stream_files(rows) * passes
    spark = make_session("profile-stream")
    work = Path(tempfile.mkdtemp(prefix="mxnorm-profile-stream-"))
    t: Timings = {}
    aggregate.batch_moments_and_rows = _timed(t, "moments job", aggregate.batch_moments_and_rows)
    cols = spark.read.parquet(str(files[0])).columns
    st = MXNormStream(
        spark, str(work / "state"), cols=cols, output=str(work / "out"), progress=None
    )
    st.store.get = _timed(t, "state reads: get", st.store.get)  # type: ignore[method-assign]
    st.store.state_before = _timed(t, "state reads: state_before", st.store.state_before)  # type: ignore[method-assign]
    st._small_batch = _timed(t, "driver read of a small batch", st._small_batch)  # type: ignore[method-assign]
    st.store.record_batch = _timed(t, "history record", st.store.record_batch)  # type: ignore[method-assign]
    st.store.commit = _timed(t, "commit", st.store.commit)  # type: ignore[method-assign]
    st._write = _timed(t, "normalize + write + rename (_write)", st._write)  # type: ignore[method-assign]
    st._publish = _timed(t, "  of which the Spark write (_publish)", st._publish)  # type: ignore[method-assign]
    total = _timed(t, "mxnorm micro-batch", st._process)
    print(f"load before: {_load()}", flush=True)
    for i, f in enumerate(files):
        t0 = time.perf_counter()
        spark.read.parquet(str(f)).write.mode("overwrite").parquet(str(work / f"plain/b{i}"))
        t.setdefault("plain micro-batch", []).append(time.perf_counter() - t0)
        total(spark.read.parquet(str(f)), i)
        plain, ours = t["plain micro-batch"][-1], t["mxnorm micro-batch"][-1]
        load = os.getloadavg()[0]
        print(f"batch {i}: plain {plain:.2f} s, mxnorm {ours:.2f} s (load {load:.1f})", flush=True)
    print(f"load after: {_load()}")
    print("\n| step (the first micro-batch left out) | median s |\n|---|---:|")
    for name, v in t.items():
        print(f"| {name} | {statistics.median(v[1:] or v):.3f} |")
    ratios = [
        a / b for a, b in zip(t["mxnorm micro-batch"][1:], t["plain micro-batch"][1:], strict=True)
    ]
    print(f"\nmxnorm / plain, pair by pair: {[round(r, 2) for r in ratios]}")
    spark.stop()


def backfill(reps: int) -> None:
    import numpy as np

    from bench.backfill_scaling import _estimator, _first_file, _session, _tree_cpu, ensure_data
    from mxnorm_spark.engines import partials

    paths = {b: str(ensure_data(2_000_000, b)) for b in (100, 20_000)}
    spark = _session("2g")
    est = _estimator()
    limits = {"driver": partials.DRIVER_MERGE_PARTIALS, "spark": 0}
    for limit in limits.values():
        partials.DRIVER_MERGE_PARTIALS = limit
        for p in paths.values():
            est.fit(_first_file(spark, p))
    dfs = {b: spark.read.parquet(p) for b, p in paths.items()}
    res: dict[tuple[str, int], list[tuple[float, float]]] = {}
    states = {}
    print(f"load before: {_load()}", flush=True)
    for i in range(reps):
        order = [(how, b) for how in limits for b in dfs]
        for how, b in order if i % 2 == 0 else reversed(order):
            partials.DRIVER_MERGE_PARTIALS = limits[how]
            c0, t0 = _tree_cpu(), time.perf_counter()
            states[(how, b)] = est.fit(dfs[b]).state
            res.setdefault((how, b), []).append((time.perf_counter() - t0, _tree_cpu() - c0))
            w, c = res[(how, b)][-1]
            print(f"round {i} merge on {how}, {b} values: {w:.2f} s, CPU {c:.2f} s "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)  # fmt: skip
    print(f"load after: {_load()}")
    for b in dfs:
        a, c = states[("driver", b)], states[("spark", b)]
        same = all(np.array_equal(getattr(a, f), getattr(c, f)) for f in ("mean", "var", "count"))
        print(f"{b} values: the same final state bit for bit: {same}")
    print("\n| merge | fit(100) s | fit(20,000) s | ratio, pair by pair | CPU ratio |")
    print("|---|---:|---:|---:|---:|")
    for how in limits:
        lo, hi = res[(how, 100)], res[(how, 20_000)]
        wall = [h[0] / lo_[0] for h, lo_ in zip(hi, lo, strict=True)]
        cpu = [h[1] / lo_[1] for h, lo_ in zip(hi, lo, strict=True)]
        print(f"| {how} | {statistics.median(x for x, _ in lo):.2f} | "
              f"{statistics.median(x for x, _ in hi):.2f} | {statistics.median(wall):.2f} "
              f"({min(wall):.2f}-{max(wall):.2f}) | {statistics.median(cpu):.2f} |")  # fmt: skip
    spark.stop()


def kernel() -> None:
    import numpy as np
    import pyarrow as pa
    from pyspark.sql import types as T
    from pyspark.sql.pandas.types import to_arrow_schema

    import mxnorm_spark.keyed.stream_kernel as K
    from mxnorm_spark.core.moments import Moments
    from mxnorm_spark.core.state import MXNormState, StateOptions
    from mxnorm_spark.keyed.kernel import filled
    from mxnorm_spark.store.filesystems import LocalFileSystem
    from mxnorm_spark.streaming._keyed_one_job import SnapshotPartFiles, row_output

    n, k = 62_500, 8
    opts = StateOptions(alpha=0.1)
    layout = K.SnapshotLayout(k, opts, "after")
    feats = tuple(f"f{j}" for j in range(k))
    keys = np.random.default_rng(0).permutation(n * 16)[:n].astype(np.int64)

    def data(seed: int) -> pa.Table:
        r = np.random.default_rng(seed)
        cols = {"key": pa.array(keys)}
        cols |= {f"__mx_v{j}": pa.array(1e9 + r.standard_normal(n)) for j in range(k)}
        return pa.table(cols)

    scalars = [("last_batch", T.LongType()), ("batches_seen", T.IntegerType()),
               ("key_rows", T.LongType()), ("rows", T.LongType())]  # fmt: skip
    value_cols = [*layout.state_columns, *layout.constant_columns]
    schema = T.StructType(
        [T.StructField("key", T.LongType()), *(T.StructField(a, b) for a, b in scalars)]
        + [T.StructField(c, T.DoubleType()) for c in value_cols]
    )
    floats = tuple(c for c in value_cols if "count" not in c)
    state = MXNormState.create(list(feats), options=opts).update(
        Moments.from_array(1e9 + np.random.default_rng(5).standard_normal((100, k)))
    )
    output = row_output(["key", *feats], [], keys=["key"], outputs=list(feats), features=feats,
                        layout=layout, global_constants=filled(state).normalization_constants(),
                        min_key_rows=1, handle_invalid="keep")  # fmt: skip
    root = tempfile.mkdtemp(prefix="mxnorm-profile-kernel-")

    def run(b: int, prev: str | None) -> None:
        parts = SnapshotPartFiles(
            LocalFileSystem(), f"{root}/s{b}", prev, floats, to_arrow_schema(schema)
        )
        fn = K.fold_normalize_kernel(1, layout, output, batch_id=b, evict_after=None, parts=parts,
                                     data_schema=data(b).schema)  # fmt: skip
        for _ in fn(iter(data(b).to_batches(max_chunksize=10_000))):
            pass

    run(0, None)
    run(1, f"{root}/s0")
    t: Timings = {}
    cpu = time.process_time
    K._union_rows = _timed(t, "the union's order (sort by key and source)", K._union_rows, cpu)
    K._fold = _timed(t, "_fold", K._fold, cpu)
    K.SnapshotLayout.before = _timed(t, "  layout.before", K.SnapshotLayout.before, cpu)  # type: ignore[method-assign]
    K.SnapshotLayout.step = _timed(t, "  layout.step", K.SnapshotLayout.step, cpu)  # type: ignore[method-assign]
    K._fold_and_normalize = _timed(
        t, "fold and normalize (incl. _fold)", K._fold_and_normalize, cpu
    )
    SnapshotPartFiles.previous = _timed(
        t, "read the previous part", SnapshotPartFiles.previous, cpu
    )  # type: ignore[method-assign]
    SnapshotPartFiles.write = _timed(t, "write the new part", SnapshotPartFiles.write, cpu)  # type: ignore[method-assign]
    whole = _timed(t, "the task (input made outside)", run, cpu)
    print(f"load before: {_load()}")
    for r in range(5):
        whole(2 + r, f"{root}/s1")
    print(f"load after: {_load()}\n\n| section | CPU ms, median of 5 |\n|---|---:|")
    for name, v in t.items():
        print(f"| {name} | {1000 * statistics.median(v):.1f} |")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    what = args[0] if args else ""
    if what == "stream":
        stream(*(int(a) for a in args[1:3]))
    elif what == "backfill":
        backfill(int(args[1]) if len(args) > 1 else 2)
    elif what == "kernel":
        kernel()
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
