"""What a micro-batch costs, in counts that cannot flake: Spark jobs per batch, generated
code that does not change with the state, and the pivot of the moments job.

Timings live in bench/ (``bench/stream_worker.py``); these tests only keep the counts
from growing back.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_streaming import COLS, frame
from test_streaming import updater as streaming_updater

from mxnorm_spark.core.moments import Moments
from mxnorm_spark.core.state import MXNormState, StateOptions
from mxnorm_spark.store import StateStore
from mxnorm_spark.streaming._local import DriverBatches
from mxnorm_spark.streaming._reads import (
    SMALL_BATCH_VALUES,
    moments_engine,
    moments_pivot,
    rereads_same_rows,
)
from mxnorm_spark.streaming.updater import MXNormStream

pytestmark = pytest.mark.spark
SCHEMA = "id LONG, a DOUBLE, b DOUBLE"  # as a stream reads: no schema inference job


def batch_files(tmp_path: Path, sizes: list[int], *, drift: bool = True) -> list[str]:
    """One Parquet file per micro-batch, as a file stream reads them. Without ``drift``
    every batch has the same distribution, so the pivot never calls for a second pass."""
    paths = []
    first = 0
    for k, n in enumerate(sizes):
        path = tmp_path / "in" / f"f{k}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame(n, k if drift else 0, 11 + k, first).to_parquet(path, index=False)
        first += n
        paths.append(str(path))
    return paths


def jobs_of_each_batch(spark: Any, stream: MXNormStream, paths: list[str]) -> list[int]:
    """Run ``foreach_batch`` on each file as micro-batch 0, 1, ...; the Spark jobs of each."""
    sc = spark.sparkContext
    counts = []
    for batch_id, path in enumerate(paths):
        group = f"mxnorm-cost-{uuid.uuid4().hex}"
        sc.setJobGroup(group, f"micro-batch {batch_id}")
        try:
            stream.foreach_batch(spark.read.schema(SCHEMA).parquet(path), batch_id)
        finally:
            sc.setLocalProperty("spark.jobGroup.id", None)
        counts.append(len(sc.statusTracker().getJobIdsForGroup(group)))
    return counts


def updater(spark: Any, root: Path, **kw: Any) -> MXNormStream:
    stream = streaming_updater(spark, root, **kw)
    stream._driver = DRIVER
    return stream


# Micro-batches of up to 1,000 rows (of 3 columns) go to the driver here, so that both
# paths run on small files: 200 rows on the driver, 5,000 through Spark.
DRIVER = DriverBatches(3_000, "snappy")
SIZES = [200, 5000]


@pytest.mark.parametrize("apply_at", ["after", "before"])
@pytest.mark.parametrize("rows", SIZES)
def test_jobs_per_micro_batch(spark: Any, tmp_path: Path, apply_at: str, rows: int) -> None:
    paths = batch_files(tmp_path, [rows] * 4, drift=False)
    counts = jobs_of_each_batch(spark, updater(spark, tmp_path, apply_at=apply_at), paths)
    # Once every feature has a state: the moments and the write, nothing else (no probe,
    # no job filling a cache: a batch of files is read twice instead).
    assert counts[1:] == [expected_jobs(rows)] * 3, counts


def expected_jobs(rows: int) -> int:
    """A small batch: one job reads it to the driver, which writes it. Larger ones: one
    aggregation (two jobs under adaptive execution), then the write."""
    if rows * len(SCHEMA.split(",")) <= DRIVER.max_values:
        return 1
    return (1 if rows * len(COLS) <= SMALL_BATCH_VALUES else 2) + 1


def test_kept_in_memory_or_read_twice_gives_the_same_state_and_output(
    spark: Any, tmp_path: Path
) -> None:
    paths = batch_files(tmp_path, [300, 0, 250, 400])
    states, outputs = [], []
    for persist in (True, False, None):
        root = tmp_path / f"persist-{persist}"
        s = updater(spark, root, persist=persist)
        for batch_id, path in enumerate(paths):
            s.foreach_batch(spark.read.schema(SCHEMA).parquet(path), batch_id)
        states.append(StateStore(root / "state").latest())
        out = spark.read.parquet(str(root / "out")).toPandas().sort_values("id")
        outputs.append(out.reset_index(drop=True))
    assert states[0] is not None and states[0].batches_seen == 4
    assert states[0].to_json() == states[1].to_json() == states[2].to_json()
    assert outputs[0].equals(outputs[1]) and outputs[0].equals(outputs[2])


def test_rereads_same_rows_only_for_deterministic_plans_over_files(
    spark: Any, tmp_path: Path
) -> None:
    from pyspark.sql import functions as F

    path = batch_files(tmp_path, [20])[0]
    files = spark.read.parquet(path)
    assert rereads_same_rows(files)
    assert rereads_same_rows(files.where("a > 0").select("a", (F.col("b") * 2).alias("c")))
    assert not rereads_same_rows(files.withColumn("r", F.rand()))  # another draw each read
    assert not rereads_same_rows(files.groupBy("a").count())
    assert not rereads_same_rows(spark.createDataFrame(frame(5, 0, 1, 0)))


def test_an_attached_file_stream_is_read_twice_not_kept(spark: Any, tmp_path: Path) -> None:
    from pyspark.sql import functions as F

    batch_files(tmp_path, [30])
    files = spark.readStream.schema(SCHEMA).parquet(str(tmp_path / "in"))
    assert rereads_same_rows(files.where("a > 0").select("a", "b"))
    assert not rereads_same_rows(spark.readStream.format("rate").load())
    stream = updater(spark, tmp_path)
    stream.attach(files.writeStream)
    assert stream._rereads
    stream.attach(files.withColumn("r", F.rand()).writeStream)
    assert not stream._rereads


@pytest.mark.parametrize("rows", SIZES)
def test_jobs_of_a_file_stream(spark: Any, tmp_path: Path, rows: int) -> None:
    batch_files(tmp_path, [rows] * 4, drift=False)
    files = spark.readStream.schema(SCHEMA).option("maxFilesPerTrigger", 1)
    stream = updater(spark, tmp_path)
    query = stream.start(
        files.parquet(str(tmp_path / "in")), str(tmp_path / "chk"), available_now=True
    )
    stream.await_termination(query)
    jobs = spark.sparkContext.statusTracker().getJobIdsForGroup(str(query.runId))
    # A larger first batch: the attempt to read it to the driver finds too many rows, then
    # as above (its probe reads it whole). Later ones go straight to Spark.
    first = 1 if expected_jobs(rows) == 1 else 1 + expected_jobs(rows)
    assert len(jobs) == first + 3 * expected_jobs(rows), sorted(jobs)
    assert [r.rows for r in stream.reports] == [rows] * 4


def test_reused_code_gives_the_bits_of_literal_constants(spark: Any) -> None:
    from mxnorm_spark.batch.apply import normalize

    data = frame(50, 2, 5, 0)
    data.loc[3, "a"] = np.nan
    state = MXNormState.create(COLS).update(Moments.from_array(data[COLS].to_numpy()))
    df = spark.createDataFrame(data)
    for handle_invalid in ("keep", "skip"):
        a = normalize(df, state, COLS, handle_invalid=handle_invalid, engine="sql")
        b = normalize(df, state, COLS, handle_invalid=handle_invalid, reused_code=True)
        assert a.columns == b.columns
        assert a.toPandas().equals(b.toPandas())


def test_reused_code_has_no_constant_in_the_plan(spark: Any) -> None:
    from pyspark.sql import functions as F

    from mxnorm_spark.engines.columns import sql_constant

    df = spark.range(3).select(F.expr(f"get({sql_constant([0.125, 7.5])}, 1) * id AS x"))
    optimized = df._jdf.queryExecution().optimizedPlan().toString()
    # Folded, the element would be the literal 7.5 and new code on every new value.
    assert "SPARK_PARTITION_ID" in optimized and "7.5 *" not in optimized
    assert [r.x for r in df.collect()] == [0.0, 7.5, 15.0]


def test_moments_pivot_is_near_the_mean_and_stays_while_it_moves_little() -> None:
    rng = np.random.default_rng(3)
    opts = StateOptions(alpha=0.1)
    state = MXNormState.create(["a", "b", "c"], options=opts)
    state = state.update(
        Moments.from_array(rng.normal([5.0, 1e9, -3.0], [1.0, 1.0, 0.01], (400, 3)))
    )
    pivot = moments_pivot(state)
    assert np.all(np.abs(pivot - state.mean) <= 0.25 * np.sqrt(state.var))
    pivots = set()
    for _ in range(10):  # stationary batches: the EMA mean moves by far less than a step
        state = state.update(
            Moments.from_array(rng.normal([5.0, 1e9, -3.0], [1.0, 1.0, 0.01], (4000, 3)))
        )
        pivots.add(tuple(moments_pivot(state)))
    assert len(pivots) <= 2
    assert np.isnan(moments_pivot(MXNormState.create(["a"]))).all()  # no state: probe


def test_moments_engine_by_the_batches_so_far() -> None:
    state = MXNormState.create(COLS)
    assert moments_engine("auto", state, 2) == "auto"  # no pivot yet
    small = state.update(Moments.from_array(np.ones((100, 2))))
    large = state.update(Moments.from_array(np.ones((SMALL_BATCH_VALUES, 2))))
    assert moments_engine("auto", small, 2) == "auto"
    assert moments_engine("auto", large, 2) == "sql"
    assert moments_engine("arrow", large, 2) == "arrow"  # a chosen engine is kept
    assert moments_engine("auto", large, None) == "auto"  # vector input
