"""Structured Streaming: state per micro-batch == reference loop == backfill, exactly once.

One file stream (module fixture) is checked against the reference loop of docs/design.md, the
batch backfill and its own output; the exactly-once rules are checked by calling the
``foreachBatch`` function directly; crash safety by SIGKILLing a CLI stream in a
subprocess at each fault point and restarting it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from reference import Reference, assert_state_close

from mxnorm_spark import CorruptStateError, InvalidParameterError, MXNormState
from mxnorm_spark.core.errors import (
    InvalidValueError,
    SchemaMismatchError,
    StateConflictError,
)
from mxnorm_spark.core.state import StateOptions
from mxnorm_spark.store import StateStore, write_state
from mxnorm_spark.streaming._local import DriverBatches
from mxnorm_spark.streaming.progress import BatchReport
from mxnorm_spark.streaming.sources import CORRUPT_COLUMN, FILE_COLUMN, FileSource
from mxnorm_spark.streaming.updater import MXNormStream, batch_output_dir

pytestmark = pytest.mark.spark
ROOT = Path(__file__).resolve().parents[2]
COLS = ["a", "b"]


def frame(rows: int, k: int, seed: int, first_id: int) -> pd.DataFrame:
    """One input file: a drifting feature and one on a 1e9 offset (numerically hard)."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "id": np.arange(first_id, first_id + rows, dtype=np.int64),
            "a": rng.normal(10.0 + 3 * k, 1.0 + k, rows),
            "b": 1e9 + rng.normal(0.0, 1.0, rows),
        }
    )


def write_files(directory: Path, sizes: list[int], seed: int = 7) -> list[pd.DataFrame]:
    """Parquet files f0, f1, ... whose modification times give the stream their order."""
    directory.mkdir(parents=True, exist_ok=True)
    frames, first = [], 0
    for k, n in enumerate(sizes):
        df = frame(n, k, seed + k, first)
        first += n
        path = directory / f"f{k}.parquet"
        df.to_parquet(path, index=False)
        os.utime(path, (1_000_000_000 + 10 * k, 1_000_000_000 + 10 * k))
        frames.append(df)
    return frames


def x_of(df: pd.DataFrame) -> np.ndarray:
    return df[COLS].to_numpy(dtype=np.float64)


def assert_normalized(got: np.ndarray, x: np.ndarray, ref: Reference) -> None:
    """``got`` == the reference normalization of ``x``, up to the float64 rounding of the mean.

    On a 1e9 offset a mean one ulp apart (1.2e-7) shifts every output by 1.2e-7 / sd.
    """
    assert ref.mean is not None and ref.var is not None
    tol = 8 * np.spacing(np.abs(ref.mean)) / np.sqrt(ref.var + ref.eps) + 1e-12
    err = np.abs(got - ref.normalize(x))
    assert np.all(err <= tol), f"normalized values off by {err.max(0)} > {tol}"


def read_output(spark: Any, path: Path) -> pd.DataFrame:
    out = spark.read.parquet(str(path)).toPandas()
    return out.sort_values("id").reset_index(drop=True)


# ---- one file stream, checked several ways -------------------------------------------------
SIZES = [40, 25, 0, 60, 33]  # batch 2 is an empty file


@pytest.fixture(scope="module")
def file_stream(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("file_stream")
    frames = write_files(root / "in", SIZES)
    source = FileSource(str(root / "in"), "parquet", max_files_per_trigger=1)
    lines: list[str] = []
    stream = MXNormStream(
        spark,
        # Segments of two records: the history is compacted while the stream runs.
        StateStore(root / "state", history_segment=2),
        cols=COLS,
        output=str(root / "out"),
        options=StateOptions(alpha=0.3),
        progress=lambda r: lines.append(r.line()),
    )
    reports = stream.run(source.read(spark, COLS), str(root / "chk"), source=source)
    return {
        "root": root,
        "frames": frames,
        "reports": reports,
        "lines": lines,
        "store": StateStore(root / "state"),
    }


def test_state_after_each_batch_equals_reference_loop(file_stream: dict[str, Any]) -> None:
    store: StateStore = file_stream["store"]
    assert store.batch_ids() == list(range(len(SIZES)))
    ref = Reference(alpha=0.3)
    for b, df in enumerate(file_stream["frames"]):
        if len(df):
            ref.adapt(x_of(df))
        state = store.get(b)
        assert state is not None and state.last_batch_id == b and state.batches_seen == b + 1
        assert ref.mean is not None and ref.var is not None
        assert_state_close(state.mean, state.var, ref.mean, ref.var, 1e-12)


def test_state_equals_backfill_with_batch_column(spark: Any, file_stream: dict[str, Any]) -> None:
    from pyspark.sql import functions as F

    from mxnorm_spark.batch.aggregate import moments_by_batch

    whole = spark.read.parquet(str(file_stream["root"] / "in")).withColumn(
        "file_no", F.regexp_extract(F.input_file_name(), r"f(\d+)\.parquet", 1).cast("int")
    )
    groups = moments_by_batch(whole, COLS, "file_no")
    assert [k for k, _ in groups] == [k for k, n in enumerate(SIZES) if n]
    backfill = MXNormState.create(COLS, alpha=0.3)
    store: StateStore = file_stream["store"]
    for k, moments in groups:
        backfill = backfill.update(moments)
        streamed = store.get(k)
        assert streamed is not None
        assert_state_close(streamed.mean, streamed.var, backfill.mean, backfill.var, 1e-12)
        np.testing.assert_array_equal(streamed.count, backfill.count)


def test_output_holds_every_row_once_normalized_after_its_batch(
    spark: Any, file_stream: dict[str, Any]
) -> None:
    out = read_output(spark, file_stream["root"] / "out")
    frames = file_stream["frames"]
    expected_ids = np.concatenate([f["id"].to_numpy() for f in frames])
    np.testing.assert_array_equal(out["id"].to_numpy(), np.sort(expected_ids))
    ref = Reference(alpha=0.3)
    for b, df in enumerate(frames):
        if not len(df):
            continue
        ref.adapt(x_of(df))
        got = out[out["batch_id"] == b].sort_values("id")
        np.testing.assert_array_equal(got["id"].to_numpy(), df["id"].to_numpy())
        assert_normalized(x_of(got), x_of(df), ref)


def test_compacted_history_holds_each_batch_once(file_stream: dict[str, Any]) -> None:
    store: StateStore = file_stream["store"]
    history = store.history()
    assert history.column("batch_id").to_pylist() == [b for b in range(len(SIZES)) for _ in COLS]
    assert history.column("rows").to_pylist()[:: len(COLS)] == SIZES
    for b in range(len(SIZES)):  # the state each record holds is the version committed
        state = store.get(b)
        assert state is not None
        assert history.column("state_mean").to_pylist()[len(COLS) * b : len(COLS) * (b + 1)] == (
            state.mean.tolist()
        )
    files = sorted(p.name for p in (file_stream["root"] / "state" / "_history").iterdir())
    assert files[-1].startswith("hs0-") and len(files) < len(SIZES)


def test_empty_micro_batch_changes_nothing(file_stream: dict[str, Any]) -> None:
    store: StateStore = file_stream["store"]
    before, after = store.get(1), store.get(2)
    assert before is not None and after is not None
    for name in ("mean", "var"):
        np.testing.assert_array_equal(getattr(after, name), getattr(before, name))
    assert after.totals.to_dict() == before.totals.to_dict()
    assert after.batches_seen == before.batches_seen + 1  # seen, so a replay is recognised
    assert not (file_stream["root"] / "out" / batch_output_dir(2)).exists()
    assert "empty: state unchanged" in file_stream["lines"][2]


def test_one_progress_line_per_batch(file_stream: dict[str, Any]) -> None:
    reports: list[BatchReport] = file_stream["reports"]
    assert [r.batch_id for r in reports] == list(range(len(SIZES)))
    assert [r.rows for r in reports] == SIZES
    assert not any(r.replayed for r in reports)
    lines = file_stream["lines"]
    assert lines[0].startswith("[mxnorm] batch 0: 40 rows in ")
    assert "state initialized" in lines[0]
    # The mean of 'a' moves by 0.3 * ~3 sd per batch: the largest change, in sd units.
    assert reports[1].changed_feature == "a"
    assert reports[1].max_mean_change is not None and 0.3 < reports[1].max_mean_change < 2.0
    assert "largest mean change" in lines[3] and "(a)" in lines[3]


# ---- the foreachBatch function called directly ----------------------------------------------
def updater(spark: Any, root: Path, **kw: Any) -> MXNormStream:
    kw.setdefault("progress", None)
    kw.setdefault("options", StateOptions(alpha=0.3))
    return MXNormStream(spark, str(root / "state"), cols=COLS, output=str(root / "out"), **kw)


def batch(spark: Any, df: pd.DataFrame) -> Any:
    return spark.createDataFrame(df)


def test_replay_reuses_committed_state_and_replaces_output(spark: Any, tmp_path: Path) -> None:
    d0, d1, other = frame(20, 0, 1, 0), frame(15, 1, 2, 20), frame(9, 5, 3, 99)
    s = updater(spark, tmp_path)
    s.foreach_batch(batch(spark, d0), 0)
    s.foreach_batch(batch(spark, d1), 1)
    committed = (tmp_path / "state" / "v-000000000001.json").read_text()
    # Spark re-runs batch 1 after a crash: its committed state is reused, never refolded,
    # even if the replayed data differed; its output is replaced whole.
    s.foreach_batch(batch(spark, other), 1)
    assert (tmp_path / "state" / "v-000000000001.json").read_text() == committed
    assert s.reports[-1].replayed and "replayed: reused committed" in s.reports[-1].line()
    out = read_output(spark, tmp_path / "out")
    assert sorted(out[out["batch_id"] == 1]["id"]) == list(other["id"])
    assert len(out) == len(d0) + len(other)
    # A checkpoint older than the state, or a deleted version, is refused.
    with pytest.raises(StateConflictError, match="already holds batch 1, newer than"):
        s.foreach_batch(batch(spark, d0), 0)
    with pytest.raises(StateConflictError, match="needs state version v-000000000004"):
        s.foreach_batch(batch(spark, d0), 5)
    assert StateStore(tmp_path / "state").batch_ids() == [0, 1]
    with pytest.raises(StateConflictError, match="holds no version: it was emptied"):
        updater(spark, tmp_path / "fresh").foreach_batch(batch(spark, d0), 3)


def test_apply_at_before_uses_the_state_before_the_batch(spark: Any, tmp_path: Path) -> None:
    d0, d1 = frame(30, 0, 4, 0), frame(25, 1, 5, 30)
    s = updater(spark, tmp_path, apply_at="before")
    s.foreach_batch(batch(spark, d0), 0)
    s.foreach_batch(batch(spark, d1), 1)
    out = read_output(spark, tmp_path / "out")
    ref = Reference(alpha=0.3)
    ref.adapt(x_of(d0))  # batch 0 has no state before it: its own moments
    assert_normalized(x_of(out[out["batch_id"] == 0]), x_of(d0), ref)
    assert_normalized(x_of(out[out["batch_id"] == 1]), x_of(d1), ref)  # state after batch 0
    ref.adapt(x_of(d1))
    state = StateStore(tmp_path / "state").latest()
    assert state is not None and ref.mean is not None and ref.var is not None
    assert_state_close(state.mean, state.var, ref.mean, ref.var, 1e-12)


def test_warm_start_from_a_backfill_state(spark: Any, tmp_path: Path) -> None:
    frames = [frame(20, k, 10 + k, 20 * k) for k in range(4)]
    fitted = MXNormState.create(COLS, alpha=0.3)
    from mxnorm_spark.batch.aggregate import batch_moments

    for df in frames[:2]:
        fitted = fitted.update(batch_moments(batch(spark, df), COLS))
    write_state(fitted, tmp_path / "fitted.json")
    with pytest.raises(InvalidParameterError, match=r"alpha=0.3 \(stream: 0.5\)"):
        updater(
            spark,
            tmp_path / "x",
            options=StateOptions(alpha=0.5),
            initial_state=str(tmp_path / "fitted.json"),
        )
    s = updater(spark, tmp_path, initial_state=str(tmp_path / "fitted.json"))
    for b, df in enumerate(frames[2:]):
        s.foreach_batch(batch(spark, df), b)
    ref = Reference(alpha=0.3)
    for df in frames:
        ref.adapt(x_of(df))
    state = StateStore(tmp_path / "state").latest()
    assert state is not None and ref.mean is not None and ref.var is not None
    assert_state_close(state.mean, state.var, ref.mean, ref.var, 1e-12)
    assert state.batches_seen == 4


def test_corrupt_state_version_stops_the_stream_at_start(spark: Any, tmp_path: Path) -> None:
    s = updater(spark, tmp_path)
    s.foreach_batch(batch(spark, frame(10, 0, 1, 0)), 0)
    victim = tmp_path / "state" / "v-000000000000.json"
    doc = json.loads(victim.read_text())
    doc["payload"]["var"][1] *= 1.0000001
    victim.write_text(json.dumps(doc))
    with pytest.raises(CorruptStateError) as info:
        updater(spark, tmp_path)
    assert str(victim) in str(info.value) and "fails its checksum" in str(info.value)


def test_invalid_values_with_handle_invalid_error_commit_nothing(
    spark: Any, tmp_path: Path
) -> None:
    d = frame(10, 0, 1, 0)
    d.loc[3, "b"] = np.nan
    s = updater(spark, tmp_path, handle_invalid="error")
    with pytest.raises(InvalidValueError, match=r"'b': 1"):
        s.foreach_batch(batch(spark, d), 0)
    assert StateStore(tmp_path / "state").batch_ids() == []


def file_batch(spark: Any, source: FileSource) -> Any:
    """A static read of a FileSource, shaped like one of its micro-batches."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    schema = source.resolve_schema(spark, COLS)
    schema = T.StructType([*schema.fields, T.StructField(CORRUPT_COLUMN, T.StringType())])
    reader = spark.read.format(source.format).schema(schema)
    df = reader.options(**source._reader_options()).load(source.path)
    return df.withColumn(FILE_COLUMN, F.input_file_name())


@pytest.mark.parametrize(
    "case",
    [
        ("csv", "id,a,b\n1,2.5,3\n2,1.5,oops\n", "b", "'oops', not a number"),
        ("json", '{"id": 1, "a": 2.5, "b": 3}\n{"id": 2, "a": "x", "b": 4}\n', "a", "'x'"),
        ("csv", "id,a\n1,2.5\n", "b", "is missing from its header"),
        ("json", '{"id": 1, "b": 3}\n{"id": 2, "a": 1, "b": 4}\n', "a", "first record"),
    ],
    ids=["csv-not-a-number", "json-not-a-number", "csv-missing-column", "json-missing-column"],
)
@pytest.mark.parametrize("on_driver", [True, False])  # read to the driver, or counted by Spark
def test_bad_csv_or_json_file_is_named_and_nothing_committed(
    spark: Any, tmp_path: Path, case: tuple[str, str, str, str], on_driver: bool
) -> None:
    fmt, text, column, what = case
    good, bad = tmp_path / "in" / f"good.{fmt}", tmp_path / "in" / f"bad.{fmt}"
    good.parent.mkdir()
    good.write_text("id,a,b\n0,1.0,2.0\n" if fmt == "csv" else '{"id": 0, "a": 1.0, "b": 2.0}\n')
    os.utime(good, (1_000_000_000, 1_000_000_000))
    source = FileSource(str(good.parent), fmt)
    schema = source.resolve_schema(spark, COLS)  # from the oldest file: the good one
    bad.write_text(text)
    source = FileSource(str(good.parent), fmt, schema=schema)
    s = updater(spark, tmp_path)
    s.source = source
    if not on_driver:
        s._driver = DriverBatches(0, None)
    with pytest.raises(SchemaMismatchError) as info:
        s.foreach_batch(file_batch(spark, source), 0)
    msg = str(info.value)
    assert f"bad.{fmt}" in msg and f"column {column!r}" in msg and what in msg
    assert "No state was committed" in msg
    assert StateStore(tmp_path / "state").batch_ids() == []
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("batch_id=*"))


def test_schema_mismatch_stops_the_query_and_a_restart_goes_on(spark: Any, tmp_path: Path) -> None:
    frames = write_files(tmp_path / "in", [30, 20, 20, 25])
    inp = tmp_path / "in"
    # File 1 lacks column b; file 2 holds b as strings.
    frames[1][["id", "a"]].to_parquet(inp / "f1.parquet", index=False)
    frames[2].astype({"b": str}).to_parquet(inp / "f2.parquet", index=False)
    for k in (1, 2):
        os.utime(inp / f"f{k}.parquet", (1_000_000_000 + 10 * k, 1_000_000_000 + 10 * k))
    source = FileSource(str(inp), "parquet", max_files_per_trigger=1)

    def run() -> list[BatchReport]:
        s = updater(spark, tmp_path)
        return s.run(source.read(spark, COLS), str(tmp_path / "chk"), source=source)

    with pytest.raises(SchemaMismatchError) as info:
        run()
    assert "f1.parquet" in str(info.value) and "column 'b' is missing" in str(info.value)
    store = StateStore(tmp_path / "state")
    assert store.batch_ids() == [0]
    assert sorted(p.name for p in (tmp_path / "out").glob("batch_id=*")) == [batch_output_dir(0)]

    (inp / "f1.parquet").unlink()
    with pytest.raises(SchemaMismatchError) as info:
        run()
    assert "f2.parquet" in str(info.value)
    assert "column 'b' has type string where the stream reads double" in str(info.value)
    assert store.batch_ids() == [0, 1]  # batch 1 replayed without its removed file: empty

    (inp / "f2.parquet").unlink()
    reports = run()
    assert [(r.batch_id, r.rows) for r in reports] == [(2, 0), (3, 25)]
    out = read_output(spark, tmp_path / "out")
    kept = pd.concat([frames[0], frames[3]])
    np.testing.assert_array_equal(out["id"].to_numpy(), np.sort(kept["id"].to_numpy()))
    ref = Reference(alpha=0.3)
    ref.adapt(x_of(frames[0]))
    ref.adapt(x_of(frames[3]))
    state = store.latest()
    assert state is not None and ref.mean is not None and ref.var is not None
    assert_state_close(state.mean, state.var, ref.mean, ref.var, 1e-12)


# ---- crash safety: SIGKILL at each fault point, then restart --------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("state_on", ["local", "s3"])
def test_sigkill_at_each_fault_point_then_restart_is_exactly_once(
    spark: Any, tmp_path: Path, state_on: str, request: pytest.FixtureRequest
) -> None:
    frames = write_files(tmp_path / "in", [30, 20, 45, 25], seed=21)
    source = FileSource(str(tmp_path / "in"), "parquet", max_files_per_trigger=1)
    reference = MXNormStream(
        spark, str(tmp_path / "ref_state"), cols=COLS, output=str(tmp_path / "ref_out"),
        progress=None,
    )  # fmt: skip
    reference.run(source.read(spark, COLS), str(tmp_path / "ref_chk"), source=source)

    # The state on local disk, or on an S3-compatible server (moto on 127.0.0.1): there a
    # version is one conditional PUT, and the same exactly-once promise must hold.
    out_dir = tmp_path / "out"
    state_dir = (
        str(tmp_path / "state")
        if state_on == "local"
        else f"{request.getfixturevalue('s3_bucket')}/state"
    )

    def cli(fault: str | None) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "SPARK_LOCAL_IP": "127.0.0.1",
            "PYSPARK_PYTHON": sys.executable,
            "PYSPARK_DRIVER_PYTHON": sys.executable,
            "MXNORM_FAULT": fault or "",
        }
        args = [
            sys.executable, "-m", "mxnorm_spark", "stream",
            "--input", str(tmp_path / "in"), "--format", "parquet", "--cols", "a,b",
            "--output", str(out_dir), "--state", str(state_dir),
            "--checkpoint", str(tmp_path / "chk"), "--max-files-per-trigger", "1",
            "--available-now", "--master", "local[2]", "--log-level", "ERROR",
            "--conf", "spark.ui.enabled=false", "--conf", "spark.sql.shuffle.partitions=4",
            # A JVM living seconds spends more on C2 compilation than it gains: 2x faster.
            "--conf", "spark.driver.extraJavaOptions=-XX:TieredStopAtLevel=1",
        ]  # fmt: skip
        return subprocess.run(
            args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
        )

    def outputs() -> list[str]:
        return sorted(p.name for p in out_dir.glob("batch_id=*"))

    store = StateStore(state_dir)
    r = cli("before_commit:1")
    assert r.returncode == -9, r.stdout + r.stderr
    assert store.batch_ids() == [0] and outputs() == [batch_output_dir(0)]

    r = cli("after_commit:2")
    assert r.returncode == -9, r.stdout + r.stderr
    assert store.batch_ids() == [0, 1, 2] and outputs() == [batch_output_dir(b) for b in (0, 1)]

    r = cli("during_write:3")
    assert r.returncode == -9, r.stdout + r.stderr
    assert store.batch_ids() == [0, 1, 2, 3] and len(outputs()) == 3
    assert list((out_dir / "_attempts").glob(f"{batch_output_dir(3)}-*"))  # written, unpublished

    # The restart after the last crash runs in this process (one JVM start less).
    restart = MXNormStream(spark, state_dir, cols=COLS, output=str(out_dir), progress=None)
    reports = restart.run(source.read(spark, COLS), str(tmp_path / "chk"), source=source)
    assert [(rep.batch_id, rep.rows, rep.replayed) for rep in reports] == [(3, 25, True)]

    ref_store = StateStore(str(tmp_path / "ref_state"))
    for b in range(4):  # every committed version bit-identical to the uninterrupted run
        got_state, want_state = store.get(b), ref_store.get(b)
        assert got_state is not None and want_state is not None
        assert got_state.to_json() == want_state.to_json()
    # The history holds each batch once, the rows it had and the state it committed.
    history = store.history()
    assert history.column("batch_id").to_pylist() == [b for b in range(4) for _ in COLS]
    assert history.column("rows").to_pylist()[:: len(COLS)] == [30, 20, 45, 25]
    last = ref_store.get(3)
    assert last is not None
    assert history.column("state_mean").to_pylist()[-len(COLS) :] == last.mean.tolist()
    got, want = read_output(spark, out_dir), read_output(spark, tmp_path / "ref_out")
    ids = np.concatenate([f["id"].to_numpy() for f in frames])
    np.testing.assert_array_equal(got["id"].to_numpy(), np.sort(ids))  # each row exactly once
    pd.testing.assert_frame_equal(got, want, check_exact=True)


# ---- vector columns, and a csv stream that starts before its first file --------------------
def test_vector_stream_matches_the_reference_loop(spark: Any, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    inp, frames = tmp_path / "in", []
    inp.mkdir()
    for k, n in enumerate([30, 45, 20]):
        x = rng.normal([1.0 + k, 1e9, -3.0 * k], [1.0, 1.0, 2.0 + k], size=(n, 3))
        x[rng.random((n, 3)) < 0.05] = np.nan  # invalid elements never enter the moments
        frame_k = pd.DataFrame({"id": np.arange(100 * k, 100 * k + n), "v": list(x)})
        frame_k.to_parquet(inp / f"f{k}.parquet", index=False)
        os.utime(inp / f"f{k}.parquet", (1_000_000_000 + 10 * k, 1_000_000_000 + 10 * k))
        frames.append(x)
    source = FileSource(str(inp), "parquet", max_files_per_trigger=1)
    stream = MXNormStream(
        spark, str(tmp_path / "state"), input_col="v", output=str(tmp_path / "out"),
        options=StateOptions(alpha=0.3), progress=None,
    )  # fmt: skip
    reports = stream.run(source.read(spark, input_col="v"), str(tmp_path / "chk"), source=source)
    assert [r.rows for r in reports] == [30, 45, 20]

    state = stream.store.latest()
    assert state is not None and state.features == ("v[0]", "v[1]", "v[2]")
    # The reference loop per element: each batch's valid values only.
    for j in range(3):
        ref = Reference(alpha=0.3)
        for x in frames:
            col = x[:, j]
            ref.adapt(col[np.isfinite(col)][:, None])
        assert ref.mean is not None and ref.var is not None
        assert_state_close(state.mean[j : j + 1], state.var[j : j + 1], ref.mean, ref.var, 1e-12)
    # The last batch is normalized with the state after it (apply_at="after").
    out = read_output(spark, tmp_path / "out")
    last = out[out["batch_id"] == 2]
    got = np.stack(last["v"].to_numpy())
    mean, scale = state.normalization_constants()
    np.testing.assert_array_equal(got, (frames[2] - mean) / scale)


def test_csv_stream_starts_before_its_first_file(spark: Any, tmp_path: Path) -> None:
    from mxnorm_spark.cli import commands as cli

    inp = tmp_path / "in"
    inp.mkdir()
    args = [
        "stream", "--input", str(inp), "--format", "csv", "--cols", "a,b",
        "--output", str(tmp_path / "out"), "--state", str(tmp_path / "state"),
        "--checkpoint", str(tmp_path / "chk"), "--available-now",
    ]  # fmt: skip
    # Without a schema, an empty directory cannot tell the stream its columns.
    assert cli.main(args) == 2
    assert cli.main([*args, "--schema", "id long, a double, b double"]) == 0
    assert StateStore(str(tmp_path / "state")).batch_ids() == []
    frame_0 = frame(12, 0, 3, 0)
    frame_0.to_csv(inp / "f0.csv", index=False)
    assert cli.main([*args, "--schema", "id long, a double, b double"]) == 0
    state = StateStore(str(tmp_path / "state")).latest()
    assert state is not None and state.batches_seen == 1
    ref = Reference(alpha=0.1)
    ref.adapt(x_of(frame_0))
    assert ref.mean is not None and ref.var is not None
    assert_state_close(state.mean, state.var, ref.mean, ref.var, 1e-12)
