"""``FitWindows``: MXNorm over an unbounded PCollection, one batch per event-time window.

Rows are assigned to fixed event-time windows; the moments of each (key, window) are a
``CombinePerKey`` of :class:`BatchMomentsCombineFn` (lifted, so partials merge before the
shuffle). Each window's moments then move into the global window, where a stateful DoFn
per key buffers them and, on an event-time timer, folds the *closed* windows (those whose
end the watermark has reached) in ascending window order, whatever order they arrived in,
with :meth:`MXNormState.update`: the same state as a backfill over the window starts.

Late data. A window is closed when the watermark reaches its end, and folded then. A row
whose window has already been folded is *late*:

* ``late_rows="drop"`` (default): the row is left out of the state; its rows are counted
  in the Beam counter ``mxnorm_spark.beam/late_rows`` (``late_windows`` counts the panes)
  and one :class:`LateWindow` per late pane goes to the output tag ``"late"``;
* ``late_rows="error"``: :class:`~mxnorm_spark.core.errors.LateRowsError`.

Rows later than ``allowed_lateness`` after their window's end are dropped by Beam's own
windowing before they reach this policy (Beam's rule for any windowed aggregation); keep
it at least as long as the lateness you want counted.

The output (main tag ``"states"``) is the state after each folded window: an
:class:`MXNormState` (no ``key_cols``) or ``(key, MXNormState)``. ``last_batch_id`` is the
window's start in microseconds since the epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.coders import TupleCoder, VarIntCoder
from apache_beam.metrics.metric import Metrics
from apache_beam.transforms import trigger, window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (
    BagStateSpec,
    ReadModifyWriteStateSpec,
    TimerSpec,
    on_timer,
)
from apache_beam.utils.timestamp import Duration, Timestamp

from mxnorm_spark.beam.coders import MomentsCoder, StateCoder
from mxnorm_spark.beam.combine import BatchMomentsCombineFn
from mxnorm_spark.beam.rows import RowSpec, check_names
from mxnorm_spark.core.choices import LATE_ROWS, check_choice
from mxnorm_spark.core.errors import InvalidParameterError, LateRowsError
from mxnorm_spark.core.moments import Moments
from mxnorm_spark.core.state import MXNormState, StateOptions

__all__ = ["LATE_TAG", "STATES_TAG", "FitWindows", "LateWindow"]

STATES_TAG = "states"
LATE_TAG = "late"
METRICS_NAMESPACE = "mxnorm_spark.beam"
_GLOBAL_KEY: tuple[Any, ...] = ()


@dataclass(frozen=True)
class LateWindow:
    """A pane of rows that came after their window had been folded, and was dropped."""

    key: tuple[Any, ...] | None
    window_start: Timestamp
    window_end: Timestamp
    rows: int


# (window start, window end) in microseconds, the window's moments, its rows.
_PENDING = TupleCoder([VarIntCoder(), VarIntCoder(), MomentsCoder(), VarIntCoder()])


PENDING = BagStateSpec("pending", _PENDING)
STATE = ReadModifyWriteStateSpec("state", StateCoder())
FOLDED_END = ReadModifyWriteStateSpec("folded_end", VarIntCoder())
FOLD = TimerSpec("fold", TimeDomain.WATERMARK)
# The DoFn's parameter markers (Beam reads them from the argument defaults).
_PENDING_PARAM = beam.DoFn.StateParam(PENDING)
_STATE_PARAM = beam.DoFn.StateParam(STATE)
_FOLDED_END_PARAM = beam.DoFn.StateParam(FOLDED_END)
_FOLD_PARAM = beam.DoFn.TimerParam(FOLD)
_WINDOW_PARAM = beam.DoFn.WindowParam
_KEY_PARAM = beam.DoFn.KeyParam
_TIMESTAMP_PARAM = beam.DoFn.TimestampParam


class _WithWindow(beam.DoFn):  # type: ignore[misc]
    def process(
        self, element: tuple[Any, tuple[Moments, int]], w: Any = _WINDOW_PARAM
    ) -> Iterator[tuple[Any, tuple[int, int, Moments, int]]]:
        key, (moments, rows) = element
        yield key, (w.start.micros, w.end.micros, moments, rows)


class _FoldClosedWindows(beam.DoFn):  # type: ignore[misc]
    """Per key: buffer the windows' moments, fold the closed ones in window order."""

    def __init__(self, start: MXNormState, late_rows: str, keyed: bool) -> None:
        self.start = start
        self.late_rows = late_rows
        self.keyed = keyed

    def process(
        self,
        element: tuple[Any, tuple[int, int, Moments, int]],
        pending: Any = _PENDING_PARAM,
        folded_end: Any = _FOLDED_END_PARAM,
        fold: Any = _FOLD_PARAM,
    ) -> Iterator[Any]:
        key, (start, end, moments, rows) = element
        last = folded_end.read()
        if last is not None and end <= last:
            yield from self._late(key, start, end, rows)
            return
        pending.add((start, end, moments, rows))
        fold.set(Timestamp(micros=min(p[1] for p in pending.read())))

    def _late(self, key: Any, start: int, end: int, rows: int) -> Iterator[Any]:
        shown = key if self.keyed else None
        if self.late_rows == "error":
            raise LateRowsError(
                f"{rows} row(s) of the window [{Timestamp(micros=start)}, "
                f"{Timestamp(micros=end)}){'' if shown is None else f' of key {shown!r}'} came "
                "after the window was folded; use late_rows='drop' to count and drop them, "
                "or a longer window"
            )
        yield beam.pvalue.TaggedOutput(
            LATE_TAG, LateWindow(shown, Timestamp(micros=start), Timestamp(micros=end), rows)
        )

    @on_timer(FOLD)
    def fold_closed(  # noqa: PLR0917 (Beam passes state and timers as parameters)
        self,
        key: Any = _KEY_PARAM,
        now: Any = _TIMESTAMP_PARAM,
        pending: Any = _PENDING_PARAM,
        state: Any = _STATE_PARAM,
        folded_end: Any = _FOLDED_END_PARAM,
        fold: Any = _FOLD_PARAM,
    ) -> Iterator[Any]:
        items = list(pending.read())
        closed: dict[int, tuple[int, Moments]] = {}
        waiting = []
        for start, end, moments, rows in items:
            if end > now.micros:
                waiting.append((start, end, moments, rows))
                continue
            # Panes of one window that arrived before it was folded (on time and late)
            # merge in arrival order.
            if start in closed:
                closed[start] = (end, closed[start][1].merge(moments))
            else:
                closed[start] = (end, moments)
        pending.clear()
        for item in waiting:
            pending.add(item)
        current = state.read() or self.start
        last = folded_end.read()
        for start in sorted(closed):
            end, moments = closed[start]
            current = current.update(moments, batch_id=start)
            last = end if last is None else max(last, end)
            yield (key, current) if self.keyed else current
        state.write(current)
        if last is not None:
            folded_end.write(last)
        if waiting:
            fold.set(Timestamp(micros=min(w[1] for w in waiting)))


class _CountLate(beam.DoFn):  # type: ignore[misc]
    """Counts the late rows and panes in the Beam counters ``late_rows`` and
    ``late_windows``, and passes the panes on."""

    def __init__(self) -> None:
        self.late_rows = Metrics.counter(METRICS_NAMESPACE, "late_rows")
        self.late_windows = Metrics.counter(METRICS_NAMESPACE, "late_windows")

    def process(self, late: LateWindow) -> Iterator[LateWindow]:
        self.late_rows.inc(late.rows)
        self.late_windows.inc()
        yield late


class FitWindows(beam.PTransform):  # type: ignore[misc]
    """A PTransform from event-timestamped dict rows to the MXNorm state after each closed
    window (per key with ``key_cols``), with the late rows as a second output.

    ``window_size`` and ``allowed_lateness`` are seconds. ``timestamp_col`` (optional)
    names a column of event times in seconds since the epoch; without it the rows' own
    Beam timestamps are used. The result is a dict of two PCollections: ``[STATES_TAG]``
    and ``[LATE_TAG]``.
    """

    def __init__(
        self,
        cols: Sequence[str],
        window_size: float,
        options: StateOptions | None = None,
        *,
        key_cols: Sequence[str] | None = None,
        late_rows: str = "drop",
        allowed_lateness: float = 86400.0,
        timestamp_col: str | None = None,
    ) -> None:
        super().__init__()
        self.spec = RowSpec(
            _names(cols),
            None,
            None if key_cols is None else tuple(key_cols),
        )
        for name, value in (("window_size", window_size), ("allowed_lateness", allowed_lateness)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise InvalidParameterError(f"{name} must be seconds >= 0, got {value!r}")
        if window_size <= 0:
            raise InvalidParameterError(f"window_size must be > 0 seconds, got {window_size!r}")
        if options is not None and not isinstance(options, StateOptions):
            raise InvalidParameterError(
                f"options must be a StateOptions, got {type(options).__name__}"
            )
        self.window_size = float(window_size)
        self.allowed_lateness = float(allowed_lateness)
        self.options = options or StateOptions()
        self.late_rows = check_choice("late_rows", late_rows, LATE_ROWS)
        self.timestamp_col = timestamp_col

    def expand(self, rows: beam.pvalue.PCollection) -> Any:
        spec, ts_col = self.spec, self.timestamp_col
        if ts_col is not None:
            rows = rows | "EventTime" >> beam.Map(lambda r: window.TimestampedValue(r, r[ts_col]))
        keyed = spec.key_cols is not None

        def key_values(row: Any) -> Iterator[tuple[Any, tuple[Any, ...]]]:
            key = spec.key(row) if keyed else _GLOBAL_KEY
            if key is not None:  # null key value: no entity
                yield key, spec.values(row)

        start = MXNormState.create(spec.cols, options=self.options)
        folded = (
            rows
            | "KeyValues" >> beam.FlatMap(key_values)
            | "Windows"
            >> beam.WindowInto(
                window.FixedWindows(self.window_size),
                trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
                accumulation_mode=trigger.AccumulationMode.DISCARDING,
                allowed_lateness=Duration.of(self.allowed_lateness),
            )
            | "MomentsPerWindow" >> beam.CombinePerKey(BatchMomentsCombineFn(spec.cols))
            | "WithWindow" >> beam.ParDo(_WithWindow())
            | "GlobalWindow" >> beam.WindowInto(window.GlobalWindows())
            | "FoldClosedWindows"
            >> beam.ParDo(_FoldClosedWindows(start, self.late_rows, keyed)).with_outputs(
                LATE_TAG, main=STATES_TAG
            )
        )
        late = folded[LATE_TAG] | "CountLate" >> beam.ParDo(_CountLate())
        return {STATES_TAG: folded[STATES_TAG], LATE_TAG: late}


def _names(cols: Sequence[str]) -> tuple[str, ...]:
    names = check_names(cols, "cols")
    assert names is not None
    return names
