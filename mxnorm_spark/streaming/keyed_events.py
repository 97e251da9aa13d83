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

import time
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from mxnorm_spark.core.errors import InvalidParameterError, StateConflictError
from mxnorm_spark.core.event_time import SECTION, EventSection
from mxnorm_spark.core.open_batches import OpenBatch, exact_partials
from mxnorm_spark.core.state import MXNormState
from mxnorm_spark.keyed.event_time import KEYS_MEMBER, KeyedEvents, key_constants
from mxnorm_spark.streaming.event_batches import report_facts
from mxnorm_spark.streaming.progress import fault

if TYPE_CHECKING:
    from collections.abc import Iterator

    import pyarrow as pa
    from pyspark.sql import DataFrame

    from mxnorm_spark.streaming.updater import MXNormStream

__all__ = [
    "check_keyed_event_time",
    "close_keyed_open_batches",
    "read_key_states",
    "run_keyed_micro_batch",
]

_B, _T = "__mx_b", "__mx_t"
_KERNEL_ROWS = 1 << 18
KeyParts = dict[tuple[Any, ...], dict[Any, OpenBatch]]
GlobalParts = dict[Any, tuple[OpenBatch, int | None]]


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
    if batch_id < 0:
        return KeyedEvents()
    data = stream.store.section(batch_id, SECTION)
    if data is None:
        return KeyedEvents()
    if KEYS_MEMBER not in data:
        raise StateConflictError(
            f"state directory {stream.store.path} holds version {batch_id} of an event-time "
            "stream without keys; use a fresh state directory for the keyed stream"
        )
    source = f"state version {batch_id} of {stream.store.path}"
    return KeyedEvents.from_json(data[KEYS_MEMBER], _fresh(stream), source)


def read_key_states(stream: MXNormStream, batch_id: int | None = None) -> dict[Any, MXNormState]:
    """Every key's state (after its last fold) committed with version ``batch_id``
    (default: the newest); keys with no fold yet are left out."""
    if batch_id is None:
        batch_id = stream.store.latest_batch_id()
    if batch_id is None:
        return {}
    fresh = _fresh(stream)
    keyed = _keyed(stream, batch_id)
    return {k: e.state(fresh) for k, e in keyed.keys.items() if e.recent}


# ---- partials --------------------------------------------------------------------------
def _selected(stream: MXNormStream, payload: DataFrame) -> DataFrame:
    from mxnorm_spark.engines.columns import quote

    events, keys = stream.events, stream.keys
    assert events is not None and keys is not None
    b, t = events.value_columns(payload)
    cols = events.cols
    return payload.select(
        *(quote(k).alias(f"__mx_k{i}") for i, k in enumerate(keys.keys.key_cols)),
        b.alias(_B),
        t.alias(_T),
        *[payload[c].cast("double").alias(f"x{j}") for j, c in enumerate(cols)],
    )


def keyed_partials(stream: MXNormStream, payload: DataFrame) -> tuple[GlobalParts, KeyParts]:
    """The micro-batch's exact partials: per batch value over every row (with the largest
    event time, for windows), and per key with no null part and batch value."""
    from pyspark.sql import types as T

    from mxnorm_spark.engines.workers import map_in_arrow

    assert stream.keys is not None and stream.events is not None
    n_keys, k = len(stream.keys.keys.key_cols), len(stream.events.cols)
    selected = _selected(stream, payload)
    schema = T.StructType(
        [
            *(selected.schema[f"__mx_k{i}"] for i in range(n_keys)),
            T.StructField("b", selected.schema[_B].dataType),
            T.StructField("t", T.LongType()),
            T.StructField("rows", T.LongType()),
            T.StructField("count", T.ArrayType(T.LongType())),
            T.StructField("sum1", T.ArrayType(T.StringType())),
            T.StructField("sum2", T.ArrayType(T.StringType())),
        ]
    )
    kernel = partial(_partials_kernel, n_keys=n_keys, k=k)
    found: GlobalParts = {}
    per_key: KeyParts = {}
    for row in map_in_arrow(selected, kernel, schema).collect():
        part = OpenBatch(
            int(row["rows"]),
            tuple(int(v) for v in row["count"]),
            tuple(int(v, 16) for v in row["sum1"]),
            tuple(int(v, 16) for v in row["sum2"]),
        )
        t_max = None if row["t"] is None else int(row["t"])
        value = row["b"]
        if isinstance(value, float) and np.isnan(value):
            value = None  # a NaN batch value is no batch value (as the global stream)
        _merge_global(found, value, part, t_max)
        key = tuple(row[i] for i in range(n_keys))
        if value is not None and not any(v is None for v in key):
            mine = per_key.setdefault(key, {})
            mine[value] = mine[value].merge(part) if value in mine else part
    return found, per_key


def _merge_global(found: GlobalParts, value: Any, part: OpenBatch, t_max: int | None) -> None:
    if value in found:
        old, old_t = found[value]
        part = old.merge(part)
        t_max = old_t if t_max is None else (t_max if old_t is None else max(t_max, old_t))
    found[value] = (part, t_max)


def _partials_kernel(
    batches: Iterator[pa.RecordBatch], n_keys: int, k: int
) -> Iterator[pa.RecordBatch]:
    """mapInArrow: one row per (key, batch value) of the partition, its exact partial."""
    import pyarrow as pa

    found: dict[tuple[Any, ...], tuple[OpenBatch, int | None]] = {}
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    schema = None
    for rb in batches:
        if rb.num_rows == 0:
            continue
        schema = rb.schema
        pending.append(rb)
        pending_rows += rb.num_rows
        if pending_rows >= _KERNEL_ROWS:
            _add_chunk(found, pa.Table.from_batches(pending), n_keys, k)
            pending, pending_rows = [], 0
    if pending:
        _add_chunk(found, pa.Table.from_batches(pending), n_keys, k)
    if not found or schema is None:
        return
    groups = list(found)
    parts = [found[g][0] for g in groups]
    columns = {
        f"__mx_k{i}": pa.array([g[i] for g in groups], schema.field(f"__mx_k{i}").type)
        for i in range(n_keys)
    }
    yield pa.RecordBatch.from_pydict(
        {
            **columns,
            "b": pa.array([g[n_keys] for g in groups], schema.field(_B).type),
            "t": pa.array([found[g][1] for g in groups], pa.int64()),
            "rows": pa.array([p.rows for p in parts], pa.int64()),
            "count": pa.array([list(p.count) for p in parts], pa.list_(pa.int64())),
            "sum1": pa.array([[hex(s) for s in p.sum1] for p in parts], pa.list_(pa.string())),
            "sum2": pa.array([[hex(s) for s in p.sum2] for p in parts], pa.list_(pa.string())),
        }
    )


def _add_chunk(
    found: dict[tuple[Any, ...], tuple[OpenBatch, int | None]],
    table: pa.Table,
    n_keys: int,
    k: int,
) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    by = [f"__mx_k{i}" for i in range(n_keys)] + [_B]
    codes = np.empty((table.num_rows, len(by)), dtype=np.int64)
    for i, name in enumerate(by):
        encoded = pc.dictionary_encode(table.column(name).combine_chunks(), null_encoding="encode")
        codes[:, i] = encoded.indices.to_numpy(zero_copy_only=False)
    _, first, group = np.unique(codes, axis=0, return_index=True, return_inverse=True)
    group = group.reshape(-1)
    values = [table.column(name).take(pa.array(first)).to_pylist() for name in by]
    x = np.empty((table.num_rows, k))
    for j in range(k):
        col = pc.fill_null(table.column(f"x{j}").combine_chunks(), float("nan"))
        x[:, j] = col.to_numpy(zero_copy_only=False)
    parts = exact_partials(x, group, len(first))
    t_col = table.column(_T)
    t_max: list[int | None] = [None] * len(first)
    if t_col.null_count < table.num_rows:
        t = pc.fill_null(t_col.combine_chunks(), pa.scalar(np.iinfo(np.int64).min, pa.int64()))
        tm = np.full(len(first), np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(tm, group, t.to_numpy(zero_copy_only=False))
        t_max = [int(v) for v in tm]
    for g in range(len(first)):
        key = tuple(values[i][g] for i in range(len(by)))
        part, t = parts[g], t_max[g]
        if key in found:
            old, old_t = found[key]
            part = old.merge(part)
            t = old_t if t is None else (t if old_t is None else max(t, old_t))
        found[key] = (part, t)


# ---- the micro-batch -------------------------------------------------------------------
def run_keyed_micro_batch(stream: MXNormStream, batch_df: DataFrame, batch_id: int) -> None:
    """:meth:`MXNormStream.foreach_batch` of a keyed event-time stream (see the module)."""
    from pyspark import StorageLevel

    from mxnorm_spark.keyed.backfill import check_keys
    from mxnorm_spark.streaming._reads import rereads_same_rows
    from mxnorm_spark.streaming.sources import CORRUPT_COLUMN, FILE_COLUMN, INTERNAL_COLUMNS

    t0 = time.perf_counter()
    events, keys = stream.events, stream.keys
    assert events is not None and keys is not None and stream.cols is not None
    spark = batch_df.sparkSession
    fresh = _fresh(stream)
    base = stream.store.initial() or fresh
    committed = stream.store.get(batch_id)
    keep = stream.persist
    if keep is None:
        keep = not (stream._rereads or rereads_same_rows(batch_df))
    data = batch_df.persist(StorageLevel.MEMORY_AND_DISK) if keep else batch_df
    try:
        internal = [c for c in data.columns if c in INTERNAL_COLUMNS]
        if FILE_COLUMN in internal or CORRUPT_COLUMN in internal:
            stream._count_and_check(spark, data, batch_id, None)
        payload = data.drop(*internal) if internal else data
        check_keys(payload, list(stream.cols), keys.keys.key_cols, None)
        pairs: set[tuple[Any, ...]] | None = None
        if committed is None:
            prev, before = events.previous(batch_id, base)
            found, per_key = keyed_partials(stream, payload)
            keyed_prev = _keyed(stream, batch_id - 1)
            held: list[KeyedEvents] = []

            def advance_keys(section: EventSection) -> dict[str, Any]:
                held.append(keyed_prev.advance(events.spec, per_key, section, fresh))
                return {KEYS_MEMBER: held[0].to_json()}

            section, new = events.fold_and_commit(
                batch_id, prev, before, found, spark, extra=advance_keys
            )
            keyed = held[0]
            n_keys = len(keys.keys.key_cols)
            if section.watermark_before is None:
                pairs = {g for g in _pairs_of(found, per_key, n_keys)}
            else:
                late = section.watermark_before
                pairs = {g for g in _pairs_of(found, per_key, n_keys) if not g[-1] < late}
        else:
            got = events.section(batch_id)
            assert got is not None
            if got.closed:
                raise StateConflictError(
                    f"state directory {stream.store.path} was closed at the end of input at "
                    f"version {batch_id}: it takes no more micro-batches. Start a new state "
                    "directory warm-started from it (initial state option)"
                )
            section, new, before = got, committed, committed
            keyed = _keyed(stream, batch_id)
        out_dir = None
        if section.values:
            out = normalize_keyed(
                stream, payload, section=section, keyed=keyed, base=base, pairs=pairs
            )
            out_dir = stream._publish(out, batch_id)
        fault("after_write", batch_id, spark)
    finally:
        if keep:
            data.unpersist()
    stream._report(
        batch_id,
        section.rows,
        seconds=time.perf_counter() - t0,
        replayed=committed is not None,
        prev=before,
        new=new,
        out_dir=out_dir,
        **report_facts(section),
    )


def _pairs_of(found: GlobalParts, per_key: KeyParts, n_keys: int) -> set[tuple[Any, ...]]:
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
    events = stream.events
    assert events is not None
    latest = stream.store.latest_batch_id()
    if latest is None:
        return None
    section = events.section(latest)
    state = stream.store.get(latest)
    assert section is not None and state is not None
    if section.closed:
        return state
    keyed = _keyed(stream, latest)
    fresh = _fresh(stream)

    def advance_keys(after: EventSection) -> dict[str, Any]:
        done = keyed.advance(events.spec, {}, after, fresh, close_all=True)
        return {KEYS_MEMBER: done.to_json()}

    _, new = events.fold_and_commit(
        latest + 1, section, state, {}, None, close_all=True, extra=advance_keys
    )
    return new
