"""An event-time stream's micro-batch on Spark: exact partials per batch value, the fold of
closed batches, the commit, and the rows normalized point in time.

Per micro-batch (semantics: :mod:`mxnorm_spark.core.event_time`):

1. one ``mapInArrow`` job computes, per partition and batch value, the exact partial
   (:func:`~mxnorm_spark.core.open_batches.exact_partials`); the driver merges them exactly;
2. the driver folds the batches the new watermark closes, writes a fold record per folded
   batch (``STATE/_folds/``, :mod:`mxnorm_spark.store.folds`) and the history, and commits
   the folded state with the open batches as one version (section ``event_time``); then
   every segment of folds the version completes is compacted into one file;
3. the rows (late ones left out) are normalized, each with the state of its batch value
   (``apply_at="before"``), and published as the micro-batch's output directory.

A small micro-batch (the limit of :mod:`~mxnorm_spark.streaming._local`) is read to the
driver in one job instead, and steps 1 and 3 run there in numpy, its output written as one
Parquet file: the same partials (they are exact) and the same ``(x - mean) / scale``, so
the same bits as the Spark path (tested across both).

A replayed micro-batch (its version committed) computes no partials: its section says which
batch values it held and which state each gets, so it rewrites the same output.

:func:`run_micro_batch` is the micro-batch of every event-time stream, global or keyed: the
replay check, the commit, the fault points, the ``on_commit`` hook and the report. What a
kind of stream computes, commits beside the section and writes is its :class:`EventSteps`
(the keyed one: :mod:`~mxnorm_spark.streaming.keyed_events`).
"""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from mxnorm_spark.core.errors import InvalidParameterError, StateConflictError
from mxnorm_spark.core.event_time import SECTION, EventSection, EventTime, Fold
from mxnorm_spark.core.moments import Moments
from mxnorm_spark.core.open_batches import OpenBatch, exact_partials
from mxnorm_spark.core.state import MXNormState, scale_of
from mxnorm_spark.store import StateStore
from mxnorm_spark.store.folds import compact_folds, write_fold
from mxnorm_spark.store.history import batch_table, write_table_record
from mxnorm_spark.streaming.progress import fault

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import pyarrow as pa
    from pyspark.sql import Column, DataFrame

    from mxnorm_spark.streaming.updater import MXNormStream

__all__ = ["EventTimeBatches", "check_event_time", "close_open_batches", "run_micro_batch"]

_B, _T, _G, _K = "__mx_b", "__mx_t", "__mx_g", "__mx_k"
# Batch value -> (exact partial, largest event time or None) of a micro-batch.
Parts = dict[Any, tuple[OpenBatch, int | None]]
# Rows the kernel gathers before one exact_partials call (its integer conversion is per call).
_KERNEL_ROWS = 1 << 18
_BATCH_TYPES = ("byte", "short", "integer", "long", "float", "double", "decimal", "string",
                "date", "timestamp", "timestamp_ntz", "boolean")  # fmt: skip


def check_event_time(*, cols: Any, apply_at: str, handle_invalid: str, input_col: Any) -> None:
    """The stream settings an event-time stream supports, or a named error."""
    if cols is None or input_col is not None:
        raise InvalidParameterError(
            "an event-time stream normalizes scalar feature columns (cols=), not input_col"
        )
    if apply_at != "before":
        raise InvalidParameterError(
            "an event-time stream normalizes with apply_at='before' (each row with the state "
            "before its batch, written as it arrives). apply_at='after' would hold every row "
            "until its batch folds, i.e. buffer raw rows in the state; normalize the folded "
            "batches afterwards with `mxnorm-spark transform --batch-col` instead"
        )
    if handle_invalid != "keep":
        raise InvalidParameterError(
            "an event-time stream keeps invalid values as they are (handle_invalid='keep'); "
            f"got {handle_invalid!r}"
        )


class EventTimeBatches:
    """The event-time part of one stream: its spec, its store and the state it starts from."""

    def __init__(self, spec: EventTime, store: StateStore, cols: tuple[str, ...]) -> None:
        self.spec = spec
        self.store = store
        self.cols = cols
        self._compacted = False  # the first commit of a run also finishes what a crash left

    # ---- the committed sections -------------------------------------------------------
    def section(self, batch_id: int) -> EventSection | None:
        data = self.store.section(batch_id, SECTION)
        if data is None:
            if self.store.get(batch_id) is not None:
                raise StateConflictError(
                    f"state directory {self.store.path} holds version {batch_id} of a stream "
                    "without event-time batches; use a fresh state directory (warm-start it "
                    "with the initial state option)"
                )
            return None
        section = EventSection.from_json(data, f"state version {batch_id} of {self.store.path}")
        if section.spec != self.spec.to_dict():
            raise InvalidParameterError(
                f"state directory {self.store.path} was written with event-time settings "
                f"{section.spec}, the stream has {self.spec.to_dict()}; use the same settings, "
                "or a fresh state directory"
            )
        return section

    def previous(self, batch_id: int, base: MXNormState) -> tuple[EventSection, MXNormState]:
        """The section and folded state micro-batch ``batch_id`` starts from."""
        before = self.store.state_before(batch_id, every_batch=True)
        if before is None or batch_id == 0 or self.store.get(batch_id - 1) is None:
            return EventSection(spec=self.spec.to_dict()), before or base
        section = self.section(batch_id - 1)
        assert section is not None
        if section.closed:
            raise StateConflictError(
                f"state directory {self.store.path} was closed at the end of input (version "
                f"{batch_id - 1} folded every open batch): it takes no more micro-batches. "
                "Start a new state directory warm-started from it (initial state option)"
            )
        return section, before

    def replayed(self, batch_id: int) -> EventSection:
        """The committed section of a replayed micro-batch (one before the close only)."""
        section = self.section(batch_id)
        assert section is not None
        if section.closed:
            raise StateConflictError(
                f"state directory {self.store.path} was closed at the end of input at "
                f"version {batch_id}: it takes no more micro-batches. Start a new state "
                "directory warm-started from it (initial state option)"
            )
        return section

    # ---- one micro-batch -------------------------------------------------------------
    def partials(self, payload: DataFrame) -> Parts:
        """Batch value -> (exact partial, largest event time or None) of the micro-batch."""
        found: Parts = {}
        for _, value, part, t_max in self.group_partials(payload):
            merge_part(found, value, part, t_max)
        return found

    def group_partials(
        self, payload: DataFrame, key_cols: tuple[str, ...] = ()
    ) -> Iterator[tuple[tuple[Any, ...], Any, OpenBatch, int | None]]:
        """(key, batch value, exact partial, largest event time) of the micro-batch's rows
        per key (the values of ``key_cols``) and batch value, from one ``mapInArrow`` job:
        a pair may come once per partition (partials merge exactly in any order). A NaN
        batch value is no batch value (None)."""
        from pyspark.sql import types as T

        from mxnorm_spark.engines.columns import quote
        from mxnorm_spark.engines.workers import map_in_arrow

        b, t = self.value_columns(payload)
        n_keys, k = len(key_cols), len(self.cols)
        selected = payload.select(
            *(quote(c).alias(f"{_K}{i}") for i, c in enumerate(key_cols)),
            b.alias(_B),
            t.alias(_T),
            *[payload[c].cast("double").alias(f"x{j}") for j, c in enumerate(self.cols)],
        )
        schema = T.StructType(
            [
                *(selected.schema[f"{_K}{i}"] for i in range(n_keys)),
                T.StructField("b", selected.schema[_B].dataType),
                T.StructField("t", T.LongType()),
                T.StructField("rows", T.LongType()),
                T.StructField("count", T.ArrayType(T.LongType())),
                T.StructField("sum1", T.ArrayType(T.StringType())),
                T.StructField("sum2", T.ArrayType(T.StringType())),
            ]
        )
        kernel = partial(_partials_kernel, n_keys=n_keys, k=k)
        for row in map_in_arrow(selected, kernel, schema).collect():
            part = OpenBatch(
                int(row["rows"]),
                tuple(int(v) for v in row["count"]),
                tuple(int(v, 16) for v in row["sum1"]),
                tuple(int(v, 16) for v in row["sum2"]),
            )
            t_max = None if row["t"] is None else int(row["t"])
            yield tuple(row[i] for i in range(n_keys)), row["b"], part, t_max

    def value_columns(self, df: DataFrame) -> tuple[Column, Column]:
        """The batch value and (windows) the event time in microseconds, as columns."""
        from pyspark.sql import functions as F

        spec = self.spec
        if spec.column not in df.columns:
            raise InvalidParameterError(
                f"the {'batch' if spec.batch_col else 'event-time'} column {spec.column!r} is "
                f"not in the stream's columns {df.columns}"
            )
        kind = df.schema[spec.column].dataType.typeName()
        if spec.window is None:
            if kind not in _BATCH_TYPES:
                raise InvalidParameterError(
                    f"batch column {spec.column!r} has type {kind}; use a numeric, string, "
                    "date, timestamp or boolean column"
                )
            return F.col(spec.column), F.lit(None).cast("long")
        if kind not in ("timestamp", "timestamp_ntz"):
            raise InvalidParameterError(
                f"event-time column {spec.column!r} has type {kind}; it must be a timestamp"
            )
        t = F.unix_micros(F.col(spec.column).cast("timestamp"))
        return t - F.pmod(t, F.lit(spec.window_us)), t

    def fold_and_commit(
        self,
        batch_id: int,
        prev: EventSection,
        state: MXNormState,
        parts: Parts,
        spark: Any,
        *,
        close_all: bool = False,
        extra: Callable[[EventSection], dict[str, Any]] | None = None,
    ) -> tuple[EventSection, MXNormState]:
        """Fold what the micro-batch closes, record it and commit the version; ``extra``
        gives more members of the committed section from the new one (a keyed stream's
        keys: :mod:`~mxnorm_spark.streaming.keyed_events`)."""
        section, new, folds = prev.advance(self.spec, state, parts, close_all=close_all)
        more = {} if extra is None else extra(section)
        for f in folds:
            write_fold(self.store.path, f.number, f.value, f.state, fs=self.store.fs)
        self._record(batch_id, section, new, folds)
        fault("before_commit", batch_id, spark)
        self.store.commit(batch_id, new, section=(SECTION, {**section.to_json(), **more}))
        fault("after_commit", batch_id, spark)
        # The folds the version counts are final: whole segments of them become one file.
        compact_folds(
            self.store.path, section.folds, after=prev.folds, recover=not self._compacted,
            fs=self.store.fs,
        )  # fmt: skip
        self._compacted = True
        return section, new

    def _record(
        self, batch_id: int, section: EventSection, state: MXNormState, folds: list[Fold]
    ) -> None:
        import pyarrow as pa

        from mxnorm_spark.store.history import history_schema

        tables = [
            batch_table(
                batch_id, rows=f.rows, moments=f.moments, state=f.state, batch_value=f.value
            )
            for f in folds
        ] or [
            batch_table(
                batch_id,
                rows=section.rows,
                moments=Moments.empty(state.n_features),
                state=state,
            )
        ]
        table = pa.concat_tables(tables).cast(history_schema())
        late = pa.array([section.batch_late] * table.num_rows, pa.int64())
        table = table.append_column("late_rows", late)
        write_table_record(self.store.fs, self.store.path, batch_id, table)

    # ---- the output -------------------------------------------------------------------
    def normalize(
        self,
        payload: DataFrame,
        section: EventSection,
        base: MXNormState,
        outputs: tuple[str, ...],
    ) -> DataFrame:
        """The micro-batch's rows (late ones left out), each normalized with the state of
        its batch value; a feature with no state there gives null."""
        from pyspark.sql import functions as F

        from mxnorm_spark.engines.columns import sql_double, sql_name

        b, _ = self.value_columns(payload)
        df = payload.withColumn(_B, b)
        if section.watermark_before is not None:
            df = df.where(F.col(_B) >= F.lit(section.watermark_before))
        groups: dict[Any, tuple[MXNormState, list[Any]]] = {}
        for value in section.values:
            folded, state = section.state_for(self.spec, value, base)
            groups.setdefault(folded, (state, []))[1].append(value)
        # The state each row takes, as an index (one Column expression); then one SQL text
        # per feature: a py4j call each, not one per Column operation and state.
        which = _cases([(values, F.lit(i)) for i, (_, values) in enumerate(groups.values())])
        df = df.withColumn(_G, which)
        columns: dict[str, Column] = {}
        for j, (c, out) in enumerate(zip(self.cols, outputs, strict=True)):
            x = f"CAST({sql_name(c)} AS DOUBLE)"
            cases = []
            for i, (state, _) in enumerate(groups.values()):
                mean, var = float(state.mean[j]), float(state.var[j])
                if not np.isnan(mean):
                    scale = float(scale_of(np.float64(var), state.options))
                    cases.append(f"WHEN {i} THEN ({x} - {sql_double(mean)}) / {sql_double(scale)}")
            text = f"CASE {sql_name(_G)} {' '.join(cases)} END" if cases else "NULL"
            columns[out] = F.expr(text).cast("double")
        lineage = self.spec.lineage_col
        if lineage is not None:
            kind = payload.schema[self.spec.column].dataType
            marks = [(v, F.lit(folded)) for folded, (_, v) in groups.items() if folded is not None]
            if self.spec.window is None:
                columns[lineage] = _cases(marks).cast(kind)
            else:
                columns[lineage] = F.timestamp_micros(_cases(marks).cast("long"))
        return df.withColumns(columns).drop(_B, _G)


def _cases(cases: list[tuple[list[Any], Column]]) -> Column:
    """``CASE WHEN batch IN (values) THEN expr ... END`` (null where no case holds)."""
    from pyspark.sql import functions as F

    expr: Column | None = None
    for values, then in cases:
        test = F.col(_B).isin(values)
        expr = F.when(test, then) if expr is None else expr.when(test, then)
    return F.lit(None) if expr is None else expr


def merge_part(found: Parts, value: Any, part: OpenBatch, t_max: int | None) -> None:
    """Add a partial of batch value ``value`` (and its largest event time) to ``found``."""
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

    found: Parts = {}  # (key..., batch value) -> partial, largest event time
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
    keys = {
        f"{_K}{i}": pa.array([g[i] for g in groups], schema.field(f"{_K}{i}").type)
        for i in range(n_keys)
    }
    yield pa.RecordBatch.from_pydict(
        {
            **keys,
            "b": pa.array([g[n_keys] for g in groups], schema.field(_B).type),
            "t": pa.array([found[g][1] for g in groups], pa.int64()),
            "rows": pa.array([p.rows for p in parts], pa.int64()),
            "count": pa.array([list(p.count) for p in parts], pa.list_(pa.int64())),
            "sum1": pa.array([[hex(s) for s in p.sum1] for p in parts], pa.list_(pa.string())),
            "sum2": pa.array([[hex(s) for s in p.sum2] for p in parts], pa.list_(pa.string())),
        }
    )


def _add_chunk(found: Parts, table: pa.Table, n_keys: int, k: int) -> None:
    """Merge into ``found`` the exact partial of each (key..., batch value) of ``table``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    by = [f"{_K}{i}" for i in range(n_keys)] + [_B]
    encoded = [
        pc.dictionary_encode(table.column(name).combine_chunks(), null_encoding="encode")
        for name in by
    ]
    if n_keys == 0:  # the batch value's codes are the groups
        group = encoded[0].indices.to_numpy(zero_copy_only=False).astype(np.int64)
        groups = [(v,) for v in encoded[0].dictionary.to_pylist()]
    else:
        codes = np.empty((table.num_rows, len(by)), dtype=np.int64)
        for i, e in enumerate(encoded):
            codes[:, i] = e.indices.to_numpy(zero_copy_only=False)
        _, first, group = np.unique(codes, axis=0, return_index=True, return_inverse=True)
        group = group.reshape(-1)
        columns = [table.column(name).take(pa.array(first)).to_pylist() for name in by]
        groups = list(zip(*columns, strict=True))
    x = np.empty((table.num_rows, k), order="F")  # a feature's values side by side
    for j in range(k):
        col = pc.fill_null(table.column(f"x{j}").combine_chunks(), float("nan"))
        x[:, j] = col.to_numpy(zero_copy_only=False)
    parts = exact_partials(x, group, len(groups))
    t_col = table.column(_T)
    t_max: list[int | None] = [None] * len(groups)
    if t_col.null_count < table.num_rows:
        t = pc.fill_null(t_col.combine_chunks(), pa.scalar(np.iinfo(np.int64).min, pa.int64()))
        tm = np.full(len(groups), np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(tm, group, t.to_numpy(zero_copy_only=False))
        t_max = [int(v) for v in tm]
    for g, key in enumerate(groups):
        value = key[-1]
        nan = isinstance(value, float) and np.isnan(value)  # a NaN batch value is no batch value
        merge_part(found, (*key[:-1], None) if nan else key, parts[g], t_max[g])


def report_facts(section: EventSection) -> dict[str, Any]:
    """What a micro-batch's progress line says of its event-time batches."""
    return {
        "late_rows": section.batch_late,
        "folded": len(section.folded),
        "open_batches": len(section.open),
    }


# Batch column types whose Python values are the same read through Arrow on the driver as
# collected from Spark (timestamps and decimals take the Spark path).
_DRIVER_BATCH_TYPES = frozenset(
    {"tinyint", "smallint", "int", "bigint", "float", "double", "string", "date", "boolean"}
)
_DRIVER_FEATURE_TYPES = frozenset({"tinyint", "smallint", "int", "bigint", "float", "double"})


def collect_small_batch(
    stream: MXNormStream, payload: DataFrame, last_rows: int = 0
) -> pa.Table | None:
    """The micro-batch with its batch value (and event time) columns as Arrow on the driver,
    when it is small and every step gives there the bits of the Spark path; else None.
    ``last_rows``: the rows of the micro-batch before; more than the limit and no attempt is
    made (it would read most of the batch twice, as micro-batch mode avoids too)."""
    import pyarrow as pa

    from mxnorm_spark.streaming._local import collect_small

    events, driver = stream.events, stream._driver
    if events is None or driver.codec is None or driver.max_values <= 0:
        return None
    spec, types = events.spec, {f.name: f.dataType.simpleString() for f in payload.schema}
    if any(types.get(c) not in _DRIVER_FEATURE_TYPES for c in events.cols):
        return None
    if spec.window is None and types.get(spec.column) not in _DRIVER_BATCH_TYPES:
        return None
    if spec.window is not None and spec.lineage_col is not None:
        return None  # the lineage timestamp is written by Spark
    limit = driver.max_values // (len(types) + 2)
    if last_rows > limit:
        return None
    if spec.window is not None:
        b, t = events.value_columns(payload)
        return collect_small(payload.withColumns({_B: b, _T: t}), limit)
    # A batch column is its own batch value: added here, not by one more plan in Spark.
    table = collect_small(payload, limit)
    if table is None:
        return None
    table = table.append_column(_B, table.column(spec.column))
    return table.append_column(_T, pa.nulls(table.num_rows, pa.int64()))


def small_partials(table: pa.Table, cols: tuple[str, ...]) -> Parts:
    """:meth:`EventTimeBatches.partials` of a micro-batch collected to the driver."""
    import pyarrow as pa
    import pyarrow.compute as pc

    found: Parts = {}
    if table.num_rows:
        columns = {_B: table.column(_B), _T: table.column(_T).cast(pa.int64())}
        for j, c in enumerate(cols):
            columns[f"x{j}"] = pc.cast(table.column(c), pa.float64(), safe=False)
        _add_chunk(found, pa.table(columns), 0, len(cols))
    return {value: part for (value,), part in found.items()}


def normalize_small(
    table: pa.Table,
    events: EventTimeBatches,
    section: EventSection,
    base: MXNormState,
    outputs: tuple[str, ...],
) -> pa.Table:
    """:meth:`EventTimeBatches.normalize` of a micro-batch on the driver: the same numbers
    (``(x - mean) / scale`` in float64), null where the Spark path gives null."""
    import pyarrow as pa
    import pyarrow.compute as pc

    b = table.column(_B)
    if section.watermark_before is not None:
        keep = pc.greater_equal(b, pa.scalar(section.watermark_before, b.type))
        table = table.filter(pc.fill_null(keep, False))
        b = table.column(_B)
    groups: dict[Any, tuple[MXNormState, list[Any]]] = {}
    for value in section.values:
        folded, state = section.state_for(events.spec, value, base)
        groups.setdefault(folded, (state, []))[1].append(value)
    masks = {
        folded: pc.fill_null(pc.is_in(b, value_set=pa.array(values, b.type)), False).to_numpy(
            zero_copy_only=False
        )
        for folded, (_, values) in groups.items()
    }
    out = table.drop_columns([_B, _T])
    for j, (c, name) in enumerate(zip(events.cols, outputs, strict=True)):
        col = pc.cast(table.column(c), pa.float64(), safe=False)
        x = pc.fill_null(col, float("nan")).to_numpy(zero_copy_only=False)
        z = np.zeros(table.num_rows)
        covered = np.zeros(table.num_rows, dtype=bool)
        for folded, (state, _) in groups.items():
            mean, var = float(state.mean[j]), float(state.var[j])
            if np.isnan(mean):
                continue
            scale = float(scale_of(np.float64(var), state.options))
            z = np.where(masks[folded], (x - mean) / scale, z)
            covered |= masks[folded]
        nulls = ~covered | col.is_null().to_numpy(zero_copy_only=False)
        array = pa.array(z, pa.float64(), mask=nulls)
        if name in out.column_names:
            out = out.set_column(out.column_names.index(name), name, array)
        else:
            out = out.append_column(name, array)
    lineage = events.spec.lineage_col
    if lineage is not None:
        marks = np.full(table.num_rows, None, dtype=object)
        for folded, mask in masks.items():
            if folded is not None:
                marks[mask] = folded
        out = out.append_column(lineage, pa.array(marks.tolist(), b.type))
    return out


class EventSteps:
    """What one kind of event-time stream does within :func:`run_micro_batch` and
    :func:`close_open_batches`: one instance per micro-batch (``payload``: its rows, None
    for the close). This one is the global stream's."""

    def __init__(self, stream: MXNormStream, batch_id: int, payload: DataFrame | None) -> None:
        assert stream.events is not None
        self.stream, self.events = stream, stream.events
        self.batch_id, self.payload = batch_id, payload
        self.small: pa.Table | None = None  # the micro-batch read to the driver

    def partials(self, prev: EventSection) -> Parts:
        """The exact partials of a new micro-batch (``prev``: the section it starts from)."""
        assert self.payload is not None
        self.small = collect_small_batch(self.stream, self.payload, prev.rows)
        if self.small is not None:
            return small_partials(self.small, self.events.cols)
        return self.events.partials(self.payload)

    def extra(self, section: EventSection) -> dict[str, Any]:
        """More members of the committed section, given the new one (closed: the close)."""
        return {}

    def replay(self, section: EventSection) -> None:
        """Ready the write of a replayed micro-batch from its committed ``section``."""
        assert self.payload is not None
        self.small = collect_small_batch(self.stream, self.payload, section.rows)

    def write(self, section: EventSection, base: MXNormState) -> str | None:
        """Normalize and publish the rows of a micro-batch with batch values; its directory
        (None when the output is a sink)."""
        stream, payload = self.stream, self.payload
        assert payload is not None and stream.cols is not None
        outputs = tuple(stream.output.cols or stream.cols)
        if self.small is not None and stream._directories is not None:
            table = normalize_small(self.small, self.events, section, base, outputs)
            codec = stream._driver.codec or "snappy"
            return stream._directories.publish_table(
                table, self.batch_id, codec, payload.sparkSession
            )
        return stream._publish(
            self.events.normalize(payload, section, base, outputs), self.batch_id
        )


def run_micro_batch(
    stream: MXNormStream,
    batch_df: DataFrame,
    batch_id: int,
    steps: type[EventSteps] = EventSteps,
) -> None:
    """:meth:`MXNormStream.foreach_batch` of an event-time stream (see the module text).

    ``on_commit(batch_id, state)`` runs after the output is written when the version folded
    one or more batches, with the state after the newest of them (the version's state),
    and again when Spark replays that micro-batch."""
    from pyspark import StorageLevel

    from mxnorm_spark.streaming._reads import rereads_same_rows
    from mxnorm_spark.streaming.sources import CORRUPT_COLUMN, FILE_COLUMN, INTERNAL_COLUMNS

    t0 = time.perf_counter()
    events = stream.events
    assert events is not None and stream.cols is not None
    spark = batch_df.sparkSession
    base = stream.store.initial() or MXNormState.create(stream.cols, options=stream.options)
    committed = stream.store.get(batch_id)
    keep = stream.persist
    if keep is None:
        keep = not (stream._rereads or rereads_same_rows(batch_df))
    data = batch_df.persist(StorageLevel.MEMORY_AND_DISK) if keep else batch_df
    try:
        internal = [c for c in data.columns if c in INTERNAL_COLUMNS]
        if FILE_COLUMN in internal or CORRUPT_COLUMN in internal:
            stream._count_and_check(spark, data, batch_id, None)
        step = steps(stream, batch_id, data.drop(*internal) if internal else data)
        if committed is None:
            prev, before = events.previous(batch_id, base)
            parts = step.partials(prev)
            section, new = events.fold_and_commit(
                batch_id, prev, before, parts, spark, extra=step.extra
            )
        else:
            section = events.replayed(batch_id)
            new = before = committed
            step.replay(section)
        out_dir = step.write(section, base) if section.values else None
        fault("after_write", batch_id, spark)
        _on_commit(stream, batch_id, section, new)
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


def close_open_batches(
    stream: MXNormStream, steps: type[EventSteps] = EventSteps
) -> MXNormState | None:
    """Fold every open batch (the end of input) and commit the result as the next version,
    which closes the state directory; None when it holds no version yet. ``on_commit`` runs
    as after a micro-batch, and again for a directory closed already (as for a replay)."""
    events = stream.events
    if events is None:
        raise InvalidParameterError("only an event-time stream has open batches to close")
    latest = stream.store.latest_batch_id()
    if latest is None:
        return None
    section = events.section(latest)
    state = stream.store.get(latest)
    assert section is not None and state is not None
    if not section.closed:
        batch_id, prev = latest + 1, section
        extra = steps(stream, batch_id, None).extra
        section, state = events.fold_and_commit(
            batch_id, prev, state, {}, None, close_all=True, extra=extra
        )
        latest = batch_id
    _on_commit(stream, latest, section, state)
    return state


def _on_commit(
    stream: MXNormStream, batch_id: int, section: EventSection, state: MXNormState
) -> None:
    """The stream's ``on_commit`` hook, for a version that folded a batch (the state
    changed): a hook that writes idempotently sees every folded state at least once."""
    if stream.on_commit is not None and section.folded:
        stream.on_commit(batch_id, state)
