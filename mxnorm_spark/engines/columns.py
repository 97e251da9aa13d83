"""The feature input of a DataFrame, the SQL text the engines build, and the validity test.

Input columns may be scalar numeric columns (byte, short, int, long, float, double,
decimal: read as float64), or one ``pyspark.ml.linalg`` vector or numeric array column
whose rows all have the same length. :func:`resolve_input` checks them against the schema
and raises a named error before any Spark job.

Invalid values (null, NaN, +/-inf) never enter the moments. A value is valid when it is
*finite*: :func:`is_finite` (a Column) and :func:`sql_is_finite` (SQL text) are the one
test both engines and the normalization share.

The option sets ``ENGINES`` and ``HANDLE_INVALID`` are defined in
:mod:`mxnorm_spark.core.choices` (no Spark import) and re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import mxnorm_spark.spark_extra  # noqa: F401  (before pyspark: names the [spark] extra if missing)

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mxnorm_spark.core.choices import ENGINES, HANDLE_INVALID, WIDE_FEATURES, Engine, check_choice
from mxnorm_spark.core.errors import (
    EmptyInputError,
    FeatureMismatchError,
    InvalidParameterError,
    MissingColumnError,
    NonNumericError,
)

__all__ = [
    "ARRAY_COL",
    "ENGINES",
    "FLOAT64_MAX",
    "HANDLE_INVALID",
    "WIDE_FEATURES",
    "Engine",
    "InputSpec",
    "check_batch_col",
    "check_dims",
    "check_engine",
    "feature_names",
    "is_finite",
    "quote",
    "resolve_input",
    "rows_to_keep",
    "sql_constant",
    "sql_double",
    "sql_finite_or_null",
    "sql_is_finite",
    "sql_name",
    "sql_values",
    "to_vector",
    "vector_lists",
    "vector_names",
    "vectors_of_lists",
]

FLOAT64_MAX = float(np.finfo(np.float64).max)
# The temporary ``array<double>`` column holding a vector/array input's values.
ARRAY_COL = "__mx_arr"


# ---- input resolution (schema only: no Spark job) ----------------------------------------
def quote(name: str) -> Column:
    """A column reference that takes ``name`` literally (dots, spaces, backticks)."""
    return F.col("`" + name.replace("`", "``") + "`")


@dataclass(frozen=True)
class InputSpec:
    """What the feature input of a DataFrame is: scalar columns, or one vector/array column."""

    kind: Literal["scalar", "vector", "array"]
    cols: tuple[str, ...]
    input_col: str | None = None

    def as_double_array(self) -> Column:
        """The vector/array column as ``array<double>`` (null rows stay null)."""
        from pyspark.ml.functions import vector_to_array

        assert self.input_col is not None
        c = quote(self.input_col)
        if self.kind == "vector":
            # vector_to_array fails on a null vector instead of returning null.
            return F.when(c.isNotNull(), vector_to_array(c))
        return c.cast(T.ArrayType(T.DoubleType()))

    def scalar_doubles(self) -> list[Column]:
        # SQL text: one py4j call per column; Column.cast(DoubleType()) takes about 30.
        return [F.expr(x) for x in sql_values(self, len(self.cols))]


_NUMERIC = (
    T.ByteType,
    T.ShortType,
    T.IntegerType,
    T.LongType,
    T.FloatType,
    T.DoubleType,
    T.DecimalType,
)


def _is_numeric(dt: T.DataType) -> bool:
    return isinstance(dt, _NUMERIC)


def resolve_input(df: DataFrame, cols: Sequence[str] | None, input_col: str | None) -> InputSpec:
    """Check the feature columns against the schema; raise a named error before any job."""
    fields = {f.name: f.dataType for f in df.schema.fields}
    if (cols is None) == (input_col is None):
        raise InvalidParameterError(
            "give exactly one of cols (scalar numeric columns) or input_col (one vector or "
            f"array column); got cols={cols!r}, input_col={input_col!r}"
        )
    if input_col is not None:
        return _resolve_vector_input(fields, input_col)
    if isinstance(cols, str):
        raise InvalidParameterError(
            f"cols must be a list of column names, got the string {cols!r}; use [{cols!r}]"
        )
    names = tuple(cols)  # type: ignore[arg-type]
    if not names:
        raise InvalidParameterError("cols must name at least one column")
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise InvalidParameterError(f"cols must be unique; repeated: {dup}")
    missing = [c for c in names if c not in fields]
    if missing:
        raise MissingColumnError(missing, list(fields))
    bad = [f"{c!r} ({fields[c].simpleString()})" for c in names if not _is_numeric(fields[c])]
    if bad:
        raise NonNumericError(
            f"column(s) {', '.join(bad)} are not numeric; MXNorm reads byte, short, int, "
            "long, float, double and decimal columns. Cast or drop them, or assemble "
            "vectors with input_col=..."
        )
    return InputSpec("scalar", names)


def _resolve_vector_input(fields: dict[str, T.DataType], input_col: str) -> InputSpec:
    from pyspark.ml.linalg import VectorUDT

    if not isinstance(input_col, str):
        raise InvalidParameterError(f"input_col must be a column name, got {input_col!r}")
    if input_col not in fields:
        raise MissingColumnError([input_col], list(fields))
    dt = fields[input_col]
    if isinstance(dt, VectorUDT):
        return InputSpec("vector", (), input_col)
    if isinstance(dt, T.ArrayType) and _is_numeric(dt.elementType):
        return InputSpec("array", (), input_col)
    raise NonNumericError(
        f"input_col {input_col!r} has type {dt.simpleString()}; expected a "
        "pyspark.ml.linalg vector or an array of numbers. For scalar columns pass cols=[...]"
    )


def check_engine(
    engine: str, kind: str = "scalar", *, moments: bool = False, features: int = 0
) -> Literal["arrow", "sql"]:
    """Validate ``engine`` and resolve ``auto`` to the engine measured faster.

    That is ``sql``, except for the moments of a vector or array column, where one numpy
    reshape per Arrow batch beats one ``get(array, i)`` aggregate per element, and of
    more than 32 scalar columns, past which Spark compiles no whole-stage code for the
    aggregation (bench/full/RESULTS.md, wide256).
    """
    check_choice("engine", engine, ENGINES)
    if engine == "auto":
        return "arrow" if moments and (kind != "scalar" or features > WIDE_FEATURES) else "sql"
    return "arrow" if engine == "arrow" else "sql"


def check_batch_col(df: DataFrame, batch_col: str) -> None:
    """``batch_col`` exists and is an ordered scalar type."""
    fields = {f.name: f.dataType for f in df.schema.fields}
    if not isinstance(batch_col, str) or batch_col not in fields:
        raise MissingColumnError([str(batch_col)], list(fields))
    dt = fields[batch_col]
    if not isinstance(dt, T.AtomicType) or isinstance(dt, (T.BinaryType, T.BooleanType)):
        raise InvalidParameterError(
            f"batch column {batch_col!r} has type {dt.simpleString()}; it must be an ordered "
            "scalar (number, string, date or timestamp)"
        )


def vector_names(input_col: str, dim: int) -> list[str]:
    return [f"{input_col}[{i}]" for i in range(dim)]


def feature_names(
    df: DataFrame, cols: Sequence[str] | None = None, input_col: str | None = None
) -> list[str]:
    """Feature names: ``cols`` as given, or ``input_col[i]`` for each vector/array element.

    For a vector or array column the dimension is read from the data (one small
    aggregation of the row lengths); rows of different lengths raise
    :class:`FeatureMismatchError`, and no non-null row raises :class:`EmptyInputError`.
    """
    spec = resolve_input(df, cols, input_col)
    if spec.kind == "scalar":
        return list(spec.cols)
    assert spec.input_col is not None
    n = F.size(spec.as_double_array())
    row = df.agg(F.min(n).alias("lo"), F.max(n).alias("hi")).collect()[0]
    dim = check_dims(spec.input_col, row["lo"], row["hi"])
    return vector_names(spec.input_col, dim)


def check_dims(input_col: str, lo: int | None, hi: int | None) -> int:
    """The one row length ``lo == hi`` of ``input_col``, else a named error."""
    if lo is None or hi is None:
        raise EmptyInputError(
            f"input_col {input_col!r} has no non-null row, so its dimension is unknown; "
            "fit on data where it has values"
        )
    if lo != hi:
        raise FeatureMismatchError(
            f"input_col {input_col!r} holds vectors of varying length ({lo} to {hi}); every "
            "row must have the same number of elements"
        )
    if lo == 0:
        raise FeatureMismatchError(f"input_col {input_col!r} holds empty vectors")
    return int(lo)


def to_vector(arr: Column) -> Column:
    """``array<double>`` to a dense ml vector; null stays null (``array_to_vector`` fails)."""
    from pyspark.ml.functions import array_to_vector

    return F.when(arr.isNotNull(), array_to_vector(arr))


# ---- ml vectors as Arrow hands them over ------------------------------------------------
# Spark gives a Python worker a VectorUDT column as its SQL struct: type (int8, 0 sparse,
# 1 dense), size (int32, sparse only), indices (list<int32>, sparse only) and values
# (list<double>). Reading it so skips vector_to_array / array_to_vector, which cost more
# than the arithmetic (bench/SHAPES.md).
def vector_lists(vectors: pa.Array) -> pa.Array:
    """Every vector's values as one dense ``list<double>`` row (a sparse row densified to
    its size; a null vector stays null). Zero-copy when every row is a dense vector."""
    if isinstance(vectors, pa.ChunkedArray):
        vectors = vectors.combine_chunks()
    if not vectors.null_count and pc.all(pc.equal(vectors.field("type"), 1)).as_py():
        return vectors.field("values")
    valid = vectors.is_valid().to_numpy(zero_copy_only=False)
    present = vectors.filter(pa.array(valid))
    dense = present.field("type").to_numpy(zero_copy_only=False) == 1
    values = present.field("values")
    nnz = pc.fill_null(pc.list_value_length(values), 0).to_numpy(zero_copy_only=False)
    sizes = pc.fill_null(present.field("size"), 0).to_numpy(zero_copy_only=False)
    lengths = np.where(dense, nnz, sizes).astype(np.int64)
    starts = np.cumsum(lengths) - lengths
    # Where each stored value goes in its dense row: its place (dense) or its index (sparse).
    at = np.arange(int(nnz.sum())) - np.repeat(np.cumsum(nnz) - nnz, nnz)
    sparse = np.repeat(~dense, nnz)
    at[sparse] = present.field("indices").flatten().to_numpy(zero_copy_only=False)
    flat = np.zeros(int(lengths.sum()))
    flat[np.repeat(starts, nnz) + at] = values.flatten().to_numpy(zero_copy_only=False)
    row_lengths = np.zeros(len(vectors), dtype=np.int64)
    row_lengths[valid] = lengths
    offsets = np.concatenate([[0], np.cumsum(row_lengths)]).astype(np.int32)
    mask = None if valid.all() else pa.array(~valid)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat), mask=mask)


def rows_to_keep(lists: pa.Array, dim: int) -> pa.Array:
    """The ``list<double>`` rows that ``handle_invalid='skip'`` keeps: not null, and all
    finite or of another length than ``dim`` (which then fails)."""
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False)
    bad = ~np.isfinite(lists.flatten().to_numpy(zero_copy_only=False))
    owner = np.repeat(np.arange(len(lists)), lengths)
    invalid = np.bincount(owner[bad], minlength=len(lists)) > 0
    valid = lists.is_valid().to_numpy(zero_copy_only=False)
    return pa.array(valid & ((lengths != dim) | ~invalid))


def vectors_of_lists(lists: pa.Array, vector_type: pa.StructType) -> pa.StructArray:
    """Dense vectors (``vector_type``: the struct Spark gave) of ``list<double>`` rows;
    a null row stays null."""
    n, fields = len(lists), list(vector_type)
    arrays = [
        pa.array(np.ones(n, dtype=np.int8)),
        pa.nulls(n, fields[1].type),
        pa.nulls(n, fields[2].type),
        lists.cast(fields[3].type),
    ]
    mask = lists.is_null() if lists.null_count else None
    return pa.StructArray.from_arrays(arrays, fields=fields, mask=mask)


# ---- the validity test -------------------------------------------------------------------
def is_finite(x: Column) -> Column:
    """True where ``x`` is finite; false or null otherwise (NaN orders above +inf in Spark)."""
    return F.abs(x) <= F.lit(FLOAT64_MAX)


# ---- SQL text ----------------------------------------------------------------------------
# The sql engine builds its expressions as SQL text: one py4j call per expression instead of
# one per Column operation (hundreds per job), which dominated small micro-batches. Pivots
# are double literals written with repr, which round-trips every finite float64 exactly.
def sql_name(name: str) -> str:
    """``name`` as a SQL identifier (backticks doubled)."""
    return "`" + name.replace("`", "``") + "`"


def sql_double(value: float) -> str:
    """A finite float64 as an exact SQL double literal."""
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"not a finite double: {v!r}")
    return f"{v!r}D"


_SQL_FLOAT64_MAX = sql_double(FLOAT64_MAX)


def sql_constant(values: Iterable[float]) -> str:
    """An ``array<double>`` of ``values`` (finite) that the optimizer does not fold away.

    Folded constants are compiled into the generated code as literals, so code that reads
    new constants on every micro-batch is compiled again each time (tens to hundreds of
    ms). Behind a condition on ``spark_partition_id()`` (not foldable) the array stays one
    object handed to the generated code, which is then the same on every batch and
    compiled once. Project it once per row and read it with ``get(name, j)``.
    """
    return (
        "CASE WHEN spark_partition_id() >= 0 THEN "
        f"array({', '.join(sql_double(v) for v in values)}) END"
    )


def sql_is_finite(x: str) -> str:
    """:func:`is_finite` as SQL text."""
    return f"abs({x}) <= {_SQL_FLOAT64_MAX}"


def sql_finite_or_null(x: str, then: str | None = None) -> str:
    """``then`` (default ``x``) where ``x`` is finite, else null."""
    return f"CASE WHEN {sql_is_finite(x)} THEN {x if then is None else then} END"


def sql_values(spec: InputSpec, k: int, arr_col: str = ARRAY_COL) -> list[str]:
    """Per-feature float64 value expressions, over ``arr_col`` for vector/array input."""
    if spec.kind == "scalar":
        return [f"CAST({sql_name(c)} AS DOUBLE)" for c in spec.cols]
    return [f"get({arr_col}, {j})" for j in range(k)]
