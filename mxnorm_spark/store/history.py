"""The per-batch history of a state: what each batch contributed and what the state became.

One small Parquet file per batch, ``<state dir>/_history/h-<batch id, 12 digits>.parquet``,
in long form (one row per feature), so ``pandas.read_parquet(dir)``, ``spark.read.parquet``
and any Parquet reader take the directory as one table:

    batch_id, batch_value, feature, rows, valid, batch_mean, batch_var,
    state_mean, state_var, committed_at

``batch_value`` is the backfill's batch column value as text (null in a stream). A file
is created exclusively and written before the state version of its batch, so a replayed
micro-batch finds its record already there and the history holds each batch once.

>>> import tempfile
>>> from mxnorm_spark import Moments, MXNormState
>>> d = tempfile.mkdtemp()
>>> m = Moments.from_array([[1.0], [3.0]])
>>> s = MXNormState.create(["x"]).update(m, batch_id=0)
>>> record_batch(d, 0, rows=2, moments=m, state=s)
True
>>> read_history(d).column("state_var").to_pylist()
[1.0]
"""

from __future__ import annotations

import datetime as _dt
import io
import re
from typing import TYPE_CHECKING, Any

from mxnorm_spark.core.errors import CorruptStateError
from mxnorm_spark.core.moments import Moments
from mxnorm_spark.core.state import MXNormState
from mxnorm_spark.store.filesystems import FileSystem, filesystem

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

HISTORY_DIR = "_history"
HISTORY_FILE = re.compile(r"^h-(\d{12})\.parquet$")

__all__ = [
    "HISTORY_DIR",
    "batch_table",
    "history_dir",
    "history_schema",
    "read_history",
    "read_records",
    "record_batch",
    "write_history",
    "write_record",
    "write_table_record",
]


def history_dir(state_path: str, *, state_file: bool | None = None) -> str:
    """Where the history of a state directory (or of a state file) lives.

    ``<dir>/_history`` for a state directory, ``<name>.history`` beside a state file
    ``<name>.json`` (``<name>.history`` also beside a file without the suffix).
    ``state_file`` says which ``state_path`` is; by default a path ending in ``.json`` is
    a file.

    >>> history_dir("out/state.json"), history_dir("state/"), history_dir("s", state_file=True)
    ('out/state.history', 'state/_history', 's.history')
    """
    path = state_path.rstrip("/")
    if state_file is None:
        state_file = path.endswith(".json")
    if state_file:
        return path.removesuffix(".json") + ".history"
    return f"{path}/{HISTORY_DIR}"


def batch_table(
    batch_id: int,
    *,
    rows: int,
    moments: Moments,
    state: MXNormState,
    batch_value: Any = None,
    committed_at: _dt.datetime | None = None,
) -> Any:
    """The history rows of one batch as a ``pyarrow.Table`` (one row per feature)."""
    import pyarrow as pa

    k = state.n_features
    when = committed_at or _dt.datetime.now(_dt.timezone.utc)
    value = None if batch_value is None else str(batch_value)
    columns = {
        "batch_id": pa.array([batch_id] * k, pa.int64()),
        "batch_value": pa.array([value] * k, pa.string()),
        "feature": pa.array(list(state.features), pa.string()),
        "rows": pa.array([rows] * k, pa.int64()),
        "valid": pa.array(moments.count.astype("int64"), pa.int64()),
        "batch_mean": pa.array(moments.mean, pa.float64()),
        "batch_var": pa.array(moments.var, pa.float64()),
        "state_mean": pa.array(state.mean, pa.float64()),
        "state_var": pa.array(state.var, pa.float64()),
        "committed_at": pa.array([when] * k, pa.timestamp("us", tz="UTC")),
    }
    return pa.table(columns, schema=history_schema())


def record_batch(
    state_path: str,
    batch_id: int,
    *,
    rows: int,
    moments: Moments,
    state: MXNormState,
    batch_value: Any = None,
    spark: SparkSession | None = None,
) -> bool:
    """Write the history file of ``batch_id`` once; False if it was already there (a replay)."""
    return write_record(
        filesystem(state_path, spark),
        state_path,
        batch_id,
        rows=rows,
        moments=moments,
        state=state,
        batch_value=batch_value,
    )


def write_record(
    fs: FileSystem,
    state_path: str,
    batch_id: int,
    *,
    rows: int,
    moments: Moments,
    state: MXNormState,
    batch_value: Any = None,
) -> bool:
    """:func:`record_batch` through a file system the caller already holds."""
    import pyarrow.parquet as pq

    table = batch_table(batch_id, rows=rows, moments=moments, state=state, batch_value=batch_value)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    root = history_dir(state_path)
    fs.mkdirs(root)
    return fs.create_exclusive(fs.join(root, f"h-{batch_id:012d}.parquet"), buffer.getvalue())


def write_table_record(fs: FileSystem, state_path: str, batch_id: int, table: Any) -> bool:
    """Write ``table`` (history rows, possibly of several batch values, possibly with a
    ``late_rows`` column) as the record of micro-batch ``batch_id``, once."""
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    root = history_dir(state_path)
    fs.mkdirs(root)
    return fs.create_exclusive(fs.join(root, f"h-{batch_id:012d}.parquet"), buffer.getvalue())


def write_history(
    state_path: str,
    table: Any,
    spark: SparkSession | None = None,
    *,
    state_file: bool | None = None,
) -> str:
    """Replace the whole history of a state with ``table`` (a :func:`history_schema` table)
    and return its directory.

    For a state that is rewritten as a whole (``mxnorm-spark fit``): the old history
    described the old state, so it is deleted first; then one file per batch id.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    fs = filesystem(state_path, spark)
    root = history_dir(state_path, state_file=state_file)
    if fs.exists(root):
        fs.delete(root, recursive=True)
    fs.mkdirs(root)
    table = table.cast(history_schema())
    for batch_id in pc.unique(table.column("batch_id")).to_pylist():
        buffer = io.BytesIO()
        pq.write_table(table.filter(pc.equal(table.column("batch_id"), batch_id)), buffer)
        fs.write_atomic(fs.join(root, f"h-{batch_id:012d}.parquet"), buffer.getvalue())
    return fs.qualified(root)


def read_history(
    state_path: str, spark: SparkSession | None = None, *, state_file: bool | None = None
) -> Any:
    """Every recorded batch of a state, as one ``pyarrow.Table`` ordered by batch id.

    An empty table (with the columns) when nothing was recorded yet. ``state_file`` as in
    :func:`history_dir`.
    """
    return read_records(filesystem(state_path, spark), state_path, state_file=state_file)


def read_records(fs: FileSystem, state_path: str, *, state_file: bool | None = None) -> Any:
    """:func:`read_history` through a file system the caller already holds."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = history_dir(state_path, state_file=state_file)
    names = sorted(n for n in fs.list_names(root) if HISTORY_FILE.match(n))
    tables = []
    for name in names:
        data = fs.read_bytes(fs.join(root, name))
        if data is None:
            continue
        try:
            tables.append(pq.read_table(pa.BufferReader(data)))
        except (pa.ArrowInvalid, OSError) as exc:
            raise CorruptStateError(
                f"history file {fs.join(root, name)} is unreadable: {exc}"
            ) from None
    if not tables:
        return history_schema().empty_table()
    # An event-time stream adds a late_rows column; other writers leave it null.
    return pa.concat_tables(tables, promote_options="default")


def history_schema() -> Any:
    """The columns of a history table (``pyarrow.Schema``)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("batch_id", pa.int64()),
            ("batch_value", pa.string()),
            ("feature", pa.string()),
            ("rows", pa.int64()),
            ("valid", pa.int64()),
            ("batch_mean", pa.float64()),
            ("batch_var", pa.float64()),
            ("state_mean", pa.float64()),
            ("state_var", pa.float64()),
            ("committed_at", pa.timestamp("us", tz="UTC")),
        ]
    )
