"""A keyed stream's micro-batch in one Spark job: the fold of every key and the normalized
rows, written by :class:`~mxnorm_spark.streaming.keyed.KeyedStreamState` when the stream
writes its own output directories and the state directory is local.

The fold's tasks write the new snapshot themselves, one Parquet part per partition of the
fold, named by the partition (a retried task replaces its own part), through the store's
file-system layer (:class:`SnapshotPartFiles`). The rows are hash-partitioned by key into a
fixed number of partitions (``num_partitions``, else ``spark.sql.shuffle.partitions``), so
part ``p`` of a snapshot holds exactly the keys of partition ``p``; a file ``_parts`` in
the snapshot records that number. When the previous snapshot has the same number, each
task reads its own part of it and only the micro-batch's rows go through the shuffle;
otherwise (a snapshot written by Spark, or another number) the snapshot's rows are
shuffled with the rows once, and the new snapshot is in parts again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mxnorm_spark.core.errors import CorruptStateError, StateConflictError
from mxnorm_spark.keyed.stream_kernel import SNAPSHOT_SCALARS, RowOutput, SnapshotLayout
from mxnorm_spark.store.filesystems import FileSystem

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import types as T

__all__ = ["PARTS_FILE", "SnapshotPartFiles", "check_parts", "output_schema", "row_output"]

PARTS_FILE = "_parts"  # the number of parts of a snapshot written by the fold's tasks


def part_name(index: int) -> str:
    return f"part-{index:05d}.snappy.parquet"


def output_schema(data_schema: T.StructType, outputs: Sequence[str]) -> T.StructType | None:
    """The normalized rows' schema (outputs replace columns of the same name, others are
    appended), or None if Arrow cannot carry a column of ``data_schema`` (a UDT, ...)."""
    from pyspark.sql import types as T
    from pyspark.sql.pandas.types import to_arrow_schema

    try:
        to_arrow_schema(data_schema, timezone="UTC")  # any zone: only the types count
    except Exception:
        return None
    fields = [
        T.StructField(f.name, T.DoubleType(), True) if f.name in outputs else f
        for f in data_schema.fields
    ]
    fields += [
        T.StructField(o, T.DoubleType(), True) for o in outputs if o not in data_schema.names
    ]
    return T.StructType(fields)


def carried_columns(
    data_schema: T.StructType, keys: Sequence[str], outputs: Sequence[str]
) -> list[str]:
    """The columns the rows carry through the fold for the output: not keys, not replaced."""
    return [n for n in data_schema.names if n not in keys and n not in outputs]


def row_output(
    names: Sequence[str],
    carried: Sequence[str],
    *,
    keys: Sequence[str],
    outputs: Sequence[str],
    features: Sequence[str],
    layout: SnapshotLayout,
    global_constants: tuple[Any, Any],
    min_key_rows: int,
    handle_invalid: str,
) -> RowOutput:
    """The kernel's :class:`RowOutput` for the output columns ``names`` (those of
    :func:`output_schema`): each from its input column or its feature; the ``carried``
    columns follow the state columns in the kernel's input."""
    first_carried = len(keys) + 1 + len(SNAPSHOT_SCALARS) + len(layout.state_columns)
    columns = []
    for name in names:
        if name in outputs:
            columns.append((name, "z", list(outputs).index(name)))
        elif name in keys:
            columns.append((name, "in", list(keys).index(name)))
        else:
            columns.append((name, "in", first_carried + list(carried).index(name)))
    gm, gs = global_constants
    return RowOutput(
        features=tuple(features),
        global_mean=tuple(float(v) for v in gm),
        global_scale=tuple(float(v) for v in gs),
        min_key_rows=min_key_rows,
        handle_invalid=handle_invalid,
        columns=tuple(columns),
    )


def parts_of(fs: FileSystem, snapshot: str) -> int | None:
    """The number of parts of a snapshot written by the fold's tasks (None: by Spark)."""
    data = fs.read_bytes(fs.join(snapshot, PARTS_FILE))
    return int(data) if data is not None and data.strip().isdigit() else None


def check_parts(fs: FileSystem, attempt: str, n: int, batch_id: int) -> None:
    """Check that the fold wrote every part of the snapshot, then record their number."""
    names = set(fs.list_names(attempt)) if fs.exists(attempt) else set()
    missing = [i for i in range(n) if part_name(i) not in names]
    if missing:
        raise StateConflictError(
            f"the fold of micro-batch {batch_id} wrote no snapshot part for partition(s) "
            f"{missing[:10]} of {n} in {attempt}: the snapshot is not published (the batch "
            "is not committed; a restart runs it again)"
        )
    fs.write_atomic(fs.join(attempt, PARTS_FILE), f"{n}\n".encode())


@dataclass(frozen=True)
class SnapshotPartFiles:
    """The snapshot parts of one fold, read and written by its tasks (no JVM there):
    ``directory`` the new snapshot's (attempt) directory, ``previous`` the previous
    snapshot's when each task reads its own part of it, ``floats`` the columns stored
    without Parquet dictionary, ``schema`` a part's schema."""

    fs: FileSystem
    directory: str
    previous_dir: str | None
    floats: tuple[str, ...]
    schema: pa.Schema

    def _path(self, directory: str) -> str:
        from pyspark import TaskContext

        context = TaskContext.get()
        return self.fs.join(directory, part_name(0 if context is None else context.partitionId()))

    def previous(self) -> pa.Table | None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.previous_dir is None:
            return None
        path = self._path(self.previous_dir)
        data = self.fs.read_bytes(path)
        if data is None:
            raise CorruptStateError(f"{path}, a part of the per-key snapshot, is missing")
        try:
            table = pq.read_table(pa.BufferReader(data))
        except (pa.ArrowInvalid, OSError) as exc:
            raise CorruptStateError(
                f"{path}, a part of the per-key snapshot, is not readable Parquet ({exc})"
            ) from exc
        missing = [n for n in self.schema.names if n not in table.column_names]
        if missing:
            raise CorruptStateError(
                f"{path}, a part of the per-key snapshot, lacks the column(s) {missing}"
            )
        return table

    def write(self, table: pa.Table) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        buffer = pa.BufferOutputStream()
        counts = [c for c in table.column_names if c not in self.floats]
        # Floats stored plain: snappy saves ~30% of their bytes but was half the CPU of
        # writing and reading a part back (the next fold's read), and their statistics
        # serve no filter (last_batch's do).
        codecs = {c: "snappy" if c in counts else "none" for c in table.column_names}
        # One key column holds each value once in a part: a dictionary never pays (it was
        # a fifth of the encoding's CPU with 62,500 int64 keys).
        keys = table.column_names[: table.column_names.index("last_batch")]
        dictionary = counts[len(keys) :] if len(keys) == 1 else counts
        pq.write_table(
            table, buffer, compression=codecs, use_dictionary=dictionary, write_statistics=counts
        )
        self.fs.mkdirs(self.directory)
        self.fs.write_atomic(self._path(self.directory), buffer.getvalue().to_pybytes())
