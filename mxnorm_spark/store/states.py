"""The durable state store: one immutable, checksummed state version per batch id.

A state directory holds ``v-<batch id, 12 digits>.json`` files (one per committed batch,
:func:`version_file_name`) and optionally ``init.json``, the state a stream was
warm-started from. A version, once committed, is never rewritten. Every read verifies the
type tag and the SHA-256 checksum of the file (:meth:`MXNormState.from_json`); a damaged
file raises :class:`~mxnorm_spark.core.errors.CorruptStateError` naming it, never a silent
fallback.

The directory may be a local path, an ``s3://``/``gs://``/``abfs://`` URI (``pyarrow.fs``,
no JVM: Spark Connect and serving read it too) or, through a classic SparkSession, any
Hadoop scheme (``hdfs://``, ``s3a://``); see :mod:`mxnorm_spark.store.filesystems`. Each
version is created exclusively (a staged rename that refuses an existing file, or on
``s3://`` a conditional PUT), so a reader sees a version whole or not at all and two
writers cannot both commit one batch id. Only one writer may use a state directory at a
time (a stream claims its directory, see :meth:`StateStore.claim`).

>>> import tempfile
>>> from mxnorm_spark import Moments
>>> store = StateStore(tempfile.mkdtemp(), retention=2)
>>> s = MXNormState.create(["x"])
>>> for b in range(3):
...     s = s.update(Moments.from_array([[float(b)], [float(b) + 2]]), batch_id=b)
...     _ = store.commit(b, s)
>>> store.batch_ids(), store.latest().mean.tolist()
([1, 2], [1.29])
>>> store.get(0) is None, store.get(1).batches_seen
(True, 2)
"""

from __future__ import annotations

import json
import os
import re
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from mxnorm_spark.core.errors import (
    CorruptStateError,
    InvalidParameterError,
    StateConflictError,
    StateNotFoundError,
)
from mxnorm_spark.core.moments import Moments
from mxnorm_spark.core.state import MXNormState
from mxnorm_spark.store.filesystems import (
    TMP_SUFFIX,
    FileSystem,
    LocalFileSystem,
    filesystem,
    local_path,
)
from mxnorm_spark.store.history import HISTORY_SEGMENT
from mxnorm_spark.store.retries import RetryPolicy

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

INITIAL_FILE = "init.json"
OWNER_FILE = "_owner.json"
# Beside a state file while one run writes it and its history (state_file_writer).
WRITER_SUFFIX = ".writer"
# A state directory holds one committed version per batch id, v-<12 digits>.json.
VERSION_FILE = re.compile(r"^v-(\d{12})\.json$")

__all__ = [
    "INITIAL_FILE",
    "OWNER_FILE",
    "VERSION_FILE",
    "WRITER_SUFFIX",
    "StateStore",
    "read_state",
    "state_file_writer",
    "version_file_name",
    "write_state",
]


def version_file_name(batch_id: int) -> str:
    """File name of the committed state for ``batch_id`` inside a state directory."""
    if batch_id < 0:
        raise InvalidParameterError(f"batch_id must be >= 0, got {batch_id}")
    return f"v-{batch_id:012d}.json"


class StateStore:
    """Committed MXNorm state versions, one per batch id, in one directory.

    ``retention`` keeps only the newest N versions (at least 2: a replayed micro-batch
    reads the version before it); ``None`` keeps all. ``spark`` selects the Hadoop file
    system of that session (required for non-local paths). ``retry``: how an object
    store's transient failures are retried (:class:`~mxnorm_spark.store.retries.
    RetryPolicy`; default from ``MXNORM_STORE_RETRIES``); when they outlast it, the
    operation raises :class:`~mxnorm_spark.core.errors.StoreUnavailableError` and a commit
    has not happened (or, if its last PUT landed unanswered, holds exactly the bytes a
    replay commits again as a no-op).

    ``history_segment``: as it commits, the store rolls every that many per-batch history
    records (``_history/h-<id>.parquet``) into one segment file, and two segments of a
    level into one of the next, so a long stream's history stays about ``history_segment``
    files; every record is kept and read once (:mod:`~mxnorm_spark.store.history`).
    ``None`` leaves one file per batch.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        spark: SparkSession | None = None,
        *,
        retention: int | None = None,
        retry: RetryPolicy | None = None,
        history_segment: int | None = HISTORY_SEGMENT,
    ) -> None:
        if history_segment is not None and (
            isinstance(history_segment, bool)
            or not isinstance(history_segment, int)
            or history_segment < 1
        ):
            raise InvalidParameterError(
                f"history_segment must be a whole number >= 1 or None (one file per batch), "
                f"got {history_segment!r}"
            )
        if retention is not None and (
            isinstance(retention, bool) or not isinstance(retention, int) or retention < 2
        ):
            raise InvalidParameterError(
                f"retention must be a whole number >= 2 or None (keep all), got {retention!r}: "
                "a replayed micro-batch needs the version before it"
            )
        self.path = str(path)
        self.retention = retention
        self.history_segment = history_segment
        # The batch id at which the history is next worth listing (None: at the next commit).
        self._next_compaction: int | None = None
        self.fs: FileSystem = filesystem(self.path, spark, retry=retry)
        if isinstance(self.fs, LocalFileSystem):
            self.path = local_path(self.path)

    def __repr__(self) -> str:
        return f"StateStore({self.path!r}, retention={self.retention})"

    # ---- reading ------------------------------------------------------------------
    def batch_ids(self) -> list[int]:
        """Committed batch ids, ascending."""
        ids = []
        for name in self.fs.list_names(self.path):
            match = VERSION_FILE.match(name)
            if match:
                ids.append(int(match.group(1)))
        return sorted(ids)

    def latest_batch_id(self) -> int | None:
        ids = self.batch_ids()
        return ids[-1] if ids else None

    def version_path(self, batch_id: int) -> str:
        return self.fs.join(self.path, version_file_name(batch_id))

    def get(self, batch_id: int) -> MXNormState | None:
        """The state committed for ``batch_id``, or None when there is none."""
        return self._read(self.version_path(batch_id), batch_id)

    def latest(self) -> MXNormState | None:
        """The newest committed state, or None for an empty store."""
        b = self.latest_batch_id()
        return None if b is None else self.get(b)

    def before(self, batch_id: int) -> tuple[int, MXNormState] | None:
        """The newest committed ``(id, state)`` with id < ``batch_id``, or None."""
        older = [b for b in self.batch_ids() if b < batch_id]
        if not older:
            return None
        state = self.get(older[-1])
        return None if state is None else (older[-1], state)

    def section(self, batch_id: int, name: str) -> Any:
        """The section ``name`` committed with the version of ``batch_id`` (see
        :meth:`commit`), checksum verified; None when the version or the section is absent."""
        path = self.version_path(batch_id)
        data = self.fs.read_bytes(path)
        if data is None:
            return None
        try:
            found = json.loads(data).get(name)
        except (ValueError, AttributeError):
            found = {}
        if found is None:
            return None
        if not isinstance(found, dict) or found.get("checksum") != _section_checksum(
            found.get("value")
        ):
            raise CorruptStateError(
                f"state file {path}: its {name!r} section fails its checksum (changed or "
                f"damaged after it was written). {self._recovery_hint(batch_id)}"
            )
        return found["value"]

    def initial(self) -> MXNormState | None:
        """The warm-start state (``init.json``), or None."""
        return self._read(self.fs.join(self.path, INITIAL_FILE), None)

    def state_before(self, batch_id: int, *, every_batch: bool) -> MXNormState | None:
        """The state micro-batch ``batch_id`` folds into: the version of the batch id
        before it, else (batch 0) the warm start. ``every_batch``: every batch commits a
        version (scalar columns), so a missing one means the directory lost it."""
        if batch_id > 0:
            prev = self.get(batch_id - 1)
            if prev is not None:
                return prev
            ids = self.batch_ids()
            if ids:
                fix = "Restore it, or start over with a fresh checkpoint and state directory"
                if ids[-1] == batch_id - 2:
                    fix = (
                        "Restore it, or delete the checkpoint entry commits/"
                        f"{batch_id - 1} so that batch {batch_id - 1} is run again"
                    )
                raise StateConflictError(
                    f"micro-batch {batch_id} needs state version "
                    f"{version_file_name(batch_id - 1)} in {self.path}, which holds "
                    f"{len(ids)} version(s) ({ids[0]}..{ids[-1]}): a version was deleted. {fix}"
                )
            if every_batch:
                # Every batch of scalar columns commits a version (empty ones too), so none
                # at all means the directory was emptied. Only a vector column whose size
                # no row has shown yet gets here legitimately.
                raise StateConflictError(
                    f"micro-batch {batch_id} needs state version "
                    f"{version_file_name(batch_id - 1)}, but {self.path} holds no "
                    "version: it was emptied or replaced. Restore it, or start over with a "
                    "fresh checkpoint and state directory"
                )
        return self.initial()

    def _read(self, path: str, batch_id: int | None) -> MXNormState | None:
        data = self.fs.read_bytes(path)
        if data is None:
            return None
        try:
            return MXNormState.from_json(data, source=f"state file {path}")
        except CorruptStateError as exc:
            raise type(exc)(f"{exc}. {self._recovery_hint(batch_id)}") from None

    def _recovery_hint(self, batch_id: int | None) -> str:
        # Versions are written whole and renamed into place: damage came afterwards.
        if batch_id is None:
            return "If no backup exists, start over with a fresh state directory"
        return (
            f"A stream recomputes batch {batch_id} from the version before it if this file "
            f"and its checkpoint entry commits/{batch_id} are both deleted (README: "
            "Streaming, a corrupt state version)"
        )

    # ---- writing ------------------------------------------------------------------
    def commit(
        self, batch_id: int, state: MXNormState, *, section: tuple[str, Any] | None = None
    ) -> str:
        """Write ``state`` as the version of ``batch_id`` and return its path.

        Committing the same state again is a no-op; a different state for an id that is
        already committed raises :class:`StateConflictError` (versions are immutable).
        Then versions beyond ``retention`` are removed, oldest first.

        ``section``: ``(name, JSON value)`` committed in the same file, beside the state
        and with a checksum of its own (:meth:`section`); readers of the state ignore it.
        An event-time stream keeps its open batches and watermark there.
        """
        if isinstance(batch_id, bool) or not isinstance(batch_id, int):
            raise InvalidParameterError(f"batch_id must be an int, got {batch_id!r}")
        target = self.version_path(batch_id)
        text = state.to_json()
        if section is not None:
            doc = json.loads(text)
            name, value = section
            doc[name] = {"checksum": _section_checksum(value), "value": value}
            text = json.dumps(doc, indent=2, allow_nan=False) + "\n"
        self._write_once(target, text.encode("utf-8"), f"batch {batch_id}")
        self._apply_retention()
        self._compact_history(batch_id)
        return target

    def _compact_history(self, batch_id: int) -> None:
        # After the version: the batch's record is committed. The first commit of a run
        # also deletes what a compaction killed midway left covered.
        every = self.history_segment
        if every is None or (
            self._next_compaction is not None and batch_id < self._next_compaction
        ):
            return
        from mxnorm_spark.store.history import compact_records

        oldest = compact_records(self.fs, self.path, batch_id, segment=every)
        # Listing the history every commit would cost an object store a LIST per batch:
        # look again once enough records can have piled up to make a segment (the newest
        # two stay single files).
        self._next_compaction = (batch_id if oldest is None else oldest) + every + 1

    def set_initial(self, state: MXNormState) -> str:
        """Record the warm-start state once (``init.json``); see :meth:`commit` for reruns."""
        target = self.fs.join(self.path, INITIAL_FILE)
        self._write_once(target, state.to_json().encode("utf-8"), "the initial state")
        return target

    def owner(self) -> str | None:
        """The writer that claimed this directory (see :meth:`claim`), or None."""
        path = self.fs.join(self.path, OWNER_FILE)
        data = self.fs.read_bytes(path)
        if data is None:
            return None
        try:
            return str(json.loads(data)["owner"])
        except (ValueError, KeyError, TypeError):
            raise CorruptStateError(
                f"{path} is unreadable; it names the stream that owns this state directory. "
                "Delete it only if no other stream writes here"
            ) from None

    def claim(self, owner: str) -> None:
        """Bind this directory to one writer (a streaming query id); another id is refused.

        Two streams folding into one directory would interleave their batch ids; the
        claim turns that mistake into an error at the first micro-batch.
        """
        found = self.owner()
        if found is None:
            path = self.fs.join(self.path, OWNER_FILE)
            self._write_once(path, json.dumps({"owner": owner}).encode("utf-8"), "the owner")
            return
        if found != owner:
            raise StateConflictError(
                f"state directory {self.path} belongs to streaming query {found}, not {owner} "
                "(a new or different checkpoint). Use a fresh state directory for a new query "
                "(warm-start it with the initial state option), or restore the query's "
                "original checkpoint"
            )

    def _write_once(self, target: str, data: bytes, what: str) -> None:
        existing = self.fs.read_bytes(target)
        if existing is not None:
            if existing == data:
                return
            raise StateConflictError(
                f"{target} already holds a different state for {what}; committed versions "
                "are immutable. Two writers are using this state directory, or it belongs "
                "to another stream: give each stream its own state directory"
            )
        self.fs.mkdirs(self.path)
        # Losing a race with another writer is fine only if it wrote the same bytes.
        if not self.fs.create_exclusive(target, data) and self.fs.read_bytes(target) != data:
            raise StateConflictError(
                f"{target} was written concurrently with a different state for {what}; "
                "only one writer may use a state directory"
            )

    def _apply_retention(self) -> None:
        if self.retention is None:
            return
        ids = self.batch_ids()
        for b in ids[: max(len(ids) - self.retention, 0)]:
            self.fs.delete(self.version_path(b))

    def record_batch(
        self, batch_id: int, *, rows: int, moments: Moments, state: MXNormState
    ) -> bool:
        """Record what batch ``batch_id`` contributed (see :mod:`~mxnorm_spark.store.history`)
        once; False if it was recorded already (a replay)."""
        from mxnorm_spark.store.history import write_record

        return write_record(self.fs, self.path, batch_id, rows=rows, moments=moments, state=state)

    def history(self) -> Any:
        """Every recorded batch of this directory as a ``pyarrow.Table``."""
        from mxnorm_spark.store.history import read_records

        return read_records(self.fs, self.path)

    def remove_temporaries(self) -> None:
        """Delete temporary files left by a writer killed between its write and its rename.

        They were never committed, so nothing is lost. Call it only as the directory's single
        writer (a stream does at start): another writer's file in flight would go too.
        """
        for name in self.fs.list_names(self.path):
            if name.startswith(".") and name.endswith(TMP_SUFFIX):
                self.fs.delete(self.fs.join(self.path, name))


# ---- one state file ---------------------------------------------------------------------
def read_state(
    path: str | os.PathLike[str],
    spark: SparkSession | None = None,
    *,
    batch_id: int | None = None,
) -> MXNormState:
    """The state at ``path``: a state file, or a state directory (a stream's store).

    A directory gives its newest committed version, or the version of ``batch_id``; with no
    version at all, its warm-start state (``init.json``). This is the one fallback rule
    every reader of a path follows. Raises :class:`StateNotFoundError` naming the path when
    there is no state there, :class:`CorruptStateError` when the file fails its checks.
    """
    path = str(path)
    fs = filesystem(path, spark)
    where = local_path(path) if isinstance(fs, LocalFileSystem) else path
    if not fs.is_dir(where):
        data = fs.read_bytes(where)
        if data is None:
            raise StateNotFoundError(f"state file {where} not found")
        if batch_id is not None:
            raise InvalidParameterError(
                f"{where} is one state file; a batch id selects a version of a state directory"
            )
        return MXNormState.from_json(data, source=f"state file {where}")
    store = StateStore(path, spark)
    if batch_id is not None:
        state = store.get(batch_id)
        if state is None:
            raise StateNotFoundError(
                f"state directory {where} holds no version for batch {batch_id} "
                f"(committed: {_describe_ids(store.batch_ids())})"
            )
        return state
    state = store.latest() or store.initial()
    if state is None:
        raise StateNotFoundError(
            f"state directory {where} holds no committed version (v-<batch id>.json) "
            f"and no {INITIAL_FILE}"
        )
    return state


def _section_checksum(value: Any) -> str:
    import hashlib

    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _describe_ids(ids: list[int]) -> str:
    if not ids:
        return "none"
    return str(ids[0]) if len(ids) == 1 else f"{len(ids)} versions, {ids[0]}..{ids[-1]}"


def write_state(
    state: MXNormState, path: str | os.PathLike[str], spark: SparkSession | None = None
) -> str:
    """Write one state file, replacing any file there, and return where it went.

    The bytes go to a temporary name beside the target and are renamed into place, so a
    reader sees the old file or the new one, never part of one. Locally the rename is
    atomic; on an object store the new object is complete before the old one is replaced.
    """
    path = str(path)
    fs = filesystem(path, spark)
    target = local_path(path) if isinstance(fs, LocalFileSystem) else path
    if fs.is_dir(target):
        raise InvalidParameterError(
            f"{path} is a directory; a state is written to one JSON file, e.g. "
            f"{fs.join(target, 'state.json')}"
        )
    parent = target.rstrip("/").rpartition("/")[0] or "."
    fs.mkdirs(parent)
    fs.write_atomic(target, state.to_json().encode("utf-8"))
    return fs.qualified(target)


@contextmanager
def state_file_writer(
    path: str | os.PathLike[str], spark: SparkSession | None = None
) -> Iterator[None]:
    """Hold ``<path>.writer`` while one run writes the state file ``path`` and its history.

    A state file is replaced whole, but its history beside it is several files: two runs
    writing at once could leave one run's state with the other's history. The marker is
    created exclusively (as a state version is); a second run finds it and stops with
    :class:`StateConflictError` naming the run that holds it, before writing anything.
    The marker is deleted when the block ends, also on an error. A run killed inside the
    block leaves it behind: the error says so, and deleting it is the fix.
    """
    path = str(path)
    fs = filesystem(path, spark)
    target = local_path(path) if isinstance(fs, LocalFileSystem) else path
    marker = target + WRITER_SUFFIX
    me = {
        "writer": uuid.uuid4().hex,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    data = json.dumps(me).encode("utf-8")
    fs.mkdirs(target.rstrip("/").rpartition("/")[0] or ".")
    if not fs.create_exclusive(marker, data):
        holder = fs.read_bytes(marker) or b"{}"
        try:
            who = json.loads(holder)
            desc = f"pid {who['pid']} on {who['host']} since {who['since']}"
        except (ValueError, KeyError, TypeError):
            desc = "an unknown run"
        raise StateConflictError(
            f"{target} is being written by another run ({desc}): two jobs were given the "
            f"same state path, and this one stops before writing anything. Give each job "
            f"its own path, or run them one after the other; if no run is writing (one was "
            f"killed), delete {marker}"
        )
    try:
        yield
    finally:
        if fs.read_bytes(marker) == data:
            fs.delete(marker)
