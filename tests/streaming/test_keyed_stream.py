"""Per-key state in a stream (mxnorm_spark.streaming.keyed): stream == backfill == numpy per key,
eviction, restarts, the serving export, and exactly-once after a SIGKILL at each fault point.

The data: 1,000+ string keys over six micro-batches (one Parquet file each); one key holds
half of the rows, keys appear mid-stream and vanish, ``x`` is ``1e9 + N(0, 1)``, ``y`` has
NaN values, a few rows have a null key.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mxnorm_spark.core.errors import InvalidParameterError, StateConflictError
from mxnorm_spark.core.moments import Moments
from mxnorm_spark.core.state import MXNormState, StateOptions
from mxnorm_spark.store import StateStore
from mxnorm_spark.streaming.keyed import KEYS_DIR, KeyOptions, export_latest, snapshot_dir
from mxnorm_spark.streaming.sources import FileSource
from mxnorm_spark.streaming.updater import MXNormStream

pytestmark = pytest.mark.spark
ROOT = Path(__file__).resolve().parents[2]
FEATURES = ["x", "y"]
BATCHES = 6
OPTIONS = StateOptions(alpha=0.2)


def _frames(seed: int = 3, n_big: int = 1700, n_other: int = 1700) -> list[pd.DataFrame]:
    rng = np.random.default_rng(seed)
    batch = np.concatenate([rng.integers(0, BATCHES, n_big), rng.integers(0, BATCHES, n_other)])
    # Keys 1..1150 slide with the batch: low ids vanish, high ids appear mid-stream.
    ids = np.concatenate(
        [np.zeros(n_big, int), 1 + 110 * batch[n_big:] + rng.integers(0, 600, n_other)]
    )
    n = ids.shape[0]
    y = rng.normal(5.0, 2.0, n)
    y[rng.random(n) < 0.05] = np.nan
    keys = np.array([f"k{k:04d}" for k in ids], dtype=object)
    keys[np.arange(n) % 397 == 5] = None
    pdf = pd.DataFrame(
        {"id": np.arange(n), "k": keys, "b": batch, "x": 1e9 + rng.normal(size=n), "y": y}
    )
    return [pdf[pdf["b"] == b].reset_index(drop=True) for b in range(BATCHES)]


def _write(directory: Path, frames: list[pd.DataFrame]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for b, f in enumerate(frames):
        path = directory / f"f{b}.parquet"
        f.to_parquet(path, index=False)
        os.utime(path, (1_000_000_000 + 10 * b, 1_000_000_000 + 10 * b))


def _run(spark: Any, root: Path, keys: KeyOptions, **kw: Any) -> MXNormStream:
    source = FileSource(str(root / "in"), "parquet", max_files_per_trigger=1)
    stream = MXNormStream(
        spark,
        str(root / kw.pop("state", "state")),
        cols=FEATURES,
        output=str(root / kw.pop("out", "out")),
        options=OPTIONS,
        progress=None,
        keys=keys,
        **kw,
    )
    stream.run(source.read(spark, FEATURES), str(root / "chk"), source=source)
    return stream


def _snapshot(spark: Any, state: Path, batch_id: int) -> pd.DataFrame:
    """The snapshot, with its flat ``f{j}_{field}`` columns also as one array per field."""
    path = state / KEYS_DIR / snapshot_dir(batch_id)
    pdf = spark.read.parquet(str(path)).toPandas().set_index("k").sort_index()
    for field in ("count", "mean", "var", "scale", "count_before", "scale_before"):
        names = [f"f{j}_{field}" for j in range(len(FEATURES))]
        if names[0] in pdf:
            pdf[field] = list(pdf[names].to_numpy(dtype=float))
    return pdf


def _reference(frames: list[pd.DataFrame], evict_after: int | None = None) -> dict[str, Any]:
    """key -> (last batch, state after it), per key with MXNormState (the oracle)."""
    out: dict[str, Any] = {}
    for b, f in enumerate(frames):
        for key, g in f.dropna(subset=["k"]).groupby("k", sort=True):
            last, s = out.get(str(key), (None, None))
            if s is None or (evict_after is not None and b - last > evict_after):
                s = MXNormState.create(FEATURES, options=OPTIONS)
            out[str(key)] = (b, s.update(Moments.from_array(g[FEATURES].to_numpy())))
    return out


@pytest.fixture(scope="module")
def streamed(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("keyed_stream")
    frames = _frames()
    _write(root / "in", frames)
    _run(spark, root, KeyOptions(("k",), min_key_rows=3))
    return {"root": root, "frames": frames}


def test_stream_states_equal_the_per_key_reference_loop(
    spark: Any, streamed: dict[str, Any]
) -> None:
    got = _snapshot(spark, streamed["root"] / "state", BATCHES - 1)
    ref = _reference(streamed["frames"])
    assert sorted(got.index) == sorted(ref)  # every key with rows, once
    big = streamed["frames"][0]["k"].value_counts().iloc[0]
    assert big > 200  # the skewed key is there
    for key, (last, s) in ref.items():
        row = got.loc[key]
        assert row["last_batch"] == last
        np.testing.assert_allclose(np.asarray(row["mean"], float), s.mean, rtol=1e-12, atol=0)
        np.testing.assert_allclose(np.asarray(row["var"], float), s.var, rtol=1e-12, atol=1e-300)
        np.testing.assert_array_equal(np.asarray(row["count"]), s.totals.count)


def test_stream_equals_backfill_per_key_and_output(spark: Any, streamed: dict[str, Any]) -> None:
    from mxnorm_spark.keyed.backfill import fit_keyed

    frames = streamed["frames"]
    df = spark.createDataFrame(pd.concat(frames, ignore_index=True))
    model = fit_keyed(df, FEATURES, ["k"], "b", options=OPTIONS, min_key_rows=3)
    want = model.key_states.toPandas().set_index("k").sort_index()
    for field in ("count", "mean", "var", "scale"):
        want[field] = list(want[[f"f{j}_{field}" for j in range(len(FEATURES))]].to_numpy())
    got = _snapshot(spark, streamed["root"] / "state", BATCHES - 1)
    assert list(got.index) == list(want.index)
    # The constants are those of the key's rows in this micro-batch: null for the others.
    now = (got["last_batch"] == BATCHES - 1).to_numpy()
    assert 0 < now.sum() < len(now)
    assert got.loc[~now, "f0_scale"].isna().all()
    for ours, theirs, rows in (
        ("mean", "mean", ...),
        ("var", "var", ...),
        ("scale", "scale", now),
    ):
        a, b = np.stack(got[ours].to_numpy())[rows], np.stack(want[theirs].to_numpy())[rows]
        np.testing.assert_allclose(a, b, rtol=1e-12, equal_nan=True)
    np.testing.assert_array_equal(np.stack(got["count"]), np.stack(want["count"]))
    np.testing.assert_array_equal(got["batches_seen"], want["batches_seen"])
    # The output: every row once, as the backfill model's transform of its batch.
    out = spark.read.parquet(str(streamed["root"] / "out")).toPandas().sort_values("id")
    ref = model.transform(df).toPandas().sort_values("id")
    np.testing.assert_array_equal(out["id"].to_numpy(), np.arange(len(ref)))
    for f in FEATURES:
        np.testing.assert_allclose(out[f].to_numpy(), ref[f].to_numpy(), rtol=1e-9, atol=1e-9)


def test_apply_before_and_eviction_against_the_reference(
    spark: Any, streamed: dict[str, Any], tmp_path: Path
) -> None:
    frames = streamed["frames"]
    _write(tmp_path / "in", frames)
    _run(spark, tmp_path, KeyOptions(("k",), evict_after=2), apply_at="before")
    ref = _reference(frames, evict_after=2)
    got = _snapshot(spark, tmp_path / "state", BATCHES - 1)
    last = BATCHES - 1
    kept = sorted(k for k, (b, _) in ref.items() if last - b < 2)
    assert sorted(got.index) == kept and len(kept) < len(ref)  # some keys were evicted
    for key in kept:
        np.testing.assert_allclose(
            np.asarray(got.loc[key, "mean"], float), ref[key][1].mean, rtol=1e-12
        )
    # "before": a key's rows use its state before their batch: none on its first batch.
    out = spark.read.parquet(str(tmp_path / "out")).toPandas().set_index("id")
    first_rows = frames[0].dropna(subset=["k"])
    g = MXNormState.create(FEATURES, options=OPTIONS).update(
        Moments.from_array(frames[0][FEATURES].to_numpy())
    )
    m, s = g.normalization_constants()
    np.testing.assert_allclose(
        out.loc[first_rows["id"], "x"].to_numpy(), (first_rows["x"].to_numpy() - m[0]) / s[0]
    )


def test_restart_with_other_key_settings_is_refused(spark: Any, streamed: dict[str, Any]) -> None:
    with pytest.raises(InvalidParameterError, match="min_key_rows"):
        MXNormStream(
            spark,
            str(streamed["root"] / "state"),
            cols=FEATURES,
            output=str(streamed["root"] / "out"),
            options=OPTIONS,
            keys=KeyOptions(("k",), min_key_rows=5),
        )


@pytest.mark.parametrize(
    ("keys", "match"),
    [
        ({"key_cols": "k"}, "key_cols"),
        ({"key_cols": ("k",), "evict_after": 0}, "evict_after"),
        ({"key_cols": ("k",), "min_key_rows": -1}, "min_key_rows"),
    ],
)
def test_bad_key_options(keys: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidParameterError, match=match):
        KeyOptions(**keys)


def test_export_latest_serves_the_streams_keys(spark: Any, streamed: dict[str, Any]) -> None:
    from mxnorm_spark.cli import commands as cli
    from mxnorm_spark.serving import load

    out = streamed["root"] / "export"
    assert export_latest(spark, str(streamed["root"] / "state"), str(out)) == BATCHES - 1
    # The command line writes the same export.
    again = streamed["root"] / "export-cli"
    assert cli.main(["export-keys", str(streamed["root"] / "state"), str(again)]) == 0
    a = pd.read_parquet(out / "keys.parquet").sort_values(["k", "feature_index"])
    b = pd.read_parquet(again / "keys.parquet").sort_values(["k", "feature_index"])
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))
    normalizer = load(str(out))
    ref = _reference(streamed["frames"])
    key = "k0000"
    mean, scale = ref[key][1].normalization_constants()
    row = normalizer.transform_row({"k": key, "x": 1e9 + 1.0, "y": 4.0})
    np.testing.assert_allclose([row["x"], row["y"]], (np.array([1e9 + 1.0, 4.0]) - mean) / scale)


# ---- crash safety ---------------------------------------------------------------------------
@pytest.mark.slow
def test_sigkill_at_each_fault_point_then_restart_is_exactly_once(
    spark: Any, streamed: dict[str, Any], tmp_path: Path
) -> None:
    frames = streamed["frames"]
    _write(tmp_path / "in", frames)

    def cli(fault: str) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "SPARK_LOCAL_IP": "127.0.0.1",
            "PYSPARK_PYTHON": sys.executable,
            "PYSPARK_DRIVER_PYTHON": sys.executable,
            "MXNORM_FAULT": fault,
        }
        args = [
            sys.executable, "-m", "mxnorm_spark", "stream",
            "--input", str(tmp_path / "in"), "--format", "parquet", "--cols", "x,y",
            "--key-cols", "k", "--min-key-rows", "3", "--alpha", "0.2",
            "--output", str(tmp_path / "out"), "--state", str(tmp_path / "state"),
            "--checkpoint", str(tmp_path / "chk"), "--max-files-per-trigger", "1",
            "--available-now", "--master", "local[2]", "--log-level", "ERROR",
            "--conf", "spark.ui.enabled=false", "--conf", "spark.sql.shuffle.partitions=4",
            "--conf", "spark.driver.extraJavaOptions=-XX:TieredStopAtLevel=1",
        ]  # fmt: skip
        return subprocess.run(
            args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
        )

    store = StateStore(tmp_path / "state")
    for fault, committed in [
        ("during_key_write:1", [0]),
        ("before_commit:2", [0, 1]),
        ("after_commit:3", [0, 1, 2, 3]),
        ("during_write:4", [0, 1, 2, 3, 4]),
    ]:
        r = cli(fault)
        assert r.returncode == -9, r.stdout + r.stderr
        assert store.batch_ids() == committed
    # The last restart runs here (one JVM start less), with the same settings.
    _run(spark, tmp_path, KeyOptions(("k",), min_key_rows=3))
    got = _snapshot(spark, tmp_path / "state", BATCHES - 1)
    want = _snapshot(spark, streamed["root"] / "state", BATCHES - 1)
    pd.testing.assert_frame_equal(got, want, check_exact=True)  # bit-identical
    out = spark.read.parquet(str(tmp_path / "out")).toPandas().sort_values("id")
    ref = spark.read.parquet(str(streamed["root"] / "out")).toPandas().sort_values("id")
    pd.testing.assert_frame_equal(
        out.reset_index(drop=True), ref.reset_index(drop=True), check_exact=True
    )
    # Only the newest snapshot is kept.
    snaps = sorted(p.name for p in (tmp_path / "state" / KEYS_DIR).glob("batch_id=*"))
    assert snaps == [snapshot_dir(BATCHES - 1)]


def test_a_missing_snapshot_is_named(spark: Any, streamed: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    root = tmp_path
    shutil.copytree(streamed["root"] / "state", root / "state")
    shutil.rmtree(root / "state" / KEYS_DIR / snapshot_dir(BATCHES - 1))
    stream = MXNormStream(
        spark,
        str(root / "state"),
        cols=FEATURES,
        output=str(root / "out"),
        options=OPTIONS,
        progress=None,
        keys=KeyOptions(("k",), min_key_rows=3),
    )
    df = spark.createDataFrame(streamed["frames"][BATCHES - 1])
    with pytest.raises(StateConflictError, match="per-key snapshot"):
        stream.foreach_batch(df, BATCHES - 1)  # a replay of the committed last batch


# ---- the fold kernel on plain Arrow (no Spark) ----------------------------------------------
@pytest.mark.parametrize(
    ("options", "apply_at"),
    [
        (StateOptions(alpha=0.2), "after"),
        (StateOptions(alpha=0.3, var_update="mixture", decay="rows"), "before"),
        (StateOptions(alpha=None), "after"),
        (StateOptions(alpha=None, zero_variance="unit"), "before"),
    ],
)
def test_stream_fold_kernel_equals_the_reference_in_every_layout(
    options: StateOptions, apply_at: str
) -> None:
    import pyarrow as pa

    from mxnorm_spark.core.state import scale_of
    from mxnorm_spark.keyed.stream_kernel import SOURCE_COLUMN, SnapshotLayout, stream_fold

    rng = np.random.default_rng(5)
    layout = SnapshotLayout(2, options, apply_at)
    snap: pa.Table | None = None
    ref: dict[int, MXNormState] = {}
    for b in range(4):
        keys = np.sort(rng.integers(0, 30, 120))
        x = np.stack([1e9 + rng.normal(size=120), rng.normal(5.0, 2.0, 120)], axis=1)
        x[rng.random(120) < 0.1, 1] = np.nan
        x[keys == 3, 1] = np.nan  # a key without valid values of a feature
        x[keys == 4, 0] = 7.0  # zero variance
        n = keys.shape[0]
        # One row shape: the features of data rows where snapshot rows have their state.
        values = layout.state_columns
        scalars = ["last_batch", "batches_seen", "key_rows", "rows"]
        types = layout.schema([pa.field("k", pa.int64())])
        data = {"k": pa.array(keys), SOURCE_COLUMN: pa.array(np.ones(n, np.int32))}
        data |= {f: pa.nulls(n, types.field(f).type) for f in scalars}
        data |= {v: pa.array(x[:, i]) if i < 2 else pa.nulls(n, pa.float64())
                 for i, v in enumerate(values)}  # fmt: skip
        table = pa.table(data)
        if snap is not None:
            m = snap.num_rows
            old = {"k": snap["k"], SOURCE_COLUMN: pa.array(np.zeros(m, np.int32))}
            old |= {f: snap[f] for f in (*scalars, *values)}
            table = pa.concat_tables([pa.table(old), table]).sort_by(
                [("k", "ascending"), (SOURCE_COLUMN, "ascending")]
            )
        snap = stream_fold(table, 1, layout, batch_id=b, evict_after=None)
        before = dict(ref)
        for key in np.unique(keys):
            s = ref.get(int(key), MXNormState.create(["a", "c"], options=options))
            ref[int(key)] = s.update(Moments.from_array(x[keys == key]))
        got = snap.to_pandas().set_index("k")
        assert sorted(got.index) == sorted(ref)
        for key in np.unique(keys):
            row, s = got.loc[int(key)], ref[int(key)]
            assert row["last_batch"] == b
            count = row[["f0_count", "f1_count"]].to_numpy(float)
            np.testing.assert_array_equal(count, s.totals.count)
            if options.alpha is not None:
                mean = row[["f0_mean", "f1_mean"]].to_numpy(float)
                var = row[["f0_var", "f1_var"]].to_numpy(float)
            else:
                totals = Moments(
                    *(
                        row[[f"f{j}_{f}" for j in range(2)]]
                        for f in ("count", "shift", "delta", "m2")
                    )
                )
                mean, var = totals.mean, totals.var
            np.testing.assert_allclose(mean, s.mean, rtol=1e-12, equal_nan=True)
            np.testing.assert_allclose(var, s.var, rtol=1e-12, atol=1e-300, equal_nan=True)
            if apply_at == "before":
                old_state = before.get(int(key), MXNormState.create(["a", "c"], options=options))
                want = scale_of(np.where(np.isnan(old_state.var), 1.0, old_state.var), options)
                got_scale = row[["f0_scale_before", "f1_scale_before"]].to_numpy(float)
                np.testing.assert_allclose(got_scale, want, rtol=1e-12)
                n_before = row[["f0_count_before", "f1_count_before"]].to_numpy(float)
                np.testing.assert_array_equal(n_before, old_state.totals.count)
            else:
                want = scale_of(np.where(np.isnan(s.var), 1.0, s.var), options)
                got_scale = row[["f0_scale", "f1_scale"]].to_numpy(float)
                np.testing.assert_allclose(got_scale, want, rtol=1e-12)


def test_an_old_format_state_and_another_apply_at_are_refused(
    spark: Any, streamed: dict[str, Any], tmp_path: Path
) -> None:
    import json
    import shutil

    from mxnorm_spark.core.errors import CorruptStateError

    shutil.copytree(streamed["root"] / "state", tmp_path / "state")
    kw = {"cols": FEATURES, "output": str(tmp_path / "out"), "options": OPTIONS}
    keys = KeyOptions(("k",), min_key_rows=3)
    with pytest.raises(InvalidParameterError, match="apply_at='after'"):
        MXNormStream(spark, str(tmp_path / "state"), apply_at="before", keys=keys, **kw)
    meta = tmp_path / "state" / KEYS_DIR / "keyed.json"
    doc = json.loads(meta.read_text())
    del doc["snapshot_format"]  # as the arrays format wrote it
    meta.write_text(json.dumps(doc))
    with pytest.raises(CorruptStateError, match="snapshot format 1"):
        MXNormStream(spark, str(tmp_path / "state"), keys=keys, **kw)
    with pytest.raises(CorruptStateError, match="format 1"):
        export_latest(spark, str(tmp_path / "state"), str(tmp_path / "export"))


def test_one_row_runs_have_the_bits_of_the_two_pass() -> None:
    from mxnorm_spark.keyed.kernel import segment_moments

    rng = np.random.default_rng(2)
    x = 1e9 + rng.normal(size=(3, 400))
    x[rng.random(x.shape) < 0.1] = np.nan
    x[0, :5] = [np.inf, -0.0, 0.0, -np.inf, 1e300]
    fast = segment_moments(x, np.arange(400))  # every run one row
    # One more column makes the last run two rows long: the general two-pass.
    general = segment_moments(np.hstack([x, x[:, :1]]), np.arange(400))
    for a, b in zip(fast, general, strict=True):
        assert np.array_equal(a[:-1].view(np.int64), b[:-1].view(np.int64))
