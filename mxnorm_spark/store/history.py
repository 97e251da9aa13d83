"""The per-batch history of a state: what each batch contributed and what the state became.

One small Parquet file per batch, ``<state dir>/_history/h-<batch id, 12 digits>.parquet``,
in long form (one row per feature), so ``pandas.read_parquet(dir)``, ``spark.read.parquet``
and any Parquet reader take the directory as one table:

    batch_id, batch_value, feature, rows, valid, batch_mean, batch_var,
    state_mean, state_var, committed_at

``batch_value`` is the backfill's batch column value as text (null in a stream). A file
is created exclusively and written before the state version of its batch, so a replayed
micro-batch finds its record already there and the history holds each batch once.

A long stream would leave one file per micro-batch: :func:`compact_records` (run by the
state store as it commits, every ``history_segment`` batches) rolls the records of older
batches into *segments*, ``hs<level>-<first id>-<last id>.parquet``, each holding the
records of every batch id from ``first`` to ``last`` that had one. Level-0 segments are
rolled from single records; two segments of one level are merged into one of the next, as
a binary counter carries, up to level 10 (``history_segment`` x 1,024 records, the most one
merge holds in memory). The directory so keeps at most ``history_segment`` + 11 files, and
one more per 1,024 segments' worth of batches (102,400 at the default), each record
rewritten at most ten times, and every record stays. A segment is written whole (staged and
renamed, or a conditional PUT) before its inputs are deleted, so a crash in between leaves
a record twice on disk but never zero times; readers (:func:`read_records`) take each
record once, from the widest segment that covers its id, and the next compaction deletes
the covered leftovers. The newest two records always stay single files: a replayed
micro-batch finds its own record where it wrote it.

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
from mxnorm_spark.store.filesystems import TMP_SUFFIX, FileSystem, filesystem

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

HISTORY_DIR = "_history"
HISTORY_FILE = re.compile(r"^h-(\d{12})\.parquet$")
SEGMENT_FILE = re.compile(r"^hs(\d{1,2})-(\d{12})-(\d{12})\.parquet$")
# Records per level-0 segment (a state store's default), segments merged per level, and the
# top level (a merge reads its inputs into memory: SEGMENT_FANOUT ** TOP_LEVEL segments).
HISTORY_SEGMENT = 100
SEGMENT_FANOUT = 2
TOP_LEVEL = 10
# The newest records stay single files (a replay of the last batch finds its own).
_KEEP_LOOSE = 2
_READ_ATTEMPTS = 5

__all__ = [
    "HISTORY_DIR",
    "HISTORY_SEGMENT",
    "batch_table",
    "compact_records",
    "history_dir",
    "history_schema",
    "read_history",
    "read_record",
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

    root = history_dir(state_path, state_file=state_file)
    for _ in range(_READ_ATTEMPTS):
        tables = [_read_file(fs, root, name) for name in _Listing(fs.list_names(root)).visible()]
        if all(t is not None for t in tables):
            break
        # A file listed went before it was read: the writer compacted it into a segment
        # (written first) meanwhile. A fresh listing shows the segment.
    else:
        raise CorruptStateError(
            f"the files of {root} kept vanishing while being read ({_READ_ATTEMPTS} tries)"
        )
    if not tables:
        return history_schema().empty_table()
    # An event-time stream adds a late_rows column; other writers leave it null.
    return pa.concat_tables(tables, promote_options="default")


def read_record(fs: FileSystem, state_path: str, batch_id: int) -> Any:
    """The history rows of micro-batch ``batch_id`` (its single file, or its rows of the
    segment holding it), or None when it has no record."""
    import pyarrow.compute as pc

    root = history_dir(state_path)
    for _ in range(_READ_ATTEMPTS):
        table = _read_file(fs, root, _loose_name(batch_id))
        if table is not None:
            return table
        files = _Listing(fs.list_names(root))
        holder = files.holder(batch_id)
        if holder is None:
            # Not in a segment either: no record, unless it was compacted in between.
            if _loose_name(batch_id) not in files.names:
                return None
            continue
        table = _read_file(fs, root, holder)
        if table is not None:
            return table.filter(pc.equal(table.column("batch_id"), batch_id))
    raise CorruptStateError(
        f"the record of batch {batch_id} in {root} kept moving while being read"
    )


def compact_records(
    fs: FileSystem, state_path: str, newest: int, *, segment: int = HISTORY_SEGMENT
) -> int | None:
    """Roll the single-batch records of a state directory into segments (module docstring)
    and delete what a crashed compaction left covered; returns the oldest batch id still
    in a single file (None: none). Records of ``newest`` and the batch before stay single.

    Only the directory's one writer may call it (a stream, as it commits). Every step
    leaves each record readable exactly once through :func:`read_records`: a segment is
    complete before any input goes, and an input is deleted only once a segment covers it.
    """
    root = history_dir(state_path)
    files = _Listing(fs.list_names(root))
    for name in files.covered():  # a crash between a segment's write and its inputs' delete
        fs.delete(fs.join(root, name))
    for name in files.temporaries():  # a crash inside a staged write: never visible
        fs.delete(fs.join(root, name))
    segments = files.segments()
    done = segments[-1][2] if segments else -1
    loose = [b for b in files.loose() if b > done]
    ripe = [b for b in loose if b <= newest - _KEEP_LOOSE]
    if len(ripe) >= segment:
        name = f"hs0-{ripe[0]:012d}-{ripe[-1]:012d}.parquet"
        _roll(fs, root, name, [_loose_name(b) for b in ripe])
        segments.append((0, ripe[0], ripe[-1]))
        loose = loose[len(ripe) :]
    # SEGMENT_FANOUT segments of one level at the end (the levels fall along the ids, as a
    # counter's digits): merge them into one of the next level, and carry on up.
    while len(segments) >= SEGMENT_FANOUT:
        tail = segments[-SEGMENT_FANOUT:]
        level = tail[0][0]
        if any(lv != level for lv, _, _ in tail) or level >= TOP_LEVEL:
            break
        name = f"hs{level + 1}-{tail[0][1]:012d}-{tail[-1][2]:012d}.parquet"
        _roll(fs, root, name, [_segment_name(*t) for t in tail])
        segments[-SEGMENT_FANOUT:] = [(level + 1, tail[0][1], tail[-1][2])]
    return loose[0] if loose else None


def _roll(fs: FileSystem, root: str, name: str, inputs: list[str]) -> None:
    """Write the records of ``inputs`` as the one file ``name``, then delete the inputs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for n in inputs:
        table = _read_file(fs, root, n)
        if table is None:  # the one writer listed it a moment ago: someone else is here
            raise CorruptStateError(
                f"history file {fs.join(root, n)} vanished while compacting: another "
                "writer is using this state directory"
            )
        tables.append(table)
    buffer = io.BytesIO()
    pq.write_table(pa.concat_tables(tables, promote_options="default"), buffer)
    data = buffer.getvalue()
    target = fs.join(root, name)
    # Already there only if a crashed compaction wrote it: it holds the same records.
    fs.create_exclusive(target, data)
    for n in inputs:
        fs.delete(fs.join(root, n))


def _loose_name(batch_id: int) -> str:
    return f"h-{batch_id:012d}.parquet"


def _segment_name(level: int, first: int, last: int) -> str:
    return f"hs{level}-{first:012d}-{last:012d}.parquet"


class _Listing:
    """The files of a history directory: single records and segments, and which of them
    a wider segment covers (left by a compaction that crashed before deleting them)."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        spans = []
        for n in names:
            found = SEGMENT_FILE.match(n)
            if found:
                spans.append((int(found.group(2)), int(found.group(3)), int(found.group(1))))
        # Widest first at each start: a merge's output covers its inputs.
        spans.sort(key=lambda s: (s[0], -s[1]))
        self._kept: list[tuple[int, int, int]] = []
        self._dropped: list[str] = []
        for first, last, level in spans:
            if self._kept and first <= self._kept[-1][1]:
                if last > self._kept[-1][1]:
                    raise CorruptStateError(
                        f"history segments {_segment_name(*self._level_first(self._kept[-1]))} "
                        f"and {_segment_name(level, first, last)} overlap: the history "
                        "directory was changed by hand or by two writers"
                    )
                self._dropped.append(_segment_name(level, first, last))
                continue
            self._kept.append((first, last, level))

    @staticmethod
    def _level_first(span: tuple[int, int, int]) -> tuple[int, int, int]:
        return span[2], span[0], span[1]

    def segments(self) -> list[tuple[int, int, int]]:
        """(level, first, last) of the segments no other covers, by id."""
        return [self._level_first(s) for s in self._kept]

    def _covering(self, batch_id: int) -> bool:
        import bisect

        i = bisect.bisect_right([s[0] for s in self._kept], batch_id) - 1
        return i >= 0 and self._kept[i][1] >= batch_id

    def holder(self, batch_id: int) -> str | None:
        """The segment that holds ``batch_id``'s record, if one does."""
        for first, last, level in self._kept:
            if first <= batch_id <= last:
                return _segment_name(level, first, last)
        return None

    def loose(self) -> list[int]:
        """Ids of the single records no segment covers, ascending."""
        ids = (int(m.group(1)) for n in self.names if (m := HISTORY_FILE.match(n)))
        return sorted(b for b in ids if not self._covering(b))

    def covered(self) -> list[str]:
        """Files whose records a wider segment holds too."""
        ids = (int(m.group(1)) for n in self.names if (m := HISTORY_FILE.match(n)))
        return self._dropped + [_loose_name(b) for b in ids if self._covering(b)]

    def temporaries(self) -> list[str]:
        return [n for n in self.names if n.startswith(".") and n.endswith(TMP_SUFFIX)]

    def visible(self) -> list[str]:
        """The files to read, each record once, in batch id order."""
        keyed = [(first, _segment_name(level, first, last)) for first, last, level in self._kept]
        keyed += [(b, _loose_name(b)) for b in self.loose()]
        return [name for _, name in sorted(keyed)]


def _read_file(fs: FileSystem, root: str, name: str) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = fs.join(root, name)
    data = fs.read_bytes(path)
    if data is None:
        return None
    try:
        return pq.read_table(pa.BufferReader(data))
    except (pa.ArrowInvalid, OSError) as exc:
        raise CorruptStateError(f"history file {path} is unreadable: {exc}") from None


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
