"""Structured Streaming: MXNorm state per micro-batch, exactly once and crash-safe.

:class:`MXNormStream` is a ``foreachBatch`` updater. For each micro-batch it

1. reads the micro-batch once (persisted); for a file stream a first job counts it and
   checks every new file against the stream's schema (:class:`SchemaMismatchError` names
   the file and the column);
2. computes the batch moments and its row count in one job
   (:func:`~mxnorm_spark.aggregate.batch_moments_and_rows`, pivoted on the current state
   mean) and folds them into the state of the previous batch id;
3. commits the new state durably as version ``v-<batch id>.json`` of the
   :class:`~mxnorm_spark.store.StateStore`;
4. normalizes the micro-batch (``apply_at="after"``: with the new state; ``"before"``: with
   the state before the batch) and writes it to ``OUTPUT/batch_id=<12 digits>/``, written
   aside and renamed into place, replacing any earlier attempt whole;
5. reports one progress line: batch id, rows, duration, largest change of a feature's mean.

Exactly once: Spark re-runs the last micro-batch after a crash. A batch id that already has
a committed version reuses it (the batch is never folded twice) and rewrites its output,
so after any crash and restart the output holds every input row once and the state is
bit-identical to an uninterrupted run. An empty micro-batch commits an unchanged state
(counted in ``batches_seen``) and writes nothing.

Attach it to any streaming DataFrame::

    from mxnorm_spark.streaming import MXNormStream

    stream = MXNormStream(spark, "s3a://bucket/mxnorm/state", cols=["amount", "latency"],
                          output="s3a://bucket/mxnorm/normalized", alpha=0.1)
    query = (stream.attach(events.writeStream)          # events: any streaming DataFrame
             .option("checkpointLocation", "s3a://bucket/mxnorm/checkpoint")
             .trigger(processingTime="1 minute")
             .start())

or let it read a directory of files (schema checked per file)::

    source = FileSource("data/incoming", "parquet", max_files_per_trigger=1)
    reports = stream.run(source.read(spark, cols=["amount", "latency"]),
                         checkpoint="chk/", available_now=True, source=source)

A test-only fault hook kills the driver (and its JVM) with SIGKILL at a chosen point:
``MXNORM_FAULT=before_commit:3`` (also ``after_commit``, ``during_write``, ``after_write``;
several as a comma-separated list).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import signal
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from mxnorm_spark.errors import (
    EmptyInputError,
    InvalidParameterError,
    InvalidValueError,
    MXNormError,
    SchemaMismatchError,
    StateConflictError,
)
from mxnorm_spark.moments import Moments
from mxnorm_spark.state import (
    APPLY_AT,
    MXNormState,
    check_choice,
    version_file_name,
)
from mxnorm_spark.store import HadoopFileSystem, StateStore

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming.query import StreamingQuery
    from pyspark.sql.streaming.readwriter import DataStreamWriter
    from pyspark.sql.types import StructType

    from mxnorm_spark.config import SparkSettings, StreamConfig

FAULT_ENV = "MXNORM_FAULT"
FAULT_POINTS = ("before_commit", "after_commit", "during_write", "after_write")
# Internal columns a FileSource adds; never written to the output.
FILE_COLUMN = "_mxnorm_file"
CORRUPT_COLUMN = "_mxnorm_corrupt_record"
FORMATS = ("parquet", "csv", "json")
HANDLE_INVALID = ("keep", "error", "skip")
OUTPUT_ATTEMPTS = "_attempts"
_FAILED_FILE = re.compile(r"reading file (\S+?)\.(?:\s|$)")
# Spark sets this local property on the thread that runs a query's micro-batches.
_QUERY_ID_PROPERTY = "sql.streaming.queryId"

__all__ = [
    "FAULT_ENV",
    "FAULT_POINTS",
    "BatchReport",
    "FileSource",
    "MXNormStream",
    "add_stream_parser",
    "batch_output_dir",
    "demo_stream",
    "run_stream",
]


def batch_output_dir(batch_id: int) -> str:
    """Name of a batch's output directory; Spark reads ``batch_id`` back as a column."""
    return f"batch_id={batch_id:012d}"


# ---- progress ---------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchReport:
    """What one micro-batch did; :meth:`line` is the progress line a stream prints."""

    batch_id: int
    rows: int
    seconds: float
    replayed: bool
    state_version: str | None
    max_mean_change: float | None = None
    changed_feature: str | None = None
    output: str | None = None

    def line(self) -> str:
        head = f"[mxnorm] batch {self.batch_id}: {self.rows:,} rows in {self.seconds:.2f} s"
        if self.state_version is None:
            return f"{head}, empty before any data: no state yet"
        if self.replayed:
            tail = f"replayed: reused committed {self.state_version}"
        elif self.rows == 0:
            tail = f"empty: state unchanged, committed {self.state_version}"
        elif self.max_mean_change is None:
            tail = f"state initialized, committed {self.state_version}"
        else:
            tail = (
                f"largest mean change {self.max_mean_change:.3g} sd ({self.changed_feature}), "
                f"committed {self.state_version}"
            )
        return f"{head}, {tail}"


def print_report(report: BatchReport) -> None:
    print(report.line(), flush=True)


def _largest_mean_change(
    before: MXNormState, after: MXNormState
) -> tuple[float | None, str | None]:
    """Largest |mean change| of a feature, in standard deviations of the state before."""
    had = before.initialized
    if not had.any():
        return None, None
    _, scale = before.normalization_constants(fallback=after)
    with np.errstate(invalid="ignore", divide="ignore"):
        change = np.abs(after.mean - before.mean) / scale
    change = np.where(had & np.isfinite(change), change, -1.0)
    j = int(np.argmax(change))
    return (float(change[j]), before.features[j]) if change[j] >= 0 else (None, None)


# ---- the fault hook (tests) -------------------------------------------------------------
def _fault(point: str, batch_id: int, spark: SparkSession | None = None) -> None:
    """Kill this driver and its JVM with SIGKILL if ``MXNORM_FAULT`` names this point."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    for item in spec.split(","):
        name, _, bid = item.strip().partition(":")
        if name == point and bid.strip() == str(batch_id):
            print(f"[mxnorm] fault hook: SIGKILL at {point} of batch {batch_id}", flush=True)
            if spark is not None and spark._jvm is not None:
                # The JVM would exit by itself once its parent is gone, but running its
                # shutdown hooks first; a real crash gives it no such chance.
                jvm_pid = int(spark._jvm.java.lang.ProcessHandle.current().pid())
                os.kill(jvm_pid, signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)


# ---- file sources -----------------------------------------------------------------------
@dataclass(frozen=True)
class FileSource:
    """A directory of parquet, csv or json files read as a stream, with a fixed schema.

    ``schema`` (a DDL string or StructType) is optional: by default it is taken from the
    oldest file present when the stream starts; the feature columns of csv and json
    sources are read as double. Every new file is checked against it before its batch
    is folded: a missing column, a column of another type (parquet) or a value that is not
    a number (csv, json) stops the stream with :class:`SchemaMismatchError` naming the file
    and the column. CSV and JSON are read in PERMISSIVE mode so that such records are seen
    and reported, never dropped. Files that disappear before a replayed batch is re-read
    are skipped (``ignoreMissingFiles``), which is how a rejected file is taken out.
    """

    path: str
    format: str = "parquet"
    options: Mapping[str, str] = field(default_factory=dict)
    schema: str | StructType | None = None
    max_files_per_trigger: int | None = None

    def __post_init__(self) -> None:
        check_choice("format", self.format, FORMATS)
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        m = self.max_files_per_trigger
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise InvalidParameterError(f"max_files_per_trigger must be >= 1, got {m!r}")

    def _reader_options(self) -> dict[str, str]:
        opts = dict(self.options)
        opts.pop("inferSchema", None)
        if self.format == "csv":
            opts.setdefault("header", "true")
        if self.format in ("csv", "json"):
            opts["mode"] = "PERMISSIVE"
            opts["columnNameOfCorruptRecord"] = CORRUPT_COLUMN
        return opts

    def resolve_schema(self, spark: SparkSession, cols: Sequence[str] | None = None) -> StructType:
        """The schema the stream reads with (features as double for csv and json)."""
        from pyspark.sql import types as T

        if isinstance(self.schema, T.StructType):
            schema = self.schema
        elif isinstance(self.schema, str):
            parsed = T._parse_datatype_string(self.schema)
            if not isinstance(parsed, T.StructType):
                raise InvalidParameterError(f"schema must describe columns, got {self.schema!r}")
            schema = parsed
        else:
            first = self._oldest_file(spark)
            opts = {k: v for k, v in self._reader_options().items() if k != "mode"}
            opts.pop("columnNameOfCorruptRecord", None)
            schema = spark.read.format(self.format).options(**opts).load(first).schema
            if self.format in ("csv", "json") and cols:
                schema = T.StructType(
                    [
                        T.StructField(f.name, T.DoubleType(), True) if f.name in cols else f
                        for f in schema.fields
                    ]
                )
        return schema

    def _oldest_file(self, spark: SparkSession) -> str:
        jvm = spark._jvm
        assert jvm is not None
        path = jvm.org.apache.hadoop.fs.Path(self.path)
        fs = path.getFileSystem(spark._jsc.hadoopConfiguration())
        files = []
        if fs.exists(path):
            for status in fs.listStatus(path):
                name = str(status.getPath().getName())
                if status.isFile() and not name.startswith(("_", ".")):
                    files.append((int(status.getModificationTime()), name, status))
        if not files:
            raise EmptyInputError(
                f"input {self.path} holds no {self.format} file yet, so the stream cannot "
                "learn its schema; add one file first, or give the schema explicitly"
            )
        return str(min(files, key=lambda t: (t[0], t[1]))[2].getPath().toString())

    def read(
        self,
        spark: SparkSession,
        cols: Sequence[str] | None = None,
        input_col: str | None = None,
    ) -> DataFrame:
        """The streaming DataFrame: the files' columns plus internal file/corrupt columns."""
        from pyspark.sql import functions as F
        from pyspark.sql import types as T

        schema = self.resolve_schema(spark, cols)
        names = [f.name for f in schema.fields]
        wanted = list(cols or []) + ([input_col] if input_col else [])
        missing = [c for c in wanted if c not in names]
        if missing:
            from mxnorm_spark.errors import MissingColumnError

            raise MissingColumnError(missing, names)
        if self.format in ("csv", "json"):
            schema = T.StructType([*schema.fields, T.StructField(CORRUPT_COLUMN, T.StringType())])
        reader = (
            spark.readStream.format(self.format).schema(schema).options(**self._reader_options())
        )
        # A file taken out after its batch was planned (a rejected file) must not fail
        # the replay of that batch.
        reader = reader.option("ignoreMissingFiles", "true")
        if self.max_files_per_trigger is not None:
            reader = reader.option("maxFilesPerTrigger", str(self.max_files_per_trigger))
        return reader.load(self.path).withColumn(FILE_COLUMN, F.input_file_name())

    # ---- per-file checks ----------------------------------------------------------------
    def check_file(
        self,
        spark: SparkSession,
        uri: str,
        expected: StructType,
        features: Sequence[str],
    ) -> None:
        """Raise :class:`SchemaMismatchError` if the file at ``uri`` does not fit ``expected``."""
        jvm = spark._jvm
        assert jvm is not None
        path = jvm.org.apache.hadoop.fs.Path(jvm.java.net.URI(uri))
        conf = spark._jsc.hadoopConfiguration()
        if not path.getFileSystem(conf).exists(path):
            return
        if self.format == "parquet":
            self._check_parquet(spark, path, conf, uri, expected)
        elif self.format == "csv":
            self._check_csv_header(spark, path, conf, uri, expected)
        else:
            self._check_json_keys(spark, path, conf, uri, features)

    def _check_parquet(
        self, spark: SparkSession, path: Any, conf: Any, uri: str, expected: StructType
    ) -> None:
        from pyspark.sql import types as T

        jvm = spark._jvm
        assert jvm is not None
        try:
            reader = jvm.org.apache.parquet.hadoop.ParquetFileReader.open(
                jvm.org.apache.parquet.hadoop.util.HadoopInputFile.fromPath(path, conf)
            )
            try:
                message = reader.getFooter().getFileMetaData().getSchema()
            finally:
                reader.close()
            converter = jvm.org.apache.spark.sql.execution.datasources.parquet
            sql_conf = jvm.org.apache.spark.sql.internal.SQLConf.get()
            found_json = converter.ParquetToSparkSchemaConverter(sql_conf).convert(message).json()
            found = T.StructType.fromJson(json.loads(found_json))
        except Exception as exc:  # an unreadable footer: not a parquet file at all
            raise SchemaMismatchError(
                f"file {uri} cannot be read as parquet ({str(exc).splitlines()[0]}); "
                "remove it from the input directory and restart the stream"
            ) from None
        have = {f.name: f.dataType for f in found.fields}
        for f in expected.fields:
            if f.name in (FILE_COLUMN, CORRUPT_COLUMN):
                continue
            if f.name not in have:
                raise _mismatch(uri, f.name, "is missing", sorted(have))
            if have[f.name] != f.dataType:
                raise _mismatch(
                    uri,
                    f.name,
                    f"has type {have[f.name].simpleString()} where the stream reads "
                    f"{f.dataType.simpleString()}",
                )

    def _first_line(self, spark: SparkSession, path: Any, conf: Any) -> str | None:
        jvm = spark._jvm
        assert jvm is not None
        stream = path.getFileSystem(conf).open(path)
        try:
            reader = jvm.java.io.BufferedReader(
                jvm.java.io.InputStreamReader(stream, self.options.get("encoding", "UTF-8"))
            )
            line = reader.readLine()
            while line is not None and not str(line).strip():
                line = reader.readLine()
        finally:
            stream.close()
        return None if line is None else str(line)

    def _check_csv_header(
        self, spark: SparkSession, path: Any, conf: Any, uri: str, expected: StructType
    ) -> None:
        if self.options.get("header", "true").lower() != "true":
            return
        line = self._first_line(spark, path, conf)
        if line is None:
            return
        sep = self.options.get("sep", self.options.get("delimiter", ","))
        header = next(csv.reader(io.StringIO(line), delimiter=sep), [])
        header = [h.strip() for h in header]
        names = [f.name for f in expected.fields if f.name not in (FILE_COLUMN, CORRUPT_COLUMN)]
        for name in names:
            if name not in header:
                raise _mismatch(uri, name, "is missing from its header", header)
        if header != names:
            raise SchemaMismatchError(
                f"file {uri}: its header {header} does not list the stream's columns {names} "
                "in the same order (CSV columns are read by position); rewrite the file with "
                "that header, remove it from the input directory and restart the stream"
            )

    def _check_json_keys(
        self, spark: SparkSession, path: Any, conf: Any, uri: str, features: Sequence[str]
    ) -> None:
        line = self._first_line(spark, path, conf)
        if line is None:
            return
        try:
            record = json.loads(line)
        except ValueError:
            return  # reported with its column by the corrupt-record check
        if isinstance(record, dict):
            for name in features:
                if name not in record:
                    raise _mismatch(uri, name, "is missing from its first record", sorted(record))


def _mismatch(
    uri: str, column: str, what: str, present: Sequence[str] | None = None
) -> SchemaMismatchError:
    has = f" (it has {list(present)})" if present is not None else ""
    return SchemaMismatchError(
        f"file {uri}: column {column!r} {what}{has}. No state was committed for this "
        "micro-batch and no output written; remove the file from the input directory "
        "(fix it and add it back under a new name) and restart the stream"
    )


def _corrupt_column(fmt: str, record: str, expected: StructType) -> tuple[str, str] | None:
    """The first column of a rejected csv/json record whose value is not of its type."""
    from pyspark.sql import types as T

    fields = [f for f in expected.fields if f.name not in (FILE_COLUMN, CORRUPT_COLUMN)]
    numeric = (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType, T.DoubleType)
    values: dict[str, Any] = {}
    if fmt == "json":
        try:
            doc = json.loads(record)
        except ValueError:
            return None
        if not isinstance(doc, dict):
            return None
        values = doc
    else:
        row = next(csv.reader(io.StringIO(record)), [])
        values = {f.name: v for f, v in zip(fields, row, strict=False)}
    for f in fields:
        v = values.get(f.name)
        if v is None or v == "" or not isinstance(f.dataType, numeric):
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            return f.name, repr(v)
        if isinstance(v, str):
            try:
                float(v)
            except ValueError:
                return f.name, repr(v)
    return None


# ---- the updater ------------------------------------------------------------------------
class MXNormStream:
    """A ``foreachBatch`` updater: MXNorm state per micro-batch, committed exactly once.

    ``state_dir`` holds the committed versions (see :class:`StateStore`); ``output`` gets
    one directory per batch id (``batch_id=<12 digits>``, readable as one table with a
    ``batch_id`` column). Instead of ``output`` a ``sink(df, batch_id)`` may write the
    normalized micro-batch itself: it must replace that batch's earlier output (replays).
    ``initial_state`` (a state, or a path to one) warm-starts an empty state directory,
    e.g. with the result of ``mxnorm-spark fit --batch-col``.
    """

    def __init__(
        self,
        spark: SparkSession,
        state_dir: str,
        *,
        cols: Sequence[str] | None = None,
        input_col: str | None = None,
        output: str | None = None,
        sink: Callable[[DataFrame, int], None] | None = None,
        output_cols: Sequence[str] | None = None,
        output_col: str | None = None,
        output_format: str = "parquet",
        write_options: Mapping[str, str] | None = None,
        alpha: float | str | None = 0.1,
        eps: float = 1e-8,
        var_update: str = "ema",
        decay: str = "batch",
        zero_variance: str = "eps",
        apply_at: str = "after",
        handle_invalid: str = "keep",
        engine: str = "auto",
        initial_state: MXNormState | str | None = None,
        retention: int | None = None,
        progress: Callable[[BatchReport], None] | None = print_report,
    ) -> None:
        from mxnorm_spark.aggregate import check_engine

        if (cols is None) == (input_col is None):
            raise InvalidParameterError(
                "give exactly one of cols (scalar numeric columns) or input_col (one vector "
                f"or array column); got cols={cols!r}, input_col={input_col!r}"
            )
        if isinstance(cols, str):
            raise InvalidParameterError(f"cols must be a list of names, got the string {cols!r}")
        if (output is None) == (sink is None):
            raise InvalidParameterError(
                "give exactly one of output (a directory, one sub-directory per batch id) "
                "or sink (a function writing each normalized micro-batch)"
            )
        self.spark = spark
        self.cols = None if cols is None else tuple(cols)
        self.input_col = input_col
        self.output = output
        self.sink = sink
        self.output_cols = None if output_cols is None else tuple(output_cols)
        self.output_col = output_col
        self.output_format = check_choice("output_format", output_format, FORMATS)
        self.write_options = dict(write_options or {})
        self.apply_at = check_choice("apply_at", apply_at, APPLY_AT)
        self.handle_invalid = check_choice(
            "handle_invalid", handle_invalid, ("keep", "error", "skip")
        )
        check_engine(engine)
        self.engine = engine
        self.progress = progress
        # Validates alpha, eps and the options once, with the usual messages.
        self._template = MXNormState.create(
            ["_"],
            alpha,
            eps,
            var_update=var_update,  # type: ignore[arg-type]
            decay=decay,  # type: ignore[arg-type]
            zero_variance=zero_variance,  # type: ignore[arg-type]
        )
        self.store = StateStore(state_dir, spark, retention=retention)
        self.source: FileSource | None = None
        self.reports: deque[BatchReport] = deque(maxlen=10_000)
        self.failure: BaseException | None = None
        self._claimed = False
        self._checked_files: set[str] = set()
        self._output_fs = None if output is None else HadoopFileSystem(spark, output)
        self._open(initial_state)

    # ---- start-up checks ----------------------------------------------------------------
    def _open(self, initial_state: MXNormState | str | None) -> None:
        latest = self.store.latest()  # verifies the newest version's checksum now
        init = self.store.initial()
        given = None
        if initial_state is not None:
            given = (
                initial_state
                if isinstance(initial_state, MXNormState)
                else self._load_state(initial_state)
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
        self.store.remove_temporaries()
        if self._output_fs is not None and self.output is not None:
            self._output_fs.delete(self._output_fs.join(self.output, OUTPUT_ATTEMPTS), True)

    def _load_state(self, path: str) -> MXNormState:
        fs = HadoopFileSystem(self.spark, path)
        if fs.is_dir(path):
            store = StateStore(path, self.spark)
            state = store.latest() or store.initial()
            if state is None:
                raise EmptyInputError(f"initial state directory {path} holds no state version")
            return state
        data = fs.read_bytes(path)
        if data is None:
            raise EmptyInputError(f"initial state {path} does not exist")
        return MXNormState.from_json(data, source=f"state file {path}")

    def _check_compatible(self, state: MXNormState, where: str) -> None:
        t = self._template
        wanted = {
            "alpha": t.alpha,
            "eps": t.eps,
            "var_update": t.var_update,
            "decay": t.decay,
            "zero_variance": t.zero_variance,
        }
        diff = [
            f"{k}={getattr(state, k)!r} (stream: {v!r})"
            for k, v in wanted.items()
            if getattr(state, k) != v
        ]
        if diff:
            raise InvalidParameterError(
                f"{where} was built with {', '.join(diff)}; run the stream with the same "
                "settings, or start a fresh state directory"
            )
        if self.cols is not None and state.features != self.cols:
            raise InvalidParameterError(
                f"{where} has features {list(state.features)} but the stream normalizes "
                f"columns {list(self.cols)}; use the same columns in the same order"
            )
        if self.input_col is not None and not all(
            f.startswith(f"{self.input_col}[") for f in state.features
        ):
            raise InvalidParameterError(
                f"{where} has features {list(state.features)}, not the elements of "
                f"input_col {self.input_col!r}"
            )

    def _fresh_state(self, data: DataFrame) -> MXNormState | None:
        """A state with no data yet, or None for a vector column whose size is unknown."""
        from mxnorm_spark.aggregate import feature_names

        t = self._template
        if self.cols is not None:
            features: list[str] = list(self.cols)
        else:
            try:
                features = feature_names(data, input_col=self.input_col)
            except EmptyInputError:
                return None
        return MXNormState.create(
            features,
            t.alpha,
            t.eps,
            var_update=t.var_update,
            decay=t.decay,
            zero_variance=t.zero_variance,
        )

    # ---- attaching ----------------------------------------------------------------------
    def attach(
        self, writer: DataStreamWriter, source: FileSource | None = None
    ) -> DataStreamWriter:
        """``writer.foreachBatch(self)``: add checkpoint, trigger and ``start()`` yourself.

        ``source``: the :class:`FileSource` the stream reads, to check each new file.
        """
        if source is not None:
            self.source = source
        return writer.foreachBatch(self.process_batch)

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
        return writer.start()

    def await_termination(self, query: StreamingQuery, timeout: int | None = None) -> bool:
        """Wait for ``query``; a failed micro-batch re-raises its own (MXNorm) error."""
        from pyspark.errors import StreamingQueryException

        try:
            return bool(query.awaitTermination(timeout))
        except StreamingQueryException as exc:
            failure = self.failure
            if isinstance(failure, MXNormError):
                raise failure from exc
            raise

    def run(
        self,
        df: DataFrame,
        checkpoint: str,
        *,
        available_now: bool = True,
        trigger_interval: str | None = None,
        source: FileSource | None = None,
    ) -> list[BatchReport]:
        """Start, wait for the end (available-now) or Ctrl-C, and return this run's reports."""
        first = len(self.reports)
        query = self.start(
            df,
            checkpoint,
            available_now=available_now,
            trigger_interval=trigger_interval,
            source=source,
        )
        try:
            self.await_termination(query)
        except KeyboardInterrupt:
            query.stop()
            raise
        return list(self.reports)[first:]

    # ---- one micro-batch ----------------------------------------------------------------
    def process_batch(self, batch_df: DataFrame, batch_id: int) -> None:
        """The ``foreachBatch`` function (also callable directly with a static DataFrame)."""
        try:
            self._process(batch_df, int(batch_id))
        except BaseException as exc:
            self.failure = exc
            raise

    def __call__(self, batch_df: DataFrame, batch_id: int) -> None:
        self.process_batch(batch_df, batch_id)

    def _claim(self, spark: SparkSession, batch_id: int) -> None:
        if self._claimed:
            return
        query_id = spark.sparkContext.getLocalProperty(_QUERY_ID_PROPERTY)
        if query_id:
            if self.store.owner() is None and batch_id > 0:
                raise StateConflictError(
                    f"state directory {self.store.path} has no record of this stream, but "
                    f"its checkpoint is at batch {batch_id}: the state directory was "
                    "replaced or emptied. Restore it, or start over with a fresh checkpoint "
                    "(warm-start from a saved state with the initial state option)"
                )
            self.store.claim(str(query_id))
        self._claimed = True

    def _state_before(self, batch_id: int) -> MXNormState | None:
        """The state a batch folds into: the version of the previous batch id."""
        if batch_id > 0:
            prev = self.store.get(batch_id - 1)
            if prev is not None:
                return prev
            ids = self.store.batch_ids()
            if ids:
                fix = "Restore it, or start over with a fresh checkpoint and state directory"
                if ids[-1] == batch_id - 2:
                    fix = (
                        "Restore it, or delete the checkpoint entry commits/"
                        f"{batch_id - 1} so that batch {batch_id - 1} is run again"
                    )
                raise StateConflictError(
                    f"micro-batch {batch_id} needs state version "
                    f"{version_file_name(batch_id - 1)} in {self.store.path}, which holds "
                    f"{len(ids)} version(s) ({ids[0]}..{ids[-1]}): a version was deleted. {fix}"
                )
            if self.cols is not None:
                # Every batch of scalar columns commits a version (empty ones too), so none
                # at all means the directory was emptied. Only a vector column whose size
                # no row has shown yet gets here legitimately.
                raise StateConflictError(
                    f"micro-batch {batch_id} needs state version "
                    f"{version_file_name(batch_id - 1)}, but {self.store.path} holds no "
                    "version: it was emptied or replaced. Restore it, or start over with a "
                    "fresh checkpoint and state directory"
                )
        return self.store.initial()

    def _process(self, batch_df: DataFrame, batch_id: int) -> None:
        from pyspark import StorageLevel

        from mxnorm_spark.aggregate import batch_moments_and_rows

        t0 = time.perf_counter()
        spark = batch_df.sparkSession
        self._claim(spark, batch_id)
        latest = self.store.latest_batch_id()
        if latest is not None and latest > batch_id:
            raise StateConflictError(
                f"state directory {self.store.path} already holds batch {latest}, newer than "
                f"micro-batch {batch_id}: the checkpoint is older than the state. Use the "
                "checkpoint that produced this state, or a fresh state directory"
            )
        committed = self.store.get(batch_id)
        prev = self._state_before(batch_id)

        data = batch_df.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            # Files to check or corrupt records to find: a first job that counts and checks
            # the batch. Otherwise the moments job counts it too: one job less per batch.
            scan = FILE_COLUMN in data.columns or CORRUPT_COLUMN in data.columns
            rows: int | None = self._scan(spark, data, batch_id) if scan else None
            payload = data.drop(FILE_COLUMN, CORRUPT_COLUMN)
            if prev is None:
                prev = self._fresh_state(payload)
            if committed is not None:
                new = committed
            elif prev is None:
                # A vector column with no row yet: nothing to fold and no feature count.
                new = None
            else:
                if rows != 0:
                    try:
                        moments, rows = batch_moments_and_rows(
                            payload,
                            self.cols,
                            input_col=self.input_col,
                            engine=self.engine,
                            shift=prev.mean,
                            allow_empty=True,
                        )
                    except Exception as exc:
                        self._explain_read_failure(spark, str(exc), data.schema, batch_id)
                        raise
                    self._check_invalid(moments, rows, batch_id)
                else:
                    moments = Moments.empty(prev.n_features)
                new = prev.update(moments, batch_id)
                _fault("before_commit", batch_id, spark)
                self.store.commit(batch_id, new)
                _fault("after_commit", batch_id, spark)
            if rows is None:  # a replayed batch, or a vector column still without rows
                rows = data.count()
            out_dir = None
            if rows and new is not None:
                out_dir = self._write(payload, new, prev, batch_id, spark)
            _fault("after_write", batch_id, spark)
        finally:
            data.unpersist()

        change, feature = (None, None)
        if committed is None and new is not None and prev is not None and rows:
            change, feature = _largest_mean_change(prev, new)
        report = BatchReport(
            batch_id=batch_id,
            rows=rows,
            seconds=time.perf_counter() - t0,
            replayed=committed is not None,
            state_version=None if new is None else version_file_name(batch_id),
            max_mean_change=change,
            changed_feature=feature,
            output=out_dir,
        )
        self.reports.append(report)
        if self.progress is not None:
            self.progress(report)

    def _scan(self, spark: SparkSession, data: DataFrame, batch_id: int) -> int:
        """Count the micro-batch (materializing the cache) and check its files."""
        from pyspark.sql import functions as F

        aggs = [F.count(F.lit(1)).alias("rows")]
        has_files = FILE_COLUMN in data.columns
        has_corrupt = CORRUPT_COLUMN in data.columns
        if has_files:
            aggs.append(F.collect_set(FILE_COLUMN).alias("files"))
        if has_corrupt:
            bad = F.col(CORRUPT_COLUMN)
            sample = F.struct(F.col(FILE_COLUMN).alias("file"), bad.alias("record"))
            aggs.append(F.first(F.when(bad.isNotNull(), sample), ignorenulls=True).alias("bad"))
        try:
            row = data.agg(*aggs).collect()[0]
        except Exception as exc:
            self._explain_read_failure(spark, str(exc), data.schema, batch_id)
            raise
        rows = int(row["rows"])
        source = self.source
        if has_files and source is not None:
            expected = data.schema
            features = list(self.cols or [self.input_col or ""])
            for uri in sorted(row["files"]):
                if uri and uri not in self._checked_files:
                    source.check_file(spark, uri, expected, features)
                    self._checked_files.add(uri)
        if has_corrupt and row["bad"] is not None:
            uri, record = row["bad"]["file"], row["bad"]["record"]
            fmt = source.format if source is not None else "csv"
            found = _corrupt_column(fmt, record, data.schema)
            what = (
                f"column {found[0]!r} holds {found[1]}, not a number"
                if found is not None
                else "a record does not match the stream's schema"
            )
            raise SchemaMismatchError(
                f"file {uri}: {what} (record: {record.strip()[:200]!r}). No state was "
                "committed for this micro-batch and no output written; remove the file from "
                "the input directory (fix it and add it back under a new name) and restart "
                "the stream"
            )
        return rows

    def _explain_read_failure(
        self, spark: SparkSession, text: str, expected: StructType, batch_id: int
    ) -> None:
        """Turn Spark's failure to read a file (e.g. a parquet type change) into our error."""
        start = text.find("[FAILED_READ_FILE")
        if start < 0:
            return
        spark_message = text[start:].splitlines()[0].strip()
        match = _FAILED_FILE.search(spark_message)
        if match is not None and self.source is not None:
            features = list(self.cols or [self.input_col or ""])
            # Our own check of that file names the column and both types.
            self.source.check_file(spark, match.group(1), expected, features)
        raise SchemaMismatchError(
            f"micro-batch {batch_id} cannot be read: {spark_message[:500]} No state was "
            "committed for it; remove the file from the input directory (fix it and add it "
            "back under a new name) and restart the stream"
        ) from None

    def _check_invalid(self, moments: Moments, rows: int, batch_id: int) -> None:
        if self.handle_invalid != "error":
            return
        bad = [
            (f, rows - int(n))
            for f, n in zip(self._feature_labels(moments), moments.count, strict=True)
            if n < rows
        ]
        if bad:
            listed = ", ".join(f"{f!r}: {n}" for f, n in bad)
            raise InvalidValueError(
                f"micro-batch {batch_id} has null, NaN or infinite values ({listed}) and "
                "handle_invalid='error'; nothing was committed. Use handle_invalid='keep' or "
                "'skip', or remove the file from the input directory and restart the stream"
            )

    def _feature_labels(self, moments: Moments) -> list[str]:
        if self.cols is not None:
            return list(self.cols)
        return [f"{self.input_col}[{i}]" for i in range(moments.n_features)]

    def _write(
        self,
        payload: DataFrame,
        new: MXNormState,
        prev: MXNormState | None,
        batch_id: int,
        spark: SparkSession,
    ) -> str | None:
        from mxnorm_spark.apply import normalize

        if self.apply_at == "after" or prev is None:
            state, fallback = new, None
        else:
            state, fallback = prev, new
        out = normalize(
            payload,
            state,
            self.cols,
            self.output_cols,
            input_col=self.input_col,
            output_col=self.output_col,
            handle_invalid=self.handle_invalid,
            engine=self.engine,
            fallback=fallback,
        )
        if self.sink is not None:
            self.sink(out, batch_id)
            return None
        fs, root = self._output_fs, self.output
        assert fs is not None and root is not None
        final = fs.join(root, batch_output_dir(batch_id))
        attempt = fs.join(
            fs.join(root, OUTPUT_ATTEMPTS), f"{batch_output_dir(batch_id)}-{uuid.uuid4().hex}"
        )
        out.write.format(self.output_format).options(**self.write_options).save(attempt)
        _fault("during_write", batch_id, spark)
        # The attempt is complete: replace the batch's earlier output whole. A crash in
        # between leaves the batch without output, and the replay writes it again.
        if fs.exists(final):
            fs.delete(final, recursive=True)
        if not fs.rename(attempt, final):
            raise OSError(f"could not rename {attempt} to {final}")
        # Anything else left there is from a killed attempt (one writer per output).
        fs.delete(fs.join(root, OUTPUT_ATTEMPTS), recursive=True)
        return final


# ---- the demo ---------------------------------------------------------------------------
def write_demo_files(
    directory: str | os.PathLike[str],
    days: Sequence[int],
    rows_per_day: int,
    seed: int = 11,
) -> list[str]:
    """Drifting sensor readings, one parquet file per day, oldest first (local paths).

    The same distributions as the batch demo: ``temperature`` drifts +0.75 per day, the
    spread of ``pressure`` grows, ``latency_ms`` is log-normal with 1% nulls.
    """
    import pandas as pd

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = []
    base = time.time() - 10 * len(days)
    for i, day in enumerate(days):
        n = rows_per_day
        latency = np.exp(3.0 + 0.5 * rng.standard_normal(n))
        latency[rng.random(n) < 0.01] = np.nan
        frame = pd.DataFrame(
            {
                "day": np.full(n, day, dtype=np.int32),
                "sensor": (np.arange(n) % 50).astype(np.int32),
                "temperature": 20.0 + 0.75 * day + 2.0 * rng.standard_normal(n),
                "pressure": 1013.0 + (1.0 + 0.25 * day) * rng.standard_normal(n),
                "latency_ms": latency,
            }
        )
        path = root / f"day-{day:03d}.parquet"
        frame.to_parquet(path, index=False)
        # The file source takes new files oldest first: make the order explicit.
        os.utime(path, (base + 10 * i, base + 10 * i))
        written.append(str(path))
    return written


def demo_stream(
    spark: SparkSession,
    initial_state: MXNormState,
    workdir: str | os.PathLike[str],
    *,
    first_day: int = 12,
    days: int = 4,
    rows_per_day: int = 25_000,
) -> MXNormState:
    """A short available-now stream over generated files, warm-started from a backfill.

    Writes ``days`` files (days ``first_day``...) into ``WORKDIR/input`` and streams them one
    file per micro-batch into ``WORKDIR/state`` and ``WORKDIR/output``, printing a progress
    line per batch and the state after each. Starts from scratch each time (``WORKDIR`` is
    replaced). Returns the final state.
    """
    import shutil

    root = Path(workdir)
    shutil.rmtree(root, ignore_errors=True)
    write_demo_files(root / "input", range(first_day, first_day + days), rows_per_day)
    features = list(initial_state.features)
    source = FileSource(str(root / "input"), "parquet", max_files_per_trigger=1)
    stream = MXNormStream(
        spark,
        str(root / "state"),
        cols=features,
        output=str(root / "output"),
        alpha=initial_state.alpha,
        eps=initial_state.eps,
        var_update=initial_state.var_update,
        decay=initial_state.decay,
        zero_variance=initial_state.zero_variance,
        initial_state=initial_state,
    )
    stream.run(source.read(spark, features), str(root / "checkpoint"), source=source)
    heads = [f"mean({f})" for f in features]
    width = max(len(h) for h in heads)

    def row(label: str, values: Any) -> str:
        return f"{label:<12}" + "".join(f"  {v:>{width}.4f}" for v in values)

    print("\n" + f"{'state after':<12}" + "".join(f"  {h:>{width}}" for h in heads))
    print(row("backfill", initial_state.mean))
    final = initial_state
    for b in stream.store.batch_ids():
        state = stream.store.get(b)
        assert state is not None
        final = state
        print(row(f"batch {b}", state.mean))
    return final


# ---- the `stream` command ---------------------------------------------------------------
def run_stream(cfg: StreamConfig, settings: SparkSettings) -> int:
    """``mxnorm-spark stream``: a file stream normalized with exactly-once MXNorm state."""
    from pyspark.sql import SparkSession

    from mxnorm_spark.config import DEFAULT_READ_OPTIONS, DEFAULT_WRITE_OPTIONS
    from mxnorm_spark.session import session_from_settings

    # Spark's console progress bar would overwrite the per-batch progress lines.
    # Adaptive execution is off in streaming queries anyway (Spark warns once when it is on).
    quiet = {
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.adaptive.enabled": "false",
        **dict(settings.conf),
    }
    owned = SparkSession.getActiveSession() is None
    spark = session_from_settings(replace(settings, conf=quiet), "mxnorm-spark stream")
    try:
        source = FileSource(
            cfg.input,
            cfg.format,
            {**DEFAULT_READ_OPTIONS.get(cfg.format, {}), **dict(cfg.read_options)},
            max_files_per_trigger=cfg.max_files_per_trigger,
        )
        out_format = cfg.output_format or cfg.format
        stream = MXNormStream(
            spark,
            cfg.state,
            cols=cfg.cols,
            input_col=cfg.input_col,
            output=cfg.output,
            output_cols=cfg.output_cols,
            output_col=cfg.output_col,
            output_format=out_format,
            write_options={**DEFAULT_WRITE_OPTIONS.get(out_format, {}), **dict(cfg.write_options)},
            alpha=cfg.alpha,
            eps=cfg.eps,
            var_update=cfg.var_update,
            decay=cfg.decay,
            zero_variance=cfg.zero_variance,
            apply_at=cfg.apply_at,
            handle_invalid=cfg.handle_invalid,
            engine=cfg.engine,
            initial_state=cfg.initial_state,
            retention=cfg.retention,
        )
        df = source.read(spark, cfg.cols, cfg.input_col)
        trigger = "available-now" if cfg.available_now else (cfg.trigger_interval or "continuous")
        print(
            f"[mxnorm] streaming {cfg.format} files from {cfg.input} ({trigger}); state in "
            f"{cfg.state}, output in {cfg.output}",
            flush=True,
        )
        reports = stream.run(
            df,
            cfg.checkpoint,
            available_now=cfg.available_now,
            trigger_interval=cfg.trigger_interval,
            source=source,
        )
        state = stream.store.latest()
        rows = sum(r.rows for r in reports)
        print(f"[mxnorm] stream stopped after {len(reports)} micro-batch(es), {rows:,} rows")
        if state is not None:
            print(state.summary())
    finally:
        if owned:
            spark.stop()
    return 0


def add_stream_parser(subparsers: Any) -> None:
    """Register ``mxnorm-spark stream`` (called from :data:`mxnorm_spark.cli.COMMANDS`)."""
    from mxnorm_spark.cli import add_command
    from mxnorm_spark.config import StreamConfig

    parser = add_command(
        subparsers,
        "stream",
        StreamConfig,
        run_stream,
        help="normalize a stream of files micro-batch by micro-batch, state exactly once",
        description=(
            "Watch a directory for new parquet/csv/json files with Structured Streaming. Per\n"
            "micro-batch: fold its moments into the MXNorm state, commit the state as\n"
            "STATE/v-<batch id>.json, normalize the batch and write it to\n"
            "OUTPUT/batch_id=<batch id>/. A restart after a crash resumes from the\n"
            "checkpoint: no batch is folded twice and no row is lost or duplicated.\n\n"
            "example:\n"
            "  mxnorm-spark stream --input incoming/ --format parquet --cols a,b \\\n"
            "      --output normalized/ --state state/ --checkpoint chk/ \\\n"
            "      --max-files-per-trigger 1 --available-now"
        ),
    )
    # A short alias of --initial-state.
    parser.add_argument("--init-state", dest="initial_state", help=argparse.SUPPRESS)
