"""The Python side of per-key MXNorm: exact moments per (key, batch) and the fold of each
key's batches, in one ``mapInArrow`` pass over rows hash-partitioned by key and sorted by
(key, batch).

Rows arrive sorted, so every (key, batch) is one run of consecutive rows (a *segment*),
possibly split over several Arrow record batches. Each piece of a segment gets its
moments with the compensated two-pass of :meth:`Moments.from_columns`, vectorized over
the pieces of a record batch (the pivot is the segment's first valid value, so data such
as ``1e9 + N(0, 1)`` keeps its digits); pieces of one segment are joined with
:meth:`Moments.merge` (Chan). The fold then runs over the *rank* of a segment within its
key: step ``r`` updates every key that has an ``r``-th batch at once, with
:func:`~mxnorm_spark.state.update_lanes` (what :meth:`MXNormState.update` computes) on
lanes that are the (key, feature) pairs. The update is elementwise, so each key gets the
bits a state of its own would get, and the math stays in :mod:`mxnorm_spark.state`.

No Spark import: the functions run in the Python workers (and in tests, on plain Arrow).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mxnorm_spark.moments import FloatArray, Moments
from mxnorm_spark.state import MXNormState, StateOptions, scale_of, update_lanes

__all__ = [
    "FOLD_ARRAYS",
    "filled",
    "filled_constants",
    "fold_kernel",
    "lane_constants",
    "lane_moments",
    "segment_moments",
]

BatchFunction = Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]

# The per-feature arrays of each output row (one element per feature), in schema order.
FOLD_ARRAYS = (
    "count_before",
    "count",
    "mean",
    "var",
    "totals_shift",
    "totals_delta",
    "totals_m2",
    "before_mean",
    "before_scale",
    "after_mean",
    "after_scale",
)
TOTALS = ("count", "totals_shift", "totals_delta", "totals_m2")
_TOTAL_FIELDS = ("count", "shift", "delta", "m2")
# Output rows per record batch handed back to the JVM.
OUT_ROWS = 8192


def segment_moments(x: FloatArray, starts: np.ndarray) -> tuple[FloatArray, ...]:
    """``(count, shift, delta, m2)``, each segments x features, of the runs of columns
    ``x[:, starts[i]:starts[i + 1]]`` (``x`` is features x rows; NaN and inf are skipped).

    The same compensated two-pass as :meth:`Moments.from_columns`, per run.

    >>> x = np.array([[1e9 + 1, 1e9 + 3, 5.0, np.nan, 7.0]])
    >>> n, p, d, m2 = segment_moments(x, np.array([0, 2]))
    >>> n.tolist(), (p + d).tolist(), (m2 / n).tolist()
    ([[2.0], [2.0]], [[1000000002.0], [6.0]], [[1.0], [1.0]])
    """
    return tuple(m.T for m in lane_moments(x, starts))


def lane_moments(x: FloatArray, starts: np.ndarray) -> tuple[FloatArray, ...]:
    """:func:`segment_moments` as features x segments arrays (C-contiguous: lanes)."""
    n = x.shape[1]
    valid = np.isfinite(x)
    if starts.shape[0] == n:
        # Every run is one row (a key with one row in a micro-batch): the two-pass below
        # gives pivot = the value, delta = m2 = +0.0; the same bits without the reductions.
        zero = np.zeros(x.shape)
        return valid.astype(np.float64), np.where(valid, x, 0.0), zero, zero.copy()
    lengths = np.diff(np.append(starts, n))
    seg = np.repeat(np.arange(starts.shape[0]), lengths)
    cnt = np.add.reduceat(valid.astype(np.float64), starts, axis=1)
    has = cnt > 0
    first = np.minimum.reduceat(np.where(valid, np.arange(n), n), starts, axis=1)
    pivot = np.where(has, np.take_along_axis(x, np.minimum(first, n - 1), axis=1), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.where(valid, x - pivot[:, seg], 0.0)
        delta = np.where(has, np.add.reduceat(d, starts, axis=1) / cnt, 0.0)
        r = np.where(valid, d - delta[:, seg], 0.0)
        # The second term removes the residual error of ``delta`` (compensated two-pass).
        rs = np.add.reduceat(r, starts, axis=1)
        m2 = np.where(has, np.add.reduceat(r * r, starts, axis=1) - rs * rs / cnt, 0.0)
    return cnt, pivot, delta, np.maximum(m2, 0.0)


def differs(prev: pa.Array | None, col: pa.Array) -> np.ndarray:
    """Per row of ``col``: does it differ from the row before (the first: from ``prev``)?

    NaN equals NaN, as in Spark's grouping, join and sort (and -0.0 equals 0.0).
    """
    arr = col if prev is None else pa.concat_arrays([prev, col])
    a, b = arr.slice(1), arr.slice(0, len(arr) - 1)
    ne = pc.not_equal(a, b)
    if pa.types.is_floating(arr.type):
        ne = pc.and_(ne, pc.invert(pc.and_(pc.is_nan(a), pc.is_nan(b))))
    out = np.asarray(pc.fill_null(ne, True).to_numpy(zero_copy_only=False), dtype=bool)
    return out if prev is not None else np.concatenate([[True], out])


@dataclass
class _Segments:
    """Segments found so far in a partition: group values and moments, in row order."""

    groups: list[pa.RecordBatch]
    moments: list[tuple[FloatArray, ...]]
    rows: list[np.ndarray]
    new_key: list[np.ndarray]
    continues: list[bool]  # does the first piece of a record batch continue the last one?

    def add(self, rb: pa.RecordBatch, prev: list[pa.Array] | None, n_keys: int, g: int) -> None:
        n = rb.num_rows
        key_diff = np.zeros(n, dtype=bool)
        for i in range(n_keys):
            key_diff |= differs(None if prev is None else prev[i], rb.column(i))
        seg_diff = key_diff.copy()
        if g > n_keys:
            seg_diff |= differs(None if prev is None else prev[n_keys], rb.column(n_keys))
        self.continues.append(not bool(seg_diff[0]))
        seg_diff[0] = True
        starts = np.flatnonzero(seg_diff)
        cols = [rb.column(j).to_numpy(zero_copy_only=False) for j in range(g, rb.num_columns)]
        x = np.vstack(cols).astype(np.float64, copy=False)
        self.moments.append(segment_moments(x, starts))
        self.rows.append(np.diff(np.append(starts, n)))
        self.new_key.append(key_diff[starts])
        idx = pa.array(starts)
        self.groups.append(
            pa.RecordBatch.from_arrays(
                [rb.column(i).take(idx) for i in range(g)], names=rb.schema.names[:g]
            )
        )

    def joined(self) -> tuple[pa.Table, tuple[FloatArray, ...], np.ndarray, np.ndarray]:
        """One entry per (key, batch): pieces split over record batches merged (Chan)."""
        cnt, sh, de, m2 = (np.concatenate([m[i] for m in self.moments]) for i in range(4))
        rows = np.concatenate(self.rows).astype(np.int64)
        new_key = np.concatenate(self.new_key)
        offsets = np.cumsum([0] + [r.shape[0] for r in self.rows])[:-1]
        keep = np.ones(rows.shape[0], dtype=bool)
        root: dict[int, int] = {}
        for i in (int(o) for o, c in zip(offsets, self.continues, strict=True) if c):
            t = root.get(i - 1, i - 1)  # a segment may span many record batches
            a = Moments(cnt[t], sh[t], de[t], m2[t])
            merged = a.merge(Moments(cnt[i], sh[i], de[i], m2[i]))
            cnt[t], sh[t], de[t], m2[t] = merged.count, merged.shift, merged.delta, merged.m2
            rows[t] += rows[i]
            keep[i], root[i] = False, t
        table = pa.Table.from_batches(self.groups).combine_chunks().filter(pa.array(keep))
        return table, (cnt[keep], sh[keep], de[keep], m2[keep]), rows[keep], new_key[keep]


def filled(state: MXNormState) -> MXNormState:
    """``state`` with mean 0 and variance 1 for features it has no value of yet.

    Such entries are never used to normalize (a feature with no valid value so far falls
    back to the global state); the fill only keeps
    :meth:`MXNormState.normalization_constants` total, as ``MXNormModel`` does.
    """
    mean, var = _filled(state.mean, state.var)
    return replace(state, mean=mean, var=var)


def _filled(mean: FloatArray, var: FloatArray) -> tuple[FloatArray, FloatArray]:
    return np.where(np.isnan(mean), 0.0, mean), np.where(np.isnan(var), 1.0, var)


def filled_constants(state: MXNormState) -> tuple[FloatArray, FloatArray]:
    """:meth:`MXNormState.normalization_constants` of :func:`filled` ``(state)``, the same
    bits, vectorized: a wide state has a million lanes, and the per-feature check of
    ``normalization_constants`` (nothing to fall back on: no NaN is left) is a Python loop."""
    return lane_constants(state.options, state.mean, state.var)


def lane_constants(
    options: StateOptions, mean: FloatArray, var: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """:func:`filled_constants` of lanes given as plain ``mean`` and ``var`` arrays."""
    mean, var = _filled(mean, var)
    return mean, scale_of(var, options)


def fold_segments(
    moments: tuple[FloatArray, ...], new_key: np.ndarray, options: StateOptions
) -> dict[str, FloatArray]:
    """The state of each key before and after each of its batches (segments in key, batch
    order), as the arrays of :data:`FOLD_ARRAYS` (segments x features)."""
    s, k = moments[0].shape
    key = np.cumsum(new_key) - 1
    first = np.flatnonzero(new_key)
    rank = np.arange(s) - first[key]
    # Rank-major, keys ascending within a rank: the keys of rank r + 1 are a subsequence of
    # those of rank r, so each step reads the state it continues from the step before by
    # position (no state table per key to scatter to and gather from).
    order = np.argsort(rank, kind="stable")
    bounds = np.searchsorted(rank[order], np.arange(int(rank.max(initial=0)) + 2))
    ordered = [m[order] for m in moments]
    kid_of = key[order]
    n = first.shape[0]
    before = {"mean": np.full((n, k), np.nan), "var": np.full((n, k), np.nan)}
    before |= {name: np.zeros((n, k)) for name in TOTALS}
    parts: dict[str, list[FloatArray]] = {name: [] for name in FOLD_ARRAYS}
    prev_kid, values = np.arange(n), before
    for r in range(bounds.shape[0] - 1):
        lo, hi = bounds[r], bounds[r + 1]
        kid = kid_of[lo:hi]
        if r:
            pos = np.searchsorted(prev_kid, kid)
            before = {name: values[name][pos] for name in ("mean", "var", *TOTALS)}
        values = fold_step(options, before, tuple(m[lo:hi] for m in ordered))
        for name, v in values.items():
            parts[name].append(v)
        prev_kid = kid
    back = np.empty(s, dtype=np.int64)
    back[order] = np.arange(s)
    return {name: np.concatenate(parts[name])[back] for name in FOLD_ARRAYS}


def fold_step(
    options: StateOptions, before: dict[str, FloatArray], moments: tuple[FloatArray, ...]
) -> dict[str, FloatArray]:
    """One batch folded into many keys at once: ``before`` holds each key's ``mean``,
    ``var`` and totals (:data:`TOTALS` names), ``moments`` its batch's ``(count, shift,
    delta, m2)``, all keys x features (any shape); returns the :data:`FOLD_ARRAYS` of each
    key. :func:`~mxnorm_spark.state.update_lanes` is :meth:`MXNormState.update` itself."""
    mean, var = before["mean"], before["var"]
    totals = (before["count"], before["totals_shift"], before["totals_delta"], before["totals_m2"])
    cnt, shift, delta, m2 = moments
    new_mean, new_var, merged = update_lanes(options, mean, var, totals, (cnt, shift, delta, m2))
    values = {"count_before": before["count"], "mean": new_mean, "var": new_var}
    values |= dict(zip(TOTALS, merged, strict=True))
    values["before_mean"], values["before_scale"] = lane_constants(options, mean, var)
    values["after_mean"], values["after_scale"] = lane_constants(options, new_mean, new_var)
    return values


def list_array(values: FloatArray) -> pa.Array:
    s, k = values.shape
    offsets = pa.array(np.arange(0, s * k + 1, k, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values.ravel(), type=pa.float64()))


def fold_kernel(n_keys: int, by_batch: bool, options: StateOptions) -> BatchFunction:
    """The ``mapInArrow`` function over rows sorted by (key, batch): input columns are the
    key columns, the batch column (``by_batch``), then one float64 column per feature;
    output one row per (key, batch) with ``rows``, ``key_rows``, ``batches_seen``,
    ``is_last`` and the :data:`FOLD_ARRAYS`. Closed over plain values only."""
    g = n_keys + int(by_batch)

    def fold_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        segs = _Segments([], [], [], [], [])
        prev: list[pa.Array] | None = None
        for rb in batches:
            if rb.num_rows == 0:
                continue
            segs.add(rb, prev, n_keys, g)
            prev = [rb.column(i).slice(rb.num_rows - 1, 1) for i in range(g)]
        if prev is None:
            return
        table, moments, rows, new_key = segs.joined()
        arrays = fold_segments(moments, new_key, options)
        key = np.cumsum(new_key) - 1
        csum = np.cumsum(rows)
        start = np.flatnonzero(new_key)
        key_rows = csum - csum[start[key]] + rows[start[key]]
        batches_seen = np.arange(rows.shape[0]) - start[key] + 1
        is_last = np.append(new_key[1:], True)
        cols = [
            *table.columns,
            pa.array(rows, type=pa.int64()),
            pa.array(key_rows, type=pa.int64()),
            pa.array(batches_seen, type=pa.int32()),
            pa.array(is_last, type=pa.bool_()),
            *(list_array(arrays[name]) for name in FOLD_ARRAYS),
        ]
        names = [*table.column_names, "rows", "key_rows", "batches_seen", "is_last", *FOLD_ARRAYS]
        out = pa.Table.from_arrays(cols, names=names)
        yield from out.to_batches(max_chunksize=OUT_ROWS)

    return fold_partition
