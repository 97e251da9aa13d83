"""MXNorm as a Spark ML Estimator (:class:`MXNorm`) and Model (:class:`MXNormModel`).

``MXNorm.fit(df)`` computes the moments in one distributed pass
(:mod:`mxnorm_spark.batch.aggregate`) and folds them into an :class:`MXNormState`:

* without ``batchCol`` the whole input is one batch;
* with ``batchCol`` every distinct value is one batch, taken in ascending order (a
  backfill); the model keeps the state after each batch in columns, and
  ``model.history`` lists them as ``(batch value, state)`` pairs when asked.

``MXNormModel.transform(df)`` normalizes with :mod:`mxnorm_spark.batch.apply`:

* a row whose ``batchCol`` value was seen in fit uses the state of its batch: with
  ``applyAt="after"`` the state after that batch, with ``"before"`` the state before it
  (point-in-time correct; features with no state yet use the batch's own moments);
* every other row (no ``batchCol`` set, the column absent from ``df``, a null or a batch
  value not seen in fit) uses the final state, which is the state "before" any new batch.

Persistence writes the params with Spark's ``DefaultParamsWriter``, the state as the
checksummed JSON of :meth:`MXNormState.to_json` and a backfill's history in columns
(Parquet arrays, one row per batch value; never pickle), so ``model.write().save``,
``MXNormModel.load`` and ``Pipeline`` save/load all round-trip bit for bit
(:mod:`mxnorm_spark.ml._persistence`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import mxnorm_spark.spark_extra  # noqa: F401  (before pyspark: names the [spark] extra if missing)

import numpy as np
import pyarrow as pa
from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasInputCols, HasOutputCol, HasOutputCols
from pyspark.ml.util import (
    DefaultParamsReadable,
    DefaultParamsWritable,
    MLReadable,
    MLReader,
    MLWritable,
    MLWriter,
)
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from mxnorm_spark.batch.aggregate import (
    batch_moments_and_rows,
    check_engine,
    moments_table_by_batch,
    resolve_input,
    vector_names,
)
from mxnorm_spark.batch.apply import BackfillHistory, normalize, normalize_per_batch
from mxnorm_spark.core.choices import (
    APPLY_AT,
    DECAYS,
    ENGINES,
    VAR_UPDATES,
    ZERO_VARIANCE_POLICIES,
    check_choice,
)
from mxnorm_spark.core.errors import EmptyInputError, InvalidParameterError
from mxnorm_spark.core.moments import Moments
from mxnorm_spark.core.state import (
    MXNormState,
    StateOptions,
    alpha_from_half_life,
    check_alpha,
    check_eps,
)
from mxnorm_spark.ml._params import HasBatchParams, choice_converter
from mxnorm_spark.ml._persistence import EstimatorWriter, ModelReader, ModelWriter
from mxnorm_spark.ml.keyed import fit_keyed_model, to_min_key_rows

__all__ = ["MXNorm", "MXNormModel"]


# ---- typed converters (they validate, so a bad value fails at set time) ------------------
def _to_alpha(value: Any) -> float | str:
    if value is None or value == "cumulative":
        return "cumulative"
    a = check_alpha(value)
    assert a is not None
    return a


def _to_eps(value: Any) -> float:
    return check_eps(value)


class _MXNormParams(HasInputCol, HasOutputCol, HasInputCols, HasOutputCols, HasBatchParams):
    """Params shared by :class:`MXNorm` and :class:`MXNormModel`."""

    alpha: Param[Any] = Param(
        Params._dummy(),
        "alpha",
        "EMA weight of each batch, in (0, 1]; 'cumulative' (or None) for exact running "
        "moments over every batch",
        typeConverter=_to_alpha,
    )
    epsilon: Param[float] = Param(
        Params._dummy(),
        "epsilon",
        "added to the variance before the square root, > 0",
        typeConverter=_to_eps,
    )
    varUpdate: Param[str] = Param(
        Params._dummy(),
        "varUpdate",
        "'ema' (reference) or 'mixture' (adds the movement of the mean)",
        typeConverter=choice_converter("varUpdate", VAR_UPDATES),
    )
    decay: Param[str] = Param(
        Params._dummy(),
        "decay",
        "'batch' (alpha per batch) or 'rows' (alpha per row: 1 - (1 - alpha)^n)",
        typeConverter=choice_converter("decay", DECAYS),
    )
    zeroVariance: Param[str] = Param(
        Params._dummy(),
        "zeroVariance",
        "zero-variance policy: 'eps' (divide by sqrt(eps)), 'unit' (scale 1), 'zero'",
        typeConverter=choice_converter("zeroVariance", ZERO_VARIANCE_POLICIES),
    )
    engine: Param[str] = Param(
        Params._dummy(),
        "engine",
        "'auto' (the faster per input kind), 'sql' (JVM expressions) or 'arrow' (Arrow "
        "batches in Python)",
        typeConverter=choice_converter("engine", ENGINES),
    )

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._setDefault(
            alpha=0.1,
            epsilon=1e-8,
            applyAt="after",
            handleInvalid="keep",
            varUpdate="ema",
            decay="batch",
            zeroVariance="eps",
            engine="auto",
        )

    def getAlpha(self) -> float | str:
        return self.getOrDefault(self.alpha)  # type: ignore[no-any-return]

    def getEpsilon(self) -> float:
        return self.getOrDefault(self.epsilon)

    def getVarUpdate(self) -> str:
        return self.getOrDefault(self.varUpdate)

    def getDecay(self) -> str:
        return self.getOrDefault(self.decay)

    def getZeroVariance(self) -> str:
        return self.getOrDefault(self.zeroVariance)

    def getEngine(self) -> str:
        return self.getOrDefault(self.engine)

    # Setters for what a fitted model may still change (fit-only options are on MXNorm).
    def setInputCols(self, value: list[str]) -> Any:
        return self._set(inputCols=value)

    def setOutputCols(self, value: list[str]) -> Any:
        return self._set(outputCols=value)

    def setInputCol(self, value: str) -> Any:
        return self._set(inputCol=value)

    def setOutputCol(self, value: str) -> Any:
        return self._set(outputCol=value)

    def setBatchCol(self, value: str) -> Any:
        return self._set(batchCol=value)

    def setApplyAt(self, value: str) -> Any:
        return self._set(applyAt=value)

    def setHandleInvalid(self, value: str) -> Any:
        return self._set(handleInvalid=value)

    def setEngine(self, value: str) -> Any:
        return self._set(engine=value)

    def _columns(
        self, required: bool
    ) -> tuple[list[str] | None, list[str] | None, str | None, str | None]:
        """``(cols, output_cols, input_col, output_col)`` from the params, checked."""
        many, one = self.isSet(self.inputCols), self.isSet(self.inputCol)
        if many and one:
            raise InvalidParameterError(
                "set either inputCols (scalar numeric columns) or inputCol (one vector or "
                "array column), not both"
            )
        if many:
            if self.isSet(self.outputCol):
                raise InvalidParameterError("outputCol goes with inputCol; use outputCols")
            cols = list(self.getInputCols())
            outs = list(self.getOutputCols()) if self.isSet(self.outputCols) else None
            if outs is not None and len(outs) != len(cols):
                raise InvalidParameterError(
                    f"outputCols must have one name per input column: inputCols has "
                    f"{len(cols)} {cols} but outputCols has {len(outs)} {outs}"
                )
            return cols, outs, None, None
        if one:
            if self.isSet(self.outputCols):
                raise InvalidParameterError("outputCols goes with inputCols; use outputCol")
            return None, None, self.getInputCol(), self.getOutputCol()
        if required:
            raise InvalidParameterError(
                "set inputCols (scalar numeric columns) or inputCol (one vector or array "
                "column) before fit"
            )
        # A model made from a state alone: its features, under the given output names.
        outs = list(self.getOutputCols()) if self.isSet(self.outputCols) else None
        return None, outs, None, self.getOutputCol() if self.isSet(self.outputCol) else None

    def _state_options(self) -> StateOptions:
        return StateOptions(
            alpha=check_alpha(self.getAlpha()),
            eps=self.getEpsilon(),
            var_update=self.getVarUpdate(),  # type: ignore[arg-type]  # checked by its Param
            decay=self.getDecay(),  # type: ignore[arg-type]
            zero_variance=self.getZeroVariance(),  # type: ignore[arg-type]
        )


# ---- the estimator -------------------------------------------------------------------------
class MXNorm(
    Estimator["MXNormModel"], _MXNormParams, DefaultParamsReadable["MXNorm"], DefaultParamsWritable
):
    """Fits an MXNorm state on a DataFrame (one batch, or one per ``batchCol`` value).

    >>> est = MXNorm(inputCols=["a", "b"], outputCols=["za", "zb"], batchCol="day")
    >>> est.getApplyAt(), est.getAlpha(), est.getBatchCol()
    ('after', 0.1, 'day')
    >>> try:
    ...     MXNorm(applyAt="later")
    ... except ValueError as e:
    ...     print(e)
    applyAt must be one of ['after', 'before'], got 'later'
    """

    keyCols: Param[list[str]] = Param(
        Params._dummy(),
        "keyCols",
        "columns naming an entity: one state per key (fit returns a KeyedMXNormModel)",
        typeConverter=TypeConverters.toListString,
    )
    minKeyRows: Param[int] = Param(
        Params._dummy(),
        "minKeyRows",
        "with keyCols: a key's feature uses the global state until it has this many values",
        typeConverter=to_min_key_rows,
    )

    @keyword_only
    def __init__(
        self,
        *,
        inputCols: list[str] | None = None,
        outputCols: list[str] | None = None,
        inputCol: str | None = None,
        outputCol: str | None = None,
        alpha: float | str | None = 0.1,
        halfLife: float | None = None,
        epsilon: float = 1e-8,
        batchCol: str | None = None,
        applyAt: str = "after",
        handleInvalid: str = "keep",
        varUpdate: str = "ema",
        decay: str = "batch",
        zeroVariance: str = "eps",
        engine: str = "auto",
        keyCols: list[str] | None = None,
        minKeyRows: int = 1,
    ) -> None:
        super().__init__()
        self._setDefault(minKeyRows=1)
        self._set(**self._input_kwargs)  # type: ignore[attr-defined]

    @keyword_only
    def setParams(
        self,
        *,
        inputCols: list[str] | None = None,
        outputCols: list[str] | None = None,
        inputCol: str | None = None,
        outputCol: str | None = None,
        alpha: float | str | None = 0.1,
        halfLife: float | None = None,
        epsilon: float = 1e-8,
        batchCol: str | None = None,
        applyAt: str = "after",
        handleInvalid: str = "keep",
        varUpdate: str = "ema",
        decay: str = "batch",
        zeroVariance: str = "eps",
        engine: str = "auto",
        keyCols: list[str] | None = None,
        minKeyRows: int = 1,
    ) -> MXNorm:
        return self._set(**self._input_kwargs)  # type: ignore[attr-defined,no-any-return]

    def setAlpha(self, value: float | str | None) -> MXNorm:
        return self._set(alpha="cumulative" if value is None else value)  # type: ignore[no-any-return]

    def setHalfLife(self, value: float) -> MXNorm:
        """Set ``alpha`` from a half-life in batches (rows with ``decay='rows'``):
        ``alpha = 1 - 0.5 ** (1 / halfLife)``."""
        return self._set(halfLife=value)  # type: ignore[no-any-return]

    def setEpsilon(self, value: float) -> MXNorm:
        return self._set(epsilon=value)  # type: ignore[no-any-return]

    def setVarUpdate(self, value: str) -> MXNorm:
        return self._set(varUpdate=value)  # type: ignore[no-any-return]

    def setDecay(self, value: str) -> MXNorm:
        return self._set(decay=value)  # type: ignore[no-any-return]

    def setZeroVariance(self, value: str) -> MXNorm:
        return self._set(zeroVariance=value)  # type: ignore[no-any-return]

    def setKeyCols(self, value: list[str]) -> MXNorm:
        return self._set(keyCols=value)  # type: ignore[no-any-return]

    def setMinKeyRows(self, value: int) -> MXNorm:
        return self._set(minKeyRows=value)  # type: ignore[no-any-return]

    def write(self) -> MLWriter:
        return EstimatorWriter(self)

    def _set(self, **kwargs: Any) -> Any:
        # None for alpha means "cumulative"; other None values mean "leave unset".
        if "alpha" in kwargs and kwargs["alpha"] is None:
            kwargs["alpha"] = "cumulative"
        half_life = kwargs.pop("halfLife", None)
        if half_life is not None:
            # halfLife is another way to give alpha (not a Param: the model keeps alpha).
            alpha = alpha_from_half_life(half_life)
            if kwargs.get("alpha", 0.1) not in (0.1, alpha):
                raise InvalidParameterError("give alpha or halfLife, not both")
            kwargs["alpha"] = alpha
        return super()._set(**{k: v for k, v in kwargs.items() if v is not None})

    def _fit(self, dataset: DataFrame) -> MXNormModel:
        cols, _, input_col, _ = self._columns(required=True)
        engine = self.getEngine()
        check_engine(engine)
        batch_col = self.getBatchCol()
        resolve_input(dataset, cols, input_col)
        # Validate every option before any Spark job.
        options = self._state_options()
        if self.isSet(self.keyCols):
            if cols is None:
                raise InvalidParameterError("keyCols takes scalar inputCols, not inputCol")
            key_cols = self.getOrDefault(self.keyCols)
            keyed = fit_keyed_model(dataset, cols, key_cols, batch_col, options, engine=engine)
            # One state per key: a different model class than the Estimator's type names.
            return self._copyValues(keyed)  # type: ignore[no-any-return,return-value]
        history: Sequence[tuple[Any, MXNormState]] = []
        fitted: list[tuple[Moments, int]] = []
        batch_type: T.DataType | None = None
        if batch_col is None:
            moments, rows = batch_moments_and_rows(
                dataset, cols, input_col=input_col, engine=engine
            )
            state = _fresh(cols, input_col, moments.n_features, options)
            state = state.update(moments)
            fitted.append((moments, rows))
        else:
            # One merged row per batch value reaches the driver; the fold and the history
            # stay columnar (no object per batch value): see BackfillHistory.
            table = moments_table_by_batch(
                dataset, cols, batch_col, input_col=input_col, engine=engine
            )
            batch_type = dataset.schema[batch_col].dataType
            start = _fresh(cols, input_col, table.n_features, options)
            history = BackfillHistory.fold(start, table)
            state = history.final
        never = [f for f, ok in zip(state.features, state.initialized, strict=True) if not ok]
        if never:
            raise EmptyInputError(
                f"feature(s) {never} have no valid value (only null, NaN or inf) in the fit "
                "data, so they cannot be normalized; drop them or fix the data"
            )
        model = MXNormModel(state, history, batch_type, batch_moments=fitted)
        return self._copyValues(model)  # type: ignore[no-any-return]


def _fresh(
    cols: list[str] | None, input_col: str | None, k: int, options: StateOptions
) -> MXNormState:
    features = list(cols) if cols is not None else vector_names(str(input_col), k)
    return MXNormState.create(features, options=options)


def _columnar(
    history: Sequence[tuple[Any, MXNormState]] | None, batch_type: T.DataType | None
) -> Sequence[tuple[Any, MXNormState]]:
    """``history`` as a :class:`BackfillHistory` (arrays, no object per batch) when it is
    the states of one fold from a fresh state, as fit makes them; else as a list.

    Batch values of a timestamp (with time zone) column stay a list: as Python objects
    they are local times, which Arrow would read as UTC.
    """
    if isinstance(history, BackfillHistory) or not history:
        return history if isinstance(history, BackfillHistory) else []
    pairs = list(history)
    if batch_type is None or isinstance(batch_type, T.TimestampType):
        return pairs
    from pyspark.sql.pandas.types import to_arrow_type

    try:
        values = pa.array([v for v, _ in pairs], type=to_arrow_type(batch_type))
    except (pa.ArrowException, TypeError, ValueError):
        return pairs
    columnar = BackfillHistory.from_pairs(values, [s for _, s in pairs])
    return pairs if columnar is None else columnar


def _constants(
    state: MXNormState, fallback: MXNormState | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Normalization constants of a history state, which may lack features.

    A feature without state in a batch has no valid value in it, so its rows hold only
    null/NaN/inf; mean 0 and variance 1 pass those through unchanged.
    """

    def filled(s: MXNormState) -> MXNormState:
        return replace(
            s,
            mean=np.where(np.isnan(s.mean), 0.0, s.mean),
            var=np.where(np.isnan(s.var), 1.0, s.var),
        )

    if fallback is None:
        return filled(state).normalization_constants()
    return state.normalization_constants(filled(fallback))


# ---- the model ---------------------------------------------------------------------------
class MXNormModel(Model, _MXNormParams, MLReadable["MXNormModel"], MLWritable):
    """A fitted MXNorm state (``.state``) and, with ``batchCol``, the state after each
    batch (``.history``, ascending batch values).

    A model fresh from ``fit`` also holds each batch's moments (``.batch_moments``) and
    gives the per-batch history table (:meth:`history_table`); a backfill's model keeps
    them when saved and loaded, a model without ``batchCol`` does not.
    """

    def __init__(
        self,
        state: MXNormState | None = None,
        history: Sequence[tuple[Any, MXNormState]] | None = None,
        batch_type: T.DataType | None = None,
        *,
        batch_moments: Sequence[tuple[Moments, int]] | None = None,
    ) -> None:
        super().__init__()
        self._state = state
        self._history = _columnar(history, batch_type)
        self._batch_type = batch_type
        self._batch_moments = list(batch_moments or [])

    @classmethod
    def from_state(cls, state: MXNormState, **params: Any) -> MXNormModel:
        """A model that normalizes with ``state`` (e.g. one loaded from a state file).

        ``params`` are Param names (``inputCols``, ``outputCols``, ``inputCol``,
        ``outputCol``, ``handleInvalid``, ``engine``, ...). Without input columns the
        state's own features are used.
        """
        if not isinstance(state, MXNormState):
            raise InvalidParameterError(
                f"from_state expects an MXNormState, got {type(state).__name__}"
            )
        model = cls(state)
        unknown = sorted(k for k in params if not model.hasParam(k))
        if unknown:
            valid = sorted(p.name for p in model.params)
            raise InvalidParameterError(f"unknown param(s) {unknown}; valid: {valid}")
        model._set(
            alpha=state.alpha if state.alpha is not None else "cumulative",
            epsilon=state.eps,
            varUpdate=state.var_update,
            decay=state.decay,
            zeroVariance=state.zero_variance,
        )
        model._set(**{k: v for k, v in params.items() if v is not None})
        return model

    @property
    def state(self) -> MXNormState:
        if self._state is None:
            raise InvalidParameterError("this MXNormModel holds no state; fit or load one")
        return self._state

    @property
    def history(self) -> list[tuple[Any, MXNormState]]:
        """``(batch value, state after that batch)`` in ascending order; empty without
        ``batchCol``.

        Made on each access, one ``MXNormState`` per batch value; the model itself keeps
        the history in columns (:class:`~mxnorm_spark.batch.apply.BackfillHistory`).
        """
        return list(self._history)

    def batch_values(self) -> list[Any]:
        """The batch values of the fit in ascending order (``history``'s values, without
        making a state per value); empty without ``batchCol``."""
        if isinstance(self._history, BackfillHistory):
            return list(self._history.values)
        return [value for value, _ in self._history]

    @property
    def batch_moments(self) -> list[Moments]:
        """The moments of each batch of the fit: aligned with ``history`` with
        ``batchCol``, one (the whole input) without. Saved with a backfill's history;
        empty after loading a model without ``batchCol`` or one saved without them."""
        if isinstance(self._history, BackfillHistory):
            return self._history.moments()
        return [m for m, _ in self._batch_moments]

    def history_table(self) -> Any:
        """The fit's per-batch history as a ``pyarrow.Table`` in the shape of
        :func:`mxnorm_spark.store.history.read_history`: batch ids 0..n-1 in ascending
        batch order, ``batch_value`` the batch value as text (null without ``batchCol``).

        ``rows`` counts every row of the batch (valid or not).
        """
        import datetime as dt

        from mxnorm_spark.store.history import batch_table

        table = None
        if isinstance(self._history, BackfillHistory):
            table = self._history.history_table()
        elif self._batch_moments:
            batches = self._history or [(None, self.state)]
            when = dt.datetime.now(dt.timezone.utc)
            table = pa.concat_tables(
                batch_table(i, rows=rows, moments=m, state=s, batch_value=v, committed_at=when)
                for i, ((v, s), (m, rows)) in enumerate(
                    zip(batches, self._batch_moments, strict=True)
                )
            )
        if table is None:
            raise InvalidParameterError(
                "this MXNormModel holds no batch moments: fit keeps them and a backfill's model "
                "saves them; a model without batchCol, or saved without them, has none once loaded"
            )
        return table

    def _transform(self, dataset: DataFrame) -> DataFrame:
        cols, outs, input_col, output_col = self._columns(required=False)
        state = self.state
        opts: dict[str, Any] = {
            "cols": cols,
            "output_cols": outs,
            "input_col": input_col,
            "output_col": output_col,
            "handle_invalid": self.getHandleInvalid(),
            "engine": self.getEngine(),
        }
        batch_col = self.getBatchCol()
        if batch_col is None or not self._history or batch_col not in dataset.columns:
            return normalize(dataset, state, **opts)
        table = self._constants_table(self.getApplyAt() == "before")
        default = state.normalization_constants()
        return normalize_per_batch(
            dataset, state.features, table, default, batch_col=batch_col, **opts
        )

    def _constants_table(self, before: bool) -> Any:
        if isinstance(self._history, BackfillHistory):
            return self._history.constants(before)
        table = []
        prev: MXNormState | None = None
        for value, after in self._history:
            mean, scale = _constants(prev, after) if before and prev else _constants(after)
            table.append((value, mean, scale))
            prev = after
        return table

    def batch_constants(
        self, apply_at: str | None = None
    ) -> list[tuple[Any, np.ndarray, np.ndarray]]:
        """``(batch value, mean, scale)`` per fitted batch value, ascending: the constants
        ``transform`` uses for the rows of that batch (per ``apply_at``, by default the
        model's ``applyAt``); empty without ``batchCol``. Rows of any other batch value
        use ``state.normalization_constants()``."""
        when = self.getApplyAt() if apply_at is None else apply_at
        table = self._constants_table(check_choice("apply_at", when, APPLY_AT) == "before")
        if isinstance(table, list):
            return table
        return list(zip(table.values.to_pylist(), table.mean, table.scale, strict=True))

    def copy(self, extra: Any = None) -> MXNormModel:
        that = super().copy(extra)
        that._state, that._history, that._batch_type, that._batch_moments = (
            self._state,
            self._history,  # never changed in place
            self._batch_type,
            list(self._batch_moments),
        )
        return that  # type: ignore[no-any-return]

    # ---- persistence ----------------------------------------------------------------
    def write(self) -> MLWriter:
        return ModelWriter(self)

    @classmethod
    def read(cls) -> MLReader[MXNormModel]:
        return ModelReader(cls)


# Saved stages record their class as ``module.name`` and a Pipeline imports it from there
# when it loads: the public path keeps that record stable wherever the code lives.
MXNorm.__module__ = MXNormModel.__module__ = "mxnorm_spark.ml"
