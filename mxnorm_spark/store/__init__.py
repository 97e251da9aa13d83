"""The I/O layer: every file this package reads or writes goes through here.

* :mod:`~mxnorm_spark.store.filesystems`: local paths, ``pyarrow.fs`` URIs and, on classic
  Spark, Hadoop; exclusive creates and atomic replaces on each.
* :mod:`~mxnorm_spark.store.states`: state files and state directories (one immutable,
  checksummed version per batch id, owner claims), :func:`read_state` and
  :func:`write_state`.
* :mod:`~mxnorm_spark.store.history`: the per-batch history next to a state.
* :mod:`~mxnorm_spark.store.inputs`: the few bytes a file stream reads of each new file.
* :mod:`~mxnorm_spark.store.retries`: the bounded, jittered retry of an object store's
  transient failures.

No Spark import: the serving path and Spark Connect use the same store.
"""

from mxnorm_spark.store.filesystems import (
    ARROW_SCHEMES,
    ArrowFileSystem,
    FileSystem,
    HadoopFileSystem,
    LocalFileSystem,
    filesystem,
    is_classic,
    is_local,
    local_path,
    unwritable_reason,
)
from mxnorm_spark.store.history import history_dir, read_history, record_batch
from mxnorm_spark.store.inputs import (
    file_exists,
    open_text,
    read_first_line,
    read_head,
    read_parquet_schema,
)
from mxnorm_spark.store.retries import DEFAULT_RETRY, RETRIES_ENV, RetryPolicy
from mxnorm_spark.store.states import (
    INITIAL_FILE,
    OWNER_FILE,
    VERSION_FILE,
    StateStore,
    read_state,
    state_file_writer,
    version_file_name,
    write_state,
)

__all__ = [
    "ARROW_SCHEMES",
    "DEFAULT_RETRY",
    "INITIAL_FILE",
    "OWNER_FILE",
    "RETRIES_ENV",
    "VERSION_FILE",
    "ArrowFileSystem",
    "FileSystem",
    "HadoopFileSystem",
    "LocalFileSystem",
    "RetryPolicy",
    "StateStore",
    "file_exists",
    "filesystem",
    "history_dir",
    "is_classic",
    "is_local",
    "local_path",
    "open_text",
    "read_first_line",
    "read_head",
    "read_history",
    "read_parquet_schema",
    "read_state",
    "record_batch",
    "state_file_writer",
    "unwritable_reason",
    "version_file_name",
    "write_state",
]
