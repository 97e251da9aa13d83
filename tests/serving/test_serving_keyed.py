"""KeyedNormalizer with no Spark: the per-feature fallback, key kinds (one column, several
columns, NaN and null values, keys not loaded) and the three entry points (one row,
pandas, Arrow), each against the arithmetic written out here."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mxnorm_spark import Moments, MXNormState
from mxnorm_spark.serving.keyed import KeyedNormalizer

FEATURES = ["x", "y", "z"]
MIN_ROWS = 3


def global_state() -> MXNormState:
    rng = np.random.default_rng(0)
    return MXNormState.create(FEATURES).update(Moments.from_array(rng.normal(5.0, 2.0, (50, 3))))


def tables(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mean = rng.normal(0.0, 10.0, (n, 3))
    scale = rng.uniform(0.5, 2.0, (n, 3))
    count = rng.integers(0, 6, (n, 3)).astype(np.float64)  # about half below MIN_ROWS
    return mean, scale, count


def expected(
    norm: KeyedNormalizer, i: int | None, tabs: Any, row: dict[str, Any]
) -> dict[str, float]:
    """Key row ``i`` (None: not loaded): its constants where its count reaches MIN_ROWS."""
    gm, gs = norm.global_state.normalization_constants()
    mean, scale, count = tabs
    out = {}
    for j, f in enumerate(FEATURES):
        own = i is not None and count[i, j] >= MIN_ROWS
        m = mean[i, j] if own else gm[j]
        s = scale[i, j] if own else gs[j]
        out[f] = (row[f] - m) / s
    return out


def check_rows(
    norm: KeyedNormalizer, rows: list[dict[str, Any]], where: list[int | None], tabs: Any
) -> None:
    for row, i in zip(rows, where, strict=True):
        got = norm.transform_row(row)
        assert got is not None
        want = expected(norm, i, tabs, row)
        assert [got[f] for f in FEATURES] == [want[f] for f in FEATURES], (row, i)
    # The frames give the same bits as one row at a time.
    by_row = np.array([[norm.transform_row(r)[f] for f in FEATURES] for r in rows])  # type: ignore[index]
    # Key columns as objects: pandas would turn a null of an int column into NaN.
    df = pd.DataFrame({c: pd.Series([r[c] for r in rows], dtype=object) for c in norm.key_cols})
    for f in FEATURES:
        df[f] = [r[f] for r in rows]
    got = norm.transform(df)[FEATURES].to_numpy()
    assert got.tobytes() == by_row.tobytes(), np.argwhere(got != by_row)
    # from_pylist keeps a NaN key a NaN (from_pandas would make it a null).
    table = norm.transform(pa.Table.from_pylist(rows))
    arrow = np.column_stack([table.column(f).to_numpy() for f in FEATURES])
    assert arrow.tobytes() == by_row.tobytes()


def test_one_column_keys_with_nan_and_keys_not_loaded() -> None:
    keys = [(float(i),) for i in range(40)] + [(math.nan,)]
    tabs = tables(len(keys), 1)
    norm = KeyedNormalizer(
        global_state(),
        ["k"],
        keys,
        mean=tabs[0],
        scale=tabs[1],
        count=tabs[2],
        min_key_rows=MIN_ROWS,
    )
    assert norm.n_keys == 41
    rng = np.random.default_rng(2)
    key_values = [float(i) for i in range(40)] + [math.nan, 99.0, -1.5]
    where: list[int | None] = [*range(41), None, None]
    rows = [
        {"k": kv, **dict(zip(FEATURES, rng.normal(0.0, 3.0, 3), strict=True))} for kv in key_values
    ]
    check_rows(norm, rows, where, tabs)
    m, s = norm.constants((7.0,))
    use = tabs[2][7] >= MIN_ROWS
    gm, gs = norm.global_state.normalization_constants()
    assert m.tolist() == np.where(use, tabs[0][7], gm).tolist()
    assert s.tolist() == np.where(use, tabs[1][7], gs).tolist()


def test_several_key_columns_with_nulls() -> None:
    keys = [(f"s{i % 7}", i // 7 if i % 5 else None, 0.5 if i % 3 else math.nan) for i in range(35)]
    tabs = tables(len(keys), 3)
    norm = KeyedNormalizer(
        global_state(),
        ["site", "unit", "level"],
        keys,
        mean=tabs[0],
        scale=tabs[1],
        count=tabs[2],
        min_key_rows=MIN_ROWS,
    )
    assert norm.n_keys == 35
    rng = np.random.default_rng(4)
    probe = [*keys, ("s1", 99, 0.5), ("nowhere", None, math.nan)]
    where: list[int | None] = [*range(35), None, None]
    rows = [
        {
            "site": a,
            "unit": b,
            "level": c,
            **dict(zip(FEATURES, rng.normal(0.0, 3.0, 3), strict=True)),
        }
        for a, b, c in probe
    ]
    check_rows(norm, rows, where, tabs)


def test_no_keys_is_the_global_state() -> None:
    empty = np.empty((0, 3))
    norm = KeyedNormalizer(global_state(), ["k"], [], mean=empty, scale=empty, count=empty)
    assert norm.n_keys == 0
    row = {"k": 1, "x": 1.0, "y": 2.0, "z": 3.0}
    gm, gs = norm.global_state.normalization_constants()
    got = norm.transform_row(row)
    assert got is not None
    assert [got[f] for f in FEATURES] == [(row[f] - gm[j]) / gs[j] for j, f in enumerate(FEATURES)]


def test_constant_tables_are_read_only() -> None:
    tabs = tables(4, 5)
    norm = KeyedNormalizer(
        global_state(),
        ["k"],
        [(i,) for i in range(4)],
        mean=tabs[0],
        scale=tabs[1],
        count=tabs[2],
    )
    m, _ = norm.constants((2,))
    m[0] = 1e300  # a copy: the normalizer keeps its own constants
    assert norm.constants((2,))[0][0] != 1e300
    with pytest.raises(ValueError, match="read-only"):
        norm._mean[0, 0] = 0.0


def write_export(
    root: Any, key_cols: list[str], keys: list[tuple[Any, ...]], tabs: Any, shuffled: bool = True
) -> None:
    """An export directory as ``KeyedModel.export`` writes it: each key's features in
    order, key after key, or (``shuffled``) its rows in any order."""
    import json

    import pyarrow.parquet as pq

    from mxnorm_spark.serving.keyed import EXPORT_TYPE
    from mxnorm_spark.store import write_state

    n, k = len(keys), len(FEATURES)
    order = np.random.default_rng(8).permutation(n * k) if shuffled else np.arange(n * k)
    cols: dict[str, Any] = {c: [keys[i // k][j] for i in order] for j, c in enumerate(key_cols)}
    cols["feature"] = [FEATURES[i % k] for i in order]
    cols["feature_index"] = pa.array([i % k for i in order], pa.int32())
    for name, values in zip(("mean", "scale", "count"), tabs, strict=True):
        cols[name] = values.reshape(-1)[order]
    cols["var"] = np.ones(n * k)
    pq.write_table(pa.table(cols), root / "keys.parquet")
    write_state(global_state(), str(root / "global.json"))
    meta = {"type": EXPORT_TYPE, "schema_version": 1, "key_cols": key_cols,
            "min_key_rows": MIN_ROWS, "handle_invalid": "keep"}  # fmt: skip
    (root / "keyed.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("key_cols", "keys"),
    [
        (["k"], [(float(i),) for i in range(30)] + [(math.nan,), (None,)]),
        (["k"], [(f"id{i}",) for i in range(30)] + [(None,)]),
        (["site", "unit"], [(f"s{i % 7}", i // 7 if i % 5 else None) for i in range(30)]),
    ],
    ids=["float-key", "string-key", "two-columns"],
)
@pytest.mark.parametrize("shuffled", [False, True], ids=["in-order", "shuffled"])
def test_load_keyed_from_an_export_in_any_row_order(
    tmp_path: Any, key_cols: list[str], keys: list[tuple[Any, ...]], shuffled: bool
) -> None:
    from mxnorm_spark.serving.keyed import load_keyed
    from mxnorm_spark.store import LocalFileSystem

    tabs = tables(len(keys), 6)
    write_export(tmp_path, key_cols, keys, tabs, shuffled)
    norm = load_keyed(LocalFileSystem(), str(tmp_path))
    assert norm.n_keys == len(keys)
    gm, gs = norm.global_state.normalization_constants()
    for i, key in enumerate(keys):
        use = tabs[2][i] >= MIN_ROWS
        m, s = norm.constants(key)
        assert m.tolist() == np.where(use, tabs[0][i], gm).tolist(), key
        assert s.tolist() == np.where(use, tabs[1][i], gs).tolist(), key


def test_load_keyed_rejects_a_key_without_every_feature(tmp_path: Any) -> None:
    import pyarrow.parquet as pq

    from mxnorm_spark import CorruptStateError
    from mxnorm_spark.serving.keyed import load_keyed
    from mxnorm_spark.store import LocalFileSystem

    keys = [(i,) for i in range(5)]
    write_export(tmp_path, ["k"], keys, tables(5, 7))
    table = pq.read_table(tmp_path / "keys.parquet")
    # Key 4's feature 0 row is replaced by a second row of key 3's feature 0.
    k = table.column("k").to_numpy().copy()
    fi = table.column("feature_index").to_numpy()
    k[(k == 4) & (fi == 0)] = 3
    pq.write_table(table.set_column(0, "k", pa.array(k)), tmp_path / "keys.parquet")
    with pytest.raises(CorruptStateError, match="does not hold 3 features for every key"):
        load_keyed(LocalFileSystem(), str(tmp_path))
