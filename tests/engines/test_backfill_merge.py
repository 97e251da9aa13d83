"""The merge of a backfill's partials per batch value (``merge_partials``), list or flat.

The reference is independent of the vectorized kernel: each value's partials sorted by
partition id, turned into :class:`Moments` one by one (as the driver read the sql
engine's sums) and folded with ``Moments.merge_all``. Bit for bit, whatever the row
order, the record batches or the layout (lists, flat columns, constant fields left out).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from mxnorm_spark.core.moments import Moments
from mxnorm_spark.engines.partials import _ELEMENTS, merge_partials

K = 3


def bits(x: Any) -> list[int]:
    return np.ascontiguousarray(x, dtype=np.float64).view(np.int64).tolist()


def partials(seed: int, *, pivot_per_value: bool, checked: bool) -> dict[str, Any]:
    """Shifted sums of random rows per (value, partition): some values miss partitions,
    some partitions hold no valid value of a feature (count 0), 1e9 offsets."""
    rng = np.random.default_rng(seed)
    values = rng.permutation(np.arange(60) * 7 - 100)
    out: dict[str, list[Any]] = {n: [] for n in ("batch", "pid", "rows", "bad", "cnt", "p")}
    out |= {"s": [], "q": []}
    global_pivot = np.array([1e9, -2.0, 5.5])
    for v in values:
        pivot = global_pivot + rng.normal(0, 3, K) if pivot_per_value else global_pivot
        for pid in range(9):
            if rng.random() < 0.3:
                continue  # this partition holds no row of v
            rows = int(rng.integers(1, 20))
            x = rng.normal(0.0, 1.0 + v % 3, (rows, K)) + np.array([1e9, -3.0, 7.0])
            if checked:
                x[rng.random(x.shape) < 0.25] = np.nan
                x[:, 2] = np.nan if pid == 4 else x[:, 2]
            d = x - pivot
            valid = ~np.isnan(d)
            out["batch"].append(int(v))
            out["pid"].append(pid)
            out["rows"].append(rows)
            out["bad"].append(False)
            out["cnt"].append(valid.sum(axis=0).astype(np.float64) if checked else None)
            out["p"].append(pivot)
            # Sums in row order, as Spark's sum adds them.
            s, q = np.zeros(K), np.zeros(K)
            for r in range(rows):
                s = np.where(valid[r], s + np.where(valid[r], d[r], 0.0), s)
                q = np.where(valid[r], q + np.where(valid[r], d[r] * d[r], 0.0), q)
            out["s"].append(s)
            out["q"].append(q)
    return out


def reference(p: dict[str, Any]) -> dict[int, tuple[Moments, int]]:
    """Each value's partials in partition-id order, as Moments, merged left to right."""
    by_value: dict[int, list[int]] = {}
    for i, v in enumerate(p["batch"]):
        by_value.setdefault(v, []).append(i)
    out = {}
    for v, idx in by_value.items():
        parts = []
        for i in sorted(idx, key=lambda i: p["pid"][i]):
            cnt = p["cnt"][i] if p["cnt"][i] is not None else np.full(K, float(p["rows"][i]))
            has = cnt > 0
            s1, s2 = np.where(has, p["s"][i], 0.0), np.where(has, p["q"][i], 0.0)
            with np.errstate(invalid="ignore", divide="ignore"):
                delta = np.where(has, s1 / cnt, 0.0)
                m2 = np.where(has, np.maximum(s2 - s1 * delta, 0.0), 0.0)
            parts.append(Moments(cnt, np.asarray(p["p"][i], float), delta, m2))
        out[v] = (Moments.merge_all(parts, K), sum(p["rows"][i] for i in idx))
    return out


def table(p: dict[str, Any], layout: str, order: np.ndarray) -> pa.Table:
    n = len(order)
    cnt = np.stack(
        [
            c if c is not None else np.full(K, float(r))
            for c, r in zip(p["cnt"], p["rows"], strict=True)
        ]
    )
    fields = {"count": cnt, "shift": np.stack(p["p"]), "s": np.stack(p["s"]), "q": np.stack(p["q"])}
    cols: dict[str, Any] = {
        "batch": pa.array(np.asarray(p["batch"])[order]),
        "pid": pa.array(np.asarray(p["pid"], np.int32)[order]),
        "rows": pa.array(np.asarray(p["rows"], np.int64)[order]),
        "lo": pa.nulls(n, pa.int32()),
        "hi": pa.nulls(n, pa.int32()),
        "bad": pa.array(np.asarray(p["bad"])[order]),
    }
    if layout == "lists":
        offsets = pa.array(np.arange(n + 1, dtype=np.int32) * K)
        for name, x in fields.items():
            flat = pa.array(x[order].reshape(-1))
            cols[name] = pa.ListArray.from_arrays(offsets, flat).cast(_ELEMENTS)
        return pa.table(cols)
    if layout == "lean":  # what the sql engine sends: constants and lo/hi left out
        del cols["lo"], cols["hi"]
        if p["cnt"][0] is None:
            del fields["count"]
        if len({tuple(x) for x in p["p"]}) == 1:
            del fields["shift"]
    for name, x in fields.items():
        for j in range(K):
            cols[f"{name}_{j}"] = pa.array(x[order, j])
    return pa.table(cols)


@pytest.mark.parametrize("pivot_per_value", [False, True])
@pytest.mark.parametrize("checked", [False, True])
def test_merge_partials_is_merge_all_in_partition_order(
    pivot_per_value: bool, checked: bool
) -> None:
    p = partials(
        11 + 2 * pivot_per_value + checked, pivot_per_value=pivot_per_value, checked=checked
    )
    want = reference(p)
    rng = np.random.default_rng(3)
    n = len(p["batch"])
    shift = None if pivot_per_value else np.asarray(p["p"][0])
    outputs = []
    for layout in ("lists", "flat", "lean"):
        for _ in range(2):
            order = rng.permutation(n)
            t = table(p, layout, order)
            # In several record batches, as mapInArrow hands them over.
            t = pa.Table.from_batches(t.to_batches(max_chunksize=37))
            flat = None if layout == "lists" else K
            got = merge_partials(t, True, flat, shift if layout == "lean" else None)
            outputs.append(got)
            assert sorted(got.column("batch").to_pylist()) == sorted(want)
            for i, v in enumerate(got.column("batch").to_pylist()):
                m, rows = want[v]
                assert got.column("rows")[i].as_py() == rows
                for name in ("count", "shift", "delta", "m2"):
                    value = got.column(name)[i].values.to_numpy()
                    assert bits(value) == bits(getattr(m, name)), (layout, v, name)
    # Every layout and row order gives the same record batch, bit for bit.
    first = outputs[0]
    for other in outputs[1:]:
        order = np.argsort(other.column("batch").to_numpy())
        assert other.take(pa.array(order)).equals(
            first.take(pa.array(np.argsort(first.column("batch").to_numpy())))
        )


def test_merge_partials_lean_needs_the_shift() -> None:
    p = partials(5, pivot_per_value=False, checked=False)
    t = table(p, "lean", np.arange(len(p["batch"])))
    with pytest.raises(AssertionError, match="shift"):
        merge_partials(t, True, K, None)


@pytest.mark.spark
def test_sql_partials_are_flat_without_constant_columns(spark: Any) -> None:
    from mxnorm_spark.engines import sql
    from mxnorm_spark.engines.columns import resolve_input

    df = spark.createDataFrame(
        [(i % 4, 1e9 + i, float(i * i)) for i in range(40)], "b long, x double, y double"
    )
    spec = resolve_input(df, ["x", "y"], None)
    pivot = np.array([1e9, 3.0])
    base = ["batch", "pid", "rows", "bad"]
    sums = [f"{f}_{j}" for f in "sq" for j in range(2)]
    lean = sql.batch_partials(df, spec, pivot, "b", 2, checked=False)
    assert lean.columns == base + sums
    checked = sql.batch_partials(df, spec, pivot, "b", 2, checked=True)
    assert checked.columns == base + sums + ["count_0", "count_1"]
    per_value = (pa.array([0, 1, 2, 3], pa.int64()), np.tile(pivot, (4, 1)))
    joined = sql.batch_partials(df, spec, per_value, "b", 2, checked=True)
    assert joined.columns == base + sums + ["count_0", "count_1", "shift_0", "shift_1"]
