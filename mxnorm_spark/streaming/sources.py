"""Streaming file sources: a directory of parquet, csv or json files, checked file by file.

:class:`FileSource` reads a directory as a stream with a fixed schema and adds two internal
columns (:data:`FILE_COLUMN`, :data:`CORRUPT_COLUMN`) that let the updater
(:class:`~mxnorm_spark.streaming.MXNormStream`) check every new file before its
micro-batch is folded. A file that does not fit stops the stream with
:class:`~mxnorm_spark.core.errors.SchemaMismatchError` naming the file and the column.

The checks read only a file's first line (csv header, first json record) or its parquet
footer, through :mod:`mxnorm_spark.store`'s file systems: no JVM for local paths and
``pyarrow.fs`` URIs.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from mxnorm_spark import store
from mxnorm_spark.core.choices import FORMATS, check_choice
from mxnorm_spark.core.errors import (
    EmptyInputError,
    InvalidParameterError,
    InvalidValueError,
    MalformedRecordError,
    SchemaMismatchError,
)

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import DataType, StructType

# Internal columns a FileSource adds; never written to the output.
FILE_COLUMN = "_mxnorm_file"
CORRUPT_COLUMN = "_mxnorm_corrupt_record"
INTERNAL_COLUMNS = (FILE_COLUMN, CORRUPT_COLUMN)
# How Spark names the file it failed to read.
_FAILED_FILE = re.compile(r"reading file (\S+?)\.(?:\s|$)")
# How Spark (FAILFAST mode) shows the record it could not parse.
_MALFORMED = re.compile(
    r"Malformed records are detected in record parsing: (.*?)\.?\s*(?:\n|Parse Mode)"
)

__all__ = [
    "CORRUPT_COLUMN",
    "FILE_COLUMN",
    "INTERNAL_COLUMNS",
    "FileSource",
    "check_file_format",
    "count_and_check_batch",
    "explain_read_failure",
    "malformed_record_error",
]


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
            return self.schema
        if isinstance(self.schema, str):
            parsed = T._parse_datatype_string(self.schema)
            if not isinstance(parsed, T.StructType):
                raise InvalidParameterError(f"schema must describe columns, got {self.schema!r}")
            return parsed
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
        fs = store.filesystem(self.path, spark)
        files = [
            (mtime, name)
            for name, mtime in fs.list_files(self.path)
            if not name.startswith(("_", "."))
        ]
        if not files:
            raise EmptyInputError(
                f"input {self.path} holds no {self.format} file yet, so the stream cannot "
                "learn its schema; add one file first, or give the schema explicitly"
            )
        oldest = fs.join(self.path, min(files)[1])
        check_file_format(oldest, self.format, f"input {self.path}", spark)
        return oldest

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
            from mxnorm_spark.core.errors import MissingColumnError

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
        if not store.file_exists(uri, spark):
            return
        if self.format == "parquet":
            self._check_parquet(spark, uri, expected)
        elif self.format == "csv":
            self._check_csv_header(spark, uri, expected)
        else:
            self._check_json_keys(spark, uri, features)

    def _check_parquet(self, spark: SparkSession, uri: str, expected: StructType) -> None:
        try:
            arrow_schema = store.read_parquet_schema(uri, spark)
        except Exception as exc:  # an unreadable footer: not a parquet file at all
            raise SchemaMismatchError(
                f"file {uri} cannot be read as parquet ({str(exc).splitlines()[0]}); "
                "remove it from the input directory and restart the stream"
            ) from None
        have = {f.name: f.type for f in arrow_schema}
        for f in expected.fields:
            if f.name in INTERNAL_COLUMNS:
                continue
            if f.name not in have:
                raise _mismatch(uri, f.name, "is missing", sorted(have))
            found = _spark_type(have[f.name])
            if found is not None and not _same_type(found, f.dataType):
                raise _mismatch(
                    uri,
                    f.name,
                    f"has type {found.simpleString()} where the stream reads "
                    f"{f.dataType.simpleString()}",
                )

    def _first_line(self, spark: SparkSession, uri: str) -> str | None:
        return store.read_first_line(uri, self.options.get("encoding", "UTF-8"), spark)

    def _check_csv_header(self, spark: SparkSession, uri: str, expected: StructType) -> None:
        if self.options.get("header", "true").lower() != "true":
            return
        line = self._first_line(spark, uri)
        if line is None:
            return
        sep = self.options.get("sep", self.options.get("delimiter", ","))
        header = next(csv.reader(io.StringIO(line), delimiter=sep), [])
        header = [h.strip() for h in header]
        names = [f.name for f in expected.fields if f.name not in INTERNAL_COLUMNS]
        for name in names:
            if name not in header:
                raise _mismatch(uri, name, "is missing from its header", header)
        if header != names:
            raise SchemaMismatchError(
                f"file {uri}: its header {header} does not list the stream's columns {names} "
                "in the same order (CSV columns are read by position); rewrite the file with "
                "that header, remove it from the input directory and restart the stream"
            )

    def _check_json_keys(self, spark: SparkSession, uri: str, features: Sequence[str]) -> None:
        line = self._first_line(spark, uri)
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


# ---- checks of a micro-batch -------------------------------------------------------------
def count_and_check_batch(
    spark: SparkSession,
    data: DataFrame,
    batch_id: int,
    *,
    source: FileSource | None,
    features: Sequence[str],
    checked: set[str],
) -> int:
    """Count a micro-batch of a file stream (materializing its cache) and check it.

    Every file not in ``checked`` is checked against the batch's schema (and added to
    ``checked``); a corrupt csv/json record (PERMISSIVE mode) is reported with its column.
    """
    from pyspark.sql import functions as F

    aggs = [F.count(F.lit(1)).alias("rows")]
    has_files = FILE_COLUMN in data.columns
    has_corrupt = CORRUPT_COLUMN in data.columns
    if has_files:
        aggs.append(F.collect_set(FILE_COLUMN).alias("files"))
    if has_corrupt:
        record = F.col(CORRUPT_COLUMN)
        sample = F.struct(F.col(FILE_COLUMN).alias("file"), record.alias("record"))
        aggs.append(F.first(F.when(record.isNotNull(), sample), ignorenulls=True).alias("bad"))
    try:
        row = data.agg(*aggs).collect()[0]
    except Exception as exc:
        explain_read_failure(
            spark, str(exc), data.schema, batch_id, source=source, features=features
        )
        raise
    files = row["files"] if has_files else ()
    bad = row["bad"] if has_corrupt else None
    _check_found(spark, files, bad, data.schema, source=source, features=features, checked=checked)
    return int(row["rows"])


def check_collected_batch(
    spark: SparkSession,
    table: pa.Table,
    schema: StructType,
    *,
    source: FileSource | None,
    features: Sequence[str],
    checked: set[str],
) -> int:
    """:func:`count_and_check_batch` of a micro-batch already read to the driver (its
    internal columns included): the same checks, no Spark job."""
    import pyarrow.compute as pc

    names = table.column_names
    files = set(table.column(FILE_COLUMN).to_pylist()) if FILE_COLUMN in names else set()
    bad = None
    if CORRUPT_COLUMN in names:
        corrupt = table.column(CORRUPT_COLUMN)
        first = pc.index(pc.is_valid(corrupt), True).as_py()
        if first >= 0:
            file = table.column(FILE_COLUMN)[first].as_py() if FILE_COLUMN in names else None
            bad = {"file": file, "record": corrupt[first].as_py()}
    _check_found(spark, files, bad, schema, source=source, features=features, checked=checked)
    return int(table.num_rows)


def _check_found(
    spark: SparkSession,
    files: Iterable[str],
    bad: Any,
    schema: StructType,
    *,
    source: FileSource | None,
    features: Sequence[str],
    checked: set[str],
) -> None:
    """Check every file not in ``checked`` against the schema; raise for a corrupt record."""
    if source is not None:
        for uri in sorted(files):
            if uri and uri not in checked:
                source.check_file(spark, uri, schema, features)
                checked.add(uri)
    if bad is not None:
        fmt = source.format if source is not None else "csv"
        raise _corrupt_record_error(bad["file"], bad["record"], fmt, schema)


def raise_if_invalid(
    labels: Sequence[str], counts: Iterable[float], rows: int, batch_id: int
) -> None:
    """For ``handle_invalid="error"``: fail a micro-batch in which a feature has fewer
    valid values than rows, naming each such feature and its invalid count."""
    bad = [(f, rows - int(n)) for f, n in zip(labels, counts, strict=True) if n < rows]
    if bad:
        listed = ", ".join(f"{f!r}: {n}" for f, n in bad)
        raise InvalidValueError(
            f"micro-batch {batch_id} has null, NaN or infinite values ({listed}) and "
            "handle_invalid='error'; nothing was committed. Use handle_invalid='keep' or "
            "'skip', or remove the file from the input directory and restart the stream"
        )


def explain_read_failure(
    spark: SparkSession,
    message: str,
    expected: StructType,
    batch_id: int,
    *,
    source: FileSource | None,
    features: Sequence[str],
) -> None:
    """Turn Spark's failure to read a file (e.g. a parquet type change) into our error.

    Returns when ``message`` is no such failure (the caller re-raises the original).
    """
    start = message.find("[FAILED_READ_FILE")
    if start < 0:
        return
    spark_message = message[start:].splitlines()[0].strip()
    match = _FAILED_FILE.search(spark_message)
    if match is not None and source is not None:
        # Our own check of that file names the column and both types.
        source.check_file(spark, match.group(1), expected, features)
    raise SchemaMismatchError(
        f"micro-batch {batch_id} cannot be read: {spark_message[:500]} No state was "
        "committed for it; remove the file from the input directory (fix it and add it "
        "back under a new name) and restart the stream"
    ) from None


# ---- Arrow types as Spark reads them from parquet ----------------------------------------
def _spark_type(arrow_type: Any) -> DataType | None:
    """The Spark type of a parquet column (given as its Arrow type), or None if unknown.

    An unknown type is left to Spark's own read, whose failure is reported too.
    """
    import pyarrow as pa
    from pyspark.sql import types as T
    from pyspark.sql.pandas.types import from_arrow_type

    if pa.types.is_dictionary(arrow_type):  # pandas categoricals: stored as plain values
        arrow_type = arrow_type.value_type
    # Spark reads unsigned parquet integers into the next wider signed type.
    unsigned = {
        pa.uint8(): T.ShortType(),
        pa.uint16(): T.IntegerType(),
        pa.uint32(): T.LongType(),
        pa.uint64(): T.DecimalType(20, 0),
    }
    if arrow_type in unsigned:
        return unsigned[arrow_type]
    try:
        return from_arrow_type(arrow_type, prefer_timestamp_ntz=True)
    except Exception:
        return None


def _same_type(found: DataType, expected: DataType) -> bool:
    from pyspark.sql import types as T

    # Arrow and Spark may disagree on the nullability of nested values; Spark reads either.
    if _nullable(found) == _nullable(expected):
        return True
    # Spark writes timestamps as INT96, which Arrow reads without a time zone but Spark
    # reads as TIMESTAMP: a zoneless timestamp is no evidence of a mismatch.
    return isinstance(found, T.TimestampNTZType) and isinstance(expected, T.TimestampType)


def _nullable(dt: DataType) -> DataType:
    """``dt`` with every nested element, value and field nullable (and no field metadata)."""
    from pyspark.sql import types as T

    if isinstance(dt, T.ArrayType):
        return T.ArrayType(_nullable(dt.elementType), True)
    if isinstance(dt, T.MapType):
        return T.MapType(_nullable(dt.keyType), _nullable(dt.valueType), True)
    if isinstance(dt, T.StructType):
        return T.StructType([T.StructField(f.name, _nullable(f.dataType)) for f in dt.fields])
    return dt


# ---- errors ------------------------------------------------------------------------------
def _mismatch(
    uri: str, column: str, what: str, present: Sequence[str] | None = None
) -> SchemaMismatchError:
    has = f" (it has {list(present)})" if present is not None else ""
    return SchemaMismatchError(
        f"file {uri}: column {column!r} {what}{has}. No state was committed for this "
        "micro-batch and no output written; remove the file from the input directory "
        "(fix it and add it back under a new name) and restart the stream"
    )


def _corrupt_record_error(
    uri: str, record: str, fmt: str, expected: StructType
) -> MalformedRecordError:
    """The error for a csv/json record that PERMISSIVE mode set aside as corrupt."""
    found = _corrupt_column(fmt, record, expected)
    columns = [f.name for f in expected.fields if f.name not in INTERNAL_COLUMNS]
    fields = len(next(csv.reader(io.StringIO(record)), [])) if fmt == "csv" else None
    if found is not None:
        what = f"column {found[0]!r} holds {found[1]}, not a number"
    elif fields is not None and fields != len(columns):
        what = f"a record has {fields} field(s) where the stream reads {len(columns)} columns"
    else:
        what = "a record does not match the stream's schema"
    return MalformedRecordError(
        f"file {uri}: {what} (record: {record.strip()[:200]!r}). No state was "
        "committed for this micro-batch and no output written; remove the file from "
        "the input directory (fix it and add it back under a new name) and restart "
        "the stream"
    )


def _corrupt_column(fmt: str, record: str, expected: StructType) -> tuple[str, str] | None:
    """The first column of a rejected csv/json record whose value is not of its type."""
    from pyspark.sql import types as T

    fields = [f for f in expected.fields if f.name not in INTERNAL_COLUMNS]
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


# ---- the format of a file ----------------------------------------------------------------
_PARQUET_MAGIC = b"PAR1"


def check_file_format(
    uri: str,
    fmt: str,
    where: str | None = None,
    spark: SparkSession | None = None,
    *,
    fix: str = "read it with format {}",
) -> None:
    """Raise :class:`SchemaMismatchError` when the file at ``uri`` is plainly not ``fmt``:
    a Parquet file read as csv/json (Spark would take its binary bytes for a header), or a
    text file read as Parquet. ``where`` names what the file belongs to (e.g. a flag);
    ``fix`` says how to choose the right format (``{}``: the format's name)."""
    head = store.read_head(uri, len(_PARQUET_MAGIC), spark)
    if not head:
        return
    is_parquet = head == _PARQUET_MAGIC
    prefix = f"{where}: " if where else ""
    if fmt in ("csv", "json") and is_parquet:
        raise SchemaMismatchError(
            f"{prefix}{uri} is a Parquet file, not {fmt.upper()}; {fix.format('parquet')}"
        )
    if fmt == "parquet" and not is_parquet:
        raise SchemaMismatchError(
            f"{prefix}{uri} is not a Parquet file (it does not start with PAR1); "
            f"{fix.format('csv')} (or json), whichever the file is"
        )


# ---- malformed records of a batch read ---------------------------------------------------
def malformed_record_error(
    message: str,
    fmt: str,
    options: Mapping[str, str],
    fix: str,
    spark: SparkSession | None = None,
) -> MalformedRecordError | None:
    """The named error for a failed read of a csv/json record in FAILFAST mode (the
    default of a batch read), found in Spark's failure ``message``; None if it is none.

    Spark names the file and shows the record as it parsed it; the file is read again
    here (locally or through ``pyarrow.fs``) to give the record's line as written.
    ``fix`` ends the message (what the caller can do about it).
    """
    if "MALFORMED_RECORD_IN_PARSING" not in message and not _MALFORMED.search(message):
        return None
    file = _FAILED_FILE.search(message)
    parsed = _MALFORMED.search(message)
    found = None
    if file is not None:
        try:
            found = _first_malformed(file.group(1), fmt, options, spark)
        except Exception:  # the file is not readable from here: Spark's rendering will do
            found = None
    where = f"file {file.group(1)}" if file is not None else f"a {fmt} file"
    if found is not None:
        what = found
    elif parsed is not None:
        what = f"a record does not fit the columns (as parsed: {parsed.group(1)[:200]})"
    else:
        what = "a record does not fit the columns"
    return MalformedRecordError(f"{where}: {what}; {fix}")


def _first_malformed(
    uri: str, fmt: str, options: Mapping[str, str], spark: SparkSession | None
) -> str | None:
    """Where the first record of the file that Spark cannot parse is, and what is wrong."""
    with store.open_text(uri, options.get("encoding", "UTF-8"), spark) as fh:
        if fmt == "json":
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if not isinstance(record, dict):
                    return f"line {number} is not a JSON object (record: {line.strip()[:200]!r})"
            return None
        sep = options.get("sep", options.get("delimiter", ","))
        reader = csv.reader(fh, delimiter=sep, quotechar=options.get("quote", '"'))
        width, what = None, "the header"
        if options.get("header", "false").lower() != "true":
            what = "the first record"
        for row in reader:
            if not any(v.strip() for v in row):
                continue  # Spark skips blank lines
            if width is None:
                width = len(row)
                continue
            if len(row) != width:
                text = sep.join(row)
                return (
                    f"line {reader.line_num} has {len(row)} field(s) where {what} has {width} "
                    f"(record: {text[:200]!r})"
                )
    return None
