"""Normalize Spark DataFrame columns with an MXNorm state: ``(x - mean) / scale``.

``mean`` and ``scale`` are the float64 constants of
:meth:`MXNormState.normalization_constants`, so every engine gives the same bits:

* ``sql``: native column expressions with the constants as double literals (no Python
  worker; whole-stage code generation).
* ``arrow``: one ``mapInArrow`` pass closed over plain numpy arrays (never over a session
  or an estimator), computing with ``pyarrow.compute`` ``subtract`` / ``divide`` (IEEE
  float64, nulls kept). This is the same arithmetic as the pure-numpy serving path.

``auto`` picks ``sql``, except for a vector/array column with no other vector column
alongside, where one Arrow UDF is faster (README ``### Engines``).

``handle_invalid`` decides what happens to null, NaN and +/-inf input values:

* ``keep`` (default): null stays null, NaN stays NaN, +/-inf gives +/-inf;
* ``error``: the job fails with a message naming the column and the value kind (null,
  NaN or infinite); Spark raises it when the rows are evaluated (lazily, at the action);
* ``skip``: rows with any invalid input value are dropped.

A vector/array row whose length differs from the state's feature count always fails.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mxnorm_spark.choices import check_choice
from mxnorm_spark.columns import (
    HANDLE_INVALID,
    InputSpec,
    check_engine,
    is_finite,
    quote,
    resolve_input,
    sql_double,
    sql_is_finite,
    sql_name,
    sql_values,
    to_vector,
)
from mxnorm_spark.errors import (
    FeatureMismatchError,
    InvalidParameterError,
    InvalidValueError,
    MissingColumnError,
)
from mxnorm_spark.state import MXNormState

_VECTOR_FEATURE = re.compile(r"^(.*)\[(\d+)\]$")


def _default_input(df: DataFrame, features: Sequence[str]) -> tuple[list[str] | None, str | None]:
    """The state's own features: scalar columns, or ``name[i]`` elements of one column."""
    names = set(df.columns)
    if all(f in names for f in features):
        return list(features), None
    parsed = [_VECTOR_FEATURE.match(f) for f in features]
    if all(parsed):
        bases = {m.group(1) for m in parsed if m}
        idx = [int(m.group(2)) for m in parsed if m]
        if len(bases) == 1 and idx == list(range(len(idx))):
            return None, bases.pop()
    return list(features), None  # resolve_input names the missing columns


def _error_message(column: str, kind: str) -> str:
    return (
        f"InvalidValueError: column {column!r} holds {kind} value and handle_invalid='error'; "
        "clean the data, or use handle_invalid='keep' (pass it through) or 'skip' (drop the row)"
    )


def _length_message(column: str, dim: int) -> str:
    return (
        f"FeatureMismatchError: column {column!r} holds a vector whose length is not {dim}, "
        f"the number of features of the MXNorm state"
    )


def _raise_if_invalid(x: Column, column: str, out: Column) -> Column:
    return (
        F.when(x.isNull(), F.raise_error(F.lit(_error_message(column, "a null"))))
        .when(F.isnan(x), F.raise_error(F.lit(_error_message(column, "a NaN"))))
        .when(~is_finite(x), F.raise_error(F.lit(_error_message(column, "an infinite"))))
        .otherwise(out)
    )


# ---- constants ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Constants:
    """The ``(mean, scale)`` of every feature: float64 literals, or per row.

    Per-row constants live in two ``array<double>`` columns of the DataFrame (one element
    per feature), as a per-batch transform joins them in.
    """

    n_features: int
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None
    mean_col: str | None = None
    scale_col: str | None = None

    @classmethod
    def literal(cls, mean: np.ndarray, scale: np.ndarray) -> Constants:
        return cls(int(mean.shape[0]), np.asarray(mean), np.asarray(scale))

    def mean_expr(self, j: int) -> Column:
        if self.mean is not None:
            return F.lit(float(self.mean[j]))
        return F.get(F.col(str(self.mean_col)), j)

    def scale_expr(self, j: int) -> Column:
        if self.scale is not None:
            return F.lit(float(self.scale[j]))
        return F.get(F.col(str(self.scale_col)), j)

    def sql(self, j: int) -> tuple[str, str]:
        """Feature ``j``'s mean and scale as SQL text (exact literals, or array elements)."""
        if self.mean is not None and self.scale is not None:
            return sql_double(self.mean[j]), sql_double(self.scale[j])
        return (
            f"get({sql_name(str(self.mean_col))}, {j})",
            f"get({sql_name(str(self.scale_col))}, {j})",
        )


# ---- arrow kernels (run in the Python workers) -------------------------------------------
def _check_arrow_values(values: pa.Array, column: str) -> None:
    if values.null_count:
        raise InvalidValueError(_error_message(column, "a null"))
    if pc.any(pc.is_nan(values)).as_py():
        raise InvalidValueError(_error_message(column, "a NaN"))
    if pc.any(pc.is_inf(values)).as_py():
        raise InvalidValueError(_error_message(column, "an infinite"))


@dataclass(frozen=True)
class _Target:
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


def _normalize_array(t: _Target, x: pa.Array, rb: pa.RecordBatch, check: bool) -> pa.Array:
    if t.mean is not None and t.scale is not None:
        m: Any = pa.scalar(float(t.mean[0]))
        s: Any = pa.scalar(float(t.scale[0]))
    else:
        m = pc.list_element(rb.column(t.mean_index), t.feature)
        s = pc.list_element(rb.column(t.scale_index), t.feature)
    if check:
        _check_arrow_values(x, t.column)
    return pc.divide(pc.subtract(x, m), s)


def _normalize_lists(
    t: _Target, lists: pa.Array, rb: pa.RecordBatch | None, check: bool
) -> pa.Array:
    dim = t.dim
    valid = lists.is_valid().to_numpy(zero_copy_only=False)
    if check and not valid.all():
        raise InvalidValueError(_error_message(t.column, "a null"))
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy()
    if np.any(lengths[valid] != dim):
        raise FeatureMismatchError(_length_message(t.column, dim))
    flat = lists.flatten()
    if check:
        _check_arrow_values(flat, t.column)
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


def _arrow_map(targets: list[_Target], names: list[str], check: bool) -> Any:
    """The ``mapInArrow`` function: closed over plain constants, never a session.

    ``names`` are the output columns: the input ones, then the appended outputs.
    """

    def fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for rb in batches:
            width = rb.num_columns
            arrays = list(rb.columns)
            for t in targets:
                x = rb.column(t.source)
                if t.is_list:
                    z = _normalize_lists(t, x, rb, check)
                else:
                    z = _normalize_array(t, x, rb, check)
                if t.index < width:
                    arrays[t.index] = z
                else:
                    arrays.append(z)
            yield pa.RecordBatch.from_arrays(arrays, names=names)

    return fn


def _target(
    names: list[str],
    c: Constants,
    *,
    source: int,
    index: int,
    column: str,
    is_list: bool,
    feature: int,
) -> _Target:
    if c.mean is not None and c.scale is not None:
        sl = slice(None) if is_list else slice(feature, feature + 1)
        return _Target(
            source, index, column, is_list, c.n_features, feature, c.mean[sl], c.scale[sl]
        )
    return _Target(
        source,
        index,
        column,
        is_list,
        c.n_features,
        feature,
        mean_index=names.index(str(c.mean_col)),
        scale_index=names.index(str(c.scale_col)),
    )


# ---- plans -------------------------------------------------------------------------------
def _scalar_plan(
    df: DataFrame,
    spec: InputSpec,
    outputs: Sequence[str],
    constants: Constants,
    *,
    handle_invalid: str,
    engine: str,
) -> DataFrame:
    xs = spec.scalar_doubles()
    # SQL text: one py4j call per expression, not one per Column operation.
    texts = sql_values(spec, len(spec.cols))
    if handle_invalid == "skip":
        df = df.where(" AND ".join(sql_is_finite(x) for x in texts))
    check = handle_invalid == "error"
    if engine == "sql":
        exprs: dict[str, Column] = {}
        for j, (name, x, out_name) in enumerate(zip(spec.cols, xs, outputs, strict=True)):
            mean, scale = constants.sql(j)
            out = F.expr(f"({texts[j]} - {mean}) / {scale}")
            exprs[out_name] = _raise_if_invalid(x, name, out) if check else out
        return df.withColumns(exprs)
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
    targets = []
    for j, (c, o) in enumerate(zip(spec.cols, outputs, strict=True)):
        source = names.index(f"__mx_in{j}" if f"__mx_in{j}" in cast else c)
        field = T.StructField(o, T.DoubleType(), True)
        if o in names:
            index = names.index(o)
            fields[index] = field
        else:
            index = len(fields)
            fields.append(field)
        targets.append(
            _target(
                names,
                constants,
                source=source,
                index=index,
                column=c,
                is_list=False,
                feature=j,
            )
        )
    schema = T.StructType(fields)
    fn = _arrow_map(targets, [f.name for f in fields], check)
    return staged.mapInArrow(fn, schema).drop(*cast)


def _vector_plan(
    df: DataFrame,
    spec: InputSpec,
    output: str,
    constants: Constants,
    *,
    handle_invalid: str,
    engine: str,
) -> DataFrame:
    assert spec.input_col is not None
    name, dim = spec.input_col, constants.n_features
    tmp = "__mx_arr"
    df = df.withColumn(tmp, spec.as_double_array())
    a = F.col(tmp)
    bad_len = F.size(a) != F.lit(dim)
    if handle_invalid == "skip":
        df = df.where(a.isNotNull() & (bad_len | F.forall(a, is_finite)))
    if engine == "sql":
        vals = F.array(
            *[(F.get(a, i) - constants.mean_expr(i)) / constants.scale_expr(i) for i in range(dim)]
        )
        if handle_invalid == "error":
            vals = (
                F.when(
                    F.exists(a, lambda x: x.isNull()),
                    F.raise_error(F.lit(_error_message(name, "a null"))),
                )
                .when(
                    F.exists(a, F.isnan),
                    F.raise_error(F.lit(_error_message(name, "a NaN"))),
                )
                .when(
                    F.exists(a, lambda x: ~is_finite(x)),
                    F.raise_error(F.lit(_error_message(name, "an infinite"))),
                )
                .otherwise(vals)
            )
            null_row = F.raise_error(F.lit(_error_message(name, "a null")))
        else:
            null_row = F.lit(None)
        out = (
            F.when(a.isNull(), null_row)
            .when(bad_len, F.raise_error(F.lit(_length_message(name, dim))))
            .otherwise(vals)
        )
        if spec.kind == "vector":
            out = to_vector(out)
        return df.withColumn(output, out).drop(tmp)
    check = handle_invalid == "error"
    order = [c for c in df.columns if c != tmp]
    # Normalizing in place, the input column is no longer needed once copied to tmp.
    rest = df.drop(name) if output == name else df
    if not any(isinstance(f.dataType, T.UserDefinedType) for f in rest.schema.fields):
        # An Arrow UDF ships only the list column to Python (mapInArrow ships every column
        # both ways: measured ~6x slower with list columns); Spark's Arrow UDFs refuse
        # plans that carry a UDT (vector) column, so this needs none left.
        done = rest.withColumn(tmp, _list_udf(constants, name, check)(*_udf_args(a, constants)))
    else:
        names = df.columns
        at = names.index(tmp)
        target = _target(
            names, constants, source=at, index=at, column=name, is_list=True, feature=0
        )
        done = df.mapInArrow(_arrow_map([target], names, check), df.schema)
    out = to_vector(a) if spec.kind == "vector" else a
    done = done.withColumn(output, out)
    return done.select(*[quote(c) for c in [*order, *([] if output in order else [output])]])


def _udf_args(a: Column, constants: Constants) -> list[Column]:
    if constants.mean is not None:
        return [a]
    return [a, F.col(str(constants.mean_col)), F.col(str(constants.scale_col))]


def _list_udf(constants: Constants, column: str, check: bool) -> Any:
    """An Arrow UDF normalizing one ``list<double>`` column (closed over plain numpy)."""
    from pyspark.sql.pandas.functions import arrow_udf

    literal = constants.mean is not None
    target = _Target(
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

    def one(x: pa.Array) -> pa.Array:
        return _normalize_lists(target, x, None, check)

    def three(x: pa.Array, m: pa.Array, s: pa.Array) -> pa.Array:
        rb = pa.RecordBatch.from_arrays([x, m, s], names=["x", "m", "s"])
        return _normalize_lists(target, x, rb, check)

    kernel = one if literal else three
    return arrow_udf(kernel, T.ArrayType(T.DoubleType()))  # type: ignore[call-overload]


# ---- public API --------------------------------------------------------------------------
@dataclass(frozen=True)
class _Plan:
    spec: InputSpec
    outputs: list[str]
    handle_invalid: str
    engine: str


def _prepare(
    df: DataFrame,
    features: Sequence[str],
    *,
    cols: Sequence[str] | None,
    output_cols: Sequence[str] | None,
    input_col: str | None,
    output_col: str | None,
    handle_invalid: str,
    engine: str,
) -> _Plan:
    """Check everything against the schema and options; no Spark job."""
    check_choice("handle_invalid", handle_invalid, HANDLE_INVALID)
    eng = check_engine(engine)
    if cols is None and input_col is None:
        cols, input_col = _default_input(df, features)
    spec = resolve_input(df, cols, input_col)
    if spec.kind == "scalar":
        if len(spec.cols) != len(features):
            raise FeatureMismatchError(
                f"{len(spec.cols)} column(s) {list(spec.cols)} given but the state has "
                f"{len(features)} features {list(features)}"
            )
        if output_col is not None:
            raise InvalidParameterError(
                "output_col goes with input_col; for scalar cols give output_cols=[...]"
            )
        outputs = list(spec.cols) if output_cols is None else list(output_cols)
        if isinstance(output_cols, str) or len(outputs) != len(spec.cols):
            raise InvalidParameterError(
                f"output_cols must list one name per input column: {len(spec.cols)} input(s) "
                f"{list(spec.cols)} but output_cols={output_cols!r}"
            )
        if len(set(outputs)) != len(outputs):
            raise InvalidParameterError(f"output_cols must be unique, got {outputs}")
        return _Plan(spec, outputs, handle_invalid, eng)
    if output_cols is not None:
        raise InvalidParameterError(
            "output_cols goes with cols; for input_col give one output_col=..."
        )
    assert spec.input_col is not None
    output = spec.input_col if output_col is None else output_col
    if not isinstance(output, str) or not output:
        raise InvalidParameterError(f"output_col must be a column name, got {output_col!r}")
    if engine == "auto":
        # A list column goes to Python through one Arrow UDF when no vector (UDT) column
        # rides along: fit + transform of vec64 took 5.1 s that way against 8.3 s with one
        # get() expression per element (bench/full/RESULTS.md). With a UDT column left,
        # Spark needs mapInArrow over the whole row, slower than the expressions.
        kept = [f for f in df.schema.fields if f.name != spec.input_col or output != f.name]
        if not any(isinstance(f.dataType, T.UserDefinedType) for f in kept):
            eng = "arrow"
    return _Plan(spec, [output], handle_invalid, eng)


def _run(df: DataFrame, plan: _Plan, constants: Constants) -> DataFrame:
    opts = {"handle_invalid": plan.handle_invalid, "engine": plan.engine}
    if plan.spec.kind == "scalar":
        return _scalar_plan(df, plan.spec, plan.outputs, constants, **opts)
    return _vector_plan(df, plan.spec, plan.outputs[0], constants, **opts)


def normalize(
    df: DataFrame,
    state: MXNormState,
    cols: Sequence[str] | None = None,
    output_cols: Sequence[str] | None = None,
    *,
    input_col: str | None = None,
    output_col: str | None = None,
    handle_invalid: str = "keep",
    engine: str = "auto",
    fallback: MXNormState | None = None,
) -> DataFrame:
    """Normalize ``cols`` (or the vector/array ``input_col``) of ``df`` with ``state``.

    With neither ``cols`` nor ``input_col``, the state's own features are used (scalar
    columns, or ``name[i]`` elements of a column ``name``). Outputs are double columns
    named by ``output_cols`` (default: replace the inputs in place), or one column
    ``output_col`` of the input's kind (vector or ``array<double>``). Columns are matched
    to the state's features by position. ``fallback`` supplies constants for features the
    state has not seen (see :meth:`MXNormState.normalization_constants`).

    Everything is checked before any Spark job: columns, types, counts, options.
    """
    if not isinstance(state, MXNormState):
        raise InvalidParameterError(f"state must be an MXNormState, got {type(state).__name__}")
    plan = _prepare(
        df,
        state.features,
        cols=cols,
        output_cols=output_cols,
        input_col=input_col,
        output_col=output_col,
        handle_invalid=handle_invalid,
        engine=engine,
    )
    mean, scale = state.normalization_constants(fallback)
    return _run(df, plan, Constants.literal(mean, scale))


def normalize_per_batch(
    df: DataFrame,
    features: Sequence[str],
    table: Sequence[tuple[Any, np.ndarray, np.ndarray]],
    default: tuple[np.ndarray, np.ndarray],
    *,
    batch_col: str,
    cols: Sequence[str] | None = None,
    output_cols: Sequence[str] | None = None,
    input_col: str | None = None,
    output_col: str | None = None,
    handle_invalid: str = "keep",
    engine: str = "auto",
) -> DataFrame:
    """Normalize each row with the constants of its ``batch_col`` value.

    ``table`` lists ``(batch value, mean, scale)``; rows whose batch value is not in it
    (or is null) use ``default``. The table is joined in as a small broadcast DataFrame,
    so the arithmetic is the same ``(x - mean) / scale`` as :func:`normalize`.
    """
    plan = _prepare(
        df,
        features,
        cols=cols,
        output_cols=output_cols,
        input_col=input_col,
        output_col=output_col,
        handle_invalid=handle_invalid,
        engine=engine,
    )
    if batch_col not in df.columns:
        raise MissingColumnError([batch_col], df.columns)
    k = len(features)
    batch_type = df.schema[batch_col].dataType
    schema = T.StructType(
        [
            T.StructField("__mx_b", batch_type, True),
            T.StructField("__mx_bm", T.ArrayType(T.DoubleType(), False), False),
            T.StructField("__mx_bs", T.ArrayType(T.DoubleType(), False), False),
        ]
    )
    rows = [(b, [float(v) for v in m], [float(v) for v in s]) for b, m, s in table]
    spark = df.sparkSession
    small = spark.createDataFrame(rows, schema)
    joined = df.join(F.broadcast(small), quote(batch_col).eqNullSafe(F.col("__mx_b")), "left")
    dm, ds = default
    joined = joined.withColumns(
        {
            "__mx_m": F.coalesce(F.col("__mx_bm"), F.array(*[F.lit(float(v)) for v in dm])),
            "__mx_s": F.coalesce(F.col("__mx_bs"), F.array(*[F.lit(float(v)) for v in ds])),
        }
    ).drop("__mx_b", "__mx_bm", "__mx_bs")
    constants = Constants(k, mean_col="__mx_m", scale_col="__mx_s")
    return _run(joined, plan, constants).drop("__mx_m", "__mx_s")
