"""The ``arrow`` engine: numpy and pyarrow in the Python workers, over Arrow record batches.

Moments: ``mapInArrow`` running the two-pass in shifted coordinates on every Arrow record
batch (:func:`~mxnorm_spark.core.moments.finite_rows_moments` when every value is valid,
as ``Moments.from_array`` does; :meth:`Moments.from_columns` with masks otherwise),
merged within the partition; one typed row per partition (and batch value) comes back to
the driver. The same kernel runs on the driver for a small input
(:func:`moments_on_driver`).

Normalization: :mod:`.arrow_normalize`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import mxnorm_spark.spark_extra  # noqa: F401  (before pyspark: names the [spark] extra if missing)

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mxnorm_spark.core.moments import Moments, finite_rows_moments
from mxnorm_spark.engines.columns import (
    ARRAY_COL,
    WIDE_FEATURES,
    InputSpec,
    check_dims,
    quote,
    sql_name,
    sql_values,
)
from mxnorm_spark.engines.partials import (
    PartitionMoments,
    batch_key,
)
from mxnorm_spark.engines.workers import map_in_arrow

BatchFunction = Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]
_MOMENT_FIELDS = ("count", "shift", "delta", "m2")


# ---- moments: driver side ----------------------------------------------------------------
def packs_scalars(spec: InputSpec) -> bool:
    """Whether the kernel reads scalar columns packed into one ``array<double>``.

    Spark converts one list column to Arrow much faster than many double columns: 200k
    rows x 256 doubles took 14 s packed against 25 s as columns (loaded machine), and the
    row-major kernel then needs no stacking.
    """
    return spec.kind == "scalar" and len(spec.cols) > WIDE_FEATURES


def kernel_input(
    df: DataFrame, spec: InputSpec, batch_col: str | None, *, packed: bool = True
) -> DataFrame:
    """The columns the moments kernel reads: ``__mx_batch``, then ``x0..`` or the array
    (many scalar columns packed into one unless not ``packed``, see :func:`packs_scalars`).

    A vector column goes through ``vector_to_array``: Spark hands its raw struct to Arrow
    3-4x slower (600k x 64: 4.1 s against 1.1 s for the moments, bench/SHAPES.md)."""
    if spec.kind != "scalar":
        selected = [spec.as_double_array().alias(ARRAY_COL)]
        if batch_col is not None:
            selected.insert(0, quote(batch_col).alias("__mx_batch"))
        return df.select(*selected)
    # Scalar columns as SQL text: one py4j call, where Column expressions take a few each.
    texts = [] if batch_col is None else [f"{sql_name(batch_col)} AS __mx_batch"]
    values = sql_values(spec, len(spec.cols))
    if packed and packs_scalars(spec):
        texts.append(f"array({', '.join(values)}) AS {ARRAY_COL}")
    else:
        texts += [f"{x} AS x{j}" for j, x in enumerate(values)]
    return df.selectExpr(*texts)


def partition_moments(
    df: DataFrame, spec: InputSpec, shift: np.ndarray | None, batch_col: str | None
) -> tuple[list[PartitionMoments], int | None]:
    """``mapInArrow``: numpy moments per record batch, one typed row per partition and batch.

    Also returns the feature count (None for vector input with no non-null row).
    """
    rows = _partials_frame(df, spec, shift, batch_col).collect()
    return _read_partials([r.asDict() for r in rows], spec, shift, batch_col is not None)


def batch_partials(
    df: DataFrame, spec: InputSpec, shift: np.ndarray | None, batch_col: str
) -> DataFrame:
    """The partials per (batch value, partition), not collected: the input of
    :func:`mxnorm_spark.engines.merged_by_batch` (moments, ``bad`` always false)."""
    return _partials_frame(df, spec, shift, batch_col).withColumn("bad", F.lit(False))


def _partials_frame(
    df: DataFrame, spec: InputSpec, shift: np.ndarray | None, batch_col: str | None
) -> DataFrame:
    src = kernel_input(df, spec, batch_col)
    batch_type = src.schema["__mx_batch"].dataType if batch_col is not None else None
    dbl = T.ArrayType(T.DoubleType(), containsNull=False)
    out_fields = [
        T.StructField("pid", T.IntegerType(), False),
        T.StructField("rows", T.LongType(), False),
        T.StructField("lo", T.IntegerType(), True),
        T.StructField("hi", T.IntegerType(), True),
        *[T.StructField(name, dbl, False) for name in _MOMENT_FIELDS],
    ]
    if batch_type is not None:
        out_fields.insert(0, T.StructField("batch", batch_type, True))
    schema = T.StructType(out_fields)
    scalar = spec.kind == "scalar" and not packs_scalars(spec)
    kernel = moments_kernel(scalar, shift, batch_col is not None)
    return map_in_arrow(src, kernel, schema)


def moments_on_driver(
    table: pa.Table, spec: InputSpec, shift: np.ndarray | None
) -> tuple[list[PartitionMoments], int | None]:
    """:func:`partition_moments` of rows already read (as :func:`kernel_input` selects
    them, no batch column): the same numbers as a one-partition ``mapInArrow``."""
    kernel = moments_kernel(spec.kind == "scalar", shift, False)
    out = list(kernel(iter(table.to_batches())))
    partials = pa.Table.from_batches(out).to_pylist() if out else []
    return _read_partials(partials, spec, shift, False)


def _read_partials(
    rows: list[dict[str, Any]], spec: InputSpec, shift: np.ndarray | None, by_batch: bool
) -> tuple[list[PartitionMoments], int | None]:
    """The kernel's partial rows as :class:`PartitionMoments`, and the feature count."""
    partials = []
    lo = [r["lo"] for r in rows if r["lo"] is not None]
    hi = [r["hi"] for r in rows if r["hi"] is not None]
    k: int | None
    if spec.kind == "scalar":
        k = len(spec.cols)
    elif lo:
        assert spec.input_col is not None
        k = check_dims(spec.input_col, min(lo), max(hi))
        if shift is not None and shift.shape[0] != k:
            check_dims(spec.input_col, min(k, shift.shape[0]), max(k, shift.shape[0]))
    else:
        k = None if shift is None else int(shift.shape[0])
    for r in rows:
        if not r["count"]:  # a partition whose vector rows were all null
            if k is None:
                continue
            mom = Moments.empty(k)
        else:
            mom = Moments(r["count"], r["shift"], r["delta"], r["m2"])
        batch = r["batch"] if by_batch else None
        partials.append(PartitionMoments(batch, int(r["pid"]), int(r["rows"]), mom))
    return partials, k


# ---- moments: the kernel (runs in the Python workers) ------------------------------------
@dataclass
class _BatchPartial:
    """What one partition accumulates for one batch value."""

    batch: Any
    rows: int = 0
    lo: int | None = None  # the shortest and longest vector row seen
    hi: int | None = None
    moments: Moments | None = None

    def add(self, rows: int, mom: Moments | None, dim: int | None) -> None:
        self.rows += rows
        if dim is not None:
            self.lo = dim if self.lo is None else min(self.lo, dim)
            self.hi = dim if self.hi is None else max(self.hi, dim)
        if mom is not None:
            if self.moments is not None and self.moments.n_features != mom.n_features:
                raise _VaryingLength(self.moments.n_features, mom.n_features)
            self.moments = mom if self.moments is None else self.moments.merge(mom)


class _VaryingLength(Exception):
    def __init__(self, lo: int, hi: int) -> None:
        super().__init__(f"{lo} != {hi}")
        self.lo, self.hi = lo, hi


def moments_kernel(scalar: bool, shift: np.ndarray | None, by_batch: bool) -> BatchFunction:
    """The ``mapInArrow`` function; closed over plain numpy values only."""

    def moments_per_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        pid = ctx.partitionId() if ctx is not None else 0
        acc: dict[Any, _BatchPartial] = {}
        batch_type = None
        try:
            for rb in batches:
                if rb.num_rows == 0:
                    continue
                if by_batch:
                    batch_type = rb.schema.field(0).type
                    groups = _split_by_batch_value(rb)
                else:
                    groups = [(None, rb)]
                for key, part in groups:
                    mom, dim = _record_batch_moments(part, scalar, shift, by_batch)
                    acc.setdefault(batch_key(key), _BatchPartial(key)).add(part.num_rows, mom, dim)
        except _VaryingLength as exc:
            # Report it as a partial row so the driver raises the named error.
            failed = _BatchPartial(None, 0, exc.lo, exc.hi, None)
            yield _partials_record_batch(by_batch, batch_type, [failed], pid)
            return
        if acc:
            yield _partials_record_batch(by_batch, batch_type, list(acc.values()), pid)

    return moments_per_partition


def _list_rows(rb: pa.RecordBatch, by_batch: bool) -> np.ndarray | None:
    """The list column of ``rb`` as rows x dim float64 when every row is there, of one
    length, with only finite values; else None (the general path then handles it)."""
    lst = rb.column(1 if by_batch else 0)
    if lst.null_count or len(lst) == 0:
        return None
    lengths = pc.list_value_length(lst)
    lo, hi = pc.min_max(lengths).values()
    if lo.as_py() != hi.as_py() or not lo.as_py():
        return None
    flat = lst.flatten()
    if flat.null_count:
        return None
    x = flat.to_numpy(zero_copy_only=False).reshape(len(lst), lo.as_py())
    return x if bool(np.isfinite(x).all()) else None


def _scalar_rows(rb: pa.RecordBatch, by_batch: bool) -> np.ndarray | None:
    """The scalar columns of ``rb`` as rows x features float64 when all values are finite."""
    start = 1 if by_batch else 0
    if rb.num_rows == 0 or rb.num_columns <= start:
        return None
    x = np.column_stack(
        [rb.column(j).to_numpy(zero_copy_only=False) for j in range(start, rb.num_columns)]
    ).astype(np.float64, copy=False)
    return x if bool(np.isfinite(x).all()) else None


def _feature_matrix(
    rb: pa.RecordBatch, scalar: bool, by_batch: bool
) -> tuple[np.ndarray, int | None]:
    """Features x rows float64 (invalid -> NaN) and the row length of vector input."""
    start = 1 if by_batch else 0
    if scalar:
        cols = [rb.column(j).to_numpy(zero_copy_only=False) for j in range(start, rb.num_columns)]
        return np.vstack(cols) if cols else np.empty((0, rb.num_rows)), None
    lst = rb.column(start)
    ok = lst.is_valid()
    present = lst.filter(ok)
    if len(present) == 0:
        return np.empty((0, 0)), None
    lengths = pc.list_value_length(present).to_numpy()
    lo, hi = int(lengths.min()), int(lengths.max())
    if lo != hi:
        raise _VaryingLength(lo, hi)
    flat = present.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(present), lo).T, lo


def _record_batch_moments(
    rb: pa.RecordBatch, scalar: bool, shift: np.ndarray | None, by_batch: bool
) -> tuple[Moments | None, int | None]:
    # Scalar and list input take the same path, so their moments agree bit for bit.
    rows = _scalar_rows(rb, by_batch) if scalar else _list_rows(rb, by_batch)
    if rows is not None and (shift is None or shift.shape[0] == rows.shape[1]):
        return finite_rows_moments(rows, shift), None if scalar else rows.shape[1]
    mat, dim = _feature_matrix(rb, scalar, by_batch)
    if mat.shape[1] == 0 and not scalar:
        return None, None
    if shift is not None and mat.shape[0] != shift.shape[0]:
        raise _VaryingLength(min(mat.shape[0], shift.shape[0]), max(mat.shape[0], shift.shape[0]))
    return Moments.from_columns(mat, shift), dim


def _split_by_batch_value(rb: pa.RecordBatch) -> list[tuple[Any, pa.RecordBatch]]:
    """The rows of each batch value (column 0), in one stable sort (not one filter per value)."""
    enc = pc.dictionary_encode(rb.column(0), null_encoding="encode")
    codes = enc.indices.to_numpy(zero_copy_only=False)
    keys = enc.dictionary.to_pylist()
    if len(keys) == 1:
        return [(keys[0], rb)]
    order = np.argsort(codes, kind="stable")
    ordered = rb.take(pa.array(order))
    sorted_codes = codes[order]
    bounds = [0, *(np.flatnonzero(np.diff(sorted_codes)) + 1).tolist(), len(order)]
    return [
        (keys[int(sorted_codes[a])], ordered.slice(a, b - a)) for a, b in itertools.pairwise(bounds)
    ]


def _partials_record_batch(
    by_batch: bool, batch_type: Any, partials: list[_BatchPartial], pid: int
) -> pa.RecordBatch:
    cols: dict[str, pa.Array] = {}
    if by_batch:
        cols["batch"] = pa.array([p.batch for p in partials], type=batch_type)
    lst = pa.list_(pa.field("element", pa.float64(), nullable=False))
    cols["pid"] = pa.array([pid] * len(partials), type=pa.int32())
    cols["rows"] = pa.array([p.rows for p in partials], type=pa.int64())
    cols["lo"] = pa.array([p.lo for p in partials], type=pa.int32())
    cols["hi"] = pa.array([p.hi for p in partials], type=pa.int32())
    for name in _MOMENT_FIELDS:
        values = [[] if p.moments is None else getattr(p.moments, name).tolist() for p in partials]
        cols[name] = pa.array(values, type=lst)
    return pa.RecordBatch.from_pydict(cols)
