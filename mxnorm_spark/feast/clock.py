"""When each batch happens: batch values as the event timestamps of a feature store.

A feature store joins by time: for an entity row at instant ``t`` it returns the latest
feature row whose event timestamp is ``<= t``. A backfill's batches are batch *values*
(a date, a timestamp, an integer day number, ...), so publishing them needs a map from
each batch value to the instant the batch starts. :class:`BatchClock` is that map:

* a ``date`` value starts at its midnight, UTC;
* a ``datetime`` value is its own start (a naive one is read as UTC);
* any other value (an int day number, a string) needs ``origin`` and ``period``: value
  ``v`` starts at ``origin + v * period`` (ints only), or an explicit ``starts`` mapping.

A batch lasts until the next batch starts; the last one lasts ``period`` (one day by
default): the final state applies from then on. With ``applyAt="before"`` a row of
batch ``b`` is normalized with the state before ``b``, so a row at instant ``t`` belongs
to the latest batch that starts at or before ``t``, and a feature row published at the
start of each batch holding the constants that batch uses gives the feature store's
point-in-time join exactly the model's choice.

>>> import datetime as dt
>>> clock = BatchClock(origin=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
>>> clock.start(2)
datetime.datetime(2026, 1, 3, 0, 0, tzinfo=datetime.timezone.utc)
>>> BatchClock().start(dt.date(2026, 5, 4)).isoformat()
'2026-05-04T00:00:00+00:00'
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mxnorm_spark.core.errors import InvalidParameterError

__all__ = ["BatchClock"]

UTC = dt.timezone.utc


@dataclass(frozen=True)
class BatchClock:
    """Batch value -> the instant (UTC) its batch starts; see the module doc."""

    origin: dt.datetime | None = None
    period: dt.timedelta = dt.timedelta(days=1)
    starts: Mapping[Any, dt.datetime] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.period, dt.timedelta) or self.period <= dt.timedelta(0):
            raise InvalidParameterError(
                f"period must be a positive datetime.timedelta, got {self.period!r}"
            )
        if self.origin is not None and not isinstance(self.origin, dt.datetime):
            raise InvalidParameterError(
                f"origin must be a datetime.datetime, got {type(self.origin).__name__}"
            )

    def start(self, value: Any) -> dt.datetime:
        """The instant batch ``value`` starts (aware, UTC)."""
        if self.starts is not None:
            if value not in self.starts:
                raise InvalidParameterError(
                    f"batch value {value!r} has no start in the clock's starts mapping; "
                    "give one instant per batch value of the model"
                )
            return _utc(self.starts[value])
        if isinstance(value, dt.datetime):
            return _utc(value)
        if isinstance(value, dt.date):
            return dt.datetime(value.year, value.month, value.day, tzinfo=UTC)
        if isinstance(value, int) and not isinstance(value, bool) and self.origin is not None:
            return _utc(self.origin) + value * self.period
        raise InvalidParameterError(
            f"batch value {value!r} ({type(value).__name__}) is not a date or a timestamp: "
            "give BatchClock(origin=<datetime of batch 0>, period=<timedelta>) for integer "
            "batch values, or starts={value: datetime} for any others"
        )

    def starts_of(self, values: Sequence[Any]) -> list[dt.datetime]:
        """The starts of ``values`` (a model's batch values, ascending), checked to rise."""
        out = [self.start(v) for v in values]
        for i in range(1, len(out)):
            a, ta, b, tb = values[i - 1], out[i - 1], values[i], out[i]
            if tb <= ta:
                raise InvalidParameterError(
                    f"batch {b!r} starts at {tb.isoformat()}, not after batch {a!r} "
                    f"({ta.isoformat()}): batch starts must rise with the batch values"
                )
        return out

    def final_at(self, values: Sequence[Any]) -> dt.datetime:
        """When the last batch ends and the final state applies: its start + ``period``."""
        if not values:
            raise InvalidParameterError("the model has no batch values to time")
        return self.start(values[-1]) + self.period


def _utc(when: dt.datetime) -> dt.datetime:
    if not isinstance(when, dt.datetime):
        raise InvalidParameterError(f"a batch start must be a datetime, got {when!r}")
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
