"""The ``arrow`` engine's normalization: one ``mapInArrow`` pass (or an Arrow UDF for an
array column; an ml vector column is read as its Arrow struct, no ``vector_to_array``)
closed over plain numpy arrays (never over a session or an estimator), computing with
``pyarrow.compute`` ``subtract`` / ``divide`` (IEEE float64, nulls kept). This is the same
arithmetic as the pure-numpy serving path. The moments are in :mod:`.arrow`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import mxnorm_spark.spark_extra  # noqa: F401  (before pyspark: names the [spark] extra if missing)

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mxnorm_spark.core.errors import FeatureMismatchError, InvalidValueError
from mxnorm_spark.engines.columns import (
    ARRAY_COL,
    InputSpec,
    quote,
    rows_to_keep,
    vector_lists,
    vectors_of_lists,
)
from mxnorm_spark.engines.constants import Constants, invalid_value_message, vector_length_message
from mxnorm_spark.engines.workers import map_in_arrow, use_driver_python


# ---- normalization: driver side ----------------------------------------------------------
def normalize_scalars(
    df: DataFrame,
    spec: InputSpec,
    outputs: Sequence[str],
    constants: Constants,
    *,
    check: bool,
) -> DataFrame:
    """``(x - mean) / scale`` per scalar column in one ``mapInArrow``; with ``check`` an
    invalid value fails the job, naming the column."""
    xs = spec.scalar_doubles()
    # One mapInArrow over the whole row: measured faster than one Arrow UDF per column,
    # whose results Spark must join back to rows it buffers on the side. Only inputs that
    # are not double yet are cast (in the JVM) into temporary columns; outputs replace a
    # column of the same name or are appended, so no column crosses to Python twice.
    cast = {
        f"__mx_in{j}": x
        for j, (c, x) in enumerate(zip(spec.cols, xs, strict=True))
        if not isinstance(df.schema[c].dataType, T.DoubleType)
    }
    staged = df.withColumns(cast) if cast else df
    names = staged.columns
    fields = list(staged.schema.fields)
    columns = []
    for j, (c, o) in enumerate(zip(spec.cols, outputs, strict=True)):
        source = names.index(f"__mx_in{j}" if f"__mx_in{j}" in cast else c)
        field = T.StructField(o, T.DoubleType(), True)
        if o in names:
            index = names.index(o)
            fields[index] = field
        else:
            index = len(fields)
            fields.append(field)
        columns.append(
            _column_to_normalize(
                names, constants, source=source, index=index, column=c, is_list=False, feature=j
            )
        )
    schema = T.StructType(fields)
    kernel = _normalize_kernel(columns, [f.name for f in fields], check)
    return map_in_arrow(staged, kernel, schema).drop(*cast)


def normalize_vector(
    df: DataFrame,
    spec: InputSpec,
    output: str,
    constants: Constants,
    *,
    check: bool,
) -> DataFrame:
    """Normalize the :data:`ARRAY_COL` column (array input; vectors take
    :func:`normalize_vectors`) of ``df`` in Python; a null row stays null (fails with
    ``check``), a row of another length fails."""
    assert spec.input_col is not None
    name = spec.input_col
    a = F.col(ARRAY_COL)
    order = [c for c in df.columns if c != ARRAY_COL]
    # Normalizing in place, the input column is no longer needed once copied to ARRAY_COL.
    rest = df.drop(name) if output == name else df
    if not any(isinstance(f.dataType, T.UserDefinedType) for f in rest.schema.fields):
        # An Arrow UDF ships only the list column to Python (mapInArrow ships every column
        # both ways: measured ~6x slower with list columns); Spark's Arrow UDFs refuse
        # plans that carry a UDT (vector) column, so this needs none left.
        use_driver_python(df.sparkSession)
        udf = _list_arrow_udf(constants, name, check)
        done = rest.withColumn(ARRAY_COL, udf(*_list_udf_args(a, constants)))
    else:
        names = df.columns
        at = names.index(ARRAY_COL)
        column = _column_to_normalize(
            names, constants, source=at, index=at, column=name, is_list=True, feature=0
        )
        done = map_in_arrow(df, _normalize_kernel([column], names, check), df.schema)
    done = done.withColumn(output, a)
    return done.select(*[quote(c) for c in [*order, *([] if output in order else [output])]])


def normalize_vectors(
    df: DataFrame, spec: InputSpec, output: str, constants: Constants, *, check: bool, skip: bool
) -> DataFrame:
    """Normalize an ml vector column in one ``mapInArrow`` over its Arrow struct (no
    ``vector_to_array`` / ``array_to_vector``, and it works in place, where an Arrow UDF
    refuses the vector column): the output is dense (a sparse row too), a null row stays
    null (fails with ``check``), ``skip`` drops null rows and rows with an invalid value,
    a row of another length fails. ``auto`` keeps the SQL ``transform``: Spark hands the
    struct to Arrow 3-4x slower than ``vector_to_array``'s list (bench/SHAPES.md)."""
    name = str(spec.input_col)
    names, fields = df.columns, list(df.schema.fields)
    field = T.StructField(output, df.schema[name].dataType, True)
    index = names.index(output) if output in names else len(fields)
    fields[index : index + 1] = [field]
    at = names.index(name)
    column = _column_to_normalize(
        names, constants, source=at, index=index, column=name, is_list=True, feature=0
    )
    columns = [replace(column, vectors=True)]
    kernel = _normalize_kernel(columns, [f.name for f in fields], check, skip)
    return map_in_arrow(df, kernel, T.StructType(fields))


def _list_udf_args(a: Column, constants: Constants) -> list[Column]:
    if constants.mean is not None:
        return [a]
    return [a, F.col(str(constants.mean_col)), F.col(str(constants.scale_col))]


def _list_arrow_udf(constants: Constants, column: str, check: bool) -> Any:
    """An Arrow UDF normalizing one ``list<double>`` column (closed over plain numpy)."""
    from pyspark.sql.pandas.functions import arrow_udf

    literal = constants.mean is not None
    target = _ColumnToNormalize(
        0,
        0,
        column,
        True,
        constants.n_features,
        0,
        constants.mean,
        constants.scale,
        mean_index=-1 if literal else 1,
        scale_index=-1 if literal else 2,
    )

    def normalize_with_literals(x: pa.Array) -> pa.Array:
        return _normalize_list_array(target, x, None, check)

    def normalize_with_row_constants(x: pa.Array, m: pa.Array, s: pa.Array) -> pa.Array:
        rb = pa.RecordBatch.from_arrays([x, m, s], names=["x", "m", "s"])
        return _normalize_list_array(target, x, rb, check)

    kernel = normalize_with_literals if literal else normalize_with_row_constants
    return arrow_udf(kernel, T.ArrayType(T.DoubleType()))  # type: ignore[call-overload]


# ---- normalization: the kernels (run in the Python workers) ------------------------------
@dataclass(frozen=True)
class _ColumnToNormalize:
    """One column the Arrow pass computes, and where its constants come from.

    It reads column ``source`` of the batch and writes output column ``index`` (an
    existing position is replaced, a new one appended). ``mean``/``scale`` are plain numpy
    (literal constants, sliced to the feature(s) of this column); otherwise
    ``mean_index``/``scale_index`` locate per-row ``list<double>`` columns and ``feature``
    the element of a scalar column.
    """

    source: int
    index: int
    column: str
    is_list: bool
    dim: int
    feature: int = 0
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None
    mean_index: int = -1
    scale_index: int = -1
    vectors: bool = False  # ml vectors: the Arrow struct in, dense vectors out


def _column_to_normalize(
    names: list[str],
    c: Constants,
    *,
    source: int,
    index: int,
    column: str,
    is_list: bool,
    feature: int,
) -> _ColumnToNormalize:
    if c.mean is not None and c.scale is not None:
        sl = slice(None) if is_list else slice(feature, feature + 1)
        return _ColumnToNormalize(
            source, index, column, is_list, c.n_features, feature, c.mean[sl], c.scale[sl]
        )
    return _ColumnToNormalize(
        source,
        index,
        column,
        is_list,
        c.n_features,
        feature,
        mean_index=names.index(str(c.mean_col)),
        scale_index=names.index(str(c.scale_col)),
    )


def _normalize_kernel(
    columns: list[_ColumnToNormalize], names: list[str], check: bool, skip: bool = False
) -> Any:
    """The ``mapInArrow`` function: closed over plain constants, never a session.

    ``names`` are the output columns: the input ones, then the appended outputs. ``skip``
    (one vector column only) drops its null rows and rows holding an invalid value.
    """

    def normalize_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            rb = batch
            if skip:
                (t,) = columns
                rb = rb.filter(rows_to_keep(vector_lists(rb.column(t.source)), t.dim))
            width = rb.num_columns
            arrays = list(rb.columns)
            for t in columns:
                x = rb.column(t.source)
                if t.vectors:
                    z = _normalize_list_array(t, vector_lists(x), rb, check)
                    z = vectors_of_lists(z, x.type)
                elif t.is_list:
                    z = _normalize_list_array(t, x, rb, check)
                else:
                    z = _normalize_scalar_array(t, x, rb, check)
                if t.index < width:
                    arrays[t.index] = z
                else:
                    arrays.append(z)
            yield pa.RecordBatch.from_arrays(arrays, names=names)

    return normalize_batches


def _check_finite(values: pa.Array, column: str) -> None:
    if values.null_count:
        raise InvalidValueError(invalid_value_message(column, "a null"))
    if pc.any(pc.is_nan(values)).as_py():
        raise InvalidValueError(invalid_value_message(column, "a NaN"))
    if pc.any(pc.is_inf(values)).as_py():
        raise InvalidValueError(invalid_value_message(column, "an infinite"))


def _normalize_scalar_array(
    t: _ColumnToNormalize, x: pa.Array, rb: pa.RecordBatch, check: bool
) -> pa.Array:
    if t.mean is not None and t.scale is not None:
        m: Any = pa.scalar(float(t.mean[0]))
        s: Any = pa.scalar(float(t.scale[0]))
    else:
        m = pc.list_element(rb.column(t.mean_index), t.feature)
        s = pc.list_element(rb.column(t.scale_index), t.feature)
    if check:
        _check_finite(x, t.column)
    return pc.divide(pc.subtract(x, m), s)


def _normalize_list_array(
    t: _ColumnToNormalize, lists: pa.Array, rb: pa.RecordBatch | None, check: bool
) -> pa.Array:
    dim = t.dim
    valid = lists.is_valid().to_numpy(zero_copy_only=False)
    if check and not valid.all():
        raise InvalidValueError(invalid_value_message(t.column, "a null"))
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy()
    if np.any(lengths[valid] != dim):
        raise FeatureMismatchError(vector_length_message(t.column, dim))
    flat = lists.flatten()
    if check:
        _check_finite(flat, t.column)
    rows = len(flat) // dim
    if t.mean is not None and t.scale is not None:
        m: Any = pa.array(np.tile(t.mean, rows))
        s: Any = pa.array(np.tile(t.scale, rows))
    else:
        assert rb is not None
        keep = pa.array(valid)
        m = rb.column(t.mean_index).filter(keep).flatten()
        s = rb.column(t.scale_index).filter(keep).flatten()
    out = pc.divide(pc.subtract(flat, m), s)
    offsets = np.zeros(len(lists) + 1, dtype=np.int32)
    np.cumsum(np.where(valid, dim, 0), out=offsets[1:])
    mask = None if valid.all() else pa.array(~valid)
    return pa.ListArray.from_arrays(pa.array(offsets), out, mask=mask).cast(lists.type)
