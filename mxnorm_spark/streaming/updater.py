"""Structured Streaming: MXNorm state per micro-batch, exactly once and crash-safe.

:class:`MXNormStream` is a ``foreachBatch`` updater. For each micro-batch it

1. keeps the micro-batch in memory, unless reading it again gives the same rows as
   cheaply (a deterministic plan over files: :func:`~mxnorm_spark.streaming._reads.
   rereads_same_rows`; ``persist`` decides otherwise); for a file stream
   (:class:`~mxnorm_spark.streaming.sources.FileSource`) a first job counts it and checks every new
   file against the stream's schema (:class:`SchemaMismatchError` names the file and the
   column); a small batch is read to the driver instead, in one job, and steps 2-4 run
   there (:mod:`~mxnorm_spark.streaming._local`);
2. computes the batch moments and its row count in one aggregation
   (:func:`~mxnorm_spark.batch.aggregate.batch_moments_and_rows`, pivot and engine from
   :mod:`~mxnorm_spark.streaming._reads`) and folds them into the state of the previous batch;
3. commits the new state durably as version ``v-<batch id>.json`` of the
   :class:`~mxnorm_spark.store.StateStore`;
4. normalizes the micro-batch (``apply_at="after"``: with the new state; ``"before"``: with
   the state before the batch) and writes it to ``OUTPUT/batch_id=<12 digits>/``, written
   aside and renamed into place, replacing any earlier attempt whole;
5. reports one progress line (:class:`~mxnorm_spark.streaming.progress.BatchReport`):
   batch id, rows, duration, largest change of a feature's mean.

Exactly once: Spark re-runs the last micro-batch after a crash. A batch id that already has
a committed version reuses it (the batch is never folded twice) and rewrites its output,
so after any crash and restart the output holds every input row once and the state is
bit-identical to an uninterrupted run. An empty micro-batch commits an unchanged state
(counted in ``batches_seen``) and writes nothing.

Attach it to any streaming DataFrame::

    from mxnorm_spark.core.state import StateOptions
    from mxnorm_spark.streaming.updater import MXNormStream

    stream = MXNormStream(spark, "s3a://bucket/mxnorm/state", cols=["amount", "latency"],
                          output="s3a://bucket/mxnorm/normalized",
                          options=StateOptions(alpha=0.1))
    query = (stream.attach(events.writeStream)          # events: any streaming DataFrame
             .option("checkpointLocation", "s3a://bucket/mxnorm/checkpoint")
             .trigger(processingTime="1 minute")
             .start())

or let it read a directory of files (schema checked per file)::

    from mxnorm_spark.streaming.sources import FileSource

    source = FileSource("data/incoming", "parquet", max_files_per_trigger=1)
    reports = stream.run(source.read(spark, cols=["amount", "latency"]),
                         checkpoint="chk/", available_now=True, source=source)

The crash-safety tests kill the driver at chosen points
(:func:`mxnorm_spark.streaming.progress.fault`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from mxnorm_spark.core.choices import APPLY_AT, HANDLE_INVALID, check_choice
from mxnorm_spark.core.errors import (
    EmptyInputError,
    InvalidParameterError,
    MXNormError,
    StateConflictError,
    error_in_text,
    server_lost_error,
)
from mxnorm_spark.core.event_time import EventTime
from mxnorm_spark.core.moments import Moments
from mxnorm_spark.core.state import MXNormState, StateOptions
from mxnorm_spark.store import StateStore, is_classic, read_state
from mxnorm_spark.streaming._local import (
    DriverBatches,
    collect_small,
    normalize_table,
    table_moments,
)
from mxnorm_spark.streaming._reads import (
    REUSED_CODE_ROWS,
    moments_engine,
    moments_pivot,
    rereads_same_rows,
)
from mxnorm_spark.streaming._wait import say_idle, wait_for_query
from mxnorm_spark.streaming.event_batches import (
    EventTimeBatches,
    check_event_time,
    close_open_batches,
    run_micro_batch,
)
from mxnorm_spark.streaming.keyed import KeyedStreamState, KeyOptions
from mxnorm_spark.streaming.keyed_events import (
    check_keyed_event_time,
    close_keyed_open_batches,
    run_keyed_micro_batch,
)
from mxnorm_spark.streaming.progress import BatchReport, fault, print_report, reports_from_history
from mxnorm_spark.streaming.sinks import BatchDirectories, StreamOutput, batch_output_dir
from mxnorm_spark.streaming.sources import (
    CORRUPT_COLUMN,
    FILE_COLUMN,
    INTERNAL_COLUMNS,
    FileSource,
    check_collected_batch,
    count_and_check_batch,
    explain_read_failure,
    raise_if_invalid,
)

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming.query import StreamingQuery
    from pyspark.sql.streaming.readwriter import DataStreamWriter

# Spark sets this local property on the thread that runs a query's micro-batches.
_QUERY_ID_PROPERTY = "sql.streaming.queryId"

__all__ = [
    "MXNormStream",
    "StreamOutput",
    "batch_output_dir",
]


class MXNormStream:
    """A ``foreachBatch`` updater: MXNorm state per micro-batch, committed exactly once.

    ``store`` holds the committed versions: a :class:`StateStore` (e.g. with a
    ``retention``) or its directory. ``output`` is a directory (one sub-directory per batch
    id, ``batch_id=<12 digits>``, readable as one table with a ``batch_id`` column) or a
    :class:`StreamOutput`. ``options`` are the state's options (default
    ``StateOptions()``). ``initial_state`` (a state, or a path to one) warm-starts an empty
    state directory, e.g. with the result of ``mxnorm-spark fit --batch-col``.
    ``persist``: keep each micro-batch in memory for its two reads (moments, then the
    write); by default only when a second read could differ or cost more than a plain
    read, i.e. unless the attached query is a deterministic read of files
    (:func:`~mxnorm_spark.streaming._reads.rereads_same_rows`).
    ``on_commit(batch_id, state)`` runs after each micro-batch's state is committed and
    its output written, and again when Spark replays the batch (with the same committed
    state): a hook that writes idempotently, e.g. to a feature store's online store
    (:class:`mxnorm_spark.feast.FeastStatePush`), publishes every batch exactly once.
    If it raises, the micro-batch fails and Spark runs it again. With ``event_time`` the
    state changes only when batches fold: the hook runs for a version that folded one or
    more batches (a micro-batch, or :meth:`close_open_batches`), once, with the state after
    the newest of them, and again on a replay (:func:`~mxnorm_spark.streaming.
    event_batches.run_micro_batch`). A keyed stream's hook gets the global state.
    """

    def __init__(
        self,
        spark: SparkSession,
        store: StateStore | str,
        *,
        cols: Sequence[str] | None = None,
        input_col: str | None = None,
        output: StreamOutput | str,
        options: StateOptions | None = None,
        apply_at: str = "after",
        handle_invalid: str = "keep",
        engine: str = "auto",
        initial_state: MXNormState | str | None = None,
        progress: Callable[[BatchReport], None] | None = print_report,
        keys: KeyOptions | None = None,
        persist: bool | None = None,
        event_time: EventTime | None = None,
        on_commit: Callable[[int, MXNormState], None] | None = None,
    ) -> None:
        from mxnorm_spark.batch.aggregate import check_engine

        _check_columns(cols, input_col)
        self.spark = spark
        self.cols = None if cols is None else tuple(cols)
        self.input_col = input_col
        self.output = output if isinstance(output, StreamOutput) else StreamOutput(path=output)
        self.options = options if options is not None else StateOptions()
        self.apply_at = check_choice("apply_at", apply_at, APPLY_AT)
        self.handle_invalid = check_choice("handle_invalid", handle_invalid, HANDLE_INVALID)
        check_engine(engine)
        self.engine = engine
        self.progress = progress
        self.on_commit = on_commit
        self.persist = persist
        self.store = store if isinstance(store, StateStore) else StateStore(store, spark)
        self.source: FileSource | None = None
        self.reports: deque[BatchReport] = deque(maxlen=10_000)
        self.failure: BaseException | None = None
        self.interrupted = False  # run() ended by Ctrl-C
        self._claimed = False
        self._cleaned = False
        self._rereads = False  # the attached query reads files only (stream_reads)
        self._checked_files: set[str] = set()
        self._directories = (
            None if self.output.path is None else BatchDirectories(self.output.path, spark)
        )
        self._open(initial_state)
        if event_time is not None:  # before the keys' settings are recorded
            check_event_time(
                cols=self.cols,
                apply_at=self.apply_at,
                handle_invalid=self.handle_invalid,
                input_col=input_col,
            )
            if keys is not None:
                check_keyed_event_time(keys.key_cols, keys.evict_after, event_time)
        self.keys = None if keys is None else self._keyed_state(keys)
        # Event-time batches (event_batches): the batch is the data's, not the trigger's.
        self.events: EventTimeBatches | None = None
        if event_time is not None:
            self.events = EventTimeBatches(event_time, self.store, self.cols or ())
        self._driver = DriverBatches.for_stream(
            spark,
            self.output,
            engine=engine,
            scalar=self.cols is not None,
            keyed=self.keys is not None,
        )

    def _keyed_state(self, keys: KeyOptions) -> KeyedStreamState:
        if self.cols is None:
            raise InvalidParameterError(
                "per-key state (keys=) needs scalar feature columns (cols=), not input_col"
            )
        return KeyedStreamState(
            self.spark,
            self.store.path,
            self.cols,
            keys,
            self.options,
            apply_at=self.apply_at,
            handle_invalid=self.handle_invalid,
            directories=self._directories,
            output=self.output,
        )

    def __getstate__(self) -> dict[str, object]:
        # Spark Connect pickles the foreachBatch function, and this object with it, to run it
        # in the server's Python process: the client's session and reports stay behind, and
        # everything a micro-batch needs is in the store.
        state = dict(self.__dict__)
        state.update(spark=None, reports=deque(maxlen=10_000), failure=None)
        return state

    # ---- start-up checks ----------------------------------------------------------------
    def _open(self, initial_state: MXNormState | str | None) -> None:
        latest = self.store.latest()  # verifies the newest version's checksum now
        init = self.store.initial()
        given = None
        if initial_state is not None:
            given = (
                initial_state
                if isinstance(initial_state, MXNormState)
                else read_state(initial_state, self.spark)
            )
            self._check_compatible(given, f"initial state {initial_state}")
        if latest is not None:
            self._check_compatible(latest, f"state directory {self.store.path}")
            if given is not None and self.progress is not None:
                print(
                    f"[mxnorm] state directory {self.store.path} already holds versions up to "
                    f"batch {latest.last_batch_id}: resuming from it, the initial state is "
                    "not used",
                    flush=True,
                )
        elif given is not None:
            self.store.set_initial(given)  # the same state again is a no-op; another fails
        elif init is not None:
            self._check_compatible(init, f"initial state of {self.store.path}")
        # Leftovers of killed attempts go only once this stream holds the directory
        # (_clean_up): a rival stream must not delete the owner's files in flight.

    def _check_compatible(self, state: MXNormState, where: str) -> None:
        theirs, ours = state.options.to_dict(), self.options.to_dict()
        diff = [f"{k}={theirs[k]!r} (stream: {ours[k]!r})" for k in ours if theirs[k] != ours[k]]
        if self.cols is not None and state.features != self.cols:
            diff.append(f"features {list(state.features)} (stream: columns {list(self.cols)})")
        col = self.input_col
        if col is not None and not all(f.startswith(f"{col}[") for f in state.features):
            diff.append(f"features {list(state.features)} (stream: input_col {col!r})")
        if diff:  # every difference at once: one restart fixes them all
            raise InvalidParameterError(
                f"{where} differs from this stream: {'; '.join(diff)}. Run the stream with "
                "the same settings and columns (in the same order), or a fresh state directory"
            )

    def _fresh_state(self, data: DataFrame) -> MXNormState | None:
        """A state with no data yet, or None for a vector column whose size is unknown."""
        from mxnorm_spark.batch.aggregate import feature_names

        if self.cols is not None:
            features: list[str] = list(self.cols)
        else:
            try:
                features = feature_names(data, input_col=self.input_col)
            except EmptyInputError:
                return None
        return MXNormState.create(features, options=self.options)

    # ---- attaching ----------------------------------------------------------------------
    def attach(
        self, writer: DataStreamWriter, source: FileSource | None = None
    ) -> DataStreamWriter:
        """``writer.foreachBatch(self)``: add checkpoint, trigger and ``start()`` yourself.

        ``source``: the :class:`FileSource` the stream reads, to check each new file.
        """
        if source is not None:
            self.source = source
        streaming_df = getattr(writer, "_df", None)  # the query's input, where it is kept
        self._rereads = streaming_df is not None and rereads_same_rows(streaming_df)
        return writer.foreachBatch(self.foreach_batch)

    def start(
        self,
        df: DataFrame,
        checkpoint: str,
        *,
        available_now: bool = False,
        trigger_interval: str | None = None,
        query_name: str | None = None,
        source: FileSource | None = None,
    ) -> StreamingQuery:
        """Start the query; ``source`` (the FileSource ``df`` was read from) enables file checks."""
        if available_now and trigger_interval is not None:
            raise InvalidParameterError("give either available_now or trigger_interval")
        writer = self.attach(df.writeStream, source).option("checkpointLocation", checkpoint)
        if available_now:
            writer = writer.trigger(availableNow=True)
        elif trigger_interval is not None:
            writer = writer.trigger(processingTime=trigger_interval)
        if query_name is not None:
            writer = writer.queryName(query_name)
        query = writer.start()
        if not is_classic(self.spark):
            # On Connect the micro-batches cannot see their query id: claim from here.
            self._claim_for(str(query.id), None)
            self._clean_up()
        return query

    def await_termination(self, query: StreamingQuery, timeout: int | None = None) -> bool:
        """Wait for ``query``; a failed micro-batch re-raises its own (MXNorm) error, and a
        Spark Connect server that stops answering raises :class:`ServerLostError`."""
        from pyspark.errors import StreamingQueryException

        try:
            return bool(query.awaitTermination(timeout))
        except StreamingQueryException as exc:
            # Classic: the failure was kept in this process, itself or (raised in an executor)
            # wrapped in a PythonException. Connect: it ran on the server, and only its
            # traceback text comes back.
            kept = self.failure
            failure = kept if isinstance(kept, MXNormError) else error_in_text(str(kept or exc))
            if isinstance(failure, MXNormError):
                raise failure from exc
            raise
        except Exception as exc:
            lost = server_lost_error(exc, self.store.path)
            if lost is not None:
                raise lost from exc
            raise

    def run(
        self,
        df: DataFrame,
        checkpoint: str,
        *,
        available_now: bool = True,
        trigger_interval: str | None = None,
        source: FileSource | None = None,
        end_of_input: bool = False,
    ) -> list[BatchReport]:
        """Start, wait for the end (available-now) or Ctrl-C (then ``self.interrupted``),
        and return this run's reports; a line says when the query waits for new data.

        ``end_of_input``: an event-time stream then folds its open batches at the end
        (:meth:`close_open_batches`)."""
        first = len(self.reports)
        last_before = self.store.latest_batch_id()
        query = self.start(
            df,
            checkpoint,
            available_now=available_now,
            trigger_interval=trigger_interval,
            source=source,
        )
        try:
            self.interrupted = wait_for_query(
                query,
                lambda timeout: self.await_termination(query, timeout),
                on_idle=None if available_now or self.progress is None else say_idle(self.source),
                progress_count=lambda: len(self.reports),
            )
        except KeyboardInterrupt:
            query.stop()
            raise
        if end_of_input and not self.interrupted:
            self.close_open_batches()
        if not is_classic(self.spark):
            return reports_from_history(self.store, after=last_before)
        return list(self.reports)[first:]

    def close_open_batches(self) -> MXNormState | None:
        """End of input for an event-time stream: fold every open batch and commit the
        result as the next version, which closes the state directory to more micro-batches.
        Returns that state (None before any version)."""
        if self.events is not None and self.keys is not None:
            return close_keyed_open_batches(self)
        return close_open_batches(self)

    # ---- one micro-batch ----------------------------------------------------------------
    def foreach_batch(self, batch_df: DataFrame, batch_id: int) -> None:
        """The ``foreachBatch`` function (also callable directly with a static DataFrame)."""
        try:
            self._process(batch_df, int(batch_id))
        except BaseException as exc:
            self.failure = exc
            raise

    def __call__(self, batch_df: DataFrame, batch_id: int) -> None:
        self.foreach_batch(batch_df, batch_id)

    def _claim(self, spark: SparkSession, batch_id: int) -> None:
        if self._claimed:
            return
        # Classic only: the local property is set on the thread that runs the batch. On
        # Connect, start() claims for the query from the client.
        if is_classic(spark):
            query_id = spark.sparkContext.getLocalProperty(_QUERY_ID_PROPERTY)
            if query_id:
                self._claim_for(str(query_id), batch_id - 1)
        self._claimed = True
        self._clean_up()

    def _clean_up(self) -> None:
        """Delete what killed attempts left aside (never committed: nothing is lost)."""
        if self._cleaned:
            return
        self.store.remove_temporaries()
        if self._directories is not None:
            self._directories.clear_attempts()
        if self.keys is not None:
            self.keys.clear_attempts()
        self._cleaned = True

    def _claim_for(self, query_id: str, previous_batch: int | None) -> None:
        if self.store.owner() is None and previous_batch is not None and previous_batch >= 0:
            raise StateConflictError(
                f"state directory {self.store.path} has no record of this stream, but "
                f"its checkpoint is at batch {previous_batch + 1}: the state directory was "
                "replaced or emptied. Restore it, or start over with a fresh checkpoint "
                "(warm-start from a saved state with the initial state option)"
            )
        self.store.claim(query_id)

    def _check_not_behind(self, batch_id: int) -> None:
        latest = self.store.latest_batch_id()
        if latest is not None and latest > batch_id:
            raise StateConflictError(
                f"state directory {self.store.path} already holds batch {latest}, newer than "
                f"micro-batch {batch_id}: the checkpoint is older than the state. Use the "
                "checkpoint that produced this state, or a fresh state directory"
            )

    def _process(self, batch_df: DataFrame, batch_id: int) -> None:
        from pyspark import StorageLevel

        t0 = time.perf_counter()
        spark = batch_df.sparkSession
        self._claim(spark, batch_id)
        self._check_not_behind(batch_id)
        if self.events is not None and self.keys is not None:
            run_keyed_micro_batch(self, batch_df, batch_id)
            return
        if self.events is not None:
            run_micro_batch(self, batch_df, batch_id)
            return
        committed = self.store.get(batch_id)
        prev = self.store.state_before(batch_id, every_batch=self.cols is not None)
        new: MXNormState | None = None
        keep = self.persist
        if keep is None:
            keep = not (self._rereads or rereads_same_rows(batch_df))
        data = batch_df.persist(StorageLevel.MEMORY_AND_DISK) if keep else batch_df
        try:
            # Files to check or corrupt records to find: a first job counts and checks the
            # batch, unless it was read to the driver. Otherwise the moments job counts it.
            internal = [c for c in data.columns if c in INTERNAL_COLUMNS]
            if prev is None and self.cols is not None:  # no job: the columns are the features
                prev = self._fresh_state(data)
            small = self._small_batch(data, prev)
            rows: int | None = None
            if FILE_COLUMN in internal or CORRUPT_COLUMN in internal:
                rows = self._count_and_check(spark, data, batch_id, small)
            payload = data.drop(*internal) if internal else data  # each call: py4j + analysis
            small = small.drop_columns(internal) if small is not None and internal else small
            if self.keys is not None:
                from mxnorm_spark.keyed.backfill import check_keys

                check_keys(payload, list(self.cols or ()), self.keys.keys.key_cols, None)
            if prev is None:
                prev = self._fresh_state(payload)
            if committed is not None:
                new = committed
            elif prev is not None:  # else a vector column with no row yet: nothing to fold
                new, rows = self._fold_and_commit(
                    spark, batch_id, data, payload=payload, prev=prev, rows=rows, small=small
                )
            if rows is None:  # a replayed batch, or a vector column still without rows
                rows = data.count() if small is None else small.num_rows
            out_dir = None
            if rows and new is not None:
                out_dir = self._write(payload, new, prev, batch_id, rows, small=small)
            fault("after_write", batch_id, spark)
            if self.on_commit is not None and new is not None:
                # After the commit, for a replay too: a hook that writes (batch id, state)
                # idempotently sees every committed batch at least once, with the same state.
                self.on_commit(batch_id, new)
        finally:
            if keep:
                data.unpersist()
        self._report(
            batch_id,
            rows,
            seconds=time.perf_counter() - t0,
            replayed=committed is not None,
            prev=prev,
            new=new,
            out_dir=out_dir,
        )

    def _fold_and_commit(
        self,
        spark: SparkSession,
        batch_id: int,
        data: DataFrame,
        *,
        payload: DataFrame,
        prev: MXNormState,
        rows: int | None,
        small: pa.Table | None,
    ) -> tuple[MXNormState, int | None]:
        """Fold the batch's moments into ``prev`` and commit the result as its version."""
        from mxnorm_spark.batch.aggregate import batch_moments_and_rows

        if small is not None:
            moments, rows = table_moments(small, tuple(self.cols or ()), moments_pivot(prev))
            self._check_invalid(moments, rows, batch_id)
        elif rows != 0:
            try:
                moments, rows = batch_moments_and_rows(
                    payload,
                    self.cols,
                    input_col=self.input_col,
                    engine=self._moments_engine(prev),
                    shift=moments_pivot(prev),
                    allow_empty=True,
                )
            except Exception as exc:
                explain_read_failure(
                    spark,
                    str(exc),
                    data.schema,
                    batch_id,
                    source=self.source,
                    features=self._checked_features(),
                )
                raise
            self._check_invalid(moments, rows, batch_id)
        else:
            moments = Moments.empty(prev.n_features)
        new = prev.update(moments, batch_id)
        if self.keys is not None and rows:
            # Published before the version: the version commits the batch, keys included.
            latest = self.store.latest_batch_id()
            self.keys.advance(payload, batch_id, latest, before=prev, after=new)
        # Before the version: a replay then finds its history record and keeps it.
        self.store.record_batch(batch_id, rows=rows or 0, moments=moments, state=new)
        fault("before_commit", batch_id, spark)
        self.store.commit(batch_id, new)
        fault("after_commit", batch_id, spark)
        if self.keys is not None:
            self.keys.prune(batch_id)
        return new, rows

    def _report(self, batch_id: int, rows: int, **facts: Any) -> None:
        report = BatchReport.of(batch_id, rows, **facts)
        self.reports.append(report)
        if self.progress is not None:
            self.progress(report)

    def _small_batch(self, data: DataFrame, prev: MXNormState | None) -> pa.Table | None:
        """The micro-batch as Arrow if it is processed on the driver (stream_local)."""
        if prev is None or self.cols is None:
            return None
        limit = self._driver.row_limit(data, self.cols, prev, self.apply_at)
        return collect_small(data, limit) if limit else None

    def _count_and_check(
        self, spark: SparkSession, data: DataFrame, batch_id: int, small: pa.Table | None
    ) -> int:
        src, features, checked = self.source, self._checked_features(), self._checked_files
        if small is not None:
            return check_collected_batch(
                spark, small, data.schema, source=src, features=features, checked=checked
            )
        return count_and_check_batch(
            spark, data, batch_id, source=src, features=features, checked=checked
        )

    def _moments_engine(self, prev: MXNormState) -> str:
        return moments_engine(self.engine, prev, None if self.cols is None else len(self.cols))

    # ---- checks of a micro-batch --------------------------------------------------------
    def _checked_features(self) -> list[str]:
        return list(self.cols or [self.input_col or ""])

    def _check_invalid(self, moments: Moments, rows: int, batch_id: int) -> None:
        if self.handle_invalid == "error":
            raise_if_invalid(self._feature_labels(moments), moments.count, rows, batch_id)

    def _feature_labels(self, moments: Moments) -> list[str]:
        if self.cols is not None:
            return list(self.cols)
        return [f"{self.input_col}[{i}]" for i in range(moments.n_features)]

    # ---- the output ---------------------------------------------------------------------
    def _write(
        self,
        payload: DataFrame,
        new: MXNormState,
        prev: MXNormState | None,
        batch_id: int,
        rows: int,
        *,
        small: pa.Table | None = None,
    ) -> str | None:
        """Normalize the batch and hand it to the sink, or publish it under the output."""
        from mxnorm_spark.batch.apply import normalize

        if self.keys is not None:
            done = self.keys.publish_rows(batch_id, payload.sparkSession)
            if done is not None:  # written by the fold's job
                return done
            out = self.keys.normalize(
                payload,
                batch_id,
                apply_at=self.apply_at,
                global_before=prev or new,
                global_after=new,
                outputs=list(self.output.cols or self.cols or ()),
                handle_invalid=self.handle_invalid,
            )
            return self._publish(out, batch_id)
        if self.apply_at == "after" or prev is None:
            state, fallback = new, None
        else:
            state, fallback = prev, new
        if small is not None and self._directories is not None and self._driver.codec:
            table = normalize_table(small, state, self.cols or (), self.output, self.handle_invalid)
            spark = payload.sparkSession
            return self._directories.publish_table(table, batch_id, self._driver.codec, spark)
        out = normalize(
            payload,
            state,
            self.cols,
            self.output.cols,
            input_col=self.input_col,
            output_col=self.output.col,
            handle_invalid=self.handle_invalid,
            engine=self.engine,
            fallback=fallback,
            reused_code=rows <= REUSED_CODE_ROWS,
        )
        return self._publish(out, batch_id)

    def _publish(self, out: DataFrame, batch_id: int) -> str | None:
        if self.output.sink is not None:
            self.output.sink(out, batch_id)
            return None
        assert self._directories is not None
        scores = self.output.cols or self.cols or ()  # z-scores: no Parquet dictionary
        return self._directories.publish(out, self.output, batch_id, scores)


def _check_columns(cols: Sequence[str] | None, input_col: str | None) -> None:
    if (cols is None) == (input_col is None):
        raise InvalidParameterError(
            "give exactly one of cols (scalar numeric columns) or input_col (one vector "
            f"or array column); got cols={cols!r}, input_col={input_col!r}"
        )
    if isinstance(cols, str):
        raise InvalidParameterError(f"cols must be a list of names, got the string {cols!r}")
