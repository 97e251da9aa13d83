"""Per-key MXNorm: one state per entity (sensor, card, user), kept in Spark.

:func:`fit_keyed` computes, in one distributed pass, the exact moments of every
(key, batch) and folds each key's batches in ascending batch order with the rules of
docs/design.md, section 1 (every option of :class:`StateOptions`): rows are hash-partitioned by
key and sorted by (key, batch, features), and one ``mapInArrow`` kernel
(:mod:`mxnorm_spark.keyed.kernel`) emits one row per (key, batch) with the key's state
after that batch, in flat double columns (its state before is its previous row). Nothing
per key reaches the driver: the per-key states are a DataFrame (:attr:`KeyedModel.states`),
written as Parquet. Sorting on the feature values too fixes the order of every sum, so the
same input gives the same bits on every run.

A key's batches are the batch values in which it has rows. Beside the per-key states the
model keeps the *global* state: the ordinary MXNorm state over all rows (what
``MXNorm(...).fit`` gives), and its history per batch.

Policies:

* **Null keys.** A row with a null in any key column belongs to no entity: it counts in
  the global state only, and is normalized with the global state.
* **Cold start and fallback.** Feature by feature, a row uses its key's constants when the
  key has seen at least ``max(min_key_rows, 1)`` valid values of that feature so far, and
  the global constants otherwise: keys never seen in fit, null keys, and features a key
  has too few values of. ("So far" follows ``apply_at``: through the row's batch with
  ``"after"``, before it with ``"before"``.) Without invalid values, valid values are rows.
* **Which state.** A row takes its key's state as of its batch: after that batch
  (``"after"``) or before it (``"before"``) when the key has rows in it; otherwise the
  state after the key's latest earlier batch, and none (the global state) before its
  first batch or for a null batch value. The fallback is the global state of that batch
  (before or after it, as in ``MXNormModel``), or the final global state for a batch
  value not fitted. Without a batch column: the key's final state, the final global state.

Scalar numeric feature columns only (vector/array input: not yet). Per-key state in a
stream, with eviction: :mod:`mxnorm_spark.streaming.keyed`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import mxnorm_spark.spark_extra  # noqa: F401  (before pyspark: names the [spark] extra if missing)

import numpy as np
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mxnorm_spark.batch.aggregate import batch_moments, moments_table_by_batch
from mxnorm_spark.batch.apply import BackfillHistory
from mxnorm_spark.core.choices import (
    APPLY_AT,
    HANDLE_INVALID,
    KEYED_EXPORT_TYPE,
    KEYED_MODEL_TYPE,
    check_choice,
)
from mxnorm_spark.core.errors import (
    CorruptStateError,
    EmptyInputError,
    InvalidParameterError,
    MissingColumnError,
)
from mxnorm_spark.core.state import MXNormState, StateOptions
from mxnorm_spark.engines import sql as sql_engine
from mxnorm_spark.engines.columns import (
    check_batch_col,
    quote,
    resolve_input,
    sql_is_finite,
    sql_values,
)
from mxnorm_spark.engines.constants import Constants
from mxnorm_spark.engines.workers import map_in_arrow
from mxnorm_spark.keyed.kernel import (
    EXACT_FIELDS,
    FIELDS,
    SCALARS,
    SOURCE,
    feature_columns,
    fields,
    filled,
    filled_constants,
    fold_kernel,
    state_columns,
)
from mxnorm_spark.store import filesystem, local_path, write_state
from mxnorm_spark.store.filesystems import LocalFileSystem

__all__ = ["KEYED_EXPORT_TYPE", "KeyedModel", "export_table", "fit_keyed", "pick_and_normalize"]

# The columns of the serving export's keys.parquet after the key columns.
EXPORT_COLUMNS = ("feature", "feature_index", "mean", "var", "scale", "count", "last_batch")
# The layout of the per-key states table (schema_version in keyed.json): 1 had one array
# per field (read back by :func:`_flat_states`), 2 flat f{j}_{field} columns.
STATES_VERSION = 2

GlobalHistory = Sequence[tuple[Any, MXNormState]]


# ---- fit ---------------------------------------------------------------------------------
def fit_keyed(
    df: DataFrame,
    cols: Sequence[str],
    key_cols: Sequence[str],
    batch_col: str | None = None,
    *,
    options: StateOptions | None = None,
    min_key_rows: int = 1,
    apply_at: str = "after",
    handle_invalid: str = "keep",
    output_cols: Sequence[str] | None = None,
    engine: str = "auto",
    num_partitions: int | None = None,
) -> KeyedModel:
    """Fit one MXNorm state per key of ``key_cols`` (and the global state) on ``df``.

    ``batch_col`` makes each distinct value a batch, folded in ascending order; without
    it the whole input is one batch. ``num_partitions`` sets how many partitions the rows
    are hashed into by key (default ``spark.sql.shuffle.partitions``). ``engine`` is the
    engine of the global moments. Everything is checked before any Spark job.
    """
    options = StateOptions() if options is None else options
    keys = check_keys(df, cols, key_cols, batch_col)
    model = KeyedModel(
        features=tuple(cols),
        key_cols=keys,
        batch_col=batch_col,
        options=options,
        min_key_rows=min_key_rows,
        apply_at=apply_at,
        handle_invalid=handle_invalid,
        output_cols=None if output_cols is None else tuple(output_cols),
    )
    model.global_state, model.global_history = _fit_global(df, cols, batch_col, options, engine)
    model.states = _fit_states(
        df, cols, keys, batch_col, options=options, num_partitions=num_partitions
    )
    return model


def check_keys(
    df: DataFrame, cols: Sequence[str], key_cols: Sequence[str], batch_col: str | None
) -> tuple[str, ...]:
    """The key columns, checked against ``df`` (present, orderable, not features)."""
    resolve_input(df, cols, None)
    if isinstance(key_cols, str) or not key_cols:
        raise InvalidParameterError(
            f"key_cols must be a non-empty list of column names, got {key_cols!r}"
        )
    keys = tuple(key_cols)
    fields = {f.name: f.dataType for f in df.schema.fields}
    missing = [k for k in keys if k not in fields]
    if missing:
        raise MissingColumnError(missing, list(fields))
    taken = {*cols, batch_col, *SCALARS, *feature_columns(len(cols), (*FIELDS, *EXACT_FIELDS))}
    if any(k in taken for k in keys) or len(set(keys)) != len(keys):
        raise InvalidParameterError(
            "key columns must be unique and differ from the feature columns, the batch column "
            f"and the state columns ({', '.join(SCALARS)}, f<j>_<field>); got {list(keys)}"
        )
    bad = [f"{k!r} ({fields[k].simpleString()})" for k in keys]
    bad = [b for k, b in zip(keys, bad, strict=True) if not isinstance(fields[k], T.AtomicType)]
    if bad:
        raise InvalidParameterError(
            f"key column(s) {', '.join(bad)} are not orderable scalars; a key is one or more "
            "columns of numbers, strings, dates, timestamps, booleans or binary"
        )
    if batch_col is not None:
        check_batch_col(df, batch_col)
        if batch_col in cols:
            raise InvalidParameterError(f"batch column {batch_col!r} is also a feature column")
    return keys


def _fit_global(
    df: DataFrame,
    cols: Sequence[str],
    batch_col: str | None,
    options: StateOptions,
    engine: str,
) -> tuple[MXNormState, GlobalHistory]:
    """The ordinary MXNorm state over all rows (null keys included) and its history."""
    state = MXNormState.create(list(cols), options=options)
    history: GlobalHistory = []
    if batch_col is None:
        state = state.update(batch_moments(df, cols, engine=engine))
    else:
        # The backfill of MXNorm.fit itself: the same bits, columnar over batch values.
        history = BackfillHistory.fold(
            state, moments_table_by_batch(df, cols, batch_col, engine=engine)
        )
        state = history.final
    never = [f for f, ok in zip(state.features, state.initialized, strict=True) if not ok]
    if never:
        raise EmptyInputError(
            f"feature(s) {never} have no valid value (only null, NaN or inf) in the fit "
            "data, so they cannot be normalized; drop them or fix the data"
        )
    return state, history


def _fit_states(
    df: DataFrame,
    cols: Sequence[str],
    keys: tuple[str, ...],
    batch_col: str | None,
    *,
    options: StateOptions,
    num_partitions: int | None,
) -> DataFrame:
    """One row per (key, batch): the key's state before and after it (lazy, one pass)."""
    spec = resolve_input(df, cols, None)
    group = [quote(k).alias(f"__mx_k{i}") for i, k in enumerate(keys)]
    if batch_col is not None:
        group.append(quote(batch_col).alias("__mx_batch"))
    xs = [c.alias(f"x{j}") for j, c in enumerate(spec.scalar_doubles())]
    src = df.select(*group, *xs).where(
        " AND ".join(f"__mx_k{i} IS NOT NULL" for i in range(len(keys)))
    )
    parts = (num_partitions,) if num_partitions else ()
    names = [f"__mx_k{i}" for i in range(len(keys))]
    order = [*names, *(["__mx_batch"] if batch_col else []), *(f"x{j}" for j in range(len(xs)))]
    src = src.repartition(*parts, *names).sortWithinPartitions(*order)
    per_feature = state_columns(len(xs), options)
    schema = T.StructType(
        [
            *(f for f in src.schema.fields if not f.name.startswith("x")),
            T.StructField("rows", T.LongType(), False),
            T.StructField("key_rows", T.LongType(), False),
            T.StructField("batches_seen", T.IntegerType(), False),
            T.StructField("is_last", T.BooleanType(), False),
            *(T.StructField(name, T.DoubleType(), False) for name in per_feature),
        ]
    )
    kernel = fold_kernel(len(keys), batch_col is not None, options, tuple(cols))
    out = map_in_arrow(src, kernel, schema)
    renamed = [F.col(n).alias(k) for n, k in zip(names, keys, strict=True)]
    if batch_col is not None:
        renamed.append(F.col("__mx_batch").alias(batch_col))
    return out.select(*renamed, *SCALARS, *per_feature)


# ---- the model ---------------------------------------------------------------------------
@dataclass
class KeyedModel:
    """Per-key MXNorm states (a Spark DataFrame) and the global state beside them.

    :attr:`states` has one row per (key, batch): the key columns, the batch column (with
    ``batch_col``), ``rows`` (the key's rows in the batch), ``key_rows`` (through it),
    ``batches_seen``, ``is_last`` (the key's final state) and, per feature ``j`` (of
    :attr:`features`), the key's state after the batch in double columns: ``f{j}_count``
    (valid values so far), ``f{j}_mean``, ``f{j}_var`` (NaN before the key's first valid
    value), ``f{j}_scale`` (``x`` normalizes as ``(x - mean) / scale``) and, with
    ``alpha=None``, the exact running moments ``f{j}_shift``, ``f{j}_delta``, ``f{j}_m2``.
    A key's state before a batch is its row of its previous batch.
    """

    features: tuple[str, ...]
    key_cols: tuple[str, ...]
    batch_col: str | None
    options: StateOptions
    min_key_rows: int = 1
    apply_at: str = "after"
    handle_invalid: str = "keep"
    output_cols: tuple[str, ...] | None = None
    global_state: MXNormState | None = None
    global_history: GlobalHistory | None = None
    states: DataFrame | None = None

    def __post_init__(self) -> None:
        check_choice("apply_at", self.apply_at, APPLY_AT)
        check_choice("handle_invalid", self.handle_invalid, HANDLE_INVALID)
        n = self.min_key_rows
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise InvalidParameterError(f"min_key_rows must be an int >= 0, got {n!r}")
        outs = self.output_cols
        if outs is not None and (len(outs) != len(self.features) or len(set(outs)) != len(outs)):
            raise InvalidParameterError(
                f"output_cols must list one unique name per feature {list(self.features)}, "
                f"got {list(outs)}"
            )

    @property
    def key_states(self) -> DataFrame:
        """The final state of each key (its row of its last batch)."""
        return self._states().where(F.col("is_last"))

    def _states(self) -> DataFrame:
        if self.states is None or self.global_state is None:
            raise InvalidParameterError("this KeyedModel holds no states; fit or read one")
        return self.states

    # ---- transform -----------------------------------------------------------------
    def transform(self, df: DataFrame) -> DataFrame:
        """Normalize the features of ``df`` per key, falling back to the global state.

        The per-key constants come in through one shuffle by key (an as-of lookup, see
        :func:`_join_key_constants`; no broadcast of per-key data); the global ones are
        literals, or a small broadcast table per batch.
        Outputs are ``output_cols`` (default: replace the inputs), ``handle_invalid`` as
        :func:`mxnorm_spark.batch.apply.normalize`.
        """
        states = self._states()
        spec = resolve_input(df, list(self.features), None)
        missing = [k for k in self.key_cols if k not in df.columns]
        if missing:
            raise MissingColumnError(missing, df.columns)
        by_batch = self.batch_col is not None and self.batch_col in df.columns
        joined = _join_key_constants(df, states, self, by_batch)
        joined = self._join_global_constants(joined, by_batch)
        outputs = list(self.output_cols or self.features)
        return pick_and_normalize(
            joined,
            spec,
            outputs,
            min_key_rows=self.min_key_rows,
            handle_invalid=self.handle_invalid,
        )

    def _join_global_constants(self, df: DataFrame, by_batch: bool) -> DataFrame:
        """``df`` with ``__mx_gm`` / ``__mx_gs``: the global constants of its batch, or the
        final ones (a tiny table per batch value, broadcast)."""
        assert self.global_state is not None
        gm, gs = self.global_state.normalization_constants()
        final_m = F.array(*[F.lit(float(v)) for v in gm])
        final_s = F.array(*[F.lit(float(v)) for v in gs])
        if not by_batch or not self.global_history:
            return df.withColumns({"__mx_gm": final_m, "__mx_gs": final_s})
        assert self.batch_col is not None
        rows = [(v, m.tolist(), s.tolist()) for v, m, s in self.global_constants_by_batch()]
        dbl = T.ArrayType(T.DoubleType(), False)
        schema = T.StructType(
            [
                T.StructField("__mx_gb", df.schema[self.batch_col].dataType, True),
                T.StructField("__mx_gbm", dbl, False),
                T.StructField("__mx_gbs", dbl, False),
            ]
        )
        small = df.sparkSession.createDataFrame(rows, schema)
        cond = quote(self.batch_col).eqNullSafe(F.col("__mx_gb"))
        joined = df.join(F.broadcast(small), cond, "left")
        return joined.withColumns(
            {
                "__mx_gm": F.coalesce(F.col("__mx_gbm"), final_m),
                "__mx_gs": F.coalesce(F.col("__mx_gbs"), final_s),
            }
        ).drop("__mx_gb", "__mx_gbm", "__mx_gbs")

    def global_constants_by_batch(self) -> list[tuple[Any, np.ndarray, np.ndarray]]:
        """``(batch value, mean, scale)`` of the global state per batch, per ``apply_at``:
        after the batch, or before it (the first batch: its own moments)."""
        out = []
        prev: MXNormState | None = None
        for value, after in self.global_history or []:
            if self.apply_at == "before" and prev is not None:
                mean, scale = prev.normalization_constants(filled(after))
            else:
                mean, scale = filled_constants(after)
            out.append((value, mean, scale))
            prev = after
        return out

    # ---- persistence ---------------------------------------------------------------
    def _metadata(self) -> dict[str, Any]:
        return {
            "type": KEYED_MODEL_TYPE,
            "schema_version": STATES_VERSION,
            "features": list(self.features),
            "key_cols": list(self.key_cols),
            "batch_col": self.batch_col,
            "options": self.options.to_dict(),
            "min_key_rows": self.min_key_rows,
            "apply_at": self.apply_at,
            "handle_invalid": self.handle_invalid,
            "output_cols": None if self.output_cols is None else list(self.output_cols),
        }

    def write(self, path: str, *, overwrite: bool = False) -> None:
        """Write the model under ``path``: ``states/`` (Parquet), ``global_history/``
        (Parquet: batch value, state JSON), ``global.json`` and ``keyed.json`` (last, so a
        reader never sees a model without its parts)."""
        states = self._states()
        assert self.global_state is not None
        spark = states.sparkSession
        mode = "overwrite" if overwrite else "error"  # Connect knows "error", not "errorifexists"
        fs, root = _filesystem(path, spark)
        states.write.mode(mode).parquet(_under(path, "states"))
        history = [(v, s.to_json()) for v, s in (self.global_history or [])]
        batch_type: T.DataType = T.StringType()
        if self.batch_col is not None and self.global_history:
            batch_type = states.schema[self.batch_col].dataType
        schema = T.StructType(
            [T.StructField("batch", batch_type, True), T.StructField("state", T.StringType())]
        )
        spark.createDataFrame(history, schema).coalesce(1).write.mode(mode).parquet(
            _under(path, "global_history")
        )
        write_state(self.global_state, fs.join(root, "global.json"), spark)
        fs.write_atomic(fs.join(root, "keyed.json"), _json_bytes(self._metadata()))

    @classmethod
    def read(cls, spark: SparkSession, path: str) -> KeyedModel:
        """A model written by :meth:`write`; its states stay in Spark (read as Parquet)."""
        fs, root = _filesystem(path, spark)
        meta = _read_json(fs, fs.join(root, "keyed.json"), KEYED_MODEL_TYPE)
        state_text = fs.read_bytes(fs.join(root, "global.json"))
        if state_text is None:
            raise CorruptStateError(f"{path} has no global.json")
        version = meta.get("schema_version", 1)
        if version not in (1, STATES_VERSION):
            raise CorruptStateError(
                f"{path} holds a keyed model of schema_version {version!r}; this version "
                f"reads 1 and {STATES_VERSION}"
            )
        rows = spark.read.parquet(_under(path, "global_history")).collect()
        history = [(r["batch"], MXNormState.from_json(r["state"])) for r in rows]
        history.sort(key=lambda item: item[0])
        outs = meta.get("output_cols")
        options = StateOptions(**meta["options"])
        states = spark.read.parquet(_under(path, "states"))
        if version == 1:
            head = [*meta["key_cols"], *([meta["batch_col"]] if meta["batch_col"] else [])]
            states = _flat_states(states, head, len(meta["features"]), options)
        return cls(
            features=tuple(meta["features"]),
            key_cols=tuple(meta["key_cols"]),
            batch_col=meta["batch_col"],
            options=options,
            min_key_rows=int(meta["min_key_rows"]),
            apply_at=meta["apply_at"],
            handle_invalid=meta["handle_invalid"],
            output_cols=None if outs is None else tuple(outs),
            global_state=MXNormState.from_json(state_text, source=f"{path}/global.json"),
            global_history=history,
            states=states,
        )

    def export(self, path: str, *, overwrite: bool = False) -> None:
        """The serving export: ``keys.parquet`` (one row per key and feature: the key
        columns, ``feature``, ``feature_index``, ``mean``, ``var``, ``scale``, ``count``,
        ``last_batch``), ``global.json`` (the final global state) and ``keyed.json`` (the
        export's params, written last), read by :func:`mxnorm_spark.serving.load`."""
        states = self.key_states
        spark = states.sparkSession
        fs, root = _filesystem(path, spark)
        last = quote(self.batch_col) if self.batch_col else F.lit(None).cast("string")
        table = export_table(states, self.key_cols, self.features, last)
        table.write.mode("overwrite" if overwrite else "error").parquet(
            _under(path, "keys.parquet")
        )
        assert self.global_state is not None
        write_state(self.global_state, fs.join(root, "global.json"), spark)
        # The export's own layout (keys.parquet) is still its first.
        meta = {**self._metadata(), "type": KEYED_EXPORT_TYPE, "schema_version": 1}
        fs.write_atomic(fs.join(root, "keyed.json"), _json_bytes(meta))


def pick_and_normalize(
    joined: DataFrame,
    spec: Any,
    outputs: Sequence[str],
    *,
    min_key_rows: int,
    handle_invalid: str,
) -> DataFrame:
    """Normalize ``joined``'s features, each with its key's constants (``__mx_km``,
    ``__mx_ks``) where the key has ``max(min_key_rows, 1)`` valid values of it (``__mx_n``),
    else the global ones (``__mx_gm``, ``__mx_gs``); the helper columns are dropped."""
    k = len(outputs)
    thr = max(min_key_rows, 1)
    pick = [
        f"CASE WHEN get(__mx_n, {j}) >= {thr} THEN get(__mx_km, {j}) ELSE get(__mx_gm, {j}) END"
        for j in range(k)
    ]
    pick_s = [p.replace("__mx_km", "__mx_ks").replace("__mx_gm", "__mx_gs") for p in pick]
    joined = joined.withColumns(
        {
            "__mx_m": F.expr(f"array({', '.join(pick)})"),
            "__mx_s": F.expr(f"array({', '.join(pick_s)})"),
        }
    )
    if handle_invalid == "skip":
        texts = sql_values(spec, k)
        joined = joined.where(" AND ".join(sql_is_finite(x) for x in texts))
    constants = Constants(k, mean_col="__mx_m", scale_col="__mx_s")
    out = sql_engine.normalize_scalars(
        joined, spec, list(outputs), constants, check=handle_invalid == "error"
    )
    temp = ["__mx_n", "__mx_km", "__mx_ks", "__mx_gm", "__mx_gs", "__mx_m", "__mx_s"]
    return out.drop(*temp)


def export_table(
    states: DataFrame, key_cols: Sequence[str], features: Sequence[str], last: Any
) -> DataFrame:
    """The serving export's rows of ``states`` (one row per key, with the columns
    ``f{j}_count``, ``f{j}_mean``, ``f{j}_var``, ``f{j}_scale``): one row per key and
    feature, with the key's final ``mean``, ``var``, ``scale``, ``count`` and ``last``
    (a column: the key's last batch)."""
    entries = [
        F.struct(
            F.lit(f).alias("feature"),
            F.lit(j).alias("feature_index"),
            *(F.col(f"f{j}_{field}").alias(field) for field in ("mean", "var", "scale", "count")),
        )
        for j, f in enumerate(features)
    ]
    keys = [quote(k) for k in key_cols]
    long = states.select(*keys, last.alias("last_batch"), F.inline(F.array(*entries)))
    return long.select(*keys, *EXPORT_COLUMNS)


def _join_key_constants(
    df: DataFrame, states: DataFrame, model: KeyedModel, by_batch: bool
) -> DataFrame:
    """``df`` with ``__mx_n`` (the key's valid values so far), ``__mx_km``, ``__mx_ks``
    (its constants), all null where the key has no state yet.

    An as-of lookup in one shuffle: rows and states, partitioned by key and ordered by
    batch; each row takes the last state before it. A state row sorts before the rows of
    its batch with ``apply_at="after"``, after them with ``"before"`` (the state after the
    key's latest earlier batch is its state before this one). Point in time correct:
    none before a key's first batch; without a batch column, the key's final state.
    """
    keys, batch = model.key_cols, model.batch_col
    n_features = len(model.features)
    types = {f.name: f.dataType for f in df.schema.fields}
    chosen = states if by_batch else states.where(F.col("is_last"))

    def per_feature(field: str) -> Column:
        return F.array(*[F.col(f"f{j}_{field}") for j in range(n_features)])

    after = not (by_batch and model.apply_at == "before")
    st = chosen.select(
        *[quote(k).cast(types[k]).alias(k) for k in keys],
        *([quote(str(batch)).cast(types[str(batch)]).alias(str(batch))] if by_batch else []),
        F.lit(0 if after else 2).alias("__mx_src"),
        F.struct(
            per_feature("count").alias("n"),
            per_feature("mean").alias("m"),
            per_feature("scale").alias("s"),
        ).alias("__mx_st"),
    )
    rows = df.withColumn("__mx_src", F.lit(1))
    both = rows.unionByName(st, allowMissingColumns=True)
    order = [quote(str(batch)), F.col("__mx_src")] if by_batch else [F.col("__mx_src")]
    w = (
        Window.partitionBy(*[quote(k) for k in keys])
        .orderBy(*order)
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    both = both.withColumn("__mx_st", F.last("__mx_st", ignorenulls=True).over(w))
    out = both.where(F.col("__mx_src") == 1).drop("__mx_src")
    s = F.col("__mx_st")
    out = out.withColumns({"__mx_n": s["n"], "__mx_km": s["m"], "__mx_ks": s["s"]})
    return out.drop("__mx_st")


def _flat_states(
    states: DataFrame, head: Sequence[str], n_features: int, options: StateOptions
) -> DataFrame:
    """A states table of schema_version 1 (one array per field, named as the kernel's
    values: ``count``, ``mean``, ``after_scale``, ``totals_shift``, ...) in the flat
    layout of :data:`STATES_VERSION`."""
    names = [(j, f) for j in range(n_features) for f in fields(options)]
    flat = [F.get(F.col(SOURCE[f]), j).alias(f"f{j}_{f}") for j, f in names]
    return states.select(*[quote(c) for c in head], *SCALARS, *flat)


def _filesystem(path: str, spark: SparkSession) -> tuple[Any, str]:
    fs = filesystem(path, spark)
    root = local_path(path) if isinstance(fs, LocalFileSystem) else path
    fs.mkdirs(root)
    return fs, root


def _under(path: str, name: str) -> str:
    """A Spark data path under ``path`` (Spark's own readers and writers reach it)."""
    return path.rstrip("/") + "/" + name


def _json_bytes(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _read_json(fs: Any, path: str, type_tag: str) -> dict[str, Any]:
    data = fs.read_bytes(path)
    if data is None:
        raise CorruptStateError(f"{path} does not exist: not a saved keyed model")
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise CorruptStateError(f"{path} is not valid JSON ({exc})") from exc
    found = doc.get("type") if isinstance(doc, dict) else type(doc).__name__
    if found != type_tag:
        raise CorruptStateError(f"{path} is not a {type_tag} (type tag {found!r})")
    return dict(doc)
