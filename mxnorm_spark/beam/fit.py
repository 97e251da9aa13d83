"""``FitMXNorm`` and ``FitHistory``: an MXNorm state fitted on a PCollection of dict rows,
with the semantics of the Spark backfill (``MXNorm(batchCol=...).fit``).

* Without ``batch_col`` the whole input is one batch; with it, every distinct batch value
  is one batch, folded in ascending order. A batch whose rows hold no valid value of a
  feature leaves that feature's state as it was (and still counts in ``batches_seen``).
* The moments of each batch value are a ``CombinePerKey`` of :class:`MomentsCombineFn`
  (combiner lifting merges partials before the shuffle); one small record per batch value
  reaches the fold, which is :func:`~mxnorm_spark.core.history.fold_history`, bit for bit
  :meth:`MXNormState.update` per batch.
* With ``key_cols``, one state per key over the batch values in which the key has rows
  (rows with a null key value belong to no key: fit a global state beside it for them).

As on Spark, a global fit raises :class:`EmptyInputError` when a feature has no valid
value in the whole input, and a null batch value raises :class:`InvalidValueError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.transforms import combiners

from mxnorm_spark.beam.combine import MomentsCombineFn
from mxnorm_spark.beam.rows import RowSpec, check_names
from mxnorm_spark.core.errors import EmptyInputError, InvalidParameterError
from mxnorm_spark.core.history import StateHistory, fold_history
from mxnorm_spark.core.moments import FloatArray, Moments
from mxnorm_spark.core.state import MXNormState, StateOptions

__all__ = ["BatchStates", "FitHistory", "FitMXNorm", "fold_batches"]


@dataclass(frozen=True, eq=False)
class BatchStates:
    """The state after each batch value of a fit, ascending (``MXNormModel.history``).

    ``batch_col`` is None for a fit without batches (one batch, value None).
    """

    batch_col: str | None
    batch_values: tuple[Any, ...]
    history: StateHistory

    @property
    def final(self) -> MXNormState:
        return self.history.state(-1)

    def constants(self, before: bool) -> dict[Any, tuple[FloatArray, FloatArray]]:
        """Each batch value's ``(mean, scale)``, as the Spark model normalizes its rows."""
        mean, scale = self.history.constants(before)
        return {v: (mean[i], scale[i]) for i, v in enumerate(self.batch_values)}


def _sorted_batches(
    pairs: Iterable[tuple[Any, Moments]], batch_col: str | None
) -> list[tuple[Any, Moments]]:
    try:
        return sorted(pairs, key=lambda p: p[0])
    except TypeError as exc:
        raise InvalidParameterError(
            f"the values of batch column {batch_col!r} cannot be ordered ({exc}); give it one "
            "comparable type (numbers, strings or dates)"
        ) from None


def fold_batches(
    start: MXNormState, pairs: Iterable[tuple[Any, Moments]], batch_col: str | None
) -> BatchStates | None:
    """``start`` updated with each ``(batch value, Moments)`` in ascending batch order;
    None when there is no batch at all."""
    ordered = _sorted_batches(pairs, batch_col)
    if not ordered:
        return None
    fields = tuple(np.stack(f) for f in zip(*(m.fields() for _, m in ordered), strict=True))
    history = fold_history(start, fields)  # type: ignore[arg-type]
    return BatchStates(batch_col, tuple(v for v, _ in ordered), history)


def _global_fold(
    pairs: list[tuple[Any, Moments]], start: MXNormState, batch_col: str | None
) -> BatchStates:
    states = fold_batches(start, pairs, batch_col)
    if states is None:
        raise EmptyInputError(
            "the input has no rows, so no feature can be normalized; fit on data with rows"
        )
    final = states.final
    never = [f for f, ok in zip(final.features, final.initialized, strict=True) if not ok]
    if never:
        raise EmptyInputError(
            f"feature(s) {never} have no valid value (only null, NaN or inf) in the fit "
            "data, so they cannot be normalized; drop them or fix the data"
        )
    return states


def _key_fold(
    item: tuple[tuple[Any, ...], Iterable[tuple[Any, Moments]]],
    start: MXNormState,
    batch_col: str | None,
    history: bool,
) -> tuple[tuple[Any, ...], MXNormState | BatchStates]:
    key, pairs = item
    states = fold_batches(start, pairs, batch_col)
    assert states is not None  # a key exists only through its rows
    return key, states if history else states.final


class _FitBase(beam.PTransform):  # type: ignore[misc]
    def __init__(
        self,
        cols: Sequence[str],
        batch_col: str | None = None,
        options: StateOptions | None = None,
        key_cols: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.spec = RowSpec(
            _names(cols),
            batch_col,
            None if key_cols is None else tuple(key_cols),
        )
        if options is not None and not isinstance(options, StateOptions):
            raise InvalidParameterError(
                f"options must be a StateOptions, got {type(options).__name__}"
            )
        self.options = options or StateOptions()

    def _start(self) -> MXNormState:
        return MXNormState.create(self.spec.cols, options=self.options)

    def _per_key(self, rows: beam.pvalue.PCollection, history: bool) -> beam.pvalue.PCollection:
        spec = self.spec
        return (
            rows
            | "KeyBatchValues" >> beam.FlatMap(_keyed_values, spec)
            | "MomentsPerKeyBatch" >> beam.CombinePerKey(MomentsCombineFn(spec.cols))
            | "ByKey" >> beam.Map(lambda kv: (kv[0][0], (kv[0][1], kv[1])))
            | "Group" >> beam.GroupByKey()
            | "FoldPerKey" >> beam.Map(_key_fold, self._start(), spec.batch_col, history)
        )

    def _per_batch(self, rows: beam.pvalue.PCollection) -> beam.pvalue.PCollection:
        spec = self.spec
        return (
            rows
            | "BatchAndValues" >> beam.Map(lambda r: (spec.batch(r), spec.values(r)))
            | "MomentsPerBatch" >> beam.CombinePerKey(MomentsCombineFn(spec.cols))
        )


class FitHistory(_FitBase):
    """A PTransform from dict rows to one :class:`BatchStates`: the global state after
    every batch value (what :class:`Normalize` needs for ``apply_at`` per batch); with
    ``key_cols``, ``(key, BatchStates)`` pairs: each key's state after each of its batches
    (what a per-key :class:`Normalize` needs to look each row's key up as of its batch)."""

    def expand(self, rows: beam.pvalue.PCollection) -> beam.pvalue.PCollection:
        if self.spec.key_cols is not None:
            return self._per_key(rows, history=True)
        return (
            self._per_batch(rows)
            | "AllBatches" >> combiners.ToList()
            | "Fold" >> beam.Map(_global_fold, self._start(), self.spec.batch_col)
        )


class FitMXNorm(_FitBase):
    """A PTransform from dict rows to the fitted MXNorm state.

    Without ``key_cols``: one :class:`MXNormState`, the state after the last batch value.
    With ``key_cols``: ``(key, MXNormState)`` pairs, ``key`` the tuple of the key values.

    >>> import apache_beam as beam
    >>> from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    >>> rows = [{"day": d, "x": float(x)} for d, x in [(1, 0), (1, 2), (2, 4), (2, 8)]]
    >>> with beam.Pipeline(runner=FnApiRunner()) as p:
    ...     _ = (p | beam.Create(rows)
    ...          | FitMXNorm(["x"], batch_col="day", options=StateOptions(alpha=0.5))
    ...          | beam.Map(lambda s: print(s.mean.tolist(), s.var.tolist())))
    [3.5] [2.5]
    """

    def expand(self, rows: beam.pvalue.PCollection) -> beam.pvalue.PCollection:
        if self.spec.key_cols is None:
            return (
                rows
                | "FitHistory" >> FitHistory(self.spec.cols, self.spec.batch_col, self.options)
                | "Final" >> beam.Map(lambda h: h.final)
            )
        return self._per_key(rows, history=False)


def _keyed_values(row: Any, spec: RowSpec) -> Iterable[tuple[tuple[Any, Any], tuple[Any, ...]]]:
    key = spec.key(row)
    if key is not None:  # a null key value: no entity (the global state counts the row)
        yield (key, spec.batch(row)), spec.values(row)


def _names(cols: Sequence[str]) -> tuple[str, ...]:
    names = check_names(cols, "cols")
    assert names is not None
    return names
