"""Normalize Spark DataFrame columns with an MXNorm state: ``(x - mean) / scale``.

``mean`` and ``scale`` are the float64 constants of
:meth:`MXNormState.normalization_constants`, so every engine gives the same bits:

* ``sql``: native column expressions with the constants as double literals (no Python
  worker; whole-stage code generation).
* ``arrow``: one ``mapInArrow`` pass closed over plain numpy arrays (never over a session
  or an estimator), computing with ``pyarrow.compute`` ``subtract`` / ``divide`` (IEEE
  float64, nulls kept). This is the same arithmetic as the pure-numpy serving path. An ml
  vector column is read as its Arrow struct (no ``vector_to_array``/``array_to_vector``);
  a sparse row comes out dense.

``auto`` picks ``sql``: a vector/array column is normalized by one ``transform``
higher-order function, measured faster than the Arrow UDF (bench/SHAPES.md).

``handle_invalid`` decides what happens to null, NaN and +/-inf input values:

* ``keep`` (default): null stays null, NaN stays NaN, +/-inf gives +/-inf;
* ``error``: the job fails with a message naming the column and the value kind (null,
  NaN or infinite); Spark raises it when the rows are evaluated (lazily, at the action);
* ``skip``: rows with any invalid input value are dropped.

A vector/array row whose length differs from the state's feature count always fails.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, overload

import mxnorm_spark.spark_extra  # noqa: F401  (before pyspark: names the [spark] extra if missing)

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mxnorm_spark.core.choices import check_choice
from mxnorm_spark.core.errors import (
    FeatureMismatchError,
    InvalidParameterError,
    MissingColumnError,
)
from mxnorm_spark.core.history import StateHistory, fold_history
from mxnorm_spark.core.moments import Moments
from mxnorm_spark.core.state import MXNormState
from mxnorm_spark.engines import arrow_normalize
from mxnorm_spark.engines import sql as sql_engine
from mxnorm_spark.engines.columns import (
    ARRAY_COL,
    HANDLE_INVALID,
    InputSpec,
    check_engine,
    is_finite,
    quote,
    resolve_input,
    sql_constant,
    sql_is_finite,
    sql_values,
    to_vector,
)
from mxnorm_spark.engines.constants import Constants
from mxnorm_spark.engines.partials import BatchTable
from mxnorm_spark.store.history import history_schema

# Re-exported: other modules import these from here.
__all__ = [
    "HANDLE_INVALID",
    "BackfillHistory",
    "BatchConstants",
    "Constants",
    "normalize",
    "normalize_per_batch",
    "to_vector",
]

_FIELDS = ("count", "shift", "delta", "m2")
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
    reused_code: bool = False,
) -> DataFrame:
    """Normalize ``cols`` (or the vector/array ``input_col``) of ``df`` with ``state``.

    With neither ``cols`` nor ``input_col``, the state's own features are used (scalar
    columns, or ``name[i]`` elements of a column ``name``). Outputs are double columns
    named by ``output_cols`` (default: replace the inputs in place), or one column
    ``output_col`` of the input's kind (vector or ``array<double>``). Columns are matched
    to the state's features by position. ``fallback`` supplies constants for features the
    state has not seen (see :meth:`MXNormState.normalization_constants`).

    ``reused_code``: the ``sql`` engine reads the constants from one array per row
    instead of literals, so the generated code does not change with the state and is
    compiled once (a stream normalizes every micro-batch with new constants).

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
    if not reused_code or plan.engine != "sql":
        return _apply_plan(df, plan, Constants.literal(mean, scale))
    both = df.withColumns(
        {"__mx_m": F.expr(sql_constant(mean)), "__mx_s": F.expr(sql_constant(scale))}
    )
    constants = Constants(len(mean), mean_col="__mx_m", scale_col="__mx_s")
    return _apply_plan(both, plan, constants).drop("__mx_m", "__mx_s")


@dataclass(frozen=True)
class BatchConstants:
    """Normalization constants per batch value, columnar: row ``i`` of ``mean`` and
    ``scale`` (batch values x features) belongs to ``values[i]`` (an Arrow array of the
    batch column's type, e.g. as :func:`mxnorm_spark.batch.aggregate.moments_table_by_batch`
    returns it). Joined in as Arrow, without one Python object per batch value."""

    values: pa.Array
    mean: np.ndarray
    scale: np.ndarray


def normalize_per_batch(
    df: DataFrame,
    features: Sequence[str],
    table: Sequence[tuple[Any, np.ndarray, np.ndarray]] | BatchConstants,
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

    ``table`` lists ``(batch value, mean, scale)``, or is a :class:`BatchConstants`;
    rows whose batch value is not in it (or is null) use ``default``. The table is joined
    in as a small broadcast DataFrame, so the arithmetic is the same ``(x - mean) / scale``
    as :func:`normalize`.
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
    table: Sequence[tuple[Any, np.ndarray, np.ndarray]] | BatchConstants,
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
    spark = df.sparkSession
    if isinstance(table, BatchConstants):
        small = spark.createDataFrame(_constants_table(table), schema)
    else:
        rows = [(b, [float(v) for v in m], [float(v) for v in s]) for b, m, s in table]
        small = spark.createDataFrame(rows, schema)
    joined = df.join(F.broadcast(small), quote(batch_col).eqNullSafe(F.col("__mx_b")), "left")
    dm, ds = default
    return joined.withColumns(
        {
            "__mx_m": F.coalesce(F.col("__mx_bm"), F.array(*[F.lit(float(v)) for v in dm])),
            "__mx_s": F.coalesce(F.col("__mx_bs"), F.array(*[F.lit(float(v)) for v in ds])),
        }
    ).drop("__mx_b", "__mx_bm", "__mx_bs")


def _constants_table(c: BatchConstants) -> pa.Table:
    n, k = c.mean.shape
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * k)
    element = pa.list_(pa.field("element", pa.float64(), nullable=False))

    def lists(x: np.ndarray) -> pa.Array:
        flat = pa.array(np.ascontiguousarray(x, dtype=np.float64).reshape(-1))
        return pa.ListArray.from_arrays(offsets, flat).cast(element)

    return pa.table({"__mx_b": c.values, "__mx_bm": lists(c.mean), "__mx_bs": lists(c.scale)})


# ---- a backfill's states, columnar -------------------------------------------------------
# A backfill over 500,000 batch values must not hold 500,000 ``MXNormState`` objects: the
# merged moments of every batch value (``BatchTable``) and the state after each
# (``StateHistory``) stay (batch values x features) arrays; pairs are made when read, the
# per-batch constants and the history table come from the arrays.
class BackfillHistory(Sequence[tuple[Any, MXNormState]]):
    """``(batch value, state after that batch)`` per batch value, ascending, columnar.

    ``batch_values`` (an Arrow array of the batch column's type) and ``states`` always;
    ``table``, each batch value's merged moments and rows, when known (from ``fit``, or
    from a model saved with them).
    """

    def __init__(
        self, batch_values: pa.Array, states: StateHistory, table: BatchTable | None = None
    ) -> None:
        if len(batch_values) != len(states) or (table is not None and len(table) != len(states)):
            raise InvalidParameterError(
                f"{len(batch_values)} batch values for {len(states)} states"
                + ("" if table is None else f" and {len(table)} batch moments")
            )
        self.batch_values = batch_values
        self.states = states
        self.table = table
        self._values: list[Any] | None = None
        self._final: MXNormState | None = None

    @classmethod
    def fold(cls, start: MXNormState, table: BatchTable) -> BackfillHistory:
        """Fold every batch value's moments into ``start``, in order (bit for bit
        ``MXNormState.update`` per batch)."""
        t = table
        return cls(t.values, fold_history(start, (t.count, t.shift, t.delta, t.m2)), t)

    @classmethod
    def from_pairs(
        cls, batch_values: pa.Array, states: Sequence[MXNormState]
    ) -> BackfillHistory | None:
        """The columnar form of ``states``, the states after each batch of one fold from a
        fresh state (as ``MXNorm.fit`` makes them); None when they are not that (other
        features, options or batch id, or ``batches_seen`` not 1, 2, ...)."""
        if not states or len(batch_values) != len(states):
            return None
        last = states[-1]
        same = all(
            s.features == last.features
            and s.options == last.options
            and s.last_batch_id == last.last_batch_id
            and s.batches_seen == i + 1
            for i, s in enumerate(states)
        )
        if not same:
            return None
        fresh = MXNormState.create(last.features, options=last.options)
        start = replace(fresh, last_batch_id=last.last_batch_id)
        fields = [np.stack([getattr(s.totals, f) for s in states]) for f in _FIELDS]
        mean = np.stack([s.mean for s in states])
        var = np.stack([s.var for s in states])
        totals = (fields[0], fields[1], fields[2], fields[3])
        return cls(batch_values, StateHistory(start, mean, var, totals))

    def __len__(self) -> int:
        return len(self.states)

    @overload
    def __getitem__(self, i: int) -> tuple[Any, MXNormState]: ...
    @overload
    def __getitem__(self, i: slice) -> list[tuple[Any, MXNormState]]: ...
    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(len(self))[i]]
        i = range(len(self))[i]
        return self.values[i], self.final if i == len(self) - 1 else self.states.state(i)

    def __iter__(self) -> Iterator[tuple[Any, MXNormState]]:
        return (self[i] for i in range(len(self)))

    @property
    def values(self) -> list[Any]:
        """The batch values as Python objects (made once, when first asked)."""
        if self._values is None:
            self._values = self.batch_values.to_pylist()
        return self._values

    @property
    def final(self) -> MXNormState:
        """The state after the last batch (the same object each time)."""
        if self._final is None:
            self._final = self.states.state(-1)
        return self._final

    def moments(self) -> list[Moments]:
        """Each batch value's moments, one object per batch value (empty when unknown)."""
        t = self.table
        return [] if t is None else [t.moments(i) for i in range(len(t))]

    def constants(self, before: bool) -> BatchConstants:
        """Each batch value's ``(mean, scale)``, as ``MXNormModel.transform`` uses them
        (:meth:`StateHistory.constants`)."""
        mean, scale = self.states.constants(before)
        return BatchConstants(self.batch_values, mean, scale)

    def history_table(self, committed_at: dt.datetime | None = None) -> pa.Table | None:
        """The rows of :func:`mxnorm_spark.store.history.batch_table` for every batch,
        in one table (batch ids 0..n-1), built from the arrays; None without the batch
        moments."""
        t, h = self.table, self.states
        if t is None:
            return None
        n, k = t.count.shape
        when = committed_at or dt.datetime.now(dt.timezone.utc)
        stamp = pa.timestamp("us", tz="UTC")
        texts = [None if v is None else str(v) for v in self.values]
        with np.errstate(invalid="ignore", divide="ignore"):
            batch_mean = np.where(t.count > 0, t.shift + t.delta, np.nan)
            batch_var = np.where(t.count > 0, t.m2 / t.count, np.nan)
        columns = {
            "batch_id": pa.array(np.repeat(np.arange(n, dtype=np.int64), k)),
            "batch_value": pa.array(texts, pa.string()).take(np.repeat(np.arange(n), k)),
            "feature": pa.array(h.start.features, pa.string()).take(np.tile(np.arange(k), n)),
            "rows": pa.array(np.repeat(t.rows.astype(np.int64), k)),
            "valid": pa.array(t.count.astype(np.int64).reshape(-1)),
            "batch_mean": pa.array(batch_mean.reshape(-1)),
            "batch_var": pa.array(batch_var.reshape(-1)),
            "state_mean": pa.array(h.mean.reshape(-1)),
            "state_var": pa.array(h.var.reshape(-1)),
            "committed_at": pa.array([when], stamp).take(np.zeros(n * k, dtype=np.int64)),
        }
        return pa.table(columns, schema=history_schema())


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


def _apply_plan(df: DataFrame, plan: NormalizationPlan, constants: Constants) -> DataFrame:
    """Drop the rows to skip, then let the plan's engine normalize."""
    use_sql = plan.engine == "sql"
    spec, check = plan.spec, plan.handle_invalid == "error"
    if spec.kind == "scalar":
        if plan.handle_invalid == "skip":
            texts = sql_values(spec, len(spec.cols))
            df = df.where(" AND ".join(sql_is_finite(x) for x in texts))
        scalars = sql_engine.normalize_scalars if use_sql else arrow_normalize.normalize_scalars
        return scalars(df, spec, plan.outputs, constants, check=check)
    if spec.kind == "vector" and plan.engine == "arrow":
        skip = plan.handle_invalid == "skip"
        output = plan.outputs[0]
        return arrow_normalize.normalize_vectors(
            df, spec, output, constants, check=check, skip=skip
        )
    df = df.withColumn(ARRAY_COL, spec.as_double_array())
    if plan.handle_invalid == "skip":
        a = F.col(ARRAY_COL)
        bad_len = F.size(a) != F.lit(constants.n_features)
        df = df.where(a.isNotNull() & (bad_len | F.forall(a, is_finite)))
    vector = sql_engine.normalize_vector if use_sql else arrow_normalize.normalize_vector
    return vector(df, spec, plan.outputs[0], constants, check=check)
