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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import mxnorm_spark.spark_extra  # noqa: F401  (before pyspark: names the [spark] extra if missing)

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mxnorm_spark.choices import check_choice
from mxnorm_spark.columns import (
    ARRAY_COL,
    HANDLE_INVALID,
    InputSpec,
    check_engine,
    is_finite,
    quote,
    resolve_input,
    sql_is_finite,
    sql_values,
    to_vector,
)
from mxnorm_spark.engines import Constants
from mxnorm_spark.engines import arrow as arrow_engine
from mxnorm_spark.engines import sql as sql_engine
from mxnorm_spark.errors import (
    FeatureMismatchError,
    InvalidParameterError,
    MissingColumnError,
)
from mxnorm_spark.state import MXNormState

# Re-exported: other modules import these from here.
__all__ = ["HANDLE_INVALID", "Constants", "normalize", "normalize_per_batch", "to_vector"]

_VECTOR_FEATURE = re.compile(r"^(.*)\[(\d+)\]$")


# ---- public API --------------------------------------------------------------------------
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
    plan = _plan_normalization(
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
    return _apply_plan(df, plan, Constants.literal(mean, scale))


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
    plan = _plan_normalization(
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
    joined = _join_batch_constants(df, batch_col, table, default)
    constants = Constants(len(features), mean_col="__mx_m", scale_col="__mx_s")
    return _apply_plan(joined, plan, constants).drop("__mx_m", "__mx_s")


def _join_batch_constants(
    df: DataFrame,
    batch_col: str,
    table: Sequence[tuple[Any, np.ndarray, np.ndarray]],
    default: tuple[np.ndarray, np.ndarray],
) -> DataFrame:
    """``df`` with ``array<double>`` columns ``__mx_m``, ``__mx_s``: its batch's constants."""
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
    return joined.withColumns(
        {
            "__mx_m": F.coalesce(F.col("__mx_bm"), F.array(*[F.lit(float(v)) for v in dm])),
            "__mx_s": F.coalesce(F.col("__mx_bs"), F.array(*[F.lit(float(v)) for v in ds])),
        }
    ).drop("__mx_b", "__mx_bm", "__mx_bs")


# ---- the plan: checked against the schema, no Spark job ----------------------------------
@dataclass(frozen=True)
class NormalizationPlan:
    """What to normalize, into which columns, how invalid values are handled, by which engine."""

    spec: InputSpec
    outputs: list[str]
    handle_invalid: str
    engine: str


def _plan_normalization(
    df: DataFrame,
    features: Sequence[str],
    *,
    cols: Sequence[str] | None,
    output_cols: Sequence[str] | None,
    input_col: str | None,
    output_col: str | None,
    handle_invalid: str,
    engine: str,
) -> NormalizationPlan:
    """Check everything against the schema and options; no Spark job."""
    check_choice("handle_invalid", handle_invalid, HANDLE_INVALID)
    chosen = check_engine(engine)
    if cols is None and input_col is None:
        cols, input_col = _default_input(df, features)
    spec = resolve_input(df, cols, input_col)
    if spec.kind == "scalar":
        outputs = _scalar_outputs(spec, features, output_cols, output_col)
        return NormalizationPlan(spec, outputs, handle_invalid, chosen)
    output = _vector_output(spec, output_cols, output_col)
    if engine == "auto" and _no_vector_alongside(df, spec, output):
        chosen = "arrow"
    return NormalizationPlan(spec, [output], handle_invalid, chosen)


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


def _scalar_outputs(
    spec: InputSpec,
    features: Sequence[str],
    output_cols: Sequence[str] | None,
    output_col: str | None,
) -> list[str]:
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
    return outputs


def _vector_output(
    spec: InputSpec, output_cols: Sequence[str] | None, output_col: str | None
) -> str:
    if output_cols is not None:
        raise InvalidParameterError(
            "output_cols goes with cols; for input_col give one output_col=..."
        )
    assert spec.input_col is not None
    output = spec.input_col if output_col is None else output_col
    if not isinstance(output, str) or not output:
        raise InvalidParameterError(f"output_col must be a column name, got {output_col!r}")
    return output


def _no_vector_alongside(df: DataFrame, spec: InputSpec, output: str) -> bool:
    """Whether no vector (UDT) column is left beside the output; ``auto`` then takes arrow.

    A list column goes to Python through one Arrow UDF when no vector (UDT) column rides
    along: fit + transform of vec64 took 5.1 s that way against 8.3 s with one get()
    expression per element (bench/full/RESULTS.md). With a UDT column left, Spark needs
    mapInArrow over the whole row, slower than the expressions.
    """
    kept = [f for f in df.schema.fields if f.name != spec.input_col or output != f.name]
    return not any(isinstance(f.dataType, T.UserDefinedType) for f in kept)


def _apply_plan(df: DataFrame, plan: NormalizationPlan, constants: Constants) -> DataFrame:
    """Drop the rows to skip, then let the plan's engine normalize."""
    use_sql = plan.engine == "sql"
    spec, check = plan.spec, plan.handle_invalid == "error"
    if spec.kind == "scalar":
        if plan.handle_invalid == "skip":
            texts = sql_values(spec, len(spec.cols))
            df = df.where(" AND ".join(sql_is_finite(x) for x in texts))
        scalars = sql_engine.normalize_scalars if use_sql else arrow_engine.normalize_scalars
        return scalars(df, spec, plan.outputs, constants, check=check)
    df = df.withColumn(ARRAY_COL, spec.as_double_array())
    if plan.handle_invalid == "skip":
        a = F.col(ARRAY_COL)
        bad_len = F.size(a) != F.lit(constants.n_features)
        df = df.where(a.isNotNull() & (bad_len | F.forall(a, is_finite)))
    vector = sql_engine.normalize_vector if use_sql else arrow_engine.normalize_vector
    return vector(df, spec, plan.outputs[0], constants, check=check)
