"""``Normalize``: dict rows normalized with a fitted state, on Beam, with the rules and
the bits of the Spark model and of :mod:`mxnorm_spark.serving`.

* A global state is a side input: an :class:`MXNormState` (every row uses it), or the
  :class:`BatchStates` of :class:`FitHistory`, where a row whose batch value was fitted uses
  the state of its batch (``apply_at="after"``: after that batch; ``"before"``: before it,
  point-in-time correct) and every other row the final state, as ``MXNormModel.transform``.
* Per-key states (``(key, MXNormState)`` pairs of ``FitMXNorm(key_cols=...)``) are joined
  to the rows by key with ``CoGroupByKey`` (a shuffle, not a side-input dict, so a million
  keys fit). Feature by feature a row uses its key's constants when the key has at least
  ``max(min_key_rows, 1)`` valid values of it, else the global state's: keys without
  state, null key values, features a key has too few values of. Each key's final state
  is used (as :class:`~mxnorm_spark.serving.KeyedNormalizer` does); with histories
  (``FitHistory`` with a batch column, for the global state and per key) each row takes
  its key's state as of its batch, as the Spark keyed backfill does (:mod:`.as_of`).
* ``handle_invalid``: ``keep`` (null stays null, NaN NaN, inf inf), ``skip`` (drop the
  row) or ``error`` (:class:`InvalidValueError` naming the column and the value kind).

Each row goes through :class:`~mxnorm_spark.serving.Normalizer` /
:class:`~mxnorm_spark.serving.KeyedNormalizer` (or their row function with a batch's
constants), so the output is the serving output bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
import numpy as np

from mxnorm_spark.beam.as_of import KeyAsOf
from mxnorm_spark.beam.fit import BatchStates
from mxnorm_spark.beam.rows import KeySpec, check_names
from mxnorm_spark.core.choices import APPLY_AT, HANDLE_INVALID, check_choice
from mxnorm_spark.core.errors import InvalidParameterError
from mxnorm_spark.core.state import MXNormState, scale_of
from mxnorm_spark.serving import KeyedNormalizer, Normalizer
from mxnorm_spark.serving.values import normalize_row

__all__ = ["Normalize"]

Row = dict[str, Any]


class _Plan:
    """What one global side input normalizes with: the final state's normalizer and,
    for a :class:`BatchStates`, each fitted batch value's row items."""

    def __init__(
        self,
        fitted: MXNormState | BatchStates,
        cols: tuple[str, ...] | None,
        outputs: tuple[str, ...] | None,
        handle_invalid: str,
        before: bool,
    ) -> None:
        if isinstance(fitted, BatchStates):
            state, self.batch_col = fitted.final, fitted.batch_col
        elif isinstance(fitted, MXNormState):
            state, self.batch_col = fitted, None
        else:
            raise InvalidParameterError(
                "Normalize takes a PCollection of one MXNormState (FitMXNorm) or one "
                f"BatchStates (FitHistory), got a {type(fitted).__name__}"
            )
        self.final = Normalizer(
            state, input_cols=cols, output_cols=outputs, handle_invalid=handle_invalid
        )
        self.handle_invalid = handle_invalid
        self.cols = tuple(cols or state.features)
        self.outputs = tuple(outputs or self.cols)
        self.per_batch: dict[Any, list[tuple[str, str, float, float]]] = {}
        if isinstance(fitted, BatchStates) and fitted.batch_col is not None:
            for value, (mean, scale) in fitted.constants(before).items():
                self.per_batch[value] = list(
                    zip(self.cols, self.outputs, mean.tolist(), scale.tolist(), strict=True)
                )

    def row(self, row: Mapping[str, Any]) -> Row | None:
        if self.per_batch:
            items = self.per_batch.get(row.get(self.batch_col))  # type: ignore[arg-type]
            if items is not None:
                return normalize_row(row, items, self.handle_invalid, self.cols)
        return self.final.transform_row(row)


class _NormalizeGlobal(beam.DoFn):  # type: ignore[misc]
    def __init__(self, settings: tuple[Any, ...]) -> None:
        self.settings = settings
        self._plan: tuple[Any, _Plan] | None = None

    def plan(self, fitted: Any) -> _Plan:
        # The side input is the same object within a worker: build its plan once.
        if self._plan is None or self._plan[0] is not fitted:
            self._plan = (fitted, _Plan(fitted, *self.settings))
        return self._plan[1]

    def process(self, row: Mapping[str, Any], fitted: Any) -> Iterator[Row]:
        out = self.plan(fitted).row(row)
        if out is not None:
            yield out


class _NormalizeKey(beam.DoFn):  # type: ignore[misc]
    """One key's rows, with its state (if any) and the global state (side input)."""

    def __init__(
        self, key_cols: tuple[str, ...], settings: tuple[Any, ...], min_key_rows: int
    ) -> None:
        self.key_cols = key_cols
        self.settings = settings
        self.min_key_rows = min_key_rows

    def process(
        self, item: tuple[tuple[Any, ...], Mapping[str, Iterable[Any]]], fitted: Any
    ) -> Iterator[Row]:
        key, joined = item
        states = list(joined["state"])
        if len(states) > 1:
            raise InvalidParameterError(
                f"key {key!r} has {len(states)} states; give Normalize one state per key"
            )
        state = states[0] if states else None
        norm: KeyedNormalizer | KeyAsOf
        if _as_of(fitted):
            if state is not None and not isinstance(state, BatchStates):
                raise InvalidParameterError(
                    "with a global history (FitHistory with a batch column) the key states must "
                    "be histories too: FitHistory(cols, batch_col, key_cols=...)"
                )
            norm = _key_as_of(fitted, state, self.settings, self.min_key_rows)
        else:
            norm = _keyed_normalizer(
                _global_state(fitted),
                key_cols=self.key_cols,
                key=key,
                state=state.final if isinstance(state, BatchStates) else state,
                settings=self.settings,
                min_key_rows=self.min_key_rows,
            )
        for row in joined["rows"]:
            out = norm.transform_row(row)
            if out is not None:
                yield out


def _as_of(fitted: Any) -> bool:
    """A global history with a batch column: rows are normalized as of their batch."""
    return isinstance(fitted, BatchStates) and fitted.batch_col is not None


def _key_as_of(
    fitted: BatchStates, state: BatchStates | None, settings: tuple[Any, ...], min_key_rows: int
) -> KeyAsOf:
    _, outputs, handle_invalid, before = settings
    return KeyAsOf(
        fitted,
        state,
        outputs=outputs,
        handle_invalid=handle_invalid,
        before=before,
        min_key_rows=min_key_rows,
    )


def _global_state(fitted: Any) -> MXNormState:
    """The global fallback of a per-key normalization without batches: one state."""
    if isinstance(fitted, BatchStates):
        return fitted.final
    if not isinstance(fitted, MXNormState):
        raise InvalidParameterError(
            f"the global state of a per-key Normalize must be an MXNormState, got a "
            f"{type(fitted).__name__}"
        )
    return fitted


def _keyed_normalizer(
    glob: MXNormState,
    *,
    key_cols: tuple[str, ...],
    key: tuple[Any, ...] | None,
    state: MXNormState | None,
    settings: tuple[Any, ...],
    min_key_rows: int,
) -> KeyedNormalizer:
    _, outputs, handle_invalid, _ = settings
    if state is not None and state.features != glob.features:
        raise InvalidParameterError(
            f"key {key!r} has a state of features {list(state.features)}, the global state "
            f"{list(glob.features)}; fit both on the same columns"
        )
    keys: list[tuple[Any, ...]] = []
    mean, scale, count = np.empty((0, glob.n_features)), None, None
    if state is not None:
        assert key is not None
        keys = [key]
        mean = state.mean[None, :]
        scale = np.asarray(scale_of(state.var, state.options))[None, :]
        count = state.count[None, :]
    return KeyedNormalizer(
        glob,
        key_cols,
        keys,
        mean=mean,
        scale=mean if scale is None else scale,
        count=mean if count is None else count,
        min_key_rows=min_key_rows,
        output_cols=outputs,
        handle_invalid=handle_invalid,
    )


class Normalize(beam.PTransform):  # type: ignore[misc]
    """A PTransform from dict rows to normalized dict rows (outputs added or replaced).

    ``state``: a PCollection of one :class:`MXNormState` (``FitMXNorm``) or one
    :class:`BatchStates` (``FitHistory``). ``cols`` default to the state's features,
    ``output_cols`` to ``cols`` (in place). ``key_states`` with ``key_cols``: a PCollection
    of ``(key tuple, MXNormState)``; ``state`` is then their global fallback.
    """

    def __init__(
        self,
        state: beam.pvalue.PCollection,
        *,
        cols: Sequence[str] | None = None,
        output_cols: Sequence[str] | None = None,
        apply_at: str = "after",
        handle_invalid: str = "keep",
        key_states: beam.pvalue.PCollection | None = None,
        key_cols: Sequence[str] | None = None,
        min_key_rows: int = 1,
    ) -> None:
        super().__init__()
        self.state = state
        self.cols = check_names(cols, "cols", allow_none=True)
        self.output_cols = check_names(output_cols, "output_cols", allow_none=True)
        apply_at = check_choice("apply_at", apply_at, APPLY_AT)
        self.handle_invalid = check_choice("handle_invalid", handle_invalid, HANDLE_INVALID)
        self.before = apply_at == "before"
        if (key_states is None) != (key_cols is None):
            raise InvalidParameterError(
                "key_states and key_cols go together: the per-key states and the columns "
                "that make their keys"
            )
        if isinstance(min_key_rows, bool) or not isinstance(min_key_rows, int) or min_key_rows < 0:
            raise InvalidParameterError(f"min_key_rows must be an int >= 0, got {min_key_rows!r}")
        if key_cols is not None and self.cols is not None:
            raise InvalidParameterError(
                "with key_cols the inputs are the state's features (as in a keyed export); "
                "leave cols unset and name the outputs with output_cols"
            )
        self.key_states = key_states
        self.key_spec = None if key_cols is None else KeySpec(tuple(key_cols))
        self.min_key_rows = min_key_rows

    def expand(self, rows: beam.pvalue.PCollection) -> beam.pvalue.PCollection:
        settings = (self.cols, self.output_cols, self.handle_invalid, self.before)
        fitted = beam.pvalue.AsSingleton(self.state)
        if self.key_spec is None:
            return rows | "Normalize" >> beam.ParDo(_NormalizeGlobal(settings), fitted)
        spec = self.key_spec
        tagged = rows | "SplitByKey" >> beam.Map(lambda r: (spec.key(r), r)).with_output_types(Any)
        keyless = (
            tagged
            | "NullKeys" >> beam.Filter(lambda kr: kr[0] is None)
            | "NullKeyRows" >> beam.Map(lambda kr: kr[1])
        )
        keyed = tagged | "Keys" >> beam.Filter(lambda kr: kr[0] is not None)
        joined = {"rows": keyed, "state": self.key_states} | "JoinOnKey" >> beam.CoGroupByKey()
        by_key = joined | "PerKey" >> beam.ParDo(
            _NormalizeKey(spec.key_cols, settings, self.min_key_rows), fitted
        )
        no_key = keyless | "NullKeyRowsGlobal" >> beam.ParDo(
            _NullKeyRows(spec.key_cols, settings, self.min_key_rows), fitted
        )
        return (by_key, no_key) | "Rows" >> beam.Flatten()


class _NullKeyRows(_NormalizeKey):
    """Rows with a null key value: the global state only (one normalizer per side input)."""

    _cached: tuple[Any, KeyedNormalizer | KeyAsOf] | None = None

    def process(self, row: Mapping[str, Any], fitted: Any) -> Iterator[Row]:  # type: ignore[override]
        if self._cached is None or self._cached[0] is not fitted:
            if _as_of(fitted):
                self._cached = (fitted, _key_as_of(fitted, None, self.settings, self.min_key_rows))
            else:
                self._cached = (fitted, self._global_only(fitted))
        out = self._cached[1].transform_row(row)
        if out is not None:
            yield out

    def _global_only(self, fitted: Any) -> KeyedNormalizer:
        return _keyed_normalizer(
            _global_state(fitted),
            key_cols=self.key_cols,
            key=None,
            state=None,
            settings=self.settings,
            min_key_rows=self.min_key_rows,
        )
