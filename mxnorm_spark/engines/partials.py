"""The moments partials both engines hand back to :mod:`mxnorm_spark.batch.aggregate`: one
per partition (:class:`PartitionMoments`), or per batch value merged (on the driver, or in
Spark when there are many) and read as columnar arrays (:class:`BatchTable`,
:func:`merged_by_batch`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import mxnorm_spark.spark_extra  # noqa: F401  (before pyspark: names the [spark] extra if missing)

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from mxnorm_spark.core.moments import Moments, merge_fields
from mxnorm_spark.engines.workers import map_in_arrow


# ---- moments -----------------------------------------------------------------------------
@dataclass(frozen=True)
class PartitionMoments:
    """The moments of one partition (of one ``batch`` value, or None without a batch column)
    and the number of its rows, valid or not."""

    batch: Any
    partition: int
    rows: int
    moments: Moments


def batch_key(value: Any) -> Any:
    """A batch value as a dict key: NaN (which equals nothing) becomes one key."""
    if isinstance(value, float) and math.isnan(value):
        return ("nan",)
    return value


# ---- moments per batch value: partials merged in partition-id order, one row per value ----
MOMENT_FIELDS = ("count", "shift", "delta", "m2")
# What the sql engine's partials carry instead of moments: the shifted sums per feature.
SUM_FIELDS = ("count", "shift", "s", "q")
BatchFunction = Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]
# Up to this many partial rows ((batch value, partition) pairs; ~160 bytes each with 8
# features) :func:`merged_by_batch` collects them and merges on the driver: no shuffle by
# value and no trip through Python workers and back (at 20,000 values x 16 partitions that
# trip was most of the fit's extra time). More go through Spark, the driver's memory bound.
DRIVER_MERGE_PARTIALS = 1_000_000
_ELEMENTS = pa.list_(pa.field("element", pa.float64(), nullable=False))


@dataclass(frozen=True)
class BatchTable:
    """The merged moments of every batch value, columnar: row ``i`` is ``values[i]``.

    ``count``, ``shift``, ``delta`` and ``m2`` are (batch values x features) float64
    arrays, row ``i`` the fields of one :class:`Moments`; ``rows`` the rows of each value
    (valid or not). Values are in ascending order (NaN last).
    """

    values: pa.Array
    rows: np.ndarray
    count: np.ndarray
    shift: np.ndarray
    delta: np.ndarray
    m2: np.ndarray

    def __len__(self) -> int:
        return int(self.count.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.count.shape[1])

    def moments(self, i: int) -> Moments:
        return Moments(self.count[i], self.shift[i], self.delta[i], self.m2[i])

    def pairs(self) -> list[tuple[Any, Moments]]:
        """``(batch value, Moments)`` per row: one Python object per batch value."""
        return [(v, self.moments(i)) for i, v in enumerate(self.values.to_pylist())]


def merged_by_batch(
    partials: DataFrame, *, sums: bool, shift: np.ndarray | None = None
) -> pa.Table:
    """One row per batch value, collected as Arrow: the partials of each value merged.

    ``partials`` has one row per (``batch`` value, partition ``pid``) with ``rows``,
    ``lo``, ``hi`` (vector lengths), ``bad`` (the sql engine's unchecked pass saw an
    invalid value) and the fields of :data:`MOMENT_FIELDS` (or, with ``sums``,
    :data:`SUM_FIELDS`), each either one ``array<double>`` column or flat double columns
    ``{field}_0..`` (no list through the shuffle and the Arrow transfer: fewer bytes and
    no offsets). Flat partials may leave out what is the same in every row: ``lo`` and
    ``hi`` for scalar columns, ``count`` (then ``rows`` as double) and ``shift`` (then
    the given ``shift``). Up to :data:`DRIVER_MERGE_PARTIALS` partial rows they are
    collected and merged on the driver; more, a shuffle by batch value brings each value's
    partials together in Spark. Either way :func:`merge_partials` merges them in
    partition-id order: the same bits, whatever the order in which they arrived.
    """
    fields = [
        T.StructField("batch", partials.schema["batch"].dataType, True),
        T.StructField("rows", T.LongType(), False),
        T.StructField("lo", T.IntegerType(), True),
        T.StructField("hi", T.IntegerType(), True),
        T.StructField("bad", T.BooleanType(), False),
        *[
            T.StructField(f, T.ArrayType(T.DoubleType(), containsNull=False), False)
            for f in MOMENT_FIELDS
        ],
    ]
    kernel = merge_kernel(sums, _flat_width(partials, sums), shift)
    schema = T.StructType(fields)
    # Kept for the count and then the merge: the aggregation runs once.
    kept = partials.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        if kept.count() <= DRIVER_MERGE_PARTIALS:
            return _merged_on_driver(kept.toArrow(), kernel, schema)
        return map_in_arrow(kept.repartition("batch"), kernel, schema).toArrow()
    finally:
        kept.unpersist()


def _merged_on_driver(partials: pa.Table, kernel: BatchFunction, schema: T.StructType) -> pa.Table:
    """``kernel`` over all the partials at once, here: the rows :func:`merged_by_batch`'s
    tasks would return (merge_partials orders each value's partials itself)."""
    from pyspark.sql.pandas.types import to_arrow_schema

    merged = list(kernel(iter(partials.to_batches())))
    if merged:
        return pa.Table.from_batches(merged)
    return to_arrow_schema(schema).empty_table()


def _flat_width(partials: DataFrame, sums: bool) -> int | None:
    """The feature count of flat partials (``{field}_{j}`` columns), None for lists."""
    names = set(partials.columns)
    fields = SUM_FIELDS if sums else MOMENT_FIELDS
    if any(f in names for f in fields):
        return None
    return sum(1 for n in names if n.startswith(f"{fields[-1]}_"))


def pivot_frame(df: DataFrame, batch_col: str, values: pa.Array, pivots: np.ndarray) -> DataFrame:
    """A small DataFrame ``__mx_key`` (a batch value), ``__mx_p0..`` (its pivots), made
    from Arrow (one row per batch value, no Python object per value)."""
    k = pivots.shape[1]
    schema = T.StructType(
        [T.StructField("__mx_key", df.schema[batch_col].dataType, True)]
        + [T.StructField(f"__mx_p{j}", T.DoubleType(), False) for j in range(k)]
    )
    cols = {"__mx_key": values, **{f"__mx_p{j}": pa.array(pivots[:, j]) for j in range(k)}}
    return df.sparkSession.createDataFrame(pa.table(cols), schema)


def merge_kernel(
    sums: bool, flat: int | None = None, shift: np.ndarray | None = None
) -> BatchFunction:
    """The ``mapInArrow`` function of :func:`merged_by_batch`: ``flat`` the feature count
    of flat partials (None: list columns), ``shift`` the pivot that flat partials leave out.
    """

    def merge_partials_of_partition(
        batches: Iterator[pa.RecordBatch],
    ) -> Iterator[pa.RecordBatch]:
        got = [rb for rb in batches if rb.num_rows]
        if got:
            yield merge_partials(pa.Table.from_batches(got), sums, flat, shift)

    return merge_partials_of_partition


def list_matrix(column: Any, lengths: np.ndarray, k: int) -> np.ndarray:
    """A list column as rows x k float64 (zeros where a row's list is empty; nulls NaN)."""
    out = np.zeros((len(lengths), k))
    if k:
        flat = pc.list_flatten(column).to_numpy(zero_copy_only=False)
        out[lengths == k] = flat.reshape(-1, k)
    return out


def _moments_of_sums(cnt: np.ndarray, s: np.ndarray, q: np.ndarray) -> tuple[Any, Any]:
    """``delta`` and ``m2`` of shifted sums, elementwise (as the driver did per row)."""
    has = cnt > 0
    s1 = np.where(has, s, 0.0)
    s2 = np.where(has, q, 0.0)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        delta = np.where(has, s1 / cnt, 0.0)
        m2 = np.where(has, np.maximum(s2 - s1 * delta, 0.0), 0.0)
    return delta, m2


def merge_partials(
    table: pa.Table, sums: bool, flat: int | None = None, shift: np.ndarray | None = None
) -> pa.RecordBatch:
    """Merge the partials of each batch value of ``table`` in partition-id order.

    The Chan merge runs for all values at once, one step per partial rank: lane by lane
    the same float operations as ``Moments.merge_all`` over each value's partials.
    ``flat``/``shift``: see :func:`merged_by_batch`.
    """
    table = table.combine_chunks()
    enc = pc.dictionary_encode(table.column("batch").combine_chunks(), null_encoding="encode")
    codes = enc.indices.to_numpy(zero_copy_only=False)
    order = np.lexsort((table.column("pid").to_numpy(), codes))
    codes = codes[order]
    new = np.r_[True, codes[1:] != codes[:-1]]
    first = np.flatnonzero(new)
    size = np.diff(np.r_[first, len(codes)])
    # Each partial's slot in a (rank, value) layout: step r of the merge reads one
    # contiguous block instead of gathering its rows (the gathers were most of the time).
    n_values, group = len(first), np.cumsum(new) - 1
    slot = np.empty(len(codes), dtype=np.intp)
    slot[order] = (np.arange(len(codes)) - first[group]) * n_values + group

    def column(name: str) -> np.ndarray:
        return np.asarray(table.column(name).to_numpy(zero_copy_only=False))[order]

    # Scalar partials leave out lo and hi (vector lengths): no length, NaN here.
    sized = "lo" in table.column_names
    lo = _reduce(np.fmin, column("lo"), first) if sized else np.full(n_values, np.nan)
    hi = _reduce(np.fmax, column("hi"), first) if sized else np.full(n_values, np.nan)
    fields = SUM_FIELDS if sums else MOMENT_FIELDS
    ranks = int(size.max()) if n_values else 0
    if flat is None:
        lengths = pc.list_value_length(table.column("count")).to_numpy(zero_copy_only=False)
        ks = np.unique(lengths[lengths > 0])
        if len(ks) > 1:  # rows of different lengths: one row that names them, no moments
            lo = np.full(1, float(min(np.nanmin(lo, initial=ks[0]), ks[0])))
            hi = np.full(1, float(max(np.nanmax(hi, initial=ks[-1]), ks[-1])))
            return _merged_record_batch(
                pa.nulls(1, enc.dictionary.type), [0], lo=lo, hi=hi, bad=[True], acc=[]
            )
        k = int(ks[0]) if len(ks) else 0
        parts = [
            _laid_out(list_matrix(table.column(f), lengths, k), slot, ranks, n_values)
            for f in fields
        ]
    else:
        k = flat
        parts = [
            _flat_field(table, f, k, shift, slot=slot, ranks=ranks, n_values=n_values)
            for f in fields
        ]
    acc = _merge_ranks(parts, size, k, sums)
    rows = np.add.reduceat(column("rows"), first) if n_values else np.zeros(0, np.int64)
    bad = np.logical_or.reduceat(column("bad"), first) if n_values else np.zeros(0, bool)
    values = enc.dictionary.take(pa.array(codes[first]))
    return _merged_record_batch(values, rows, lo=lo, hi=hi, bad=bad, acc=acc)


def _merge_ranks(parts: list[np.ndarray], size: np.ndarray, k: int, sums: bool) -> list[np.ndarray]:
    """The Chan merge of every value's partials, one step per rank: ``parts`` laid out as
    (ranks, values, ...) (or (k,) for a shift shared by all), ``size`` partials per value."""
    n_values = len(size)
    ranks = int(size.max()) if n_values else 0
    acc: list[np.ndarray] = [np.zeros((n_values, k)) for _ in MOMENT_FIELDS]
    for step in range(ranks):  # step 0 merges into zeros, as Moments.merge_all does
        g = np.flatnonzero(size > step)
        whole = len(g) == n_values  # every value has this rank: no gather, no scatter
        b = [p if p.ndim == 1 else p[step] if whole else p[step][g] for p in parts]
        if sums:
            b = [b[0], b[1], *_moments_of_sums(b[0], b[2], b[3])]
        a = acc if whole else [x[g] for x in acc]
        merged = merge_fields((a[0], a[1], a[2], a[3]), (b[0], b[1], b[2], b[3]))
        if whole:
            acc = [np.asarray(x) for x in merged]
        else:
            for x, y in zip(acc, merged, strict=True):
                x[g] = y
    return acc


def _laid_out(x: np.ndarray, slot: np.ndarray, ranks: int, n_values: int) -> np.ndarray:
    """Rows of ``x`` (partials x ...) moved to their slots: (ranks, values, ...)."""
    out = np.zeros((ranks * n_values, *x.shape[1:]))
    out[slot] = x
    return out.reshape(ranks, n_values, *x.shape[1:])


def _flat_field(
    table: pa.Table,
    field: str,
    k: int,
    shift: np.ndarray | None,
    *,
    slot: np.ndarray,
    ranks: int,
    n_values: int,
) -> np.ndarray:
    """A flat field of ``table`` laid out as (ranks, values, k); a field left out is
    ``rows`` for ``count`` ((ranks, values, 1), the same for every feature) and the
    given ``shift`` otherwise ((k,), see :func:`merged_by_batch`)."""
    if f"{field}_0" in table.column_names or k == 0:
        out = np.zeros((ranks * n_values, k))
        for j in range(k):
            out[slot, j] = table.column(f"{field}_{j}").to_numpy(zero_copy_only=False)
        return out.reshape(ranks, n_values, k)
    if field == "count":
        rows = table.column("rows").to_numpy().astype(np.float64)
        return _laid_out(rows[:, None], slot, ranks, n_values)
    assert shift is not None, f"flat partials without {field!r} and no shift given"
    return np.asarray(shift, dtype=np.float64).reshape(k)


def _reduce(ufunc: Any, values: np.ndarray, first: np.ndarray) -> np.ndarray:
    """``ufunc.reduceat`` of a nullable int column as numpy (nulls NaN, skipped by
    fmin/fmax)."""
    return np.asarray(ufunc.reduceat(values.astype(np.float64), first))


def _merged_record_batch(
    values: pa.Array, rows: Any, *, lo: np.ndarray, hi: np.ndarray, bad: Any, acc: list[np.ndarray]
) -> pa.RecordBatch:
    n = len(values)
    k = acc[0].shape[1] if acc else 0
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * k)

    def lists(x: np.ndarray | None) -> pa.Array:
        flat = pa.array(np.zeros(0) if x is None else x.reshape(-1), type=pa.float64())
        return pa.ListArray.from_arrays(offsets, flat).cast(_ELEMENTS)

    def ints(x: np.ndarray) -> pa.Array:
        nan = np.isnan(x)
        return pa.array(np.where(nan, 0, x).astype(np.int32), mask=nan)

    cols = [values, pa.array(rows, pa.int64()), ints(lo), ints(hi), pa.array(bad, pa.bool_())]
    cols += [lists(acc[i] if acc else None) for i in range(len(MOMENT_FIELDS))]
    return pa.RecordBatch.from_arrays(
        cols, names=["batch", "rows", "lo", "hi", "bad", *MOMENT_FIELDS]
    )
