"""Distributed per-feature moments of a Spark DataFrame.

Only small partials reach the driver: for one batch, one
:class:`~mxnorm_spark.core.moments.Moments` per partition, as typed columns, folded with
``Moments.merge`` in partition-id order. Per batch value (:func:`moments_table_by_batch`,
a backfill) the partials of each (value, partition) are merged in partition-id order
(:func:`mxnorm_spark.engines.merged_by_batch`: collected as Arrow and merged on the driver
while they are few, after a shuffle by value in Spark past that), so one row per batch
value comes out and lands in (batch values x features) arrays. Either way the same input
and partitioning give the same bits on every run. Two engines compute the partials
(:mod:`mxnorm_spark.engines`):

* ``sql``: one JVM aggregation of pivot-shifted sums per partition. The pivot ``p`` is
  the given ``shift``, else the median of the first valid values. Where a group's mean
  turns out to lie more than ~1.7 standard deviations from ``p`` (cancellation would cost
  digits), a second pass re-centres on that mean. No Python worker is involved.
* ``arrow``: ``mapInArrow`` running the two-pass in shifted coordinates of the numpy core
  (``finite_rows_moments``, or ``Moments.from_columns`` for a record batch with invalid
  values) on every Arrow record batch, merged within the partition.

``auto`` picks ``sql`` for up to 32 scalar columns and ``arrow`` for more, or for a
vector/array column (each measured faster there; see README ``## Spark batch``). An input
of at most 32,768 values it computes on the driver instead, from the one small ``limit``
job that otherwise gives the ``sql`` engine its pivot: a micro-batch of 1k rows costs one
quick job instead of a distributed aggregation.

Invalid values (null, NaN, +/-inf) never enter the moments. Input columns may be scalar
numeric columns (byte, short, int, long, float, double, decimal: read as float64), or one
``pyspark.ml.linalg`` vector or numeric array column whose rows all have the same length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import mxnorm_spark.spark_extra  # noqa: F401  (before pyspark: names the [spark] extra if missing)

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from mxnorm_spark.core.choices import LOCAL_VALUES
from mxnorm_spark.core.errors import (
    EmptyInputError,
    FeatureMismatchError,
    InvalidParameterError,
    InvalidValueError,
)
from mxnorm_spark.core.moments import Moments
from mxnorm_spark.engines import arrow as arrow_engine
from mxnorm_spark.engines import sql as sql_engine
from mxnorm_spark.engines.columns import (
    ENGINES,
    InputSpec,
    check_batch_col,
    check_dims,
    check_engine,
    feature_names,
    quote,
    resolve_input,
    sql_double,
    sql_finite_or_null,
    sql_values,
    vector_names,
)
from mxnorm_spark.engines.partials import (
    BatchTable,
    PartitionMoments,
    batch_key,
    list_matrix,
    merged_by_batch,
)

# Re-exported: other modules import these from here.
__all__ = [
    "ENGINES",
    "BatchTable",
    "batch_moments",
    "batch_moments_and_rows",
    "check_engine",
    "feature_names",
    "moments_by_batch",
    "moments_table_by_batch",
    "resolve_input",
    "sql_double",
    "vector_names",
]

# The moments of each batch value (None without a batch column), in ascending order.
BatchMoments = list[tuple[Any, Moments]]
_MOMENTS = ("count", "shift", "delta", "m2")

# Rows read to find a pivot per feature: the median of the valid values among them.
_PIVOT_ROWS = 16
# An input the optimizer sizes above this needs no probe for its size (the local limit
# is LOCAL_VALUES doubles, 256 KiB): 64 times that, as compressed files can be smaller.
_LARGE_INPUT_BYTES = 64 * 8 * LOCAL_VALUES
# A pivot p off the mean by more than sqrt(_MAX_AMPLIFICATION - 1) standard deviations
# gets a second pass with p = mean. The shifted sums lose log10(1 + (mean - p)**2 / var)
# digits to cancellation, at most 0.6 at 4: with the rounding of a sequential sum over
# millions of rows that is still ~1e-13 of the variance (an estimate; the tests check
# 1e-12 against exact arithmetic).
_MAX_AMPLIFICATION = 4.0


# ---- public API --------------------------------------------------------------------------
def batch_moments(
    df: DataFrame,
    cols: Sequence[str] | None = None,
    *,
    input_col: str | None = None,
    engine: str = "auto",
    shift: Any = None,
    allow_empty: bool = False,
) -> Moments:
    """Moments of the whole DataFrame as one batch.

    ``cols`` names scalar numeric columns; or ``input_col`` one vector/array column (its
    features are ``input_col[i]``). ``shift`` optionally gives a pivot per feature (a
    stream passes the current state mean; NaN where unknown). A DataFrame with no row
    raises :class:`EmptyInputError`, or with ``allow_empty=True`` returns empty moments
    (for a vector/array column the dimension then comes from ``shift``).
    """
    return batch_moments_and_rows(
        df, cols, input_col=input_col, engine=engine, shift=shift, allow_empty=allow_empty
    )[0]


def batch_moments_and_rows(
    df: DataFrame,
    cols: Sequence[str] | None = None,
    *,
    input_col: str | None = None,
    engine: str = "auto",
    shift: Any = None,
    allow_empty: bool = False,
) -> tuple[Moments, int]:
    """:func:`batch_moments` and the number of rows (valid or not), from the same job."""
    groups, k, rows = _moments_per_batch(
        df, cols, input_col, engine=engine, shift=shift, batch_col=None, allow_empty=allow_empty
    )
    return Moments.merge_all([m for _, m in groups], k), rows


def local_moments_and_rows(table: pa.Table, spec: InputSpec, shift: Any) -> tuple[Moments, int]:
    """:func:`batch_moments_and_rows` of rows already on the driver: scalar features as
    float64 columns ``x0..`` (as :func:`_local_probe` reads them); the same numbers."""
    given = None if shift is None else np.asarray(shift, dtype=np.float64).reshape(-1)
    found = arrow_engine.moments_on_driver(table, spec, given)
    groups, k, rows = _fold_arrow_partials(found, spec, given, batch_col=None, allow_empty=True)
    return Moments.merge_all([m for _, m in groups], k), rows


def moments_by_batch(
    df: DataFrame,
    cols: Sequence[str] | None = None,
    batch_col: str = "batch",
    *,
    input_col: str | None = None,
    engine: str = "auto",
) -> BatchMoments:
    """Moments of each distinct ``batch_col`` value, in ascending order, in one pass.

    :func:`moments_table_by_batch` as one ``(batch value, Moments)`` pair per value.
    """
    return moments_table_by_batch(df, cols, batch_col, input_col=input_col, engine=engine).pairs()


def moments_table_by_batch(
    df: DataFrame,
    cols: Sequence[str] | None = None,
    batch_col: str = "batch",
    *,
    input_col: str | None = None,
    engine: str = "auto",
) -> BatchTable:
    """Moments of each distinct ``batch_col`` value, ascending, as one columnar table.

    One distributed aggregation computes the partials per (batch value, partition); they
    are merged in partition-id order, on the driver or in Spark
    (:func:`~mxnorm_spark.engines.merged_by_batch`), into one row per batch value. A null
    batch value raises :class:`InvalidValueError`.
    """
    check_engine(engine)
    spec = resolve_input(df, cols, input_col)
    chosen = check_engine(engine, spec.kind, moments=True, features=len(spec.cols))
    _check_moments_options(df, spec, None, batch_col)
    if chosen == "sql":
        return _sql_batch_table(df, spec, batch_col)
    merged = merged_by_batch(arrow_engine.batch_partials(df, spec, None, batch_col), sums=False)
    return _batch_table(merged, spec, batch_col, None)


# ---- engine choice -----------------------------------------------------------------------
def _moments_per_batch(
    df: DataFrame,
    cols: Sequence[str] | None,
    input_col: str | None,
    *,
    engine: str,
    shift: Any,
    batch_col: str | None,
    allow_empty: bool,
) -> tuple[BatchMoments, int, int]:
    """The moments of each batch value (or of all rows), the feature count, the row count."""
    check_engine(engine)
    spec = resolve_input(df, cols, input_col)
    chosen = check_engine(engine, spec.kind, moments=True, features=len(spec.cols))
    given = _check_moments_options(df, spec, shift, batch_col)
    first_rows = None
    if engine == "auto" and batch_col is None and not _known_large(df, spec, chosen):
        probe = _local_probe(df, spec, given)
        if isinstance(probe, pa.Table):
            first_rows = probe
        else:
            return _fold_arrow_partials(probe, spec, given, batch_col=None, allow_empty=allow_empty)
    if chosen == "sql":
        return _sql_moments(df, spec, given, batch_col, first_rows, allow_empty=allow_empty)
    found = arrow_engine.partition_moments(df, spec, given, batch_col)
    return _fold_arrow_partials(found, spec, given, batch_col=batch_col, allow_empty=allow_empty)


def _check_moments_options(
    df: DataFrame, spec: InputSpec, shift: Any, batch_col: str | None
) -> np.ndarray | None:
    """Check ``batch_col`` and ``shift`` against the input; ``shift`` as float64."""
    if batch_col is not None:
        check_batch_col(df, batch_col)
        if spec.kind == "scalar" and batch_col in spec.cols:
            raise InvalidParameterError(
                f"batch column {batch_col!r} is also listed as a feature column"
            )
    given = None if shift is None else np.asarray(shift, dtype=np.float64).reshape(-1)
    if spec.kind == "scalar" and given is not None and given.shape[0] != len(spec.cols):
        raise FeatureMismatchError(
            f"shift has {given.shape[0]} values but there are {len(spec.cols)} columns"
        )
    return given


def _known_large(df: DataFrame, spec: InputSpec, chosen: str) -> bool:
    """Whether the probe of :func:`_local_probe` can be left out: the ``arrow`` engine
    (which needs no pivot) on an input the optimizer knows to be large.

    The probe is one more Spark job (measured 0.3-0.5 s of CPU, a tenth of a 200k x 64
    fit) that only pays off on small inputs. Classic Spark's size estimate of the feature
    columns (file sizes for a file scan) tells a large input apart without a job; when it
    is unknown (Connect, or a plan Spark cannot size) the probe runs as before.
    """
    if chosen != "arrow":
        return False  # the sql engine takes its pivot from the probe's rows
    names = spec.cols if spec.kind == "scalar" else (str(spec.input_col),)
    jdf = getattr(df.select(*[quote(c) for c in names]), "_jdf", None)
    if jdf is None:
        return False
    try:
        size = int(str(jdf.queryExecution().optimizedPlan().stats().sizeInBytes()))
        # What Spark answers when it cannot size a plan (default Long.MaxValue, "...b").
        unknown = str(df.sparkSession.conf.get("spark.sql.defaultSizeInBytes")).rstrip("b")
        unknown_size = int(unknown) if unknown.isdigit() else 2**63 - 1
    except Exception:  # an estimate only: without it, probe as before
        return False
    return _LARGE_INPUT_BYTES < size < unknown_size


def _local_probe(
    df: DataFrame, spec: InputSpec, shift: np.ndarray | None
) -> tuple[list[PartitionMoments], int | None] | pa.Table:
    """The partials of a small input computed on the driver, else its first rows.

    One ``limit`` job (it reads the first partition, more only if that is short) takes up
    to the local size plus one row. When that is all of ``df`` the Arrow kernel of the
    ``arrow`` engine runs here on the driver (same numbers as a one-partition
    ``mapInArrow``); otherwise the rows read come back as a table, for a pivot.
    """
    # Vector dimensions are unknown before reading: count 64 values per row.
    width = len(spec.cols) if spec.kind == "scalar" else 64
    limit = max(_PIVOT_ROWS, LOCAL_VALUES // width)
    src = arrow_engine.kernel_input(df, spec, None, packed=False)
    # collect(), not toArrow(): toArrow runs the limit on every partition.
    rows = src.limit(limit + 1).collect()
    if spec.kind == "scalar":
        columns = list(zip(*rows, strict=True)) if rows else [()] * len(spec.cols)
        table = pa.table({f"x{j}": pa.array(c, type=pa.float64()) for j, c in enumerate(columns)})
    else:
        lists = [r[0] for r in rows]
        table = pa.table({"__mx_arr": pa.array(lists, type=pa.list_(pa.float64()))})
    if table.num_rows > limit:
        return table
    return arrow_engine.moments_on_driver(table, spec, shift)


# ---- sql engine: pivot choice ------------------------------------------------------------
def _sql_moments(
    df: DataFrame,
    spec: InputSpec,
    given: np.ndarray | None,
    batch_col: str | None,
    first_rows: pa.Table | None,
    *,
    allow_empty: bool,
) -> tuple[BatchMoments, int, int]:
    """Shifted sums around a chosen pivot; again around each group's mean if that was far."""
    chosen = _choose_pivot(df, spec, given, first_rows)
    if chosen is None:
        return (*_empty_result(spec, given, allow_empty), 0)
    pivot, k = chosen
    partials, checked = sql_engine.partition_moments(
        df, spec, pivot, batch_col, k, checked=spec.kind != "scalar"
    )
    if partials and sum(p.rows for p in partials) > 0:
        groups = _fold_by_batch(partials, k, batch_col)
        pivots = {batch_key(b): pivot for b, _ in groups}
        if _worst_amplification(groups, pivots) <= _MAX_AMPLIFICATION:
            return groups, k, sum(p.rows for p in partials)
        # The pivot was far from the mean: a second pass centred on each group's mean.
        centres = {batch_key(b): _recentred_pivot(m, pivot) for b, m in groups}
        again: sql_engine.Pivots
        again = centres[batch_key(None)] if batch_col is None else centres
        partials, _ = sql_engine.partition_moments(df, spec, again, batch_col, k, checked=checked)
    return _fold_or_empty(partials, k, spec, given, batch_col=batch_col, allow_empty=allow_empty)


def _choose_pivot(
    df: DataFrame, spec: InputSpec, shift: Any, first_rows: pa.Table | None = None
) -> tuple[np.ndarray, int] | None:
    """A pivot per feature and the feature count, or None when ``df`` has no row.

    Uses ``shift`` where it is finite; features without one take the median of the valid
    values among the first few rows (0 if none), read with one cheap ``limit`` job unless
    ``first_rows`` (scalar columns ``x0..`` as read by :func:`_local_probe`) has them. Any
    finite pivot gives exact moments (a far one costs a second pass, see
    :func:`_sql_moments`); one near the centre of the data saves it.
    """
    given: np.ndarray | None = None
    if shift is not None:
        given = np.asarray(shift, dtype=np.float64).reshape(-1)
        if spec.kind == "scalar" and given.shape[0] != len(spec.cols):
            raise FeatureMismatchError(
                f"shift has {given.shape[0]} values but there are {len(spec.cols)} columns"
            )
        if bool(np.isfinite(given).all()):
            return given, int(given.shape[0])
    found = _first_values(df, spec, given, first_rows)
    if found is None:
        return None
    values, k = found
    values[~np.isfinite(values)] = np.nan
    has = ~np.isnan(values).all(axis=0)
    first = np.zeros(k)
    if has.any():
        # The median of a few values: not thrown far off by one outlier among them.
        first[has] = np.nanmedian(values[:, has], axis=0)
    if given is not None:
        first = np.where(np.isfinite(given), given, first)
    return first, k


def _first_values(
    df: DataFrame, spec: InputSpec, given: np.ndarray | None, first_rows: pa.Table | None
) -> tuple[np.ndarray, int] | None:
    """Rows x features float64 of the first few rows (invalid -> NaN), or None if no row."""
    if spec.kind == "scalar" and first_rows is not None:
        k = len(spec.cols)
        values = np.column_stack(
            [first_rows.column(j).to_numpy(zero_copy_only=False) for j in range(k)]
        ).astype(np.float64)
        return values, k
    if spec.kind == "scalar":
        exprs = [sql_finite_or_null(x) for x in sql_values(spec, len(spec.cols))]
        got = df.selectExpr(*exprs).limit(_PIVOT_ROWS).collect()
        if not got:
            return None
        values = np.array([[np.nan if v is None else v for v in r] for r in got], dtype=float)
        return values, len(spec.cols)
    arr = spec.as_double_array()
    got = df.select(arr.alias("a")).where(F.col("a").isNotNull()).limit(_PIVOT_ROWS).collect()
    if not got:
        return None
    k = len(got[0]["a"]) if given is None else int(given.shape[0])
    values = np.full((len(got), k), np.nan)
    for i, r in enumerate(got):
        vec = [np.nan if v is None else v for v in r["a"]][:k]
        values[i, : len(vec)] = vec
    return values, k


def _worst_amplification(groups: BatchMoments, pivots: dict[Any, np.ndarray]) -> float:
    """The worst cancellation factor ``1 + (mean - p)**2 / var`` over groups and features."""
    worst = 1.0
    for batch, m in groups:
        has = m.count > 0
        if not has.any():
            continue
        off = (m.mean - pivots[batch_key(batch)])[has]
        var = m.var[has]
        with np.errstate(divide="ignore", invalid="ignore"):
            f = np.where(off == 0.0, 1.0, 1.0 + off * off / var)
        worst = max(worst, float(np.max(np.where(np.isnan(f), np.inf, f))))
    return worst


def _recentred_pivot(m: Moments, pivot: np.ndarray) -> np.ndarray:
    """The group's mean as its new pivot (the old pivot where a feature has no value)."""
    return np.where(m.count > 0, m.mean, pivot)


# ---- moments per batch value: one merged row per value -----------------------------------
def _sql_batch_table(df: DataFrame, spec: InputSpec, batch_col: str) -> BatchTable:
    """:func:`_sql_moments` per batch value: one merged row per value reaches the driver."""
    chosen = _choose_pivot(df, spec, None)
    if chosen is None:
        _empty_result(spec, None, allow_empty=False)
    assert chosen is not None
    pivot, k = chosen

    def merged(pivots: sql_engine.BatchPivots, checked: bool) -> pa.Table:
        partials = sql_engine.batch_partials(df, spec, pivots, batch_col, k, checked=checked)
        shift = pivots if isinstance(pivots, np.ndarray) else None
        return merged_by_batch(partials, sums=True, shift=shift)

    checked = spec.kind != "scalar"
    got = None if checked else merged(pivot, False)
    if got is None or pc.any(got.column("bad")).as_py():
        checked = True
        got = merged(pivot, True)
    table = _batch_table(got, spec, batch_col, k)
    if _worst_table_amplification(table, pivot) <= _MAX_AMPLIFICATION:
        return table
    # The pivot was far from the mean: a second pass centred on each batch value's mean.
    centres = np.where(table.count > 0, table.shift + table.delta, pivot)
    return _batch_table(merged((table.values, centres), checked), spec, batch_col, k)


def _batch_table(merged: pa.Table, spec: InputSpec, batch_col: str, k: int | None) -> BatchTable:
    """The merged rows as a :class:`BatchTable` in ascending batch order, checked: vector
    lengths, null batch values, no row at all."""
    lo, hi = pc.min(merged.column("lo")).as_py(), pc.max(merged.column("hi")).as_py()
    if spec.kind == "scalar":
        k = len(spec.cols)
    elif lo is not None:
        assert spec.input_col is not None
        if k is None:
            k = check_dims(spec.input_col, lo, hi)
        elif lo != hi or hi != k:
            check_dims(spec.input_col, min(lo, k), max(hi, k))
    rows = merged.column("rows").to_numpy()
    if k is None or merged.num_rows == 0 or int(rows.sum()) == 0:
        _empty_result(spec, None, allow_empty=False)
    assert k is not None
    null = merged.column("batch").is_null().to_numpy(zero_copy_only=False)
    if null.any():
        raise InvalidValueError(
            f"batch column {batch_col!r} is null in {int(rows[null].sum())} row(s); "
            "every row needs a batch value (fill or filter the nulls first)"
        )
    merged = merged.take(pc.sort_indices(merged, sort_keys=[("batch", "ascending")]))
    count = merged.column("count").combine_chunks()
    lengths = pc.list_value_length(count).to_numpy(zero_copy_only=False)
    fields = [list_matrix(merged.column(f).combine_chunks(), lengths, k) for f in _MOMENTS]
    values = merged.column("batch").combine_chunks()
    return BatchTable(values, merged.column("rows").to_numpy(), *fields)


def _worst_table_amplification(t: BatchTable, pivot: np.ndarray) -> float:
    """:func:`_worst_amplification` over every batch value at once."""
    has = t.count > 0
    if not has.any():
        return 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        off = (t.shift + t.delta - pivot)[has]
        var = (t.m2 / t.count)[has]
        f = np.where(off == 0.0, 1.0, 1.0 + off * off / var)
    return max(1.0, float(np.max(np.where(np.isnan(f), np.inf, f))))


# ---- the driver-side fold ----------------------------------------------------------------
def _fold_arrow_partials(
    found: tuple[list[PartitionMoments], int | None],
    spec: InputSpec,
    given: np.ndarray | None,
    *,
    batch_col: str | None,
    allow_empty: bool,
) -> tuple[BatchMoments, int, int]:
    partials, maybe_k = found
    if maybe_k is None:
        if not partials:
            return (*_empty_result(spec, given, allow_empty), 0)
        assert spec.input_col is not None
        check_dims(spec.input_col, None, None)
    k = int(maybe_k)  # type: ignore[arg-type]
    return _fold_or_empty(partials, k, spec, given, batch_col=batch_col, allow_empty=allow_empty)


def _fold_or_empty(
    partials: list[PartitionMoments],
    k: int,
    spec: InputSpec,
    given: np.ndarray | None,
    *,
    batch_col: str | None,
    allow_empty: bool,
) -> tuple[BatchMoments, int, int]:
    if not partials or sum(p.rows for p in partials) == 0:
        return (*_empty_result(spec, given, allow_empty), 0)
    return _fold_by_batch(partials, k, batch_col), k, sum(p.rows for p in partials)


def _batch_order(value: Any) -> tuple[int, Any]:
    # NaN batch values group together in Spark; order them last so sorting stays total.
    if isinstance(value, float) and math.isnan(value):
        return (1, 0.0)
    return (0, value)


def _fold_by_batch(partials: list[PartitionMoments], k: int, batch_col: str | None) -> BatchMoments:
    """Merge the partials of each batch value, in (batch value, partition) order."""
    if batch_col is not None:
        nulls = [p for p in partials if p.batch is None]
        if nulls:
            raise InvalidValueError(
                f"batch column {batch_col!r} is null in {sum(p.rows for p in nulls)} row(s); "
                "every row needs a batch value (fill or filter the nulls first)"
            )
    partials = sorted(partials, key=lambda p: (_batch_order(p.batch), p.partition))
    out: BatchMoments = []
    i = 0
    while i < len(partials):
        j, order = i, _batch_order(partials[i].batch)
        while j < len(partials) and _batch_order(partials[j].batch) == order:
            j += 1
        out.append((partials[i].batch, Moments.merge_all([p.moments for p in partials[i:j]], k)))
        i = j
    return out


def _empty_result(
    spec: InputSpec, shift: np.ndarray | None, allow_empty: bool
) -> tuple[BatchMoments, int]:
    what = list(spec.cols) if spec.kind == "scalar" else spec.input_col
    if not allow_empty:
        raise EmptyInputError(f"the input DataFrame has no rows (features {what!r})")
    if spec.kind == "scalar":
        return [], len(spec.cols)
    if shift is None:
        raise EmptyInputError(
            f"the input DataFrame has no rows, so the dimension of {what!r} is unknown; "
            "pass shift (one value per element) to accept empty input"
        )
    return [], int(shift.shape[0])
