"""Per-key state of a stream: one Parquet snapshot of every key's state per micro-batch.

:class:`MXNormStream` with ``keys=KeyOptions(...)`` keeps, beside its global state
versions, the state of every key under ``STATE/_keys/``:

* ``batch_id=<12 digits>/``: the *snapshot* after that micro-batch, Parquet, one row per
  key: the key columns, ``last_batch`` (its last micro-batch with rows),
  ``batches_seen``, ``key_rows``, ``rows`` and flat double columns ``f{j}_{field}`` per
  feature ``j`` (:class:`~mxnorm_spark.keyed.stream_kernel.SnapshotLayout`): the state
  after its last batch (``count``, ``mean``, ``var``; with ``alpha=None`` ``count`` and
  the running moments ``shift``, ``delta``, ``m2``) and the constants its rows of that
  batch were normalized with (``scale``, or with ``apply_at="before"`` ``count_before``,
  ``mean_before``, ``scale_before``). Any engine reads it as a table. Written by the fold's
  tasks it is in parts, ``part-<partition>.snappy.parquet``, and ``_parts`` holds how many.
* ``keyed.json``: the key columns, features, key options, ``apply_at`` and the snapshot
  format, checked at every restart.

For a micro-batch with rows, one Spark job hash-partitions the micro-batch's rows by key
into a fixed number of partitions, and each task of a ``mapInArrow`` kernel
(:func:`~mxnorm_spark.keyed.stream_kernel.fold_and_normalize`) reads its own part of the
previous snapshot, folds each key's rows into its state with the math of
:meth:`MXNormState.update` (all keys at once), carries the keys without rows over (or
evicts them), writes its part of the new snapshot, and returns the rows normalized with
their key's constants or the global fallback (:mod:`mxnorm_spark.streaming._keyed_one_job`), which
the same job writes aside under the output. The snapshot is renamed into place *before*
the global version of the batch is committed: that version is the batch's one commit
point; the rows are renamed into place after it. A replay of a committed batch reads its
snapshot back and normalizes its rows with one join by key against the keys of this
micro-batch, with the fallback rules of :mod:`mxnorm_spark.keyed` (the global state for
null keys and keys with fewer than ``min_key_rows`` valid values so far); a replay of an
uncommitted one recomputes the snapshot from the previous one (the same rows in the same
order give the same bits). After a commit, older snapshots are deleted. Nothing per key
reaches the driver.

The one job needs the stream to write its own output directories and a local state
directory (the tasks write the parts with no JVM). With a user sink, or a state directory
only Hadoop reaches, the snapshot's rows are shuffled with the micro-batch's (sorted by
(key, source, features)), Spark writes the snapshot
(:func:`~mxnorm_spark.keyed.stream_kernel.stream_fold`), and the rows are normalized by
the join, as for a replay.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mxnorm_spark.core.choices import KEYED_STREAM_TYPE, KEYS_DIR
from mxnorm_spark.core.errors import CorruptStateError, InvalidParameterError, StateConflictError
from mxnorm_spark.core.event_time import SECTION as EVENT_TIME_SECTION
from mxnorm_spark.core.state import MXNormState, StateOptions
from mxnorm_spark.engines.workers import map_in_arrow
from mxnorm_spark.keyed.kernel import FIELDS, feature_columns, filled
from mxnorm_spark.keyed.stream_kernel import (
    SNAPSHOT_SCALARS,
    SOURCE_COLUMN,
    SnapshotLayout,
    fold_normalize_kernel,
    snapshot_states_kernel,
    stream_fold_kernel,
)
from mxnorm_spark.store import filesystem, local_path, write_state
from mxnorm_spark.store.filesystems import LocalFileSystem
from mxnorm_spark.streaming._keyed_one_job import (
    SnapshotPartFiles,
    carried_columns,
    check_parts,
    output_schema,
    parts_of,
    row_output,
)
from mxnorm_spark.streaming.progress import fault
from mxnorm_spark.streaming.sinks import (
    BatchDirectories,
    StreamOutput,
    batch_output_dir,
    no_dictionary,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql import types as T

__all__ = ["KEYED_STREAM_TYPE", "KEYS_DIR", "KeyOptions", "KeyedStreamState", "export_latest"]

_META = "keyed.json"
_PREFIX = "batch_id="
# 2: flat per-feature double columns (SnapshotLayout); 1 (no field): per-feature arrays.
SNAPSHOT_FORMAT = 2


@dataclass(frozen=True)
class KeyOptions:
    """Per-key state of a stream: ``key_cols`` (one or more columns of orderable scalars),
    ``min_key_rows`` (a feature uses its key's constants once the key has that many valid
    values of it, at least 1; the global state before), ``evict_after`` (a key unseen for
    that many micro-batches is dropped from the snapshot, and starts afresh if it comes
    back; None keeps every key) and ``num_partitions`` (of the shuffle by key; default
    ``spark.sql.shuffle.partitions``)."""

    key_cols: tuple[str, ...]
    min_key_rows: int = 1
    evict_after: int | None = None
    num_partitions: int | None = None

    def __post_init__(self) -> None:
        keys = self.key_cols
        if isinstance(keys, str) or not keys or not all(isinstance(k, str) for k in keys):
            raise InvalidParameterError(
                f"key_cols must be a non-empty list of column names, got {keys!r}"
            )
        object.__setattr__(self, "key_cols", tuple(keys))
        for name, low in (("min_key_rows", 0), ("evict_after", 1), ("num_partitions", 1)):
            value = getattr(self, name)
            if value is None and name != "min_key_rows":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidParameterError(f"{name} must be an int >= {low}, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_cols": list(self.key_cols),
            "min_key_rows": self.min_key_rows,
            "evict_after": self.evict_after,
        }


def snapshot_dir(batch_id: int) -> str:
    # BatchDirectories publishes each snapshot under this name (into_place).
    return batch_output_dir(batch_id)


class KeyedStreamState:
    """The per-key snapshots of one stream's state directory (see the module docstring)."""

    def __init__(
        self,
        spark: SparkSession,
        state_path: str,
        features: Sequence[str],
        keys: KeyOptions,
        options: StateOptions,
        *,
        apply_at: str = "after",
        handle_invalid: str = "keep",
        directories: BatchDirectories | None = None,
        output: StreamOutput | None = None,
    ) -> None:
        self.fs = filesystem(state_path, spark)
        self.handle_invalid = handle_invalid
        # One job folds and writes the rows when the stream writes its own directories.
        self.directories = directories if output is not None and output.sink is None else None
        self.output = output
        self._pending: dict[int, str] = {}  # batch id -> its output written aside
        base = local_path(state_path) if isinstance(self.fs, LocalFileSystem) else state_path
        self.root = self.fs.join(base, KEYS_DIR)
        self.features = tuple(features)
        self.keys = keys
        self.options = options
        self.layout = SnapshotLayout(len(self.features), options, apply_at, self.features)
        clash = set(keys.key_cols) & {*SNAPSHOT_SCALARS, *self._value_columns()}
        if clash:
            raise InvalidParameterError(
                f"key column(s) {sorted(clash)} clash with the per-key snapshot's columns; "
                "rename them"
            )
        self._check_metadata()
        # Snapshots are published as the stream's outputs are: written aside, renamed.
        self._snapshots = BatchDirectories(self.root, fs=self.fs)

    def clear_attempts(self) -> None:
        """Remove what killed attempts left aside (only as the directory's claimed writer)."""
        self._snapshots.clear_attempts()

    def _value_columns(self) -> list[str]:
        return [*self.layout.state_columns, *self.layout.constant_columns]

    def _metadata(self) -> dict[str, Any]:
        return {
            "type": KEYED_STREAM_TYPE,
            "snapshot_format": SNAPSHOT_FORMAT,
            "features": list(self.features),
            "options": self.options.to_dict(),
            "apply_at": self.layout.apply_at,
            **self.keys.to_dict(),
        }

    def _check_metadata(self) -> None:
        path = self.fs.join(self.root, _META)
        ours = self._metadata()
        found = _read_metadata(self.fs, path)
        if found is None:
            self.fs.mkdirs(self.root)
            self.fs.write_atomic(path, (json.dumps(ours, indent=2, sort_keys=True) + "\n").encode())
            return
        if found.get("snapshot_format", 1) != SNAPSHOT_FORMAT:
            raise CorruptStateError(
                f"the per-key state in {self.root} has snapshot format "
                f"{found.get('snapshot_format', 1)} (1: per-feature arrays), this version reads "
                f"format {SNAPSHOT_FORMAT} (flat columns); start a fresh state directory, or "
                "export the old one with the version that wrote it"
            )
        diff = [
            f"{k}={found.get(k)!r} (stream: {v!r})" for k, v in ours.items() if found.get(k) != v
        ]
        if diff:
            raise InvalidParameterError(
                f"the per-key state in {self.root} was built with {', '.join(diff)}; run the "
                "stream with the same settings, or start a fresh state directory"
            )

    # ---- snapshots -------------------------------------------------------------------
    def snapshot_ids(self) -> list[int]:
        ids = []
        for name in self.fs.list_names(self.root):
            if name.startswith(_PREFIX) and name[len(_PREFIX) :].isdigit():
                ids.append(int(name[len(_PREFIX) :]))
        return sorted(ids)

    def _path(self, batch_id: int) -> str:
        # Spark's readers and writers take the path as given (a URI, or a local path).
        return self.fs.join(self.root, snapshot_dir(batch_id))

    def schema(self, data_schema: T.StructType) -> T.StructType:
        """The snapshot's schema: the key columns as in the data, then the state columns."""
        from pyspark.sql import types as T

        return T.StructType(
            [
                *(T.StructField(k, data_schema[k].dataType, True) for k in self.keys.key_cols),
                T.StructField("last_batch", T.LongType(), True),
                T.StructField("batches_seen", T.IntegerType(), True),
                T.StructField("key_rows", T.LongType(), True),
                T.StructField("rows", T.LongType(), True),
                *(T.StructField(name, T.DoubleType(), True) for name in self._value_columns()),
            ]
        )

    def read(self, spark: SparkSession, batch_id: int, data_schema: T.StructType) -> DataFrame:
        return spark.read.schema(self.schema(data_schema)).parquet(self._path(batch_id))

    def previous(self, batch_id: int, committed: int | None) -> int | None:
        """The snapshot a batch folds into: the newest one of a committed batch before it."""
        if committed is None:
            return None
        older = [b for b in self.snapshot_ids() if b < batch_id and b <= committed]
        return older[-1] if older else None

    def advance(
        self,
        data: DataFrame,
        batch_id: int,
        committed: int | None,
        *,
        before: MXNormState,
        after: MXNormState,
    ) -> None:
        """Fold micro-batch ``batch_id`` (``data``: the rows) into the previous snapshot and
        publish the result as the snapshot of ``batch_id``. Where one job can do it
        (:mod:`~mxnorm_spark.streaming._keyed_one_job`), that job also writes the normalized rows
        aside, and :meth:`publish_rows` puts them in place once the batch is committed;
        ``before`` and ``after`` are the global states around the batch (the fallback)."""
        prev = self.previous(batch_id, committed)
        attempt = self._snapshots.new_attempt(batch_id)
        out_schema = None
        if self.directories is not None and isinstance(self.fs, LocalFileSystem):
            out_schema = output_schema(data.schema, self._outputs())
        if out_schema is None:
            kernel = stream_fold_kernel(
                len(self.keys.key_cols), self.layout, batch_id, self.keys.evict_after
            )
            snapshot = map_in_arrow(
                self._union(data, prev, (), None), kernel, self.schema(data.schema)
            )
            snapshot.write.options(**no_dictionary(self._floats())).parquet(attempt)
        else:
            out = self._one_job(
                data,
                prev,
                attempt,
                batch_id=batch_id,
                states=(before, after),
                out_schema=out_schema,
            )
            assert self.directories is not None and self.output is not None
            self._pending[batch_id] = self.directories.write_aside(
                out, self.output, batch_id, self._outputs()
            )
            check_parts(self.fs, attempt, self._partitions(data.sparkSession), batch_id)
        fault("during_key_write", batch_id, data.sparkSession)
        self._snapshots.into_place(attempt, batch_id)

    def _union(
        self, data: DataFrame, prev: int | None, carried: Sequence[str], parts: int | None
    ) -> DataFrame:
        """The rows and the ``prev`` snapshot's rows in one shape, partitioned by key and
        sorted by (key, source, features); with ``parts`` (the one-job path) rows with a
        null key stay (to be normalized) and ``carried`` columns ride along."""
        from pyspark.sql import functions as F

        from mxnorm_spark.engines.columns import quote, sql_name

        keys = list(self.keys.key_cols)
        schema = self.schema(data.schema)
        # One row shape for data and snapshot rows (see stream_fold): a data row's features
        # go where a snapshot row has its state, so no column is null on every row of a kind.
        scalars = [schema[n] for n in SNAPSHOT_SCALARS]
        state = self.layout.state_columns
        values = [f"__mx_v{i}" for i in range(len(state))]
        nf = len(self.features)
        both = data.select(
            *(quote(k) for k in keys),
            F.lit(1).alias(SOURCE_COLUMN),
            *(F.lit(None).cast(f.dataType).alias(f.name) for f in scalars),
            *(quote(f).cast("double").alias(values[j]) for j, f in enumerate(self.features)),
            *(F.lit(None).cast("double").alias(v) for v in values[nf:]),
            *(quote(c).alias(f"__mx_c{i}") for i, c in enumerate(carried)),
        )
        if parts is None:  # rows with a null key are normalized by the join
            both = both.where(" AND ".join(f"{sql_name(k)} IS NOT NULL" for k in keys))
        if prev is not None:
            snap = self.read(data.sparkSession, prev, data.schema).select(
                *(quote(k) for k in keys),
                F.lit(0).alias(SOURCE_COLUMN),
                *(F.col(f.name) for f in scalars),
                *(F.col(n).alias(v) for n, v in zip(state, values, strict=True)),
            )
            both = both.unionByName(snap, allowMissingColumns=True)
        n = parts or self.keys.num_partitions
        order = [*keys, SOURCE_COLUMN, *values[:nf]]
        return both.repartition(*((n,) if n else ()), *keys).sortWithinPartitions(*order)

    def _one_job(
        self,
        data: DataFrame,
        prev: int | None,
        attempt: str,
        *,
        batch_id: int,
        states: tuple[MXNormState, MXNormState],
        out_schema: T.StructType,
    ) -> DataFrame:
        """The normalized rows of the one-job path; its tasks write the snapshot parts."""
        from pyspark.sql.pandas.types import to_arrow_schema

        from mxnorm_spark.engines.columns import quote

        spark, keys = data.sparkSession, list(self.keys.key_cols)
        n = self._partitions(spark)
        carried = carried_columns(data.schema, keys, self._outputs())
        aligned = prev is None or parts_of(self.fs, self._path(prev)) == n
        zone = spark.conf.get("spark.sql.session.timeZone") or "UTC"
        parts = SnapshotPartFiles(
            self.fs,
            attempt,
            self._path(prev) if aligned and prev is not None else None,
            tuple(self._floats()),
            to_arrow_schema(self.schema(data.schema), timezone=zone),
        )
        data_schema = None
        if not aligned:
            rows = self._union(data, prev, carried, n)
        else:  # each task reads its part of the previous snapshot: the rows alone
            rows = data.select(
                *(quote(k) for k in keys),
                *(quote(f).cast("double").alias(f"__mx_v{j}") for j, f in enumerate(self.features)),
                *(quote(c).alias(f"__mx_c{i}") for i, c in enumerate(carried)),
            ).repartition(n, *keys)
            data_schema = to_arrow_schema(rows.schema, timezone=zone)
        output = row_output(
            out_schema.names,
            carried,
            keys=keys,
            outputs=self._outputs(),
            features=self.features,
            layout=self.layout,
            global_constants=self._global_constants(*states),
            min_key_rows=self.keys.min_key_rows,
            handle_invalid=self.handle_invalid,
        )
        kernel = fold_normalize_kernel(
            len(keys),
            self.layout,
            output,
            batch_id=batch_id,
            evict_after=self.keys.evict_after,
            parts=parts,
            data_schema=data_schema,
        )
        return map_in_arrow(rows, kernel, out_schema)

    def _partitions(self, spark: SparkSession) -> int:
        """The fixed number of partitions (and snapshot parts) of the one-job path."""
        conf = spark.conf.get("spark.sql.shuffle.partitions") or "200"
        return self.keys.num_partitions or int(conf)

    def publish_rows(self, batch_id: int, spark: SparkSession) -> str | None:
        """Put the rows :meth:`advance` wrote aside for ``batch_id`` in place (None: it did
        not, e.g. the batch is a replay of a committed one: :meth:`normalize` them)."""
        attempt = self._pending.pop(batch_id, None)
        if attempt is None or self.directories is None:
            return None
        fault("during_write", batch_id, spark)
        return self.directories.into_place(attempt, batch_id)

    def _global_constants(self, before: MXNormState, after: MXNormState) -> tuple[Any, Any]:
        """The fallback constants: of the global state after the batch, or before it
        (features without a state then take the batch's own, as the global stream does)."""
        if self.layout.apply_at == "before":
            return before.normalization_constants(filled(after))
        return filled(after).normalization_constants()

    def _outputs(self) -> list[str]:
        cols = None if self.output is None else self.output.cols
        return list(cols or self.features)

    def _floats(self) -> list[str]:
        # Means, variances, scales: continuous, a Parquet dictionary is tried in vain.
        layout = self.layout
        return [c for c in layout.state_columns + layout.constant_columns if "count" not in c]

    def prune(self, committed: int) -> None:
        """Delete the snapshots older than the newest one of a committed batch."""
        ids = [b for b in self.snapshot_ids() if b <= committed]
        for b in ids[:-1]:
            self.fs.delete(self._path(b), recursive=True)

    # ---- normalizing ------------------------------------------------------------------
    def normalize(
        self,
        payload: DataFrame,
        batch_id: int,
        *,
        apply_at: str,
        global_before: MXNormState,
        global_after: MXNormState,
        outputs: Sequence[str],
        handle_invalid: str,
    ) -> DataFrame:
        """``payload`` normalized per key with the snapshot of ``batch_id`` (which must be
        published), falling back to the global state before or after the batch."""
        from pyspark.sql import functions as F

        from mxnorm_spark.engines.columns import quote, resolve_input
        from mxnorm_spark.keyed.backfill import pick_and_normalize

        if apply_at != self.layout.apply_at:
            raise InvalidParameterError(
                f"the per-key snapshots hold the constants of apply_at="
                f"{self.layout.apply_at!r}, not {apply_at!r}"
            )
        if batch_id not in self.snapshot_ids():
            raise StateConflictError(
                f"micro-batch {batch_id} needs its per-key snapshot "
                f"{self._path(batch_id)}, which is missing: it was deleted. Restore it, or "
                "start over with a fresh checkpoint and state directory"
            )
        keys = list(self.keys.key_cols)
        spec = resolve_input(payload, list(self.features), None)
        gm, gs = self._global_constants(global_before, global_after)
        n, m, s = self.layout.lookup_columns()
        mine = self.read(payload.sparkSession, batch_id, payload.schema)
        right = mine.where(F.col("last_batch") == batch_id).select(
            *(quote(k).alias(f"__mx_key{i}") for i, k in enumerate(keys)),
            F.array(*n).alias("__mx_n"),
            F.array(*m).alias("__mx_km"),
            F.array(*s).alias("__mx_ks"),
        )
        cond = [quote(k) == F.col(f"__mx_key{i}") for i, k in enumerate(keys)]
        joined = payload.join(right, cond, "left").drop(*(f"__mx_key{i}" for i in range(len(keys))))
        joined = joined.withColumns(
            {
                "__mx_gm": F.array(*[F.lit(float(v)) for v in gm]),
                "__mx_gs": F.array(*[F.lit(float(v)) for v in gs]),
            }
        )
        return pick_and_normalize(
            joined,
            spec,
            outputs,
            min_key_rows=self.keys.min_key_rows,
            handle_invalid=handle_invalid,
        )


def _read_metadata(fs: Any, path: str) -> dict[str, Any] | None:
    data = fs.read_bytes(path)
    if data is None:
        return None
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise CorruptStateError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("type") != KEYED_STREAM_TYPE:
        raise CorruptStateError(f"{path} is not the metadata of a keyed stream")
    return doc


def snapshot_states(snap: DataFrame, keys: Sequence[str], layout: SnapshotLayout) -> DataFrame:
    """The key columns, ``last_batch`` and the columns ``f{j}_count``, ``f{j}_mean``,
    ``f{j}_var`` and ``f{j}_scale`` of each key's state in ``snap`` (as
    ``KeyedModel.states``)."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from mxnorm_spark.engines.columns import quote

    names = feature_columns(layout.n_features, FIELDS)
    schema = T.StructType(
        [
            *(snap.schema[k] for k in keys),
            T.StructField("last_batch", T.LongType(), True),
            *(T.StructField(n, T.DoubleType(), True) for n in names),
        ]
    )
    cols = [*(quote(k) for k in keys), F.col("last_batch"), *map(F.col, layout.state_columns)]
    kernel = snapshot_states_kernel(len(keys), layout)
    return map_in_arrow(snap.select(*cols), kernel, schema)


def export_latest(
    spark: SparkSession, state_dir: str, out_dir: str, *, overwrite: bool = False
) -> int:
    """Write the serving export (as :meth:`KeyedModel.export`) of a keyed stream's newest
    committed batch: its snapshot's keys and the global state of that batch. Returns the
    batch id exported."""
    from pyspark.sql import functions as F

    from mxnorm_spark.keyed.backfill import export_table
    from mxnorm_spark.store import StateStore

    store = StateStore(state_dir, spark)
    committed = store.latest_batch_id()
    fs = filesystem(state_dir, spark)
    base = local_path(state_dir) if isinstance(fs, LocalFileSystem) else state_dir
    root = fs.join(base, KEYS_DIR)
    meta = _read_metadata(fs, fs.join(root, _META))
    if committed is not None and store.section(committed, EVENT_TIME_SECTION) is not None:
        raise InvalidParameterError(
            f"{state_dir} is the state directory of a keyed event-time stream (--key-cols with "
            "--batch-col or --event-time): its per-key states are inside each committed "
            "version (section event_time, member keys), not in per-key snapshots, and "
            "export-keys does not read them. Read them with "
            "mxnorm_spark.streaming.keyed_events.read_key_states(STATE_DIR), or export a "
            "keyed backfill of the same rows (fit --key-cols --batch-col, then export-keys)"
        )
    _check_exportable(meta, committed, state_dir)
    assert meta is not None and committed is not None
    ids = [
        int(n[len(_PREFIX) :])
        for n in fs.list_names(root)
        if n.startswith(_PREFIX)
        and n[len(_PREFIX) :].isdigit()
        and int(n[len(_PREFIX) :]) <= committed
    ]
    if not ids:
        raise CorruptStateError(
            f"{state_dir} has no per-key snapshot up to batch {committed}: no row with a key "
            "has been processed yet, so there is nothing to export"
        )
    state = store.get(committed)
    assert state is not None
    out_fs = filesystem(out_dir, spark)
    out_root = local_path(out_dir) if isinstance(out_fs, LocalFileSystem) else out_dir
    out_fs.mkdirs(out_root)
    keys = list(meta["key_cols"])
    snap = spark.read.parquet(fs.join(root, snapshot_dir(ids[-1])))
    layout = SnapshotLayout(len(meta["features"]), StateOptions(**meta["options"]))
    states = snapshot_states(snap, keys, layout)
    table = export_table(states, keys, meta["features"], F.col("last_batch"))
    table.write.mode("overwrite" if overwrite else "error").parquet(
        out_dir.rstrip("/") + "/keys.parquet"
    )
    write_state(state, out_fs.join(out_root, "global.json"), spark)
    out_fs.write_atomic(out_fs.join(out_root, "keyed.json"), _export_doc(meta, committed))
    return committed


def _check_exportable(meta: dict[str, Any] | None, committed: int | None, state_dir: str) -> None:
    if meta is not None and meta.get("snapshot_format", 1) != SNAPSHOT_FORMAT:
        raise CorruptStateError(
            f"{state_dir} holds per-key snapshots of format {meta.get('snapshot_format', 1)} "
            f"(per-feature arrays); this version reads format {SNAPSHOT_FORMAT}: export it "
            "with the version that wrote it"
        )
    if meta is None or committed is None:
        raise CorruptStateError(
            f"{state_dir} holds no committed per-key stream state (no {KEYS_DIR}/{_META} or "
            "no committed version): export-keys reads a keyed stream's state directory or a "
            "keyed model directory"
        )


def _export_doc(meta: dict[str, Any], committed: int) -> bytes:
    """The ``keyed.json`` of an export of batch ``committed``: what serving needs to know."""
    from mxnorm_spark.keyed.backfill import KEYED_EXPORT_TYPE

    doc = {
        "type": KEYED_EXPORT_TYPE,
        "schema_version": 1,
        "features": list(meta["features"]),
        "key_cols": list(meta["key_cols"]),
        "batch_col": None,
        "options": meta["options"],
        "min_key_rows": meta["min_key_rows"],
        "apply_at": "after",
        "handle_invalid": "keep",
        "output_cols": None,
        "exported_batch": committed,
    }
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
