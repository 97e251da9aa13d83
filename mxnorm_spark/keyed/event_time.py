"""Event-time batches per key: each key's open batches, its folds, and the constants of its
rows (pure Python and numpy, no Spark, no I/O).

The semantics are the global event-time stream's (:mod:`mxnorm_spark.core.event_time`),
applied to every key on its own, with one watermark for all keys:

* The *watermark* is global: the largest batch value seen in any row of any key, minus the
  lateness (as in Spark's ``withWatermark``, which tracks one event time per query). A
  quiet key's batches therefore close as the other keys' data moves time on, and which
  rows are late does not depend on the key: a row is late exactly when the global
  stream would call it late.
* Per key, the batches below the watermark fold in ascending batch value into the key's
  state, with the exact partials of
  :class:`~mxnorm_spark.core.open_batches.OpenBatch` (rounded once, at the fold), exactly
  the keyed backfill's fold over its batch column. Open batches stay exact partials in
  the committed section.
* ``apply_at="before"``: a row of key ``k`` and batch ``b`` takes the state of ``k`` after
  every batch of ``k`` below ``limit(b)``, feature by feature only once ``k`` has
  ``max(min_key_rows, 1)`` valid values of it; otherwise the global state of ``b`` (the
  global stream's point-in-time state), as in the keyed backfill. A row with a null in a
  key column belongs to no key: the global state.

>>> import numpy as np
>>> from mxnorm_spark.core.event_time import EventSection, EventTime
>>> from mxnorm_spark.core.open_batches import exact_partials
>>> spec = EventTime(batch_col="day", lateness=0)
>>> fresh = MXNormState.create(["x"], alpha=0.5)
>>> def part(*xs):
...     return exact_partials(np.array(xs)[:, None], np.zeros(len(xs), int), 1)[0]
>>> keyed = KeyedEvents().advance(
...     spec, {("a",): {1: part(1.0, 3.0)}, ("b",): {2: part(5.0)}},
...     EventSection(spec=spec.to_dict(), largest=2, watermark_before=None), fresh)
>>> keyed.keys[("a",)].state(fresh).mean.tolist(), keyed.keys[("b",)].open[0][0]
([2.0], 2)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mxnorm_spark.core.errors import CorruptStateError
from mxnorm_spark.core.event_time import EventSection, EventTime, decode_value, encode_value
from mxnorm_spark.core.moments import Moments
from mxnorm_spark.core.open_batches import OpenBatch
from mxnorm_spark.core.state import MXNormState, scale_of

__all__ = ["KEYS_MEMBER", "KeyEvents", "KeyedEvents", "key_constants"]

# The member of the committed event-time section that holds the per-key part.
KEYS_MEMBER = "keys"

Key = tuple[Any, ...]


@dataclass(frozen=True)
class KeyEvents:
    """One key's event-time part: ``folds`` (batches folded so far), ``open`` (its open
    batches, ascending) and ``recent`` (``(value, state after it)`` of the folds its rows
    at or above the watermark may still be normalized with, ascending; the last one is the
    key's state)."""

    folds: int = 0
    open: tuple[tuple[Any, OpenBatch], ...] = ()
    recent: tuple[tuple[Any, MXNormState], ...] = ()

    def state(self, fresh: MXNormState) -> MXNormState:
        """The key's state: after its last fold, or ``fresh``."""
        return self.recent[-1][1] if self.recent else fresh

    def state_for(self, spec: EventTime, value: Any, fresh: MXNormState) -> tuple[Any, MXNormState]:
        """``(last folded value or None, state)`` of a row of batch ``value``: every batch
        of the key below ``spec.limit(value)`` folded."""
        limit = spec.limit(value)
        found: tuple[Any, MXNormState] = (None, fresh)
        for folded, state in self.recent:
            if folded < limit:
                found = (folded, state)
            else:
                break
        return found


@dataclass(frozen=True)
class KeyedEvents:
    """Every key's :class:`KeyEvents` (keys without rows outside late batches are absent)."""

    keys: dict[Key, KeyEvents] = field(default_factory=dict)

    def advance(
        self,
        spec: EventTime,
        parts: dict[Key, dict[Any, OpenBatch]],
        section: EventSection,
        fresh: MXNormState,
        *,
        close_all: bool = False,
    ) -> KeyedEvents:
        """The keys after a micro-batch whose rows with a key gave ``parts`` (key -> batch
        value -> exact partial). ``section``: the global section after the same
        micro-batch (its watermark before, and the largest value seen after, are every
        key's). Late batches (below the watermark before) are left out: the global
        section counted them, or refused them with ``late_rows="error"``."""
        before = section.watermark_before
        limit = None if section.largest is None else spec.limit(section.largest)
        keep_from = None if before is None else spec.limit(before)
        keys = dict(self.keys)
        busy = set(parts) | {k for k, e in keys.items() if e.open}
        for key in busy:
            entry = keys.get(key, KeyEvents())
            merged = dict(entry.open)
            for v, part in parts.get(key, {}).items():
                if before is not None and v < before:
                    continue
                merged[v] = merged[v].merge(part) if v in merged else part
            closing = sorted(v for v in merged if close_all or (limit is not None and v < limit))
            if not closing and merged == dict(entry.open):
                continue
            state = entry.state(fresh)
            recent = list(entry.recent)
            for v in closing:
                state = state.update(merged.pop(v).moments())
                recent.append((v, state))
            if keep_from is not None:
                # As the global section: the folds from limit(watermark) on, and the last
                # one below it (the key's state, for a key with no fold since).
                below = [i for i, (v, _) in enumerate(recent) if v < keep_from]
                if below:
                    recent = recent[below[-1] :]
            keys[key] = KeyEvents(
                entry.folds + len(closing),
                tuple(sorted(merged.items(), key=lambda item: item[0])),
                tuple(recent),
            )
        return KeyedEvents(keys)

    @property
    def open_batches(self) -> int:
        """Open (key, batch) partials."""
        return sum(len(e.open) for e in self.keys.values())

    # ---- JSON ----------------------------------------------------------------------
    def to_json(self) -> list[Any]:
        """Plain JSON, keys in a fixed order (the same keys give the same bytes)."""
        rows = []
        for key, entry in self.keys.items():
            rows.append(
                [
                    [None if v is None else encode_value(v) for v in key],
                    {
                        "folds": entry.folds,
                        "open": [[encode_value(v), b.to_dict()] for v, b in entry.open],
                        "recent": [[encode_value(v), _state_json(s)] for v, s in entry.recent],
                    },
                ]
            )
        return sorted(rows, key=lambda row: json.dumps(row[0]))

    @classmethod
    def from_json(cls, data: Any, fresh: MXNormState, source: str) -> KeyedEvents:
        try:
            keys = {}
            for key, entry in data:
                keys[tuple(None if v is None else decode_value(v) for v in key)] = KeyEvents(
                    int(entry["folds"]),
                    tuple(
                        (decode_value(v), OpenBatch.from_dict(b, source)) for v, b in entry["open"]
                    ),
                    tuple((decode_value(v), _state_of(s, fresh)) for v, s in entry["recent"]),
                )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptStateError(
                f"{source}: malformed per-key event-time section: {exc}"
            ) from exc
        return cls(keys)


def _state_json(state: MXNormState) -> dict[str, Any]:
    """A key's state without what every key shares (features, options)."""

    def floats(a: Any) -> list[float | None]:
        return [None if np.isnan(v) else v for v in np.asarray(a).tolist()]

    return {
        "mean": floats(state.mean),
        "var": floats(state.var),
        "totals": state.totals.to_dict(),
        "batches_seen": state.batches_seen,
    }


def _state_of(data: Any, fresh: MXNormState) -> MXNormState:
    def floats(values: Any) -> Any:
        return np.array([np.nan if v is None else float(v) for v in values])

    return MXNormState(
        features=fresh.features,
        options=fresh.options,
        mean=floats(data["mean"]),
        var=floats(data["var"]),
        totals=Moments.from_dict(data["totals"]),
        batches_seen=int(data["batches_seen"]),
    )


def key_constants(
    spec: EventTime,
    keyed: KeyedEvents,
    section: EventSection,
    key: Key,
    value: Any,
    *,
    fresh: MXNormState,
    base: MXNormState,
    min_key_rows: int,
) -> tuple[list[float | None], list[float | None], Any]:
    """``(means, scales, lineage)`` of the rows of ``key`` (a tuple; a None in it: no key)
    and batch ``value``, per feature (None: no state there, a null output). ``lineage``:
    the batch value of the key's last fold the row was normalized with (for no key: the
    global state's), None before its first."""
    g_folded, g_state = section.state_for(spec, value, base)
    if any(v is None for v in key):
        k_folded, k_state, k_count = g_folded, g_state, None
    else:
        entry = keyed.keys.get(key, KeyEvents())
        k_folded, k_state = entry.state_for(spec, value, fresh)
        k_count = k_state.count
    means: list[float | None] = []
    scales: list[float | None] = []
    need = max(min_key_rows, 1)
    for j in range(fresh.n_features):
        state = g_state if k_count is not None and k_count[j] < need else k_state
        mean, var = float(state.mean[j]), float(state.var[j])
        if np.isnan(mean):
            means.append(None)
            scales.append(None)
        else:
            means.append(mean)
            scales.append(float(scale_of(np.float64(var), state.options)))
    return means, scales, k_folded
