"""Distributed per-feature moments of a Spark DataFrame, merged on the driver.

Only small partials reach the driver: one :class:`~mxnorm_spark.moments.Moments` per
partition (and per batch value), as typed columns, folded with ``Moments.merge`` in a fixed
order (batch value, then partition id), so the same input and partitioning give the same
bits on every run. Two engines compute the partials:

* ``sql``: one JVM aggregation ``groupBy(spark_partition_id())`` of ``count``,
  ``sum(x - p)`` and ``sum((x - p)**2)`` per feature, in coordinates shifted by a pivot
  ``p`` (the given ``shift``, else the median of the first valid values), so data such as
  ``1e9 + N(0, 1)`` keeps its digits. Where a group's mean turns out to lie more than
  ~1.7 standard deviations from ``p`` (cancellation would cost digits), a second pass
  re-centres on that mean. No Python worker is involved.
* ``arrow``: ``mapInArrow`` running :meth:`Moments.from_columns` (compensated two-pass in
  shifted coordinates) on every Arrow record batch, merged within the partition.

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

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mxnorm_spark.columns import (
    ENGINES,
    WIDE_FEATURES,
    InputSpec,
    check_batch_col,
    check_dims,
    check_engine,
    feature_names,
    quote,
    resolve_input,
    sql_double,
    sql_finite_or_null,
    sql_name,
    sql_values,
    vector_names,
)
from mxnorm_spark.errors import (
    EmptyInputError,
    FeatureMismatchError,
    InvalidParameterError,
    InvalidValueError,
)
from mxnorm_spark.moments import Moments

# Re-exported: other modules import these from here.
__all__ = [
    "ENGINES",
    "batch_moments",
    "batch_moments_and_rows",
    "check_engine",
    "feature_names",
    "moments_by_batch",
    "resolve_input",
    "sql_double",
    "vector_names",
]


# Rows read to find a pivot per feature: the median of the valid values among them.
_PIVOT_ROWS = 16


# ---- partials ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Partial:
    batch: Any
    pid: int
    rows: int
    moments: Moments


def _sort_key(value: Any) -> tuple[int, Any]:
    # NaN batch values group together in Spark; order them last so sorting stays total.
    if isinstance(value, float) and math.isnan(value):
        return (1, 0.0)
    return (0, value)


def _fold(partials: list[_Partial], k: int, batch_col: str | None) -> list[tuple[Any, Moments]]:
    if batch_col is not None:
        nulls = [p for p in partials if p.batch is None]
        if nulls:
            raise InvalidValueError(
                f"batch column {batch_col!r} is null in {sum(p.rows for p in nulls)} row(s); "
                "every row needs a batch value (fill or filter the nulls first)"
            )
    partials = sorted(partials, key=lambda p: (_sort_key(p.batch), p.pid))
    out: list[tuple[Any, Moments]] = []
    i = 0
    while i < len(partials):
        j = i
        while j < len(partials) and _sort_key(partials[j].batch) == _sort_key(partials[i].batch):
            j += 1
        out.append((partials[i].batch, Moments.merge_all([p.moments for p in partials[i:j]], k)))
        i = j
    return out


def _pivot(
    df: DataFrame, spec: InputSpec, shift: Any, first_rows: pa.Table | None = None
) -> tuple[np.ndarray, int] | None:
    """A pivot per feature and the feature count, or None when ``df`` has no row.

    Uses ``shift`` where it is finite; features without one take the median of the valid
    values among the first few rows (0 if none), read with one cheap ``limit`` job unless
    ``first_rows`` (scalar columns ``x0..`` as read by :func:`_local_probe`) has them. Any
    finite pivot gives exact moments (a far one costs a second pass, see
    :func:`_sql_partials`); one near the centre of the data saves it.
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
    if spec.kind == "scalar" and first_rows is not None:
        k = len(spec.cols)
        values = np.column_stack(
            [first_rows.column(j).to_numpy(zero_copy_only=False) for j in range(k)]
        ).astype(np.float64)
    elif spec.kind == "scalar":
        exprs = [sql_finite_or_null(x) for x in sql_values(spec, len(spec.cols))]
        got = df.selectExpr(*exprs).limit(_PIVOT_ROWS).collect()
        if not got:
            return None
        values = np.array([[np.nan if v is None else v for v in r] for r in got], dtype=float)
        k = len(spec.cols)
    else:
        arr = spec.as_double_array()
        got = df.select(arr.alias("a")).where(F.col("a").isNotNull()).limit(_PIVOT_ROWS).collect()
        if not got:
            return None
        k = len(got[0]["a"]) if given is None else int(given.shape[0])
        values = np.full((len(got), k), np.nan)
        for i, r in enumerate(got):
            vec = [np.nan if v is None else v for v in r["a"]][:k]
            values[i, : len(vec)] = vec
    values[~np.isfinite(values)] = np.nan
    has = ~np.isnan(values).all(axis=0)
    first = np.zeros(k)
    if has.any():
        # The median of a few values: not thrown far off by one outlier among them.
        first[has] = np.nanmedian(values[:, has], axis=0)
    if given is not None:
        first = np.where(np.isfinite(given), given, first)
    return first, k


# A pivot p off the mean by more than sqrt(_MAX_AMPLIFICATION - 1) standard deviations
# gets a second pass with p = mean. The shifted sums lose log10(1 + (mean - p)**2 / var)
# digits to cancellation, at most 0.6 at 4: with the rounding of a sequential sum over
# millions of rows that is still ~1e-13 of the variance (an estimate; the tests check
# 1e-12 against exact arithmetic).
_MAX_AMPLIFICATION = 4.0


def _amplification(groups: list[tuple[Any, Moments]], pivots: dict[Any, np.ndarray]) -> float:
    """The worst cancellation factor ``1 + (mean - p)**2 / var`` over groups and features."""
    worst = 1.0
    for batch, m in groups:
        has = m.count > 0
        if not has.any():
            continue
        off = (m.mean - pivots[_hashable(batch)])[has]
        var = m.var[has]
        with np.errstate(divide="ignore", invalid="ignore"):
            f = np.where(off == 0.0, 1.0, 1.0 + off * off / var)
        worst = max(worst, float(np.max(np.where(np.isnan(f), np.inf, f))))
    return worst


def _sql_partials(
    df: DataFrame,
    spec: InputSpec,
    pivot: np.ndarray | dict[Any, np.ndarray],
    batch_col: str | None,
    k: int,
    *,
    checked: bool,
) -> list[_Partial] | None:
    """One JVM aggregation per partition (and batch value) of count, sum(d) and sum(d*d).

    ``d = x - p`` for a pivot ``p`` per feature: one array for all rows, or (with a batch
    column) one per batch value, joined in. Shifted sums are exact while ``p`` is within
    a few standard deviations of the mean (checked by the caller), and cost a fraction
    of ``var_pop``'s division per row.

    ``checked=False`` is the fast path for scalar columns: raw values, one row count and
    one "any null" flag instead of a validity test and a count per feature (together
    measured 10-20% of the aggregation's time). It returns None when a null, NaN or
    infinite value (or an overflow) shows, and the caller runs the checked pass.
    """
    base = df
    if spec.kind != "scalar":
        base = base.withColumn("__mx_arr", spec.as_double_array())
    keys = ["spark_partition_id() AS __mx_pid"]
    if batch_col is not None:
        keys.insert(0, f"{sql_name(batch_col)} AS __mx_batch")
    if isinstance(pivot, dict):
        assert batch_col is not None
        base = _join_pivots(base, batch_col, pivot, k)
        pivots = [f"__mx_p{j}" for j in range(k)]
    else:
        pivots = [sql_double(p) for p in pivot]
    values = sql_values(spec, k)
    assert checked or spec.kind == "scalar"
    group = ["__mx_pid"] if batch_col is None else ["__mx_batch", "__mx_pid"]
    sized = spec.kind != "scalar"
    rows: list[dict[str, Any]] | None
    if k > WIDE_FEATURES:
        rows = _long_aggregate(base, keys, group, values, pivots, sized=sized)
    else:
        nulls = [] if checked else list(spec.cols)
        rows = _wide_aggregate(base, keys, group, values, pivots, sized=sized, nulls=nulls)
        if rows is None:
            return None
    partials = []
    for r in rows:
        if spec.kind != "scalar" and r["__mx_hi"] is not None:
            assert spec.input_col is not None
            if r["__mx_lo"] != r["__mx_hi"] or r["__mx_hi"] != k:
                lo, hi = min(r["__mx_lo"], k), max(r["__mx_hi"], k)
                check_dims(spec.input_col, lo, hi)
        batch = r["__mx_batch"] if batch_col is not None else None
        p = pivot[_hashable(batch)] if isinstance(pivot, dict) else pivot
        cnt = np.array([r[f"n{j}"] for j in range(k)], dtype=np.float64)
        has = cnt > 0
        s1 = np.array([r[f"s{j}"] if h else 0.0 for j, h in enumerate(has)], dtype=float)
        s2 = np.array([r[f"q{j}"] if h else 0.0 for j, h in enumerate(has)], dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            delta = np.where(has, s1 / cnt, 0.0)
            m2 = np.where(has, np.maximum(s2 - s1 * delta, 0.0), 0.0)
        mom = Moments(count=cnt, shift=p, delta=delta, m2=m2)
        partials.append(_Partial(batch, int(r["__mx_pid"]), int(r["__mx_rows"]), mom))
    return partials


def _wide_aggregate(
    base: DataFrame,
    keys: list[str],
    group: list[str],
    values: list[str],
    pivots: list[str],
    *,
    sized: bool,
    nulls: list[str],
) -> list[dict[str, Any]] | None:
    """One row per group key: ``__mx_rows`` and ``n{j}``, ``s{j}``, ``q{j}`` per feature.

    With ``nulls`` (the scalar columns) the values are not tested: one "any null" flag
    replaces the per-feature counts, and None comes back when a null, NaN or inf shows.
    """
    k = len(values)
    checked = not nulls
    shifted = [
        (sql_finite_or_null(x, f"{x} - {p}") if checked else f"{x} - {p}") + f" AS __mx_d{j}"
        for j, (x, p) in enumerate(zip(values, pivots, strict=True))
    ]
    extra = ["size(__mx_arr) AS __mx_size"] if sized else []
    if not checked:
        extra.append(" OR ".join(f"{sql_name(c)} IS NULL" for c in nulls) + " AS __mx_null")
    projected = base.selectExpr(*keys, *extra, *shifted)
    aggs = ["count(1) AS __mx_rows"]
    if sized:
        aggs += ["min(__mx_size) AS __mx_lo", "max(__mx_size) AS __mx_hi"]
    if not checked:
        aggs.append("bool_or(__mx_null) AS __mx_null")
    for j in range(k):
        d = f"__mx_d{j}"
        aggs += [f"sum({d}) AS s{j}", f"sum({d} * {d}) AS q{j}"]
        if checked:
            aggs.append(f"count({d}) AS n{j}")
    got = projected.groupBy(*group).agg(*[F.expr(a) for a in aggs]).collect()
    rows = [r.asDict() for r in got]
    if checked:
        return rows
    for r in rows:
        if r["__mx_null"] or not all(math.isfinite(r[f"{c}{j}"]) for j in range(k) for c in "sq"):
            return None
        r.update({f"n{j}": r["__mx_rows"] for j in range(k)})
    return rows


def _long_aggregate(
    base: DataFrame,
    keys: list[str],
    group: list[str],
    values: list[str],
    pivots: list[str],
    *,
    sized: bool,
) -> list[dict[str, Any]]:
    """As :func:`_wide_aggregate` (values tested), from one row per group key and feature."""
    shifted = [sql_finite_or_null(x, f"{x} - {p}") for x, p in zip(values, pivots, strict=True)]
    extra = ["size(__mx_arr) AS __mx_size"] if sized else []
    exploded = base.selectExpr(
        *keys, *extra, f"posexplode(array({', '.join(shifted)})) AS (__mx_j, __mx_d)"
    )
    aggs = ["count(1) AS rows", "count(__mx_d) AS n", "sum(__mx_d) AS s"]
    aggs.append("sum(__mx_d * __mx_d) AS q")
    if sized:
        aggs += ["min(__mx_size) AS lo", "max(__mx_size) AS hi"]
    got = exploded.groupBy(*group, "__mx_j").agg(*[F.expr(a) for a in aggs]).collect()
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in got:
        key = tuple(_hashable(r[g]) for g in group)
        row = out.setdefault(key, {g: r[g] for g in group} | {"__mx_rows": r["rows"]})
        j = r["__mx_j"]
        row[f"n{j}"], row[f"s{j}"], row[f"q{j}"] = r["n"], r["s"], r["q"]
        if sized:  # the same rows under every feature index
            row["__mx_lo"], row["__mx_hi"] = r["lo"], r["hi"]
    return list(out.values())


def _join_pivots(df: DataFrame, batch_col: str, pivots: dict[Any, np.ndarray], k: int) -> DataFrame:
    """``df`` with columns ``__mx_p0..`` holding its batch's pivots (a broadcast join)."""
    batch_type = df.schema[batch_col].dataType
    schema = T.StructType(
        [T.StructField("__mx_key", batch_type, True)]
        + [T.StructField(f"__mx_p{j}", T.DoubleType(), False) for j in range(k)]
    )
    keys = {_hashable(b): b for b in pivots}
    rows = [(keys[h], *map(float, p)) for h, p in pivots.items()]
    table = df.sparkSession.createDataFrame(rows, schema)
    joined = df.join(F.broadcast(table), quote(batch_col).eqNullSafe(F.col("__mx_key")))
    return joined.drop("__mx_key")


def _arrow_source(df: DataFrame, spec: InputSpec, batch_col: str | None) -> DataFrame:
    """The columns the Arrow kernel reads: ``__mx_batch``, then ``x0..`` or ``__mx_arr``."""
    selected: list[Column] = []
    if batch_col is not None:
        selected.append(quote(batch_col).alias("__mx_batch"))
    if spec.kind == "scalar":
        selected += [c.alias(f"x{j}") for j, c in enumerate(spec.scalar_doubles())]
    else:
        selected.append(spec.as_double_array().alias("__mx_arr"))
    return df.select(*selected)


def _arrow_partials(
    df: DataFrame, spec: InputSpec, shift: np.ndarray | None, batch_col: str | None
) -> tuple[list[_Partial], int | None]:
    """``mapInArrow``: numpy moments per record batch, one typed row per partition and batch."""
    src = _arrow_source(df, spec, batch_col)
    batch_type = src.schema["__mx_batch"].dataType if batch_col is not None else None
    dbl = T.ArrayType(T.DoubleType(), containsNull=False)
    out_fields = [
        T.StructField("pid", T.IntegerType(), False),
        T.StructField("rows", T.LongType(), False),
        T.StructField("lo", T.IntegerType(), True),
        T.StructField("hi", T.IntegerType(), True),
        T.StructField("count", dbl, False),
        T.StructField("shift", dbl, False),
        T.StructField("delta", dbl, False),
        T.StructField("m2", dbl, False),
    ]
    if batch_type is not None:
        out_fields.insert(0, T.StructField("batch", batch_type, True))
    schema = T.StructType(out_fields)
    fn = _arrow_moments_fn(spec.kind == "scalar", shift, batch_col is not None)
    rows = src.mapInArrow(fn, schema).collect()
    return _read_partials([r.asDict() for r in rows], spec, shift, batch_col is not None)


def _read_partials(
    rows: list[dict[str, Any]], spec: InputSpec, shift: np.ndarray | None, by_batch: bool
) -> tuple[list[_Partial], int | None]:
    """The Arrow kernel's partial rows as :class:`_Partial`, and the feature count."""
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
        partials.append(_Partial(batch, int(r["pid"]), int(r["rows"]), mom))
    return partials, k


# Inputs of at most this many values are computed on the driver by ``auto``: one small
# ``collect`` and numpy, instead of a distributed job of two stages (a micro-batch of 1k
# rows: ~50 ms instead of ~250 ms, measured). Rows cross py4j as Python objects, so the
# limit stays small.
_LOCAL_VALUES = 32_768


def _local_probe(
    df: DataFrame, spec: InputSpec, shift: np.ndarray | None
) -> tuple[list[_Partial], int | None] | pa.Table:
    """The partials of a small input computed on the driver, else its first rows.

    One ``limit`` job (it reads the first partition, more only if that is short) takes up
    to the local size plus one row. When that is all of ``df`` the Arrow kernel of the
    ``arrow`` engine runs here on the driver (same numbers as a one-partition
    ``mapInArrow``); otherwise the rows read come back as a table, for a pivot.
    """
    # Vector dimensions are unknown before reading: count 64 values per row.
    width = len(spec.cols) if spec.kind == "scalar" else 64
    limit = max(_PIVOT_ROWS, _LOCAL_VALUES // width)
    src = _arrow_source(df, spec, None)
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
    fn = _arrow_moments_fn(spec.kind == "scalar", shift, False)
    out = list(fn(iter(table.to_batches())))
    partials = pa.Table.from_batches(out).to_pylist() if out else []
    return _read_partials(partials, spec, shift, False)


def _arrow_moments_fn(
    scalar: bool, shift: np.ndarray | None, by_batch: bool
) -> Any:  # the mapInArrow function; closed over plain numpy values only
    def matrix(rb: pa.RecordBatch) -> tuple[np.ndarray, int | None]:
        """Features x rows float64 (invalid -> NaN) and the row length of vector input."""
        start = 1 if by_batch else 0
        if scalar:
            cols = [
                rb.column(j).to_numpy(zero_copy_only=False) for j in range(start, rb.num_columns)
            ]
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

    def moments_of(rb: pa.RecordBatch) -> tuple[Moments | None, int | None]:
        mat, dim = matrix(rb)
        if mat.shape[1] == 0 and not scalar:
            return None, None
        if shift is not None and mat.shape[0] != shift.shape[0]:
            raise _VaryingLength(
                min(mat.shape[0], shift.shape[0]), max(mat.shape[0], shift.shape[0])
            )
        return Moments.from_columns(mat, shift), dim

    def fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        pid = ctx.partitionId() if ctx is not None else 0
        acc: dict[Any, list[Any]] = {}  # key -> [batch value, rows, lo, hi, moments]
        batch_type = None
        try:
            for rb in batches:
                if rb.num_rows == 0:
                    continue
                if by_batch:
                    batch_type = rb.schema.field(0).type
                    enc = pc.dictionary_encode(rb.column(0), null_encoding="encode")
                    codes = enc.indices.to_numpy(zero_copy_only=False)
                    keys = enc.dictionary.to_pylist()
                    groups = _split_by_code(rb, codes, keys)
                else:
                    groups = [(None, rb)]
                for key, part in groups:
                    mom, dim = moments_of(part)
                    slot = acc.setdefault(_hashable(key), [key, 0, None, None, None])
                    slot[1] += part.num_rows
                    if dim is not None:
                        slot[2] = dim if slot[2] is None else min(slot[2], dim)
                        slot[3] = dim if slot[3] is None else max(slot[3], dim)
                    if mom is not None:
                        if slot[4] is not None and slot[4].n_features != mom.n_features:
                            raise _VaryingLength(slot[4].n_features, mom.n_features)
                        slot[4] = mom if slot[4] is None else slot[4].merge(mom)
        except _VaryingLength as exc:
            # Report it as a partial row so the driver raises the named error.
            yield _partial_batch(by_batch, batch_type, [[None, 0, exc.lo, exc.hi, None]], pid)
            return
        if acc:
            yield _partial_batch(by_batch, batch_type, list(acc.values()), pid)

    return fn


def _split_by_code(
    rb: pa.RecordBatch, codes: np.ndarray, keys: list[Any]
) -> list[tuple[Any, pa.RecordBatch]]:
    """The rows of each batch value, in one stable sort (not one filter per value)."""
    if len(keys) == 1:
        return [(keys[0], rb)]
    order = np.argsort(codes, kind="stable")
    ordered = rb.take(pa.array(order))
    sorted_codes = codes[order]
    bounds = [0, *(np.flatnonzero(np.diff(sorted_codes)) + 1).tolist(), len(order)]
    return [
        (keys[int(sorted_codes[a])], ordered.slice(a, b - a)) for a, b in itertools.pairwise(bounds)
    ]


class _VaryingLength(Exception):
    def __init__(self, lo: int, hi: int) -> None:
        super().__init__(f"{lo} != {hi}")
        self.lo, self.hi = lo, hi


def _hashable(key: Any) -> Any:
    if isinstance(key, float) and math.isnan(key):
        return ("nan",)
    return key


def _partial_batch(
    by_batch: bool, batch_type: Any, slots: list[list[Any]], pid: int
) -> pa.RecordBatch:
    def arrays(i: int) -> list[list[float]]:
        out = []
        for s in slots:
            m = s[4]
            out.append(
                [] if m is None else getattr(m, ("count", "shift", "delta", "m2")[i]).tolist()
            )
        return out

    cols: dict[str, pa.Array] = {}
    if by_batch:
        cols["batch"] = pa.array([s[0] for s in slots], type=batch_type)
    lst = pa.list_(pa.field("element", pa.float64(), nullable=False))
    cols["pid"] = pa.array([pid] * len(slots), type=pa.int32())
    cols["rows"] = pa.array([s[1] for s in slots], type=pa.int64())
    cols["lo"] = pa.array([s[2] for s in slots], type=pa.int32())
    cols["hi"] = pa.array([s[3] for s in slots], type=pa.int32())
    for i, name in enumerate(("count", "shift", "delta", "m2")):
        cols[name] = pa.array(arrays(i), type=lst)
    return pa.RecordBatch.from_pydict(cols)


# ---- public API --------------------------------------------------------------------------
def _compute(
    df: DataFrame,
    cols: Sequence[str] | None,
    input_col: str | None,
    *,
    engine: str,
    shift: Any,
    batch_col: str | None,
    allow_empty: bool,
) -> tuple[list[tuple[Any, Moments]], int, int]:
    """The moments of each batch value (or of all rows), the feature count, the row count."""
    check_engine(engine)
    spec = resolve_input(df, cols, input_col)
    eng = check_engine(engine, spec.kind, moments=True, features=len(spec.cols))
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
    first_rows = None
    if engine == "auto" and batch_col is None:
        probe = _local_probe(df, spec, given)
        if isinstance(probe, pa.Table):
            first_rows = probe
        else:
            return _finish_arrow(probe, spec, given, batch_col=None, allow_empty=allow_empty)
    if eng == "sql":
        piv = _pivot(df, spec, given, first_rows)
        if piv is None:
            return (*_empty(spec, given, allow_empty), 0)
        pivot, k = piv
        partials, checked = _sql_pass(df, spec, pivot, batch_col, k, checked=spec.kind != "scalar")
        if partials and sum(p.rows for p in partials) > 0:
            groups = _fold(partials, k, batch_col)
            if (
                _amplification(groups, {_hashable(b): pivot for b, _ in groups})
                <= _MAX_AMPLIFICATION
            ):
                return groups, k, sum(p.rows for p in partials)
            # The pivot was far from the mean: a second pass centred on each group's mean.
            centres = {_hashable(b): _centre(m, pivot) for b, m in groups}
            again: np.ndarray | dict[Any, np.ndarray]
            again = centres[_hashable(None)] if batch_col is None else centres
            partials, _ = _sql_pass(df, spec, again, batch_col, k, checked=checked)
    else:
        found = _arrow_partials(df, spec, given, batch_col)
        return _finish_arrow(found, spec, given, batch_col=batch_col, allow_empty=allow_empty)
    if not partials or sum(p.rows for p in partials) == 0:
        return (*_empty(spec, given, allow_empty), 0)
    return _fold(partials, k, batch_col), k, sum(p.rows for p in partials)


def _sql_pass(
    df: DataFrame,
    spec: InputSpec,
    pivot: np.ndarray | dict[Any, np.ndarray],
    batch_col: str | None,
    k: int,
    *,
    checked: bool,
) -> tuple[list[_Partial], bool]:
    """:func:`_sql_partials`, unchecked first unless ``checked``; the checked pass when an
    invalid value shows. Also returns whether the values had to be tested."""
    partials = None if checked else _sql_partials(df, spec, pivot, batch_col, k, checked=False)
    if partials is not None:
        return partials, False
    checked_partials = _sql_partials(df, spec, pivot, batch_col, k, checked=True)
    assert checked_partials is not None  # the checked pass never gives up
    return checked_partials, True


def _finish_arrow(
    found: tuple[list[_Partial], int | None],
    spec: InputSpec,
    given: np.ndarray | None,
    *,
    batch_col: str | None,
    allow_empty: bool,
) -> tuple[list[tuple[Any, Moments]], int, int]:
    partials, maybe_k = found
    if maybe_k is None:
        if not partials:
            return (*_empty(spec, given, allow_empty), 0)
        assert spec.input_col is not None
        check_dims(spec.input_col, None, None)
    k = int(maybe_k)  # type: ignore[arg-type]
    if not partials or sum(p.rows for p in partials) == 0:
        return (*_empty(spec, given, allow_empty), 0)
    return _fold(partials, k, batch_col), k, sum(p.rows for p in partials)


def _centre(m: Moments, pivot: np.ndarray) -> np.ndarray:
    """The group's mean as its new pivot (the old pivot where a feature has no value)."""
    return np.where(m.count > 0, m.mean, pivot)


def _empty(
    spec: InputSpec, shift: np.ndarray | None, allow_empty: bool
) -> tuple[list[tuple[Any, Moments]], int]:
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
    groups, k, rows = _compute(
        df, cols, input_col, engine=engine, shift=shift, batch_col=None, allow_empty=allow_empty
    )
    return Moments.merge_all([m for _, m in groups], k), rows


def moments_by_batch(
    df: DataFrame,
    cols: Sequence[str] | None = None,
    batch_col: str = "batch",
    *,
    input_col: str | None = None,
    engine: str = "auto",
) -> list[tuple[Any, Moments]]:
    """Moments of each distinct ``batch_col`` value, in ascending order, in one pass.

    One distributed aggregation computes every batch's partials; batches are folded on the
    driver. A null batch value raises :class:`InvalidValueError`.
    """
    groups, _, _ = _compute(
        df, cols, input_col, engine=engine, shift=None, batch_col=batch_col, allow_empty=False
    )
    return groups
