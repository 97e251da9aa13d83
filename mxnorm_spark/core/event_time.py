"""Event-time batches: which batch a row belongs to, the watermark, and when a batch folds.

Pure Python and numpy (no Spark, no I/O), shared by every engine that streams event-time
batches. The semantics:

* A row's *batch value* is the value of the batch column, or, with an event-time column
  and a window, the start of the tumbling window holding its timestamp.
* The *watermark* is the largest batch value (event time, for windows) seen in any
  committed micro-batch, minus the lateness. A batch-column batch ``b`` is closed when
  ``b < watermark``; a window when its end ``<= watermark``. :meth:`EventTime.limit` maps
  a value to the batch values it closes, so both read ``b < limit(largest)``.
* Closed batches fold into the state in ascending batch value, exactly the backfill's fold
  over its batch column. Open ones are kept as exact partials
  (:class:`~mxnorm_spark.core.open_batches.OpenBatch`) in the committed section.
* A row whose batch was folded before its micro-batch is *late*: counted, and dropped
  (``late_rows="drop"``) or refused (``"error"``). A folded state never changes.
* ``apply_at="before"``: a row of batch ``b`` is normalized with the state after folding
  every batch ``< limit(b)`` (for windows: every window that ended by ``start - lateness``).
  With lateness 0 that is the state after every batch ``< b``; with lateness it is the
  newest state that is already final when the row arrives (the batches within the lateness
  before ``b`` may still get rows). It depends on the data only, not on the trigger.

>>> spec = EventTime(batch_col="day", lateness=2)
>>> spec.limit(10)  # day 10 seen: days < 8 are closed
8
>>> w = EventTime(event_time="ts", window="1 hour", lateness="10 minutes")
>>> w.window_us, w.lateness_us
(3600000000, 600000000)
>>> w.limit(2 * 3600_000_000 + 600_000_000)  # 02:10: windows from before 01:00 ended by 02:00
3600000001
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from mxnorm_spark.core.choices import LATE_ROWS, check_choice
from mxnorm_spark.core.errors import CorruptStateError, InvalidParameterError, LateRowsError
from mxnorm_spark.core.moments import Moments
from mxnorm_spark.core.open_batches import OpenBatch
from mxnorm_spark.core.state import MXNormState

SECTION = "event_time"

__all__ = [
    "SECTION",
    "EventSection",
    "EventTime",
    "Fold",
    "decode_value",
    "encode_value",
    "parse_interval",
]

_UNITS_US = {
    "microsecond": 1,
    "millisecond": 1_000,
    "second": 1_000_000,
    "minute": 60_000_000,
    "hour": 3_600_000_000,
    "day": 86_400_000_000,
    "week": 604_800_000_000,
}
_INTERVAL = re.compile(r"^\s*(\d+)\s*([a-z]+?)s?\s*$")


def parse_interval(text: str, name: str) -> int:
    """``"10 minutes"`` as microseconds; units from microsecond to week.

    >>> parse_interval("1 hour", "window"), parse_interval("90 seconds", "lateness")
    (3600000000, 90000000)
    """
    found = _INTERVAL.match(str(text).lower())
    if found is None or found.group(2) not in _UNITS_US:
        raise InvalidParameterError(
            f"{name} must be an interval such as '10 minutes' or '1 hour' (units: "
            f"{', '.join(_UNITS_US)}), got {text!r}"
        )
    return int(found.group(1)) * _UNITS_US[found.group(2)]


def encode_value(value: Any) -> list[Any]:
    """A batch value as tagged JSON, exact, decoded to an equal value of the same type.

    >>> [encode_value(v) for v in (3, 2.5, "b", _dt.date(2024, 1, 2), Decimal("1.50"))]
    [['int', 3], ['float', '2.5'], ['str', 'b'], ['date', '2024-01-02'], ['decimal', '1.50']]
    >>> decode_value(encode_value(_dt.datetime(2024, 1, 2, 3, 4, 5, 6)))
    datetime.datetime(2024, 1, 2, 3, 4, 5, 6)
    """
    if isinstance(value, bool):
        return ["bool", value]
    if isinstance(value, int):
        return ["int", value]
    if isinstance(value, float):
        return ["float", repr(value)]
    if isinstance(value, str):
        return ["str", value]
    if isinstance(value, _dt.datetime):  # before date: a datetime is a date
        return ["datetime", value.isoformat()]
    if isinstance(value, _dt.date):
        return ["date", value.isoformat()]
    if isinstance(value, Decimal):
        return ["decimal", str(value)]
    raise InvalidParameterError(
        f"batch value {value!r} of type {type(value).__name__} is not supported; use a "
        "batch column of a numeric, string, boolean, date or timestamp type"
    )


def decode_value(data: Any) -> Any:
    """The batch value :func:`encode_value` encoded."""
    try:
        tag, raw = data
        if tag in ("bool", "int", "str"):
            return raw
        if tag == "float":
            return float(raw)
        if tag == "datetime":
            return _dt.datetime.fromisoformat(raw)
        if tag == "date":
            return _dt.date.fromisoformat(raw)
        if tag == "decimal":
            return Decimal(raw)
    except (TypeError, ValueError) as exc:
        raise CorruptStateError(f"malformed batch value {data!r}: {exc}") from exc
    raise CorruptStateError(f"unknown batch value tag in {data!r}")


@dataclass(frozen=True)
class EventTime:
    """How a stream assigns rows to batches, and when a batch folds.

    Exactly one of ``batch_col`` (a column already in the data, any orderable type) or
    ``event_time`` (a timestamp column) with ``window`` (an interval: tumbling windows,
    batch value = window start). ``lateness``: for a numeric batch column a number in its
    units, for a date column whole days, for a timestamp batch column or a window an
    interval (``"10 minutes"``); other types (strings) take only 0. ``late_rows``:
    ``"drop"`` (default: counted and left out) or ``"error"``. ``lineage_col``: an output
    column with the batch value of the last batch folded into the state each row was
    normalized with (null: no batch folded yet).
    """

    batch_col: str | None = None
    event_time: str | None = None
    window: str | None = None
    lateness: Any = 0
    late_rows: str = "drop"
    lineage_col: str | None = None
    window_us: int = field(default=0, init=False)
    lateness_us: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if (self.batch_col is None) == (self.event_time is None):
            raise InvalidParameterError(
                "give exactly one of batch_col (a batch column in the data) or event_time "
                f"(a timestamp column, with window); got batch_col={self.batch_col!r}, "
                f"event_time={self.event_time!r}"
            )
        if (self.event_time is None) != (self.window is None):
            raise InvalidParameterError(
                "event_time and window go together: event_time='ts', window='1 hour' "
                f"(got event_time={self.event_time!r}, window={self.window!r})"
            )
        check_choice("late_rows", self.late_rows, LATE_ROWS)
        lateness = self.lateness
        if isinstance(lateness, bool) or lateness is None:
            raise InvalidParameterError(
                f"lateness must be a number or an interval, got {lateness!r}"
            )
        if self.window is not None:
            size = parse_interval(self.window, "window")
            if size <= 0:
                raise InvalidParameterError(f"window must be positive, got {self.window!r}")
            late = 0 if lateness in (0, "0") else parse_interval(str(lateness), "lateness")
            object.__setattr__(self, "window_us", size)
            object.__setattr__(self, "lateness_us", late)
        elif isinstance(lateness, str):
            object.__setattr__(self, "lateness_us", parse_interval(lateness, "lateness"))
        elif not isinstance(lateness, (int, float, Decimal)) or not lateness >= 0:
            raise InvalidParameterError(
                f"lateness must be >= 0 in the batch column's units, got {lateness!r}"
            )

    @property
    def column(self) -> str:
        """The input column the batch value comes from."""
        return self.batch_col or self.event_time or ""

    def to_dict(self) -> dict[str, Any]:
        """What a state directory records, to refuse a restart with other settings."""
        return {
            "batch_col": self.batch_col,
            "event_time": self.event_time,
            "window": self.window,
            "lateness": str(self.lateness),
        }

    def limit(self, value: Any) -> Any:
        """Batch values below ``limit(v)`` are closed once ``v`` was seen (``v``: a batch
        value, or for windows an event time or window start in microseconds)."""
        if self.window is not None:
            # A window [s, s + size) is closed once its end <= v - lateness.
            return int(value) - self.lateness_us - self.window_us + 1
        lateness = self.lateness
        if isinstance(lateness, str):
            if not isinstance(value, _dt.datetime):
                raise InvalidParameterError(
                    f"lateness {lateness!r} is an interval, but batch column "
                    f"{self.batch_col!r} holds {type(value).__name__} values; give a number"
                )
            return value - _dt.timedelta(microseconds=self.lateness_us)
        if lateness == 0:
            return value
        if isinstance(value, _dt.datetime):
            raise InvalidParameterError(
                f"batch column {self.batch_col!r} holds timestamps: give lateness as an "
                "interval, e.g. '10 minutes'"
            )
        if isinstance(value, _dt.date):
            if lateness != int(lateness):
                raise InvalidParameterError(
                    f"lateness of a date column is whole days, got {lateness!r}"
                )
            return value - _dt.timedelta(days=int(lateness))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value - lateness
        if isinstance(value, Decimal):
            return value - Decimal(str(lateness))
        raise InvalidParameterError(
            f"batch column {self.batch_col!r} holds {type(value).__name__} values, which take "
            f"no lateness (got {lateness!r}); use lateness 0"
        )


@dataclass(frozen=True)
class Fold:
    """One batch folded by a micro-batch: its value, rows, moments and the state after it."""

    number: int
    value: Any
    rows: int
    moments: Moments
    state: MXNormState


@dataclass(frozen=True)
class EventSection:
    """What an event-time stream commits beside each state version.

    ``largest``: the largest batch value (event time in microseconds, for windows) seen;
    ``open``: the open batches, ascending; ``folds``: batches folded so far (fold numbers
    0 .. folds - 1); ``recent``: ``(value, fold number, state)`` of the folds a row at or
    above the watermark may still be normalized with, ascending; ``late_rows``: late rows so
    far. The rest describes the micro-batch that committed it: ``rows``, ``batch_late``,
    ``values`` (its batch values, late ones left out), ``folded`` (the values it folded),
    ``watermark_before``, and ``closed`` (the end of input: no micro-batch may follow).
    """

    spec: dict[str, Any]
    largest: Any = None
    open: tuple[tuple[Any, OpenBatch], ...] = ()
    folds: int = 0
    recent: tuple[tuple[Any, int, MXNormState], ...] = ()
    late_rows: int = 0
    rows: int = 0
    batch_late: int = 0
    values: tuple[Any, ...] = ()
    folded: tuple[Any, ...] = ()
    watermark_before: Any = None
    closed: bool = False

    def watermark(self, spec: EventTime) -> Any:
        """Batch values below this are closed (None: nothing seen yet)."""
        return None if self.largest is None else spec.limit(self.largest)

    def state_for(self, spec: EventTime, value: Any, base: MXNormState) -> tuple[Any, MXNormState]:
        """``(last folded value or None, state)`` a row of batch ``value`` is normalized with
        under ``apply_at="before"``: every batch ``< spec.limit(value)`` folded."""
        limit = spec.limit(value)
        found: tuple[Any, MXNormState] = (None, base)
        for folded, _, state in self.recent:
            if folded < limit:
                found = (folded, state)
            else:
                break
        return found

    # ---- JSON ----------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        import json

        return {
            "spec": self.spec,
            "largest": None if self.largest is None else encode_value(self.largest),
            "open": [[encode_value(v), b.to_dict()] for v, b in self.open],
            "folds": self.folds,
            "recent": [[encode_value(v), n, json.loads(s.to_json())] for v, n, s in self.recent],
            "late_rows": self.late_rows,
            "rows": self.rows,
            "batch_late": self.batch_late,
            "values": [encode_value(v) for v in self.values],
            "folded": [encode_value(v) for v in self.folded],
            "watermark_before": (
                None if self.watermark_before is None else encode_value(self.watermark_before)
            ),
            "closed": self.closed,
        }

    @classmethod
    def from_json(cls, data: Any, source: str) -> EventSection:
        import json

        def value(v: Any) -> Any:
            return None if v is None else decode_value(v)

        try:
            return cls(
                spec=dict(data["spec"]),
                largest=value(data["largest"]),
                open=tuple(
                    (decode_value(v), OpenBatch.from_dict(b, source)) for v, b in data["open"]
                ),
                folds=int(data["folds"]),
                recent=tuple(
                    (decode_value(v), int(n), MXNormState.from_json(json.dumps(s), source))
                    for v, n, s in data["recent"]
                ),
                late_rows=int(data["late_rows"]),
                rows=int(data["rows"]),
                batch_late=int(data["batch_late"]),
                values=tuple(decode_value(v) for v in data["values"]),
                folded=tuple(decode_value(v) for v in data["folded"]),
                watermark_before=value(data["watermark_before"]),
                closed=bool(data["closed"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptStateError(f"{source}: malformed event-time section: {exc}") from exc

    # ---- one micro-batch -------------------------------------------------------------
    def advance(
        self,
        spec: EventTime,
        state: MXNormState,
        parts: dict[Any, tuple[OpenBatch, int | None]],
        *,
        close_all: bool = False,
    ) -> tuple[EventSection, MXNormState, list[Fold]]:
        """The section and folded state after a micro-batch whose rows gave ``parts``
        (batch value -> (exact partial, largest event time or None)), and its folds.

        ``close_all``: the end of input, every open batch folds.
        """
        if None in parts:
            raise LateRowsError(
                f"{parts[None][0].rows} row(s) have no batch value (null in "
                f"{spec.column!r}); every row of an event-time stream needs one. Fill or "
                "filter them before the stream"
            )
        watermark = self.watermark(spec)
        late = sorted(v for v in parts if watermark is not None and v < watermark)
        late_rows = sum(parts[v][0].rows for v in late)
        if late and spec.late_rows == "error":
            raise LateRowsError(
                f"{late_rows} late row(s) in {len(late)} batch(es) already folded (smallest "
                f"{spec.column} batch {late[0]!r}, watermark {watermark!r}); a folded state "
                "never changes. Raise the lateness, or run with late_rows='drop' to count "
                "and drop them"
            )
        merged = dict(self.open)
        largest = self.largest
        for v, (part, t_max) in parts.items():
            if v in late:
                continue
            merged[v] = merged[v].merge(part) if v in merged else part
            seen = v if t_max is None else t_max
            largest = seen if largest is None or seen > largest else largest
        limit = None if largest is None else spec.limit(largest)
        closing = sorted(v for v in merged if close_all or (limit is not None and v < limit))
        folds: list[Fold] = []
        number = self.folds
        for v in closing:
            part = merged.pop(v)
            moments = part.moments()
            state = state.update(moments)
            folds.append(Fold(number, v, part.rows, moments, state))
            number += 1
        recent = list(self.recent) + [(f.value, f.number, f.state) for f in folds]
        keep_from = None if watermark is None else spec.limit(watermark)
        if keep_from is not None:
            # Rows at or above the watermark need the folds from limit(watermark) on, and
            # the last one below it.
            below = [i for i, (v, _, _) in enumerate(recent) if v < keep_from]
            if below:
                recent = recent[below[-1] :]
        section = EventSection(
            spec=self.spec,
            largest=largest,
            open=tuple(sorted(merged.items(), key=lambda item: item[0])),
            folds=number,
            recent=tuple(recent),
            late_rows=self.late_rows + late_rows,
            rows=sum(p.rows for p, _ in parts.values()),
            batch_late=late_rows,
            values=tuple(sorted(v for v in parts if v not in late)),
            folded=tuple(f.value for f in folds),
            watermark_before=watermark,
            closed=close_all,
        )
        return section, state, folds
