"""A keyed stream's micro-batch in one job (keyed_stream_kernel.fold_and_normalize): the fold
of every key and the normalized rows in one pass over the rows shuffled by key.

Checked against two independent references: on plain Arrow, the per-key reference loop
(MXNormState per key) and the global fallback computed by hand; in Spark, the join path
(the snapshot read back and joined by key, as a replay or a user sink runs it), which
must give the same snapshot and the same rows bit for bit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mxnorm_spark.core.moments import Moments
from mxnorm_spark.core.state import MXNormState, StateOptions, scale_of
from mxnorm_spark.keyed.stream_kernel import (
    SNAPSHOT_SCALARS,
    SOURCE_COLUMN,
    RowOutput,
    SnapshotLayout,
    fold_and_normalize,
    stream_fold,
)
from mxnorm_spark.store import StateStore

FEATURES = ("x", "y")


def _input(
    layout: SnapshotLayout, keys: np.ndarray, x: np.ndarray, tag: np.ndarray, snap: pa.Table | None
) -> pa.Table:
    """The kernel's input: data rows (a carried ``tag`` column after the state columns)
    and the previous snapshot's rows, sorted by (key, source), null keys first."""
    n = keys.shape[0]
    types = layout.schema([pa.field("k", pa.string())])
    state = layout.state_columns
    data: dict[str, Any] = {
        "k": pa.array(keys, pa.string()),
        SOURCE_COLUMN: pa.array(np.ones(n, np.int32)),
    }
    data |= {f: pa.nulls(n, types.field(f).type) for f in SNAPSHOT_SCALARS}
    data |= {v: pa.array(x[:, i]) if i < 2 else pa.nulls(n, pa.float64())
             for i, v in enumerate(state)}  # fmt: skip
    data["__mx_c0"] = pa.array(tag)
    table = pa.table(data)
    if snap is not None:
        m = snap.num_rows
        old: dict[str, Any] = {"k": snap["k"], SOURCE_COLUMN: pa.array(np.zeros(m, np.int32))}
        old |= {f: snap[f] for f in (*SNAPSHOT_SCALARS, *state)}
        old["__mx_c0"] = pa.nulls(m, pa.int64())
        table = pa.concat_tables([pa.table(old), table])
    return table.sort_by([("k", "ascending"), (SOURCE_COLUMN, "ascending")])


@pytest.mark.parametrize(
    ("options", "apply_at", "handle_invalid"),
    [
        (StateOptions(alpha=0.2), "after", "keep"),
        (StateOptions(alpha=0.3, var_update="mixture", decay="rows"), "before", "skip"),
        (StateOptions(alpha=None), "after", "skip"),
        (StateOptions(alpha=None, zero_variance="unit"), "before", "keep"),
    ],
)
def test_rows_and_snapshot_equal_the_per_key_reference(
    options: StateOptions, apply_at: str, handle_invalid: str
) -> None:
    rng = np.random.default_rng(11)
    layout = SnapshotLayout(2, options, apply_at)
    min_rows = 3
    snap: pa.Table | None = None
    ref: dict[str, MXNormState] = {}
    glob = MXNormState.create(list(FEATURES), options=options)
    seen = {"key": 0, "global": 0}
    for b in range(4):
        ids = rng.integers(0, 25, 150)
        keys = np.array([f"k{i:02d}" for i in ids], dtype=object)
        keys[rng.random(150) < 0.05] = None
        x = np.stack([1e9 + rng.normal(size=150), rng.normal(5.0, 2.0, 150)], axis=1)
        x[rng.random(150) < 0.08, 1] = np.nan
        tag = np.arange(150) + 1000 * b
        table = _input(layout, keys, x, tag, snap)
        new_glob = glob.update(Moments.from_array(x))
        if apply_at == "before":
            gm, gs = glob.normalization_constants(new_glob)
        else:
            gm, gs = new_glob.normalization_constants()
        first_carried = 1 + 1 + len(SNAPSHOT_SCALARS) + len(layout.state_columns)
        rows = RowOutput(
            features=FEATURES,
            global_mean=tuple(gm),
            global_scale=tuple(gs),
            min_key_rows=min_rows,
            handle_invalid=handle_invalid,
            columns=(("tag", "in", first_carried), ("k", "in", 0), ("zx", "z", 0), ("zy", "z", 1)),
        )
        got_snap, out = fold_and_normalize(table, 1, layout, rows, batch_id=b, evict_after=None)
        # The snapshot is stream_fold's, bit for bit (rows with a null key are not folded).
        keyed = table.filter(pa.compute.is_valid(table["k"])).drop_columns(["__mx_c0"])
        want_snap = stream_fold(keyed, 1, layout, batch_id=b, evict_after=None)
        assert got_snap.equals(want_snap)
        # Each row: its key's state before or after this batch if it has enough valid
        # values of the feature, else the global state's.
        before = dict(ref)
        for key in sorted({k for k in keys if k is not None}):
            s = ref.get(key, MXNormState.create(list(FEATURES), options=options))
            ref[key] = s.update(Moments.from_array(x[keys == key]))
        pdf = out.to_pandas().set_index("tag")
        ok = np.isfinite(x).all(axis=1)
        expect_tags = tag[ok] if handle_invalid == "skip" else tag
        assert sorted(pdf.index) == sorted(expect_tags)
        for i in np.flatnonzero(ok):
            key = keys[i]
            state = (before if apply_at == "before" else ref).get(key) if key else None
            for j, name in enumerate(("zx", "zy")):
                got = pdf.loc[tag[i], name]
                if state is not None and state.totals.count[j] >= min_rows:
                    # The kernel's moments and the reference's agree to 1e-16 of 1e9: 1e-7.
                    m, s = state.mean[j], scale_of(state.var[j], options)
                    np.testing.assert_allclose(got, (x[i, j] - m) / s, rtol=0, atol=1e-6)
                    seen["key"] += 1
                else:  # the global constants, given: the same bits
                    assert got == (x[i, j] - gm[j]) / gs[j]
                    seen["global"] += 1
            assert pdf.loc[tag[i], "k"] == key if key else pd.isna(pdf.loc[tag[i], "k"])
        glob = new_glob
        snap = got_snap
    assert seen["key"] > 300 and seen["global"] > 30  # both rules were exercised


def _assert_same_bits(a: pa.Table, b: pa.Table) -> None:
    """Same schema, rows in the same order, same nulls and the same bits (NaN too)."""
    assert a.schema.equals(b.schema) and a.num_rows == b.num_rows
    for name in a.column_names:
        x, y = a[name].combine_chunks(), b[name].combine_chunks()
        assert x.is_null().equals(y.is_null()), name
        if pa.types.is_floating(x.type):
            u = x.fill_null(0.0).to_numpy(zero_copy_only=False).view(np.int64)
            v = y.fill_null(0.0).to_numpy(zero_copy_only=False).view(np.int64)
            assert np.array_equal(u, v), name
        else:
            assert x.equals(y), name


@pytest.mark.parametrize(
    ("options", "apply_at", "evict_after"),
    [
        (StateOptions(alpha=0.2), "after", None),
        (StateOptions(alpha=0.3, var_update="mixture", decay="rows"), "before", 1),
        (StateOptions(alpha=None), "after", 2),
        (StateOptions(alpha=None, zero_variance="unit"), "before", None),
    ],
)
def test_parts_fold_equals_the_fold_of_the_sorted_union(
    options: StateOptions, apply_at: str, evict_after: int | None
) -> None:
    """The kernel's path (the data rows and the previous part apart, only the order
    computed) gives the tables of the fold of :func:`with_snapshot`'s sorted union, bit
    for bit and row for row: duplicate and null keys, ties, NaN and null features, keys
    that come back after eviction, a carried column, a key type wider in the part."""
    from mxnorm_spark.keyed.stream_kernel import fold_and_normalize_parts, with_snapshot

    rng = np.random.default_rng(23)
    layout = SnapshotLayout(2, options, apply_at)
    pool = np.array([np.nan, 0.0, -0.0, 1.5, 1e9, 1e9 + 1])
    first_carried = 1 + 1 + len(SNAPSHOT_SCALARS) + len(layout.state_columns)
    rows = RowOutput(
        features=FEATURES,
        global_mean=(1e9, 0.5),
        global_scale=(2.0, 3.0),
        min_key_rows=2,
        handle_invalid="keep",
        columns=(("tag", "in", first_carried), ("k", "in", 0), ("zx", "z", 0), ("zy", "z", 1)),
    )
    prev: pa.Table | None = None
    for b in range(5):
        n = int(rng.integers(0, 120))
        null = 0.05 if b % 2 else 0.0  # without nulls, numpy sorts the keys
        keys = [None if rng.random() < null else int(v) for v in rng.integers(0, 30 - 5 * b, n)]
        x = pool[rng.integers(0, len(pool), (n, 2))] if b % 2 else rng.normal(size=(n, 2))
        nulls = rng.random((n, 2)) < 0.05
        data = pa.table(
            {
                "k": pa.array(keys, pa.int32()),
                "__mx_v0": pa.array(x[:, 0], mask=nulls[:, 0]),
                "__mx_v1": pa.array(x[:, 1], mask=nulls[:, 1]),
                "__mx_c0": pa.array(np.arange(n) + 1000 * b),
            }
        )
        union = with_snapshot(data, prev, 1, layout)
        want = fold_and_normalize(union, 1, layout, rows, batch_id=b, evict_after=evict_after)
        got = fold_and_normalize_parts(
            data, prev, 1, layout, rows, batch_id=b, evict_after=evict_after
        )
        for a, w in zip(got, want, strict=True):
            _assert_same_bits(a, w)
        # The next part as the kernel's file holds it: key type int64, wider than the data's.
        prev = got[0].cast(layout.schema([pa.field("k", pa.int64())]))


# ---- in Spark: the one-job path against the join path ------------------------------------
def _frames(seed: int = 7) -> list[pd.DataFrame]:
    rng = np.random.default_rng(seed)
    frames = []
    for b in range(3):
        n = 600
        ids = np.where(rng.random(n) < 0.4, 0, rng.integers(1, 300, n) + 50 * b)
        k = np.array([f"k{i:03d}" for i in ids], dtype=object)
        k[rng.random(n) < 0.03] = None
        y = pd.array(rng.integers(-50, 50, n), dtype="Int64")
        y[rng.random(n) < 0.05] = pd.NA
        x = 1e9 + rng.normal(size=n)
        x[rng.random(n) < 0.04] = np.nan
        frames.append(
            pd.DataFrame(
                {
                    "id": np.arange(n) + 1000 * b,
                    "k": k,
                    "x": x,
                    "note": [f"n{i}" for i in range(n)],
                    "y": y,
                    "at": pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(np.arange(n), "s"),
                }
            )
        )
    return frames


def _stream(spark: Any, root: Path, **kw: Any) -> Any:
    from mxnorm_spark.streaming.keyed import KeyOptions
    from mxnorm_spark.streaming.updater import MXNormStream

    return MXNormStream(
        spark,
        str(root / "state"),
        cols=["x", "y"],
        options=StateOptions(alpha=0.25),
        progress=None,
        keys=KeyOptions(
            ("k",),
            min_key_rows=2,
            evict_after=kw.pop("evict_after", None),
            num_partitions=kw.pop("num_partitions", None),
        ),
        **kw,
    )


@pytest.mark.spark
@pytest.mark.parametrize(
    "case",
    [
        {"apply_at": "after", "handle_invalid": "keep", "cols": None, "evict_after": None},
        {"apply_at": "before", "handle_invalid": "skip", "cols": ("zx", "zy"), "evict_after": None},
        {"apply_at": "after", "handle_invalid": "skip", "cols": ("zx", "y"), "evict_after": 1},
    ],
)
def test_one_job_equals_the_join_path(spark: Any, tmp_path: Path, case: dict[str, Any]) -> None:
    from mxnorm_spark.streaming.keyed import KEYS_DIR, snapshot_dir
    from mxnorm_spark.streaming.sinks import StreamOutput

    def sink(df: Any, batch_id: int) -> None:  # a user sink: the join path
        df.write.mode("overwrite").parquet(str(tmp_path / "b" / "out" / f"batch_id={batch_id}"))

    kw = dict(case)
    cols, handle_invalid = kw.pop("cols"), case["handle_invalid"]
    one = _stream(
        spark,
        tmp_path / "a",
        output=StreamOutput(path=str(tmp_path / "a" / "out"), cols=cols),
        **kw,
    )
    join = _stream(spark, tmp_path / "b", output=StreamOutput(sink=sink, cols=cols), **kw)
    assert one.keys is not None and one.keys.directories is not None
    assert join.keys is not None and join.keys.directories is None
    for b, frame in enumerate(_frames()):
        df = spark.createDataFrame(frame)
        one.foreach_batch(df, b)
        join.foreach_batch(df, b)
        snaps = [
            pd.read_parquet(root / "state" / KEYS_DIR / snapshot_dir(b)).sort_values("k")
            for root in (tmp_path / "a", tmp_path / "b")
        ]
        pd.testing.assert_frame_equal(
            snaps[0].reset_index(drop=True), snaps[1].reset_index(drop=True), check_exact=True
        )
        # Written by the kernel, one part per partition of the fold (4: the session's
        # shuffle partitions), named by it, not by Spark.
        snapshot = tmp_path / "a" / "state" / KEYS_DIR / snapshot_dir(b)
        assert (snapshot / "_parts").read_text() == "4\n"
        parts = sorted(p.name for p in snapshot.iterdir() if p.name != "_parts")
        assert parts == [f"part-{i:05d}.snappy.parquet" for i in range(4)]
    got = spark.read.parquet(str(tmp_path / "a" / "out"))
    want = spark.read.parquet(str(tmp_path / "b" / "out"))
    assert got.schema == want.schema
    a = got.toPandas().sort_values("id").reset_index(drop=True)
    w = want.toPandas().sort_values("id").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, w, check_exact=True)
    frames = pd.concat(_frames())
    kept = frames if handle_invalid == "keep" else frames.dropna(subset=["x", "y"])
    assert list(a["id"]) == sorted(kept["id"])  # every row once


def test_with_snapshot_sorts_as_spark_sorts() -> None:
    """Nulls first, NaN after +inf, snapshot rows (source 0) before a key's data rows: the
    order Spark's sortWithinPartitions gives the union, which fixes the moments' bits."""
    from mxnorm_spark.keyed.stream_kernel import with_snapshot

    rng = np.random.default_rng(4)
    layout = SnapshotLayout(2, StateOptions(alpha=0.5))
    n = 300
    pool = np.array([np.nan, np.inf, -np.inf, 0.0, 1.5, -2.0])
    x = pool[rng.integers(0, 6, (n, 2))]
    keys = [None if i % 37 == 0 else f"k{rng.integers(0, 9)}" for i in range(n)]
    nulls = rng.random((n, 2)) < 0.1
    data = pa.table(
        {
            "k": pa.array(keys, pa.string()),
            "__mx_v0": pa.array(x[:, 0], mask=nulls[:, 0]),
            "__mx_v1": pa.array(x[:, 1], mask=nulls[:, 1]),
            "__mx_c0": pa.array(np.arange(n)),
        }
    )
    snap_keys = ["k1", "k3", "k8"]
    prev = layout.schema([pa.field("k", pa.string())]).empty_table()
    prev = pa.Table.from_pylist(
        [{"k": k, "last_batch": 0, "batches_seen": 1, "key_rows": 2, "rows": 2} for k in snap_keys],
        schema=prev.schema,
    )
    got = with_snapshot(data, prev, 1, layout)
    assert got.num_rows == n + len(snap_keys)

    def rank(v: Any) -> tuple[int, float, int]:  # Spark's ascending order of a double
        if v is None:
            return (0, 0.0, 0)
        return (1, np.inf, 1) if np.isnan(v) else (1, v, 0)

    def spark_key(r: dict[str, Any]) -> tuple[Any, ...]:
        return (
            (0, "") if r["k"] is None else (1, r["k"]),
            r["__mx_src"],
            rank(r["__mx_v0"]),
            rank(r["__mx_v1"]),
        )

    rows = got.select(["k", "__mx_src", "__mx_v0", "__mx_v1"]).to_pylist()
    assert [spark_key(r) for r in rows] == sorted(spark_key(r) for r in rows)
    assert rows[0]["k"] is None  # null keys first


@pytest.mark.parametrize("key_kind", ["string", "double", "int", "unique"])
def test_with_snapshot_is_one_stable_sort_by_every_column(key_kind: str) -> None:
    """The sort by key and source, then by features within runs of equal (key, source),
    is the permutation of one stable sort by all of them: rows that tie everywhere (-0.0
    and 0.0, two NaN, two nulls) keep their input order, which fixes the moments' bits."""
    from mxnorm_spark.keyed.stream_kernel import with_snapshot

    rng = np.random.default_rng(9)
    layout = SnapshotLayout(2, StateOptions(alpha=0.5))
    n = 400
    pool = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.5, -2.0])
    x = pool[rng.integers(0, len(pool), (n, 2))]
    nulls = rng.random((n, 2)) < 0.1
    if key_kind == "string":
        key_type: Any = pa.string()
        keys: list[Any] = [None if i % 29 == 0 else f"k{rng.integers(0, 7)}" for i in range(n)]
        snap_keys: list[Any] = ["k1", "k5"]
    elif key_kind == "double":
        key_type = pa.float64()
        keys = [None if i % 31 == 0 else float(pool[rng.integers(0, len(pool))]) for i in range(n)]
        snap_keys = [1.5, float("nan")]
    elif key_kind == "int":  # no null: numpy's sort, then the runs by features
        key_type = pa.int64()
        keys = [int(v) for v in rng.integers(0, 9, n)]
        snap_keys = [2, 4]
    else:  # one row per key: no run to sort by features
        key_type = pa.int64()
        keys = [int(v) for v in rng.permutation(n)]
        snap_keys = [3, 7]
    data = pa.table(
        {
            "k": pa.array(keys, key_type),
            "__mx_v0": pa.array(x[:, 0], mask=nulls[:, 0]),
            "__mx_v1": pa.array(x[:, 1], mask=nulls[:, 1]),
            "__mx_c0": pa.array(np.arange(n)),
        }
    )
    prev = layout.schema([pa.field("k", key_type)]).empty_table()
    prev = pa.Table.from_pylist(
        [{"k": k, "last_batch": 0, "batches_seen": 1, "key_rows": 2, "rows": 2} for k in snap_keys],
        schema=prev.schema,
    )
    got = with_snapshot(data, prev, 1, layout)

    def rank(v: Any) -> tuple[int, Any]:  # Spark's ascending order; -0.0 == 0.0
        if v is None:
            return (0, 0.0)
        return (2, 0.0) if isinstance(v, float) and np.isnan(v) else (1, v)

    # The reference: Python's stable sort of the union (data rows, then snapshot rows).
    def value(i: int, j: int) -> float | None:
        return None if nulls[i, j] else float(x[i, j])

    union = [(keys[i], 1, value(i, 0), value(i, 1), i) for i in range(n)]
    union += [(k, 0, None, None, None) for k in snap_keys]
    want = sorted(union, key=lambda r: (rank(r[0]), r[1], rank(r[2]), rank(r[3])))
    cols = got.select(["k", "__mx_src", "__mx_c0"]).to_pylist()
    assert [r["__mx_c0"] for r in cols] == [r[4] for r in want]
    assert [r["__mx_src"] for r in cols] == [r[1] for r in want]


def test_a_missing_part_is_not_published(tmp_path: Path) -> None:
    from mxnorm_spark.core.errors import StateConflictError
    from mxnorm_spark.store.filesystems import LocalFileSystem
    from mxnorm_spark.streaming._keyed_one_job import PARTS_FILE, check_parts, part_name

    fs = LocalFileSystem()
    for i in (0, 2):
        (tmp_path / part_name(i)).write_bytes(b"")
    with pytest.raises(StateConflictError, match=r"partition\(s\) \[1\] of 3"):
        check_parts(fs, str(tmp_path), 3, batch_id=7)
    assert not (tmp_path / PARTS_FILE).exists()
    (tmp_path / part_name(1)).write_bytes(b"")
    check_parts(fs, str(tmp_path), 3, batch_id=7)
    assert (tmp_path / PARTS_FILE).read_text() == "3\n"


@pytest.mark.spark
def test_a_corrupt_part_is_named(spark: Any, tmp_path: Path) -> None:
    from mxnorm_spark.streaming.keyed import KEYS_DIR, snapshot_dir

    frames = _frames()
    stream = _stream(spark, tmp_path, output=str(tmp_path / "out"))
    stream.foreach_batch(spark.createDataFrame(frames[0]), 0)
    part = tmp_path / "state" / KEYS_DIR / snapshot_dir(0) / "part-00001.snappy.parquet"
    part.write_bytes(b"not parquet")
    with pytest.raises(Exception, match=r"part-00001\.snappy\.parquet, a part of the per-key"):
        stream.foreach_batch(spark.createDataFrame(frames[1]), 1)
    assert StateStore(tmp_path / "state").batch_ids() == [0]  # nothing committed


@pytest.mark.spark
def test_another_partition_count_realigns_the_parts(spark: Any, tmp_path: Path) -> None:
    """A restart with another number of partitions shuffles the old snapshot once (its
    parts do not match), writes the new count of parts, and gives the bits of a run that
    kept one count throughout."""
    from mxnorm_spark.streaming.keyed import KEYS_DIR, snapshot_dir

    frames = [*_frames(), *_frames(seed=8)]
    steady = _stream(spark, tmp_path / "steady", output=str(tmp_path / "steady" / "out"))
    for b, frame in enumerate(frames):
        steady.foreach_batch(spark.createDataFrame(frame), b)
    root = tmp_path / "moved"
    first = _stream(spark, root, output=str(root / "out"))
    for b in range(3):
        first.foreach_batch(spark.createDataFrame(frames[b]), b)
    again = _stream(spark, root, output=str(root / "out"), num_partitions=3)
    for b in range(3, len(frames)):
        again.foreach_batch(spark.createDataFrame(frames[b]), b)
        snapshot = root / "state" / KEYS_DIR / snapshot_dir(b)
        assert (snapshot / "_parts").read_text() == "3\n"
    last = snapshot_dir(len(frames) - 1)
    got, want = (
        pd.read_parquet(r / "state" / KEYS_DIR / last).sort_values("k").reset_index(drop=True)
        for r in (root, tmp_path / "steady")
    )
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    out, ref = (
        spark.read.parquet(str(r / "out"))
        .toPandas()
        .sort_values(["batch_id", "id"])  # ids repeat over the two halves
        .reset_index(drop=True)
        for r in (root, tmp_path / "steady")
    )
    pd.testing.assert_frame_equal(out, ref, check_exact=True)
