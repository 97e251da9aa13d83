"""The Python side of per-key MXNorm: exact moments per (key, batch) and the fold of each
key's batches, in one ``mapInArrow`` pass over rows hash-partitioned by key and sorted by
(key, batch).

Rows arrive sorted, so every (key, batch) is one run of consecutive rows (a *segment*).
The kernel takes them in chunks of whole keys; each segment gets its moments with the
compensated two-pass of :meth:`Moments.from_columns`, vectorized over the segments of a
chunk (the pivot is the segment's first valid value, so data such as ``1e9 + N(0, 1)``
keeps its digits). The fold then runs over the *rank* of a segment within its
key: step ``r`` updates every key that has an ``r``-th batch at once, with
:func:`fold_step` (what :meth:`MXNormState.update` computes) on lanes that are the
(feature, key) pairs, features x keys and contiguous. The update is elementwise, so each
key gets the bits a state of its own would get, and the math stays in
:mod:`mxnorm_spark.core.state`.

No Spark import: the functions run in the Python workers (and in tests, on plain Arrow).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mxnorm_spark.core.moments import FloatArray
from mxnorm_spark.core.state import (
    MXNormState,
    StateOptions,
    check_range,
    ema_step,
    scale_of,
    update_lanes,
)

__all__ = [
    "SCALARS",
    "check_lanes",
    "feature_columns",
    "fields",
    "filled",
    "filled_constants",
    "fold_kernel",
    "key_label",
    "lane_constants",
    "lane_moments",
    "segment_moments",
    "state_columns",
]

BatchFunction = Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]

# The scalar columns of each output row, beside the key and batch columns.
SCALARS = ("rows", "key_rows", "batches_seen", "is_last")
# The per-feature fields of each output row (column ``f{j}_{field}``): the state after the
# batch (``count`` of valid values, ``mean``, ``var``) and its ``scale``; with
# ``alpha=None`` also the exact running moments (``shift``, ``delta``, ``m2``).
FIELDS = ("count", "mean", "var", "scale")
EXACT_FIELDS = ("shift", "delta", "m2")
TOTALS = ("count", "totals_shift", "totals_delta", "totals_m2")
# Where a field comes from in fold_step's values.
SOURCE = {"count": "count", "mean": "mean", "var": "var", "scale": "after_scale",
          "shift": "totals_shift", "delta": "totals_delta", "m2": "totals_m2"}  # fmt: skip
# Output rows per record batch handed back to the JVM.
OUT_ROWS = 8192
# Rows the backfill kernel folds at once (whole keys). Measured on one partition of the
# scale benchmark's data: 1.7 s per 1M rows in 62k-row pieces, 3.1 s all at once.
CHUNK_ROWS = 32_768


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
    k, s = x.shape[0], starts.shape[0]
    lengths = np.diff(np.append(starts, n))
    seg = np.repeat(np.arange(s), lengths)
    lanes = (seg + s * np.arange(k)[:, None]).ravel()  # the (feature, run) lane of each value

    def lane_sums(v: FloatArray) -> FloatArray:
        # Each lane's values summed in row order: np.bincount is about 4x faster than
        # np.add.reduceat on runs this short (1-2 rows in the scale benchmark).
        sums = np.bincount(lanes, weights=v.ravel(), minlength=k * s)
        return np.asarray(sums, dtype=np.float64).reshape(k, s)

    if valid.all():  # the common case: no reduction for the counts and pivots
        cnt = np.repeat(lengths[None, :].astype(np.float64), k, axis=0)
        pivot = np.take(x, starts, axis=1)
    else:
        cnt = lane_sums(valid.astype(np.float64))
        first = np.minimum.reduceat(np.where(valid, np.arange(n), n), starts, axis=1)
        pivot = np.where(cnt > 0, np.take_along_axis(x, np.minimum(first, n - 1), axis=1), 0.0)
    has = cnt > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        # np.take along an axis: about 3x faster than fancy indexing here.
        d = np.where(valid, x - np.take(pivot, seg, axis=1), 0.0)
        delta = np.where(has, lane_sums(d) / cnt, 0.0)
        r = np.where(valid, d - np.take(delta, seg, axis=1), 0.0)
        # The second term removes the residual error of ``delta`` (compensated two-pass).
        rs = lane_sums(r)
        m2 = np.where(has, lane_sums(r * r) - rs * rs / cnt, 0.0)
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
    """The state of each key after each of its batches (segments in key, batch order;
    ``moments`` features x segments lanes), as features x segments arrays: the values
    of :func:`fold_step` that :data:`SOURCE` names for :func:`fields` ``(options)``."""
    k, s = moments[0].shape
    key = np.cumsum(new_key) - 1
    first = np.flatnonzero(new_key)
    rank = np.arange(s) - first[key]
    # Rank-major, keys ascending within a rank: the keys of rank r + 1 are a subsequence of
    # those of rank r, so each step reads the state it continues from the step before by
    # position (no state table per key to scatter to and gather from).
    order = np.argsort(rank, kind="stable")
    bounds = np.searchsorted(rank[order], np.arange(int(rank.max(initial=0)) + 2))
    ordered = [np.take(m, order, axis=1) for m in moments]
    kid_of = key[order]
    n = first.shape[0]
    carried = ("count", "mean", "var") + (TOTALS[1:] if options.alpha is None else ())
    before = {name: np.zeros((k, n)) for name in carried}
    before["mean"], before["var"] = np.full((k, n), np.nan), np.full((k, n), np.nan)
    kept = [SOURCE[f] for f in fields(options)]
    parts: dict[str, list[FloatArray]] = {name: [] for name in kept}
    prev_kid, values = np.arange(n), before
    for r in range(bounds.shape[0] - 1):
        lo, hi = bounds[r], bounds[r + 1]
        kid = kid_of[lo:hi]
        if r:
            pos = np.searchsorted(prev_kid, kid)
            before = {name: np.take(values[name], pos, axis=1) for name in carried}
        values = fold_step(options, before, tuple(m[:, lo:hi] for m in ordered))
        for name in kept:
            parts[name].append(values[name])
        prev_kid = kid
    back = np.empty(s, dtype=np.int64)
    back[order] = np.arange(s)
    return {name: np.take(np.concatenate(parts[name], axis=1), back, axis=1) for name in kept}


def fields(options: StateOptions) -> tuple[str, ...]:
    """The per-feature fields of a per-key state row under ``options``."""
    return FIELDS if options.alpha is not None else (*FIELDS, *EXACT_FIELDS)


def state_columns(n_features: int, options: StateOptions) -> list[str]:
    """The per-feature columns of a per-key state row under ``options``."""
    return feature_columns(n_features, fields(options))


def feature_columns(n_features: int, names: tuple[str, ...]) -> list[str]:
    """The columns ``f{j}_{name}``, feature-major (``j`` indexes the model's features)."""
    return [f"f{j}_{f}" for j in range(n_features) for f in names]


def fold_step(
    options: StateOptions,
    before: dict[str, FloatArray],
    moments: tuple[FloatArray, ...],
    *,
    before_constants: bool = False,
) -> dict[str, FloatArray]:
    """One batch folded into many keys at once (lanes of any shape). ``before`` holds each
    key's ``count``, ``mean``, ``var`` and, with ``alpha=None``, its running totals
    (:data:`TOTALS` names); ``moments`` its batch's ``(count, shift, delta, m2)``.

    Returns the state after (the same names, what :meth:`MXNormState.update` computes:
    :func:`~mxnorm_spark.core.state.update_lanes` or, for an EMA, only the totals' count and
    :func:`~mxnorm_spark.core.state.ema_step`) and the constants after (``after_mean``,
    ``after_scale``); with ``before_constants`` also ``count_before``, ``before_mean``,
    ``before_scale``."""
    count, mean, var = before["count"], before["mean"], before["var"]
    cnt, shift, delta, m2 = moments
    if options.alpha is None:
        totals = (count, before["totals_shift"], before["totals_delta"], before["totals_m2"])
        new_mean, new_var, merged = update_lanes(
            options, mean, var, totals, (cnt, shift, delta, m2)
        )
        values = dict(zip(TOTALS, merged, strict=True))
    else:
        # Of the totals' merge an EMA keeps only the count (na + nb): the same bits.
        new_mean, new_var = ema_step(options, mean, var, count > 0, (cnt, shift, delta, m2))
        values = {"count": count + cnt}
    values |= {"mean": new_mean, "var": new_var}
    values["after_mean"], values["after_scale"] = lane_constants(options, new_mean, new_var)
    if before_constants:
        values["count_before"] = count
        values["before_mean"], values["before_scale"] = lane_constants(options, mean, var)
    return values


def check_lanes(
    values: dict[str, FloatArray], features: Sequence[str], name: Callable[[int], str]
) -> None:
    """Refuse what :meth:`MXNormState.update` refuses (:func:`check_range`): a key's state
    of inf or NaN for a feature it has values of. ``values`` are :func:`fold_step`'s,
    features x lanes; lane ``s`` is named ``name(s)`` in the error (the first bad one)."""
    mean, var = values["mean"], values["var"]
    finite = np.isfinite(mean) & np.isfinite(var)
    if finite.all():
        return
    bad = ~finite & (values["count"] > 0)
    if bad.any():
        s = int(np.flatnonzero(bad.any(axis=0))[0])
        names = tuple(features) or tuple(f"f{j}" for j in range(mean.shape[0]))
        check_range(names, mean[:, s], var[:, s], values["count"][:, s] > 0, name(s))


def key_label(columns: Sequence[pa.Array | pa.ChunkedArray], row: int) -> str:
    """``key <value>`` (``key (<v1>, <v2>)`` for several key columns) of row ``row``."""
    shown = [_shown(c[row].as_py()) for c in columns]
    return "key " + (shown[0] if len(shown) == 1 else "(" + ", ".join(shown) + ")")


def _shown(value: object) -> str:
    """A key or batch value in a message: a string quoted, anything else as printed."""
    return repr(value) if isinstance(value, str) else str(value)


def fold_kernel(
    n_keys: int, by_batch: bool, options: StateOptions, features: Sequence[str] = ()
) -> BatchFunction:
    """The ``mapInArrow`` function over rows sorted by (key, batch): input columns are the
    key columns, the batch column (``by_batch``), then one float64 column per feature;
    output one row per (key, batch) with the :data:`SCALARS` and the
    :func:`state_columns`. Closed over plain values only.

    Rows are folded in chunks of whole keys of about :data:`CHUNK_ROWS` rows, each as it
    is complete: a chunk's arrays stay in the CPU caches, its output goes back to the JVM
    while the next chunk arrives, and the Python side never holds a whole partition. A
    segment is never split, so its moments do not depend on how Arrow batches the rows.

    A key whose state would overflow float64 raises :class:`ValueRangeError` naming
    ``features`` (``f0``, ``f1``, ... without them), the key and the batch."""
    g = n_keys + int(by_batch)
    names = tuple(features)

    def fold_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        held: list[tuple[pa.RecordBatch, np.ndarray]] = []  # with each row's "new key?"
        held_rows = 0
        prev: list[pa.Array] | None = None
        for rb in batches:
            n = rb.num_rows
            if n == 0:
                continue
            new_key = np.zeros(n, dtype=bool)
            for i in range(n_keys):
                new_key |= differs(None if prev is None else prev[i], rb.column(i))
            prev = [rb.column(i).slice(n - 1, 1) for i in range(n_keys)]
            starts = np.flatnonzero(new_key)
            if held_rows + n >= CHUNK_ROWS and starts.size and held_rows + starts[-1] > 0:
                cut = int(starts[-1])  # the last key may go on in the next record batch
                chunk = [*held, (rb.slice(0, cut), new_key[:cut])]
                yield from _fold_chunk(chunk, n_keys, g, options, names)
                held, held_rows = [(rb.slice(cut), new_key[cut:])], n - cut
            else:
                held.append((rb, new_key))
                held_rows += n
        if held:
            yield from _fold_chunk(held, n_keys, g, options, names)

    return fold_partition


def _fold_chunk(
    pieces: list[tuple[pa.RecordBatch, np.ndarray]],
    n_keys: int,
    g: int,
    options: StateOptions,
    features: tuple[str, ...],
) -> Iterator[pa.RecordBatch]:
    """:func:`fold_kernel`'s output for ``pieces`` (record batches and where their keys
    start): whole keys, sorted by (key, batch), at least one row."""
    table = pa.Table.from_batches([rb for rb, _ in pieces]).combine_chunks()
    n = table.num_rows
    new_key = np.concatenate([k for _, k in pieces])
    new_seg = new_key | differs(None, table.column(n_keys).chunk(0)) if g > n_keys else new_key
    starts = np.flatnonzero(new_seg)
    cols = [table.column(j).to_numpy() for j in range(g, table.num_columns)]
    moments = lane_moments(np.vstack(cols).astype(np.float64, copy=False), starts)
    rows = np.diff(np.append(starts, n))
    first_of_key = new_key[starts]
    values = fold_segments(moments, first_of_key, options)

    def segment(s: int) -> str:
        label = key_label(table.columns[:n_keys], int(starts[s]))
        if g == n_keys:
            return label
        return f"{label} in batch {_shown(table.column(n_keys)[int(starts[s])].as_py())}"

    check_lanes(values, features, segment)
    key = np.cumsum(first_of_key) - 1
    csum = np.cumsum(rows)
    start = np.flatnonzero(first_of_key)
    key_rows = csum - csum[start[key]] + rows[start[key]]
    batches_seen = np.arange(rows.shape[0]) - start[key] + 1
    is_last = np.append(first_of_key[1:], True)
    cols = [
        *table.select(list(range(g))).take(pa.array(starts)).columns,
        pa.array(rows, type=pa.int64()),
        pa.array(key_rows, type=pa.int64()),
        pa.array(batches_seen, type=pa.int32()),
        pa.array(is_last, type=pa.bool_()),
    ]
    k = moments[0].shape[0]
    cols += [pa.array(values[SOURCE[f]][j]) for j in range(k) for f in fields(options)]
    names = [*table.column_names[:g], *SCALARS, *state_columns(k, options)]
    yield from pa.Table.from_arrays(cols, names=names).to_batches(max_chunksize=OUT_ROWS)
