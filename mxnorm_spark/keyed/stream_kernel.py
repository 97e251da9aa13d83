"""The Python side of one micro-batch of a keyed stream: the fold of each key's rows into
its state (:func:`stream_fold`) and, in the same pass, the normalization of those rows
(:func:`fold_and_normalize`).

A partition holds the micro-batch's rows and the previous snapshot's rows of the same
keys, sorted by (key, :data:`SOURCE_COLUMN`, features). The state math is that of
:mod:`mxnorm_spark.core.state` on lanes (features x keys arrays), through
:func:`~mxnorm_spark.keyed.kernel.fold_step`, the backfill's step (:meth:`MXNormState.update`
itself; an EMA keeps only ``count``, ``mean`` and ``var`` per key).

No Spark import: the functions run in the Python workers (and in tests, on plain Arrow).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mxnorm_spark.core.moments import FloatArray, Moments
from mxnorm_spark.core.state import StateOptions
from mxnorm_spark.keyed.kernel import (
    FIELDS,
    OUT_ROWS,
    SOURCE,
    TOTALS,
    BatchFunction,
    check_lanes,
    differs,
    feature_columns,
    fold_step,
    key_label,
    lane_constants,
    lane_moments,
)
from mxnorm_spark.serving.values import rows_to_keep

__all__ = [
    "SNAPSHOT_SCALARS",
    "SOURCE_COLUMN",
    "RowOutput",
    "SnapshotLayout",
    "SnapshotParts",
    "fold_and_normalize",
    "fold_and_normalize_parts",
    "fold_normalize_kernel",
    "snapshot_states_kernel",
    "stream_fold",
    "stream_fold_kernel",
    "with_snapshot",
]

# Scalar columns of a key's row in a stream snapshot, beside the key columns and the
# per-feature columns: the last micro-batch it had rows in, how many it had rows in, its
# rows so far and its rows in its last micro-batch.
SNAPSHOT_SCALARS = ("last_batch", "batches_seen", "key_rows", "rows")
SOURCE_COLUMN = "__mx_src"  # 0: a snapshot row (a key's state), 1: a data row
# Where a snapshot's constant field comes from in fold_step's values (state fields: SOURCE).
_CONSTANT_SOURCE = {"mean": "after_mean", "scale": "after_scale", "count_before": "count_before",
                    "mean_before": "before_mean", "scale_before": "before_scale"}  # fmt: skip


@dataclass(frozen=True)
class SnapshotLayout:
    """The per-feature double columns of a stream snapshot, ``f{j}_{field}``: only what the
    next fold needs (the *state* fields: ``count``, ``mean``, ``var`` with an EMA;
    ``count`` and the exact running moments ``shift``, ``delta``, ``m2`` with
    ``alpha=None``, whose mean and variance they are) and the constants this micro-batch's
    rows of the key are normalized with (the *constant* fields: ``scale``, and ``mean``
    where it is no state field, with ``apply_at="after"``; ``count_before``,
    ``mean_before``, ``scale_before`` with ``"before"``). Flat doubles, not arrays: through
    Arrow, shuffles and Parquet a snapshot costs what its doubles do.

    ``features``: the feature names, for the error of a key whose state would overflow
    float64 (``f0``, ``f1``, ... without them)."""

    n_features: int
    options: StateOptions
    apply_at: str = "after"
    features: tuple[str, ...] = ()

    @property
    def ema(self) -> bool:
        return self.options.alpha is not None

    @property
    def state_fields(self) -> tuple[str, ...]:
        return ("count", "mean", "var") if self.ema else ("count", "shift", "delta", "m2")

    @property
    def constant_fields(self) -> tuple[str, ...]:
        if self.apply_at == "before":
            return ("count_before", "mean_before", "scale_before")
        return ("scale",) if self.ema else ("mean", "scale")

    def names(self, fields: tuple[str, ...]) -> list[str]:
        return feature_columns(self.n_features, fields)

    @property
    def state_columns(self) -> list[str]:
        return self.names(self.state_fields)

    @property
    def constant_columns(self) -> list[str]:
        return self.names(self.constant_fields)

    def lookup_columns(self) -> list[list[str]]:
        """The columns of the constants: valid values so far, mean, scale; one per feature."""
        if self.apply_at == "before":
            fields = ("count_before", "mean_before", "scale_before")
        else:
            fields = ("count", "mean", "scale")
        return [[f"f{j}_{f}" for j in range(self.n_features)] for f in fields]

    def lookup_values(self) -> tuple[str, str, str]:
        """The names, in the step's values, of the constants :meth:`lookup_columns` holds."""
        if self.apply_at == "before":
            return ("count_before", "before_mean", "before_scale")
        return ("count", "after_mean", "after_scale")

    def before(self, state: list[FloatArray], has: np.ndarray, s: int) -> dict[str, FloatArray]:
        """The state before the step of ``s`` keys, features x keys: the state columns
        (features x fields order, values of the keys with ``has``), fresh where not
        ``has``. ``count``, ``mean``, ``var``; with ``alpha=None`` also the running totals
        (:data:`~mxnorm_spark.keyed.kernel.TOTALS` names) :func:`fold_step` takes."""
        k = self.n_features
        cols = _state_arrays(self.state_fields, state, has, k, s)
        count = cols["count"]
        if self.ema:
            mean = np.where(has, cols["mean"], np.nan)
            var = np.where(has, cols["var"], np.nan)
            return {"count": count, "mean": mean, "var": var}
        shift, delta, m2 = cols["shift"], cols["delta"], cols["m2"]
        totals = Moments(count.ravel(), shift.ravel(), delta.ravel(), m2.ravel())
        mean, var = totals.mean.reshape(k, s), totals.var.reshape(k, s)
        names = ("mean", "var", *TOTALS)
        return dict(zip(names, (mean, var, count, shift, delta, m2), strict=True))

    def step(
        self, before: dict[str, FloatArray], moments: tuple[FloatArray, ...]
    ) -> dict[str, FloatArray]:
        """One batch folded into many keys (features x keys lanes): :func:`fold_step`, with
        the constants before the batch where ``apply_at="before"`` uses them."""
        return fold_step(self.options, before, moments, before_constants=self.apply_at == "before")

    def columns(self, values: dict[str, FloatArray]) -> list[pa.Array]:
        """The state then the constant columns of :meth:`step`'s ``values``."""
        out = []
        pairs = ((self.state_fields, SOURCE), (self.constant_fields, _CONSTANT_SOURCE))
        for fields, source in pairs:
            for j in range(self.n_features):
                for f in fields:
                    name = source[f]
                    out.append(pa.array(np.ascontiguousarray(values[name][j])))
        return out

    def schema(self, key_fields: list[pa.Field]) -> pa.Schema:
        return pa.schema(
            [
                *key_fields,
                pa.field("last_batch", pa.int64()),
                pa.field("batches_seen", pa.int32()),
                pa.field("key_rows", pa.int64()),
                pa.field("rows", pa.int64()),
                *(pa.field(n, pa.float64()) for n in self.state_columns),
                *(pa.field(n, pa.float64()) for n in self.constant_columns),
            ]
        )


def _state_arrays(
    fields: tuple[str, ...], state: list[FloatArray], has: np.ndarray, k: int, s: int
) -> dict[str, FloatArray]:
    """Per state field a features x keys array: ``state`` (features x fields order, the
    values of the keys with ``has``) in place, zeros elsewhere. Every key has a state in
    the usual later micro-batch: then one stack per field, no masked writes."""
    nf = len(fields)
    if bool(has.all()):
        return {f: np.vstack(state[i::nf]) if k else np.zeros((0, s)) for i, f in enumerate(fields)}
    cols = {f: np.zeros((k, s)) for f in fields}
    for j in range(k):
        for i, f in enumerate(fields):
            cols[f][j, has] = state[j * nf + i]
    return cols


@dataclass
class _Fold:
    """A partition's fold: the new snapshot (the keys with data first, in key order, then
    the carried ones), the step values of the keys with data (features x keys), and per
    data row of the input (source 1, in row order) the index of its key among them."""

    snapshot: pa.Table
    values: dict[str, FloatArray]
    group: np.ndarray


def stream_fold(
    table: pa.Table,
    n_keys: int,
    layout: SnapshotLayout,
    *,
    batch_id: int,
    evict_after: int | None,
) -> pa.Table:
    """The snapshot after micro-batch ``batch_id`` of the keys in ``table``.

    ``table`` holds a partition's rows sorted by (key, :data:`SOURCE_COLUMN`, features): the
    key columns, the source column, :data:`SNAPSHOT_SCALARS`, then one float64 column per
    state column of the layout. Snapshot rows (source 0) hold each key's state before the
    batch there; data rows (source 1) hold their feature values in the first ``n_features``
    of those columns and null elsewhere: one row shape for both, so the shuffle carries no
    column that is null on every row of a kind. A key with data rows gets its batch folded
    in (from a fresh state when it has no snapshot row, or one unseen for more than
    ``evict_after`` batches); a key without keeps its row (its constants null: they are of
    an older batch), unless it has been unseen for ``evict_after`` batches (dropped).
    Output: the key columns, :data:`SNAPSHOT_SCALARS`, the layout's state and constant
    columns.
    """
    rows = _Rows.of_table(table, n_keys)
    return _fold(rows, n_keys, layout, batch_id=batch_id, evict_after=evict_after).snapshot


@dataclass(frozen=True)
class _Rows:
    """A partition's rows in (key, source, features) order, not moved: row ``p`` is row
    ``index[p]`` of its kind's columns (``data`` for data rows, source 1; ``snap`` for
    snapshot rows), each column given by its index in the one row shape of
    :func:`stream_fold`'s input (keys, source, scalars, values, carried columns). ``keys``:
    the key columns in this order; ``fields``: their fields. One sorted table is its own
    source of both kinds (``index`` None); :func:`with_snapshot`'s two inputs are the
    sources of one kind each, and only what the fold reads is taken from them."""

    keys: list[pa.Array]
    fields: list[pa.Field]
    src: np.ndarray
    index: np.ndarray | None
    data: Callable[[int], Any]
    snap: Callable[[int], Any]

    @classmethod
    def of_table(cls, table: pa.Table, n_keys: int) -> _Rows:
        t = table.combine_chunks()
        cols = [_array(t.column(i)) for i in range(t.num_columns)]
        src = np.asarray(cols[n_keys].to_numpy(zero_copy_only=False))
        fields = [t.schema.field(i) for i in range(n_keys)]
        return cls(cols[:n_keys], fields, src, None, cols.__getitem__, cols.__getitem__)

    @property
    def num_rows(self) -> int:
        return int(self.src.shape[0])

    def take(self, column: int, positions: np.ndarray, *, snapshot: bool) -> Any:
        """Column ``column`` at ``positions`` (rows of one kind: snapshot rows or not)."""
        ids = positions if self.index is None else self.index[positions]
        source = self.snap if snapshot else self.data
        return source(column).take(pa.array(ids, type=pa.int64()))

    def subset(self, mask: np.ndarray) -> _Rows:
        index = np.flatnonzero(mask) if self.index is None else self.index[mask]
        keys = [k.filter(pa.array(mask)) for k in self.keys]
        return _Rows(keys, self.fields, self.src[mask], index, self.data, self.snap)


def _array(c: Any) -> pa.Array:
    if isinstance(c, pa.ChunkedArray):
        return c.chunk(0) if c.num_chunks == 1 else c.combine_chunks()
    return c


def _fold(
    rows: _Rows, n_keys: int, layout: SnapshotLayout, *, batch_id: int, evict_after: int | None
) -> _Fold:
    k, sc = layout.n_features, n_keys + 1
    v0 = sc + len(SNAPSHOT_SCALARS)
    state_end = v0 + len(layout.state_columns)
    key_diff = np.zeros(rows.num_rows, dtype=bool)
    for i in range(n_keys):
        key_diff |= differs(None, rows.keys[i])
    group = np.cumsum(key_diff) - 1
    src = rows.src
    data, snap = np.flatnonzero(src == 1), np.flatnonzero(src == 0)
    # The key's last micro-batch with rows.
    last_col = rows.take(sc, snap, snapshot=True)
    last = np.asarray(last_col.to_numpy(zero_copy_only=False), dtype=np.float64)
    keep = np.ones(snap.shape[0], dtype=bool)
    schema = layout.schema(rows.fields)
    parts, data_group = [], np.zeros(0, dtype=np.int64)
    values: dict[str, FloatArray] = {}
    if data.size:
        dgroup = group[data]
        new = np.concatenate([[True], dgroup[1:] != dgroup[:-1]])
        starts = np.flatnonzero(new)
        data_group = np.cumsum(new) - 1
        x = np.vstack(
            [rows.take(v0 + j, data, snapshot=False).to_numpy(zero_copy_only=False)
             for j in range(k)]
        ).astype(np.float64, copy=False)  # fmt: skip
        snap_of = np.full(int(group[-1]) + 1, -1)
        snap_of[group[snap]] = np.arange(snap.shape[0])
        prev = snap_of[dgroup[starts]]  # the key's snapshot row (index into snap), or -1
        keep[prev[prev >= 0]] = False  # replaced by the folded row
        if evict_after is not None and snap.size:
            stale = batch_id - last[np.maximum(prev, 0)] > evict_after
            prev = np.where(stale, -1, prev)
        prev_row = np.full_like(prev, -1)
        prev_row[prev >= 0] = snap[prev[prev >= 0]]
        folded, values = _folded_rows(
            rows,
            n_keys,
            layout,
            prev=prev_row,
            first_rows=data[starts],
            rows=np.diff(np.append(starts, data.shape[0])),
            moments=lane_moments(x, starts),
            batch_id=batch_id,
        )
        parts.append(pa.Table.from_arrays(folded, schema=schema))
    if evict_after is not None:
        keep &= batch_id - last < evict_after
    kept = snap[keep]
    carried = [rows.take(i, kept, snapshot=True) for i in (*range(n_keys), *range(sc, state_end))]
    nulls = [pa.nulls(len(kept), pa.float64()) for _ in layout.constant_columns]
    parts.append(pa.Table.from_arrays([*carried, *nulls], names=schema.names).cast(schema))
    return _Fold(pa.concat_tables(parts), values, data_group)


def _folded_rows(
    source: _Rows,
    n_keys: int,
    layout: SnapshotLayout,
    *,
    prev: np.ndarray,
    first_rows: np.ndarray,
    rows: np.ndarray,
    moments: tuple[FloatArray, ...],
    batch_id: int,
) -> tuple[list[pa.Array], dict[str, FloatArray]]:
    """The snapshot columns of the keys with data, and their step values: the state of row
    ``prev`` (-1: none) with the batch's ``moments`` (features x keys) folded in; keys
    taken from rows ``first_rows``."""
    s, has = first_rows.shape[0], prev >= 0
    at = prev[has]
    first_state = n_keys + 1 + len(SNAPSHOT_SCALARS)
    state = [
        np.asarray(
            source.take(first_state + i, at, snapshot=True).to_numpy(zero_copy_only=False),
            np.float64,
        )
        for i in range(len(layout.state_columns))
    ]
    values = layout.step(layout.before(state, has, s), moments)
    keys = [source.take(i, first_rows, snapshot=False) for i in range(n_keys)]
    check_lanes(values, layout.features, lambda i: f"{key_label(keys, i)} in batch {batch_id}")
    seen, key_rows = np.zeros(s, dtype=np.int64), np.zeros(s, dtype=np.int64)
    seen[has] = source.take(n_keys + 2, at, snapshot=True).to_numpy(zero_copy_only=False)
    key_rows[has] = source.take(n_keys + 3, at, snapshot=True).to_numpy(zero_copy_only=False)
    return [
        *keys,
        pa.array(np.full(s, batch_id, dtype=np.int64)),
        pa.array(seen + 1, type=pa.int32()),
        pa.array(key_rows + rows, type=pa.int64()),
        pa.array(rows, type=pa.int64()),
        *layout.columns(values),
    ], values


def stream_fold_kernel(
    n_keys: int, layout: SnapshotLayout, batch_id: int, evict_after: int | None
) -> BatchFunction:
    """The ``mapInArrow`` function of :func:`stream_fold` (a partition at once)."""

    def fold_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        rbs = [rb for rb in batches if rb.num_rows]
        if not rbs:
            return
        table = pa.Table.from_batches(rbs)
        out = stream_fold(table, n_keys, layout, batch_id=batch_id, evict_after=evict_after)
        yield from out.to_batches(max_chunksize=OUT_ROWS)

    return fold_partition


# ---- the fold and the normalized rows in one pass ---------------------------------------
@dataclass(frozen=True)
class RowOutput:
    """How :func:`fold_and_normalize` writes a micro-batch's rows.

    ``features`` (names, for errors); ``global_mean`` and ``global_scale``: the constants
    of rows with a null key value and of features whose key has fewer than
    ``max(min_key_rows, 1)`` valid values so far; ``handle_invalid`` as the stream's;
    ``columns``: per output column its name and source, ``("in", i)`` the input table's
    column ``i`` or ``("z", j)`` feature ``j`` normalized.
    """

    features: tuple[str, ...]
    global_mean: tuple[float, ...]
    global_scale: tuple[float, ...]
    min_key_rows: int
    handle_invalid: str
    columns: tuple[tuple[str, str, int], ...]


def fold_and_normalize(
    table: pa.Table,
    n_keys: int,
    layout: SnapshotLayout,
    rows: RowOutput,
    *,
    batch_id: int,
    evict_after: int | None,
) -> tuple[pa.Table, pa.Table]:
    """:func:`stream_fold` of ``table`` and its data rows normalized: ``(snapshot, rows)``.

    ``table`` is :func:`stream_fold`'s input with more columns after the state columns
    (the data rows' other columns, for the output) and with the data rows whose key has
    a null value (they are not folded, and use the global constants). Each data row's
    features are normalized with its key's constants of this batch (the same values the
    snapshot stores, which the join of :meth:`KeyedStreamState.normalize` reads) or the
    global ones, ``(x - mean) / scale`` in float64 as the Spark path computes it.
    """
    return _fold_and_normalize(
        _Rows.of_table(table, n_keys), n_keys, layout, rows, batch_id=batch_id,
        evict_after=evict_after,
    )  # fmt: skip


def fold_and_normalize_parts(
    data: pa.Table,
    previous: pa.Table | None,
    n_keys: int,
    layout: SnapshotLayout,
    rows: RowOutput,
    *,
    batch_id: int,
    evict_after: int | None,
) -> tuple[pa.Table, pa.Table]:
    """:func:`fold_and_normalize` of ``with_snapshot(data, previous, ...)``, the same
    tables, without building the sorted union: only the sort order is computed, and each
    column is taken once from the input that holds it."""
    return _fold_and_normalize(
        _union_rows(data, previous, n_keys, layout), n_keys, layout, rows,
        batch_id=batch_id, evict_after=evict_after,
    )  # fmt: skip


def _fold_and_normalize(
    source: _Rows,
    n_keys: int,
    layout: SnapshotLayout,
    rows: RowOutput,
    *,
    batch_id: int,
    evict_after: int | None,
) -> tuple[pa.Table, pa.Table]:
    k, v0 = layout.n_features, n_keys + 1 + len(SNAPSHOT_SCALARS)
    null_key = np.zeros(source.num_rows, dtype=bool)
    for c in source.keys:
        if c.null_count:
            null_key |= np.asarray(c.is_null().to_numpy(zero_copy_only=False))
    data = np.flatnonzero(source.src == 1)
    keyed = source.subset(~null_key) if null_key.any() else source
    empty = layout.schema(source.fields).empty_table()
    fold = (
        _fold(keyed, n_keys, layout, batch_id=batch_id, evict_after=evict_after)
        if keyed.num_rows
        else _Fold(empty, {}, np.zeros(0, dtype=np.int64))
    )
    mean, scale = _row_constants(fold, layout, rows, has_key=~null_key[data])
    xs = [_array(source.take(v0 + j, data, snapshot=False)) for j in range(k)]
    x = [np.asarray(c.to_numpy(zero_copy_only=False), dtype=np.float64) for c in xs]
    nulls = [np.asarray(c.is_null().to_numpy(zero_copy_only=False)) for c in xs]
    keep = rows_to_keep(list(zip(rows.features, x, nulls, strict=True)), rows.handle_invalid)
    if keep is not None:
        data, mean, scale = data[keep], mean[:, keep], scale[:, keep]
        x, nulls = [v[keep] for v in x], [m[keep] for m in nulls]
    out = []
    with np.errstate(invalid="ignore", over="ignore"):
        for _, kind, i in rows.columns:
            if kind == "z":
                z = (x[i] - mean[i]) / scale[i]
                out.append(
                    pa.array(z, type=pa.float64(), mask=nulls[i] if nulls[i].any() else None)
                )
            else:
                out.append(source.take(i, data, snapshot=False))
    names = [name for name, _, _ in rows.columns]
    return fold.snapshot, pa.Table.from_arrays(out, names=names)


def _row_constants(
    fold: _Fold, layout: SnapshotLayout, rows: RowOutput, *, has_key: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The mean and scale of each data row, features x rows: its key's where the key has
    at least ``min_key_rows`` valid values, else the global ones."""
    names = layout.lookup_values()
    g = fold.group
    if g.size and g.shape[0] == fold.values[names[0]].shape[1] and bool(has_key.all()):
        # Every row keyed and one row per key (so ``g`` is 0, 1, 2, ...: the usual
        # micro-batch over many keys): the keys' values are the rows', no gather.
        n, mean, scale = (fold.values[c] for c in names)
    else:
        n = np.full((layout.n_features, has_key.shape[0]), np.nan)
        mean, scale = np.zeros_like(n), np.ones_like(n)
        if g.size:
            n[:, has_key] = np.take(fold.values[names[0]], g, axis=1)
            mean[:, has_key] = np.take(fold.values[names[1]], g, axis=1)
            scale[:, has_key] = np.take(fold.values[names[2]], g, axis=1)
    with np.errstate(invalid="ignore"):
        use = n >= max(rows.min_key_rows, 1)
    gm, gs = np.asarray(rows.global_mean)[:, None], np.asarray(rows.global_scale)[:, None]
    return np.where(use, mean, gm), np.where(use, scale, gs)


class SnapshotParts(Protocol):
    """A snapshot written in parts, one per partition of the fold (a task writes its own).

    ``schema``: a part's schema (that of a partition with no key); ``previous()``: this
    partition's part of the previous snapshot, when the fold reads it itself (the data
    rows alone came through the shuffle), else None; ``write(table)``: this partition's
    part of the new snapshot."""

    @property
    def schema(self) -> pa.Schema: ...

    def previous(self) -> pa.Table | None: ...

    def write(self, table: pa.Table) -> None: ...


def fold_normalize_kernel(
    n_keys: int,
    layout: SnapshotLayout,
    rows: RowOutput,
    *,
    batch_id: int,
    evict_after: int | None,
    parts: SnapshotParts,
    data_schema: pa.Schema | None = None,
) -> BatchFunction:
    """The ``mapInArrow`` function of :func:`fold_and_normalize` (a partition at once): the
    normalized rows go back to Spark, the partition's snapshot to ``parts`` (an empty part
    too, so that every partition has one). With ``data_schema`` the input holds the data
    rows alone (:func:`with_snapshot`'s ``data``), the previous part comes from ``parts``
    and :func:`fold_and_normalize_parts` folds them; without, it is
    :func:`fold_and_normalize`'s input, sorted by Spark."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        rbs = [rb for rb in batches if rb.num_rows]
        options: dict[str, Any] = {"batch_id": batch_id, "evict_after": evict_after}
        if data_schema is not None:
            data = pa.Table.from_batches(rbs) if rbs else data_schema.empty_table()
            previous = parts.previous()
            snapshot, out = fold_and_normalize_parts(
                data, previous, n_keys, layout, rows, **options
            )
        elif rbs:
            table = pa.Table.from_batches(rbs)
            snapshot, out = fold_and_normalize(table, n_keys, layout, rows, **options)
        else:
            parts.write(parts.schema.empty_table())
            return
        parts.write(snapshot if snapshot.num_rows else parts.schema.empty_table())
        yield from out.to_batches(max_chunksize=OUT_ROWS)

    return run


def with_snapshot(
    data: pa.Table, previous: pa.Table | None, n_keys: int, layout: SnapshotLayout
) -> pa.Table:
    """:func:`fold_and_normalize`'s input from a partition's ``data`` rows (the key columns,
    the features as float64, then the other columns) and its part of the ``previous``
    snapshot: both kinds of rows in one shape, sorted by (key, source, features) in Spark's
    order (nulls first, NaN after every number), as Spark sorts the union."""
    k, n, m = layout.n_features, data.num_rows, 0 if previous is None else previous.num_rows
    extra = len(layout.state_columns) - k
    scalar_types = [pa.int64(), pa.int32(), pa.int64(), pa.int64()]
    names = [*data.column_names[:n_keys], SOURCE_COLUMN, *SNAPSHOT_SCALARS]
    names += [f"__mx_v{i}" for i in range(k + extra)] + data.column_names[n_keys + k :]
    cols = [
        *data.columns[:n_keys],
        pa.array(np.ones(n, np.int32)),
        *(pa.nulls(n, t) for t in scalar_types),
        *data.columns[n_keys : n_keys + k],
        *(pa.nulls(n, pa.float64()) for _ in range(extra)),
        *data.columns[n_keys + k :],
    ]
    table = pa.Table.from_arrays(cols, names=names)
    if previous is not None and m:
        types = [f.type for f in table.schema]
        old = [
            *(previous.column(i).cast(types[i]) for i in range(n_keys)),
            pa.array(np.zeros(m, np.int32)),
            *(previous[c].cast(t) for c, t in zip(SNAPSHOT_SCALARS, scalar_types, strict=True)),
            *(previous[c] for c in layout.state_columns),
            *(pa.nulls(m, t) for t in types[n_keys + 1 + len(SNAPSHOT_SCALARS) + k + extra :]),
        ]
        table = pa.concat_tables([table, pa.Table.from_arrays(old, schema=table.schema)])
    keys = [table.column(i) for i in range(n_keys)]
    index = _spark_order(keys, table[SOURCE_COLUMN], lambda j: table[f"__mx_v{j}"], k)
    return table.take(index)


def _union_rows(
    data: pa.Table, previous: pa.Table | None, n_keys: int, layout: SnapshotLayout
) -> _Rows:
    """The rows of :func:`with_snapshot` (``data`` then ``previous``, sorted the same way)
    as :class:`_Rows`: the sort order, and each column of the one row shape read from the
    input that holds it (data rows' values: their features; snapshot rows': the state)."""
    k, n, m = layout.n_features, data.num_rows, 0 if previous is None else previous.num_rows
    state = layout.state_columns
    scalar_types = [pa.int64(), pa.int32(), pa.int64(), pa.int64()]
    v0 = n_keys + 1 + len(SNAPSHOT_SCALARS)
    state_end = v0 + len(state)
    d = [_array(c) for c in data.columns]
    fields = [pa.field(data.column_names[i], d[i].type) for i in range(n_keys)]
    types = [*(f.type for f in fields), pa.int32(), *scalar_types]
    types += [pa.float64()] * len(state) + [c.type for c in d[n_keys + k :]]
    p: list[Any] = []
    if previous is not None and m:
        p = [_array(previous.column(i)).cast(types[i]) for i in range(n_keys)]
        p += [pa.array(np.zeros(m, np.int32))]
        pairs = zip(SNAPSHOT_SCALARS, scalar_types, strict=True)
        p += [_array(previous[c]).cast(t) for c, t in pairs]
        p += [_array(previous[c]) for c in state]

    def data_column(i: int) -> Any:
        if i < n_keys:
            return d[i]
        if v0 <= i < v0 + k:
            return d[n_keys + i - v0]
        if i >= state_end:
            return d[n_keys + k + i - state_end]
        return pa.nulls(n, types[i])  # a snapshot field: null on data rows

    def snap_column(i: int) -> Any:
        return p[i] if p and i < state_end else pa.nulls(m, types[i])

    keys = [pa.concat_arrays([d[i], *p[i : i + 1]]) for i in range(n_keys)]
    src = pa.array(np.r_[np.ones(n, np.int32), np.zeros(m, np.int32)])

    def value(j: int) -> Any:  # the j-th value column of the union (ties only)
        return pa.concat_arrays([data_column(v0 + j), *([snap_column(v0 + j)] if m else [])])

    order = np.asarray(_spark_order(keys, src, value, k).to_numpy(zero_copy_only=False))
    order = order.astype(np.int64, copy=False)
    kind = np.asarray(src.to_numpy(zero_copy_only=False))[order]
    index = np.where(kind == 1, order, order - n)
    sorted_keys = [c.take(pa.array(order)) for c in keys]
    return _Rows(sorted_keys, fields, kind, index, data_column, snap_column)


def _spark_order(keys: list[Any], src: Any, value: Callable[[int], Any], k: int) -> pa.Array:
    """The indices that sort ``table`` by (key, source, features) as Spark does (nulls
    first, NaN after +inf), stably: rows equal in all of them keep their order.

    The features only break ties between rows of one key and source, which a micro-batch
    with one row per key never has: the whole table is sorted by key and source, and only
    the runs of equal (key, source) rows are then sorted by their features. That gives
    the permutation of one stable sort by all the columns (27 with 8 features), at the
    cost of a sort by two."""
    n = len(src)
    if len(keys) == 1 and pa.types.is_integer(keys[0].type) and not keys[0].null_count:
        # One integer key (the usual case): numpy's stable sort, the same order.
        key = np.asarray(_array(keys[0]).to_numpy())
        source = np.asarray(_array(src).to_numpy())
        order_np = np.lexsort((source, key))
        index = pa.array(order_np)
        if n < 2 or k == 0:
            return index
        sk, ss = key[order_np], source[order_np]
        tied = (sk[1:] == sk[:-1]) & (ss[1:] == ss[:-1])
    else:
        order: list[Any] = []
        for c in keys:
            order += _null_first(c, [c])
        order.append(src)
        index = _sort_indices(order)
        if n < 2 or k == 0:
            return index
        tied = np.ones(n - 1, dtype=bool)
        for c in [*keys, src]:
            tied &= _same_as_before(c.take(index))
    if not tied.any():
        return index
    # Rows in a run of equal (key, source): each run sorted by the features, in place.
    starts = np.concatenate([[True], ~tied])
    run = np.cumsum(starts) - 1
    in_run = np.concatenate([tied, [False]]) | np.concatenate([[False], tied])
    at = np.flatnonzero(in_run)
    rows = index.take(pa.array(at))
    sub = [pa.array(run[at])]
    for j in range(k):
        v = value(j).take(rows)
        nan = pc.is_nan(v)
        sub += _null_first(v, [pc.if_else(nan, np.inf, v), nan])
    out = np.asarray(index.to_numpy(zero_copy_only=False)).copy()
    out[at] = np.asarray(rows.take(_sort_indices(sub)).to_numpy(zero_copy_only=False))
    return pa.array(out)


def _null_first(c: Any, keys: list[Any]) -> list[Any]:
    """Sort keys of a column, nulls first: a validity flag before them where it has nulls
    (so Arrow's own null placement never decides)."""
    return [pc.is_valid(c), *keys] if c.null_count else keys


def _sort_indices(columns: list[Any]) -> pa.Array:
    keys = pa.Table.from_arrays(columns, names=[f"s{i}" for i in range(len(columns))])
    return pc.sort_indices(keys, sort_keys=[(f"s{i}", "ascending") for i in range(len(columns))])


def _same_as_before(c: Any) -> np.ndarray:
    """Per row but the first: equal to the row before as a sort sees it (both null, both
    NaN, or ``==``, so -0.0 ties with 0.0)."""
    a = c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c
    x, y = a.slice(1), a.slice(0, len(a) - 1)
    same = _bools(pc.fill_null(pc.equal(x, y), False))
    if a.null_count:
        same |= _bools(x.is_null()) & _bools(y.is_null())
    if pa.types.is_floating(a.type):
        nan_x, nan_y = (_bools(pc.fill_null(pc.is_nan(v), False)) for v in (x, y))
        same |= nan_x & nan_y
    return same


def _bools(a: Any) -> np.ndarray:
    return np.asarray(a.to_numpy(zero_copy_only=False), dtype=bool)


def snapshot_states_kernel(n_keys: int, layout: SnapshotLayout) -> BatchFunction:
    """``mapInArrow`` over a snapshot's key columns, ``last_batch`` and state columns: the
    same rows with the columns ``f{j}_count``, ``f{j}_mean``, ``f{j}_var`` and
    ``f{j}_scale`` (:func:`~mxnorm_spark.keyed.kernel.filled_constants`) of each key's
    state, as ``KeyedModel.states`` has them."""
    nf = len(layout.state_fields)

    def states(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for rb in batches:
            s = rb.num_rows
            state = [
                np.asarray(rb.column(n_keys + 1 + i).to_numpy(zero_copy_only=False), np.float64)
                for i in range(layout.n_features * nf)
            ]
            b = layout.before(state, np.ones(s, dtype=bool), s)
            b["scale"] = lane_constants(layout.options, b["mean"], b["var"])[1]
            cols = [rb.column(i) for i in range(n_keys + 1)]
            cols += [pa.array(b[f][j]) for j in range(layout.n_features) for f in FIELDS]
            names = [*rb.schema.names[: n_keys + 1], *feature_columns(layout.n_features, FIELDS)]
            yield pa.RecordBatch.from_arrays(cols, names=names)

    return states
