"""A keyed event-time stream's micro-batch on Spark: exact partials per (key, batch value),
every key's fold, the commit, and the rows normalized point in time per key.

Per micro-batch (semantics: :mod:`mxnorm_spark.keyed.event_time`):

1. one ``mapInArrow`` job computes, per partition, the exact partial
   (:func:`~mxnorm_spark.core.open_batches.exact_partials`) of each (key, batch value);
   the driver merges them exactly, per key and over all rows (the global partials, the
   same integers as the global stream's);
2. the driver advances the global section (the watermark, late rows, the global fold) and
   every key's open batches and folds, and commits both as one version: the per-key part
   is the ``keys`` member of the version's ``event_time`` section;
3. the rows (late ones left out) are joined by (key, batch value) to a small table of
   their constants (one row per pair of the micro-batch, built on the driver) and written
   as the micro-batch's output directory.

The per-key open batches and states live in the committed version, on the driver: a
version holds every key seen, so this suits up to some ten thousand keys (a version of
10,000 keys with two open batches each is a few MB of JSON). The per-key snapshot stream
(:mod:`mxnorm_spark.streaming.keyed`) keeps its keys in Spark instead, with
micro-batches as batches.

A replayed micro-batch (its version committed) computes no partials: one small job lists
its (key, batch value) pairs, whose constants the committed section gives.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from mxnorm_spark.core.errors import InvalidParameterError, StateConflictError
from mxnorm_spark.core.event_time import SECTION, EventSection
from mxnorm_spark.core.open_batches import OpenBatch
from mxnorm_spark.core.state import MXNormState
from mxnorm_spark.keyed.event_time import KEYS_MEMBER, KeyedEvents, key_constants
from mxnorm_spark.streaming.event_batches import (
    EventSteps,
    Parts,
    close_open_batches,
    merge_part,
    run_micro_batch,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from mxnorm_spark.store import StateStore
    from mxnorm_spark.streaming.updater import MXNormStream

__all__ = [
    "check_keyed_event_time",
    "close_keyed_open_batches",
    "read_key_states",
    "run_keyed_micro_batch",
]

_B = "__mx_b"
KeyParts = dict[tuple[Any, ...], dict[Any, OpenBatch]]


def check_keyed_event_time(key_cols: tuple[str, ...], evict_after: int | None, spec: Any) -> None:
    """The key settings a keyed event-time stream supports, or a named error."""
    if evict_after is not None:
        raise InvalidParameterError(
            "evict_after counts micro-batches, which follow the trigger, not the data: a "
            "keyed event-time stream keeps every key (leave evict_after unset)"
        )
    if spec.column in key_cols:
        raise InvalidParameterError(
            f"{spec.column!r} is both a key column and the stream's batch / event-time "
            "column; a key names the entity, the batch its time"
        )


def _fresh(stream: MXNormStream) -> MXNormState:
    return MXNormState.create(stream.cols or (), options=stream.options)


def _keyed(stream: MXNormStream, batch_id: int) -> KeyedEvents:
    """The per-key part committed with version ``batch_id`` (empty before the first)."""
    return _keyed_of(stream.store, batch_id, _fresh(stream))


def _keyed_of(store: StateStore, batch_id: int, fresh: MXNormState) -> KeyedEvents:
    if batch_id < 0:
        return KeyedEvents()
    data = store.section(batch_id, SECTION)
    if data is None:
        return KeyedEvents()
    if KEYS_MEMBER not in data:
        raise StateConflictError(
            f"state directory {store.path} holds version {batch_id} of an event-time "
            "stream without keys; use a fresh state directory for the keyed stream"
        )
    source = f"state version {batch_id} of {store.path}"
    return KeyedEvents.from_json(data[KEYS_MEMBER], fresh, source)


def read_key_states(
    source: MXNormStream | StateStore | str | os.PathLike[str], batch_id: int | None = None
) -> dict[Any, MXNormState]:
    """Every key's state (after its last fold) committed with version ``batch_id``
    (default: the newest) of a keyed event-time stream (``source``: the stream, or its
    state directory); keys with no fold yet are left out. Keys are tuples of the key
    columns' values."""
    from mxnorm_spark.store import StateStore

    if isinstance(source, StateStore):
        store = source
    elif isinstance(source, (str, os.PathLike)):
        store = StateStore(os.fspath(source))
    else:
        store = source.store
    if batch_id is None:
        batch_id = store.latest_batch_id()
    if batch_id is None:
        return {}
    state = store.get(batch_id)
    if state is None:
        raise StateConflictError(f"state directory {store.path} has no version {batch_id}")
    if store.section(batch_id, SECTION) is None:
        raise StateConflictError(
            f"version {batch_id} of {store.path} is not one of a keyed event-time stream "
            "(no event_time section); a per-micro-batch keyed stream's keys are read with "
            "`mxnorm-spark export-keys`"
        )
    fresh = MXNormState.create(state.features, options=state.options)
    keyed = _keyed_of(store, batch_id, fresh)
    return {k: e.state(fresh) for k, e in keyed.keys.items() if e.recent}


# ---- the micro-batch -------------------------------------------------------------------
def keyed_partials(stream: MXNormStream, payload: DataFrame) -> tuple[Parts, KeyParts]:
    """The micro-batch's exact partials: per batch value over every row (with the largest
    event time, for windows), and per key with no null part and batch value."""
    events, keys = stream.events, stream.keys
    assert events is not None and keys is not None
    found: Parts = {}
    per_key: KeyParts = {}
    for key, value, part, t_max in events.group_partials(payload, keys.keys.key_cols):
        merge_part(found, value, part, t_max)
        if value is not None and not any(v is None for v in key):
            mine = per_key.setdefault(key, {})
            mine[value] = mine[value].merge(part) if value in mine else part
    return found, per_key


class KeyedSteps(EventSteps):
    """The keyed stream's steps of the event-time micro-batch
    (:func:`~mxnorm_spark.streaming.event_batches.run_micro_batch`): per-key partials, every
    key advanced in the committed section, the rows joined to their key's constants."""

    def __init__(self, stream: MXNormStream, batch_id: int, payload: DataFrame | None) -> None:
        from mxnorm_spark.keyed.backfill import check_keys

        super().__init__(stream, batch_id, payload)
        assert stream.keys is not None
        if payload is not None:
            check_keys(payload, list(stream.cols or ()), stream.keys.keys.key_cols, None)
        self.found: Parts | None = None  # a new micro-batch's partials (None: a replay)
        self.per_key: KeyParts = {}
        self.keyed = KeyedEvents()

    def partials(self, prev: EventSection) -> Parts:
        assert self.payload is not None
        self.found, self.per_key = keyed_partials(self.stream, self.payload)
        return self.found

    def extra(self, section: EventSection) -> dict[str, Any]:
        before = _keyed(self.stream, self.batch_id - 1)
        spec, fresh = self.events.spec, _fresh(self.stream)
        self.keyed = before.advance(spec, self.per_key, section, fresh, close_all=section.closed)
        return {KEYS_MEMBER: self.keyed.to_json()}

    def replay(self, section: EventSection) -> None:
        self.keyed = _keyed(self.stream, self.batch_id)

    def write(self, section: EventSection, base: MXNormState) -> str | None:
        assert self.payload is not None and self.stream.keys is not None
        pairs = None
        if self.found is not None:  # the pairs of the rows not late
            n_keys = len(self.stream.keys.keys.key_cols)
            late = section.watermark_before
            pairs = {
                g
                for g in _pairs_of(self.found, self.per_key, n_keys)
                if late is None or not g[-1] < late
            }
        out = normalize_keyed(
            self.stream, self.payload, section=section, keyed=self.keyed, base=base, pairs=pairs
        )
        return self.stream._publish(out, self.batch_id)


def run_keyed_micro_batch(stream: MXNormStream, batch_df: DataFrame, batch_id: int) -> None:
    """:meth:`MXNormStream.foreach_batch` of a keyed event-time stream (see the module)."""
    run_micro_batch(stream, batch_df, batch_id, KeyedSteps)


def _pairs_of(found: Parts, per_key: KeyParts, n_keys: int) -> set[tuple[Any, ...]]:
    """(key..., batch value) of every row group: the keys' pairs, and for the batch values
    with rows of a null key, one pair with a null key (the join matches nulls)."""
    pairs = {(*key, v) for key, parts in per_key.items() for v in parts}
    keyed_rows: dict[Any, int] = {}
    for parts in per_key.values():
        for v, part in parts.items():
            keyed_rows[v] = keyed_rows.get(v, 0) + part.rows
    # Rows with a null key part: their own pairs are not known here; the null-safe join
    # below matches them through the (None, ..., value) rows added per value.
    for v, (part, _) in found.items():
        if v is not None and part.rows > keyed_rows.get(v, 0):
            pairs.add((*([None] * n_keys), v))
    return pairs


def normalize_keyed(
    stream: MXNormStream,
    payload: DataFrame,
    *,
    section: EventSection,
    keyed: KeyedEvents,
    base: MXNormState,
    pairs: set[tuple[Any, ...]] | None,
) -> DataFrame:
    """The micro-batch's rows (late ones left out), each normalized with its key's state
    of its batch value (or the global one, feature by feature), null where there is none."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from mxnorm_spark.engines.columns import quote

    events, keys = stream.events, stream.keys
    assert events is not None and keys is not None
    key_cols = list(keys.keys.key_cols)
    n_keys = len(key_cols)
    b, _ = events.value_columns(payload)
    df = payload.withColumn(_B, b)
    if section.watermark_before is not None:
        df = df.where(F.col(_B) >= F.lit(section.watermark_before))
    if pairs is None:  # a replay: list its pairs (its rows' keys are not in the section)
        found = df.select(*(quote(k) for k in key_cols), F.col(_B)).distinct().collect()
        pairs = {tuple(row) for row in found}
    # A row with a null key part takes the global state: its pair is the all-null key.
    canon = {(*([None] * n_keys), p[-1]) if None in p[:-1] else p for p in pairs}
    outputs = tuple(stream.output.cols or stream.cols or ())
    n = len(events.cols)
    rows = []
    fresh = _fresh(stream)
    for pair in sorted(canon, key=repr):
        means, scales, folded = key_constants(
            events.spec,
            keyed,
            section,
            pair[:-1],
            pair[-1],
            fresh=fresh,
            base=base,
            min_key_rows=keys.keys.min_key_rows,
        )
        rows.append((*pair, *means, *scales, folded))
    b_type = df.schema[_B].dataType
    schema = T.StructType(
        [
            *(
                T.StructField(f"__mx_key{i}", payload.schema[k].dataType)
                for i, k in enumerate(key_cols)
            ),
            T.StructField("__mx_kb", b_type),
            *(T.StructField(f"__mx_m{j}", T.DoubleType()) for j in range(n)),
            *(T.StructField(f"__mx_s{j}", T.DoubleType()) for j in range(n)),
            T.StructField("__mx_lin", b_type),
        ]
    )
    table = payload.sparkSession.createDataFrame(rows, schema)
    # Rows with a null key part join the all-null key row of their batch value.
    null_key = F.lit(False)
    for k in key_cols:
        null_key = null_key | quote(k).isNull()
    cond = [F.col(_B) == F.col("__mx_kb")]
    for i, k in enumerate(key_cols):
        cond.append(
            F.when(null_key, F.lit(None)).otherwise(quote(k)).eqNullSafe(F.col(f"__mx_key{i}"))
        )
    joined = df.join(F.broadcast(table), cond, "left")
    columns = {}
    for j, (c, out) in enumerate(zip(events.cols, outputs, strict=True)):
        x = F.col(c).cast("double")
        columns[out] = ((x - F.col(f"__mx_m{j}")) / F.col(f"__mx_s{j}")).cast("double")
    lineage = events.spec.lineage_col
    if lineage is not None:
        if events.spec.window is None:
            columns[lineage] = F.col("__mx_lin").cast(payload.schema[events.spec.column].dataType)
        else:
            columns[lineage] = F.timestamp_micros(F.col("__mx_lin").cast("long"))
    helpers = [f.name for f in schema.fields]
    return joined.withColumns(columns).drop(*helpers, _B)


def close_keyed_open_batches(stream: MXNormStream) -> MXNormState | None:
    """:func:`~mxnorm_spark.streaming.event_batches.close_open_batches` of a keyed stream:
    every key's open batches fold too."""
    return close_open_batches(stream, KeyedSteps)
