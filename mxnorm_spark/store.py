"""The durable state store: one immutable, checksummed state version per batch id.

A state directory holds ``v-<batch id, 12 digits>.json`` files (one per committed batch,
:func:`~mxnorm_spark.state.version_file_name`) and optionally ``init.json``, the state a
stream was warm-started from. Every version is written under a hidden temporary name in
the same directory and renamed into place, so a reader sees a version whole or not at all,
and a version, once committed, is never rewritten. Every read verifies the type tag and the
SHA-256 checksum of the file (:meth:`MXNormState.from_json`); a damaged file raises
:class:`~mxnorm_spark.errors.CorruptStateError` naming it, never a silent fallback.

With a SparkSession the store goes through the Hadoop ``FileSystem`` API of that session,
so ``file://``, ``hdfs://``, ``s3a://`` (any scheme with a Hadoop connector) and plain local
paths behave the same. Without one it uses the local file system directly (no JVM), for
tools and tests that only read or write local state.

Renames are atomic on local file systems and HDFS. On S3 (``s3a://``) a rename is a copy
then a delete: a crash during it can leave the temporary file behind (ignored and removed
on the next open), and the version only becomes visible once the copy is complete, so
readers still never see part of a version. Only one writer may use a state directory at a
time (a stream claims its directory with its query id, see :meth:`StateStore.claim`).

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

import contextlib
import json
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mxnorm_spark.errors import CorruptStateError, InvalidParameterError, StateConflictError
from mxnorm_spark.state import VERSION_FILE, MXNormState, version_file_name

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

INITIAL_FILE = "init.json"
OWNER_FILE = "_owner.json"
_TMP_SUFFIX = ".tmp"

__all__ = ["INITIAL_FILE", "FileSystem", "HadoopFileSystem", "LocalFileSystem", "StateStore"]


class FileSystem(Protocol):
    """The few file operations the store and the stream output need."""

    def join(self, directory: str, name: str) -> str: ...
    def exists(self, path: str) -> bool: ...
    def is_dir(self, path: str) -> bool: ...
    def list_names(self, directory: str) -> list[str]: ...
    def read_bytes(self, path: str) -> bytes | None: ...
    def write_bytes(self, path: str, data: bytes) -> None: ...
    def rename(self, src: str, dst: str) -> bool: ...
    def delete(self, path: str, recursive: bool = False) -> None: ...
    def mkdirs(self, path: str) -> None: ...


class LocalFileSystem:
    """Plain local paths through Python's ``os`` (no JVM)."""

    def join(self, directory: str, name: str) -> str:
        return os.path.join(directory, name)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(path)

    def list_names(self, directory: str) -> list[str]:
        try:
            return os.listdir(directory)
        except FileNotFoundError:
            return []

    def read_bytes(self, path: str) -> bytes | None:
        try:
            return Path(path).read_bytes()
        except FileNotFoundError:
            return None

    def write_bytes(self, path: str, data: bytes) -> None:
        with open(path, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    def rename(self, src: str, dst: str) -> bool:
        # os.link fails when dst exists: the same no-overwrite rule as HDFS, without a race.
        try:
            os.link(src, dst)
        except FileExistsError:
            return False
        except OSError:  # no hard links on this file system
            if os.path.exists(dst):
                return False
            os.replace(src, dst)
        else:
            os.unlink(src)
        _fsync_dir(os.path.dirname(dst) or ".")
        return True

    def delete(self, path: str, recursive: bool = False) -> None:
        p = Path(path)
        if p.is_dir() and recursive:
            import shutil

            shutil.rmtree(p, ignore_errors=True)
        elif p.is_dir():
            p.rmdir()
        else:
            p.unlink(missing_ok=True)

    def mkdirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)


def _fsync_dir(directory: str) -> None:
    # A rename is durable only once its directory entry is: fsync the directory (POSIX).
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class HadoopFileSystem:
    """Paths through the Hadoop ``FileSystem`` of a SparkSession (any scheme it supports).

    For ``file:`` paths the raw local file system is used: Hadoop's checksummed local file
    system would add ``.crc`` side files, and the state files carry their own checksum.
    """

    def __init__(self, spark: SparkSession, root: str) -> None:
        jvm = spark._jvm
        assert jvm is not None, "the SparkSession has no JVM gateway (Spark Connect?)"
        self._jvm = jvm
        self._conf = spark._jsc.hadoopConfiguration()
        self._root = self._path(root)
        fs = self._root.getFileSystem(self._conf)
        if fs.getUri().getScheme() == "file":
            checksummed = jvm.java.lang.Class.forName("org.apache.hadoop.fs.ChecksumFileSystem")
            if checksummed.isInstance(fs):
                fs = fs.getRawFileSystem()
        self._fs = fs

    def _path(self, path: str) -> Any:
        return self._jvm.org.apache.hadoop.fs.Path(path)

    def qualified(self, path: str) -> str:
        """The fully qualified form of ``path`` (scheme and authority), as Spark reports it."""
        return str(self._fs.makeQualified(self._path(path)).toString())

    def join(self, directory: str, name: str) -> str:
        return str(self._jvm.org.apache.hadoop.fs.Path(self._path(directory), name).toString())

    def exists(self, path: str) -> bool:
        return bool(self._fs.exists(self._path(path)))

    def is_dir(self, path: str) -> bool:
        p = self._path(path)
        return bool(self._fs.exists(p) and self._fs.getFileStatus(p).isDirectory())

    def list_names(self, directory: str) -> list[str]:
        p = self._path(directory)
        if not self._fs.exists(p):
            return []
        return [str(s.getPath().getName()) for s in self._fs.listStatus(p)]

    def read_bytes(self, path: str) -> bytes | None:
        p = self._path(path)
        if not self._fs.exists(p):
            return None
        stream = self._fs.open(p)
        try:
            data = self._jvm.org.apache.commons.io.IOUtils.toByteArray(stream)
        finally:
            stream.close()
        return bytes(data)

    def write_bytes(self, path: str, data: bytes) -> None:
        out = self._fs.create(self._path(path), False)
        try:
            out.write(bytearray(data))
            # hsync asks the file system to make the bytes durable (fsync locally, a
            # pipeline flush on HDFS); object stores persist on close instead.
            with contextlib.suppress(Exception):
                out.hsync()
        finally:
            out.close()

    def rename(self, src: str, dst: str) -> bool:
        if self._fs.exists(self._path(dst)):
            return False
        return bool(self._fs.rename(self._path(src), self._path(dst)))

    def delete(self, path: str, recursive: bool = False) -> None:
        self._fs.delete(self._path(path), recursive)

    def mkdirs(self, path: str) -> None:
        self._fs.mkdirs(self._path(path))


class StateStore:
    """Committed MXNorm state versions, one per batch id, in one directory.

    ``retention`` keeps only the newest N versions (at least 2: a replayed micro-batch
    reads the version before it); ``None`` keeps all. ``spark`` selects the Hadoop file
    system of that session (required for non-local paths).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        spark: SparkSession | None = None,
        *,
        retention: int | None = None,
    ) -> None:
        if retention is not None and (
            isinstance(retention, bool) or not isinstance(retention, int) or retention < 2
        ):
            raise InvalidParameterError(
                f"retention must be a whole number >= 2 or None (keep all), got {retention!r}: "
                "a replayed micro-batch needs the version before it"
            )
        self.path = str(path)
        self.retention = retention
        self.fs: FileSystem = (
            LocalFileSystem() if spark is None else HadoopFileSystem(spark, self.path)
        )

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

    def initial(self) -> MXNormState | None:
        """The warm-start state (``init.json``), or None."""
        return self._read(self.fs.join(self.path, INITIAL_FILE), None)

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
    def commit(self, batch_id: int, state: MXNormState) -> str:
        """Write ``state`` as the version of ``batch_id`` and return its path.

        Committing the same state again is a no-op; a different state for an id that is
        already committed raises :class:`StateConflictError` (versions are immutable).
        Then versions beyond ``retention`` are removed, oldest first.
        """
        if isinstance(batch_id, bool) or not isinstance(batch_id, int):
            raise InvalidParameterError(f"batch_id must be an int, got {batch_id!r}")
        target = self.version_path(batch_id)
        self._write_once(target, state.to_json().encode("utf-8"), f"batch {batch_id}")
        self._apply_retention()
        return target

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
        name = target.rstrip("/").rsplit("/", 1)[-1]
        tmp = self.fs.join(self.path, f".{name}.{uuid.uuid4().hex}{_TMP_SUFFIX}")
        try:
            self.fs.write_bytes(tmp, data)
            # Losing a race with another writer is fine only if it wrote the same bytes.
            if not self.fs.rename(tmp, target) and self.fs.read_bytes(target) != data:
                raise StateConflictError(
                    f"{target} was written concurrently with a different state for {what}; "
                    "only one writer may use a state directory"
                )
        finally:
            if self.fs.exists(tmp):
                self.fs.delete(tmp)

    def _apply_retention(self) -> None:
        if self.retention is None:
            return
        ids = self.batch_ids()
        for b in ids[: max(len(ids) - self.retention, 0)]:
            self.fs.delete(self.version_path(b))

    def remove_temporaries(self) -> None:
        """Delete temporary files left by a writer killed between its write and its rename.

        They were never committed, so nothing is lost. Call it only as the directory's single
        writer (a stream does at start): another writer's file in flight would go too.
        """
        for name in self.fs.list_names(self.path):
            if name.startswith(".") and name.endswith(_TMP_SUFFIX):
                self.fs.delete(self.fs.join(self.path, name))
