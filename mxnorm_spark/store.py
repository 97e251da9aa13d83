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
import re
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlparse

from mxnorm_spark.errors import CorruptStateError, InvalidParameterError, StateConflictError
from mxnorm_spark.state import MXNormState

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

INITIAL_FILE = "init.json"
OWNER_FILE = "_owner.json"
_TMP_SUFFIX = ".tmp"
# A state directory holds one committed version per batch id, v-<12 digits>.json.
VERSION_FILE = re.compile(r"^v-(\d{12})\.json$")
# Schemes a Python filesystem layer (pyarrow.fs) reaches with no JVM: these work on Spark
# Connect and in serving. Anything else (s3a://, wasbs://, ...) needs Hadoop: classic only.
ARROW_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "az")

__all__ = [
    "INITIAL_FILE",
    "VERSION_FILE",
    "ArrowFileSystem",
    "FileSystem",
    "HadoopFileSystem",
    "LocalFileSystem",
    "StateStore",
    "filesystem",
    "is_local",
    "read_state",
    "version_file_name",
    "write_state",
]


def version_file_name(batch_id: int) -> str:
    """File name of the committed state for ``batch_id`` inside a state directory."""
    if batch_id < 0:
        raise InvalidParameterError(f"batch_id must be >= 0, got {batch_id}")
    return f"v-{batch_id:012d}.json"


def is_local(path: str) -> bool:
    """A plain path or a ``file:`` URI (one-letter schemes are Windows drive letters)."""
    scheme = urlparse(str(path)).scheme
    return scheme in ("", "file") or len(scheme) == 1


def local_path(path: str) -> str:
    """The local file system path of a plain path or ``file:`` URI."""
    path = str(path)
    return unquote(urlparse(path).path) if path.startswith("file:") else path


class FileSystem(Protocol):
    """The few file operations the store and the stream output need."""

    def join(self, directory: str, name: str) -> str: ...
    def exists(self, path: str) -> bool: ...
    def is_dir(self, path: str) -> bool: ...
    def list_names(self, directory: str) -> list[str]: ...
    def list_files(self, directory: str) -> list[tuple[str, float]]: ...
    def read_bytes(self, path: str) -> bytes | None: ...
    def write_bytes(self, path: str, data: bytes) -> None: ...
    def rename(self, src: str, dst: str) -> bool: ...
    def replace(self, src: str, dst: str) -> None: ...
    def qualified(self, path: str) -> str: ...
    def delete(self, path: str, recursive: bool = False) -> None: ...
    def mkdirs(self, path: str) -> None: ...
    def create_exclusive(self, path: str, data: bytes) -> bool: ...
    def write_atomic(self, path: str, data: bytes) -> None: ...


class _StagedWrites:
    """Whole-file writes where a rename is atomic (local disks, HDFS): stage, then rename.

    A reader sees a file whole or not at all; a writer killed in between leaves only a
    hidden temporary file (``StateStore.remove_temporaries``).
    """

    def _staging_name(self: Any, path: str) -> str:
        parent, _, name = path.rstrip("/").rpartition("/")
        return f"{parent or '.'}/.{name}.{uuid.uuid4().hex}{_TMP_SUFFIX}"

    def create_exclusive(self: Any, path: str, data: bytes) -> bool:
        """Write ``path`` whole unless something is there already (then return False)."""
        tmp = self._staging_name(path)
        try:
            self.write_bytes(tmp, data)
            return bool(self.rename(tmp, path))
        finally:
            if self.exists(tmp):
                self.delete(tmp)

    def write_atomic(self: Any, path: str, data: bytes) -> None:
        """Replace ``path`` whole: readers see the old bytes or the new ones."""
        tmp = self._staging_name(path)
        try:
            self.write_bytes(tmp, data)
            self.replace(tmp, path)
        finally:
            if self.exists(tmp):
                self.delete(tmp)


class LocalFileSystem(_StagedWrites):
    """Plain local paths through Python's ``os`` (no JVM)."""

    def join(self, directory: str, name: str) -> str:
        return os.path.join(directory, name)

    def list_files(self, directory: str) -> list[tuple[str, float]]:
        """``(name, modification time)`` of the regular files in ``directory``."""
        try:
            entries = list(os.scandir(local_path(directory)))
        except FileNotFoundError:
            return []
        return [(e.name, e.stat().st_mtime) for e in entries if e.is_file()]

    def exists(self, path: str) -> bool:
        return os.path.exists(local_path(path))

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(local_path(path))

    def list_names(self, directory: str) -> list[str]:
        try:
            return os.listdir(local_path(directory))
        except FileNotFoundError:
            return []

    def read_bytes(self, path: str) -> bytes | None:
        try:
            return Path(local_path(path)).read_bytes()
        except FileNotFoundError:
            return None

    def write_bytes(self, path: str, data: bytes) -> None:
        with open(local_path(path), "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    def rename(self, src: str, dst: str) -> bool:
        src, dst = local_path(src), local_path(dst)
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

    def replace(self, src: str, dst: str) -> None:
        src, dst = local_path(src), local_path(dst)
        os.replace(src, dst)
        _fsync_dir(os.path.dirname(dst) or ".")

    def qualified(self, path: str) -> str:
        return path

    def delete(self, path: str, recursive: bool = False) -> None:
        p = Path(local_path(path))
        if p.is_dir() and recursive:
            import shutil

            shutil.rmtree(p, ignore_errors=True)
        elif p.is_dir():
            p.rmdir()
        else:
            p.unlink(missing_ok=True)

    def mkdirs(self, path: str) -> None:
        os.makedirs(local_path(path), exist_ok=True)


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


class ArrowFileSystem(_StagedWrites):
    """URIs through ``pyarrow.fs`` (S3, GCS, Azure, HDFS with libhdfs): no JVM needed.

    ``s3://`` honours ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (an S3-compatible
    server) and ``AWS_REGION``; credentials come from the usual AWS variables and files.
    Paths are full URIs under the root the instance was made for.
    """

    def __init__(self, root: str) -> None:
        from pyarrow import fs as pafs

        parsed = urlparse(root)
        self._scheme = parsed.scheme
        if parsed.scheme == "s3":
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            self._region = region or "us-east-1"
            kwargs: dict[str, Any] = {"region": self._region}
            if endpoint:
                ep = urlparse(endpoint)
                kwargs.update(endpoint_override=ep.netloc or ep.path, scheme=ep.scheme or "https")
            self._fs: Any = pafs.S3FileSystem(**kwargs)
        else:
            self._fs, _ = pafs.FileSystem.from_uri(root)

    def _path(self, uri: str) -> str:
        parsed = urlparse(uri)
        if parsed.scheme != self._scheme:
            raise InvalidParameterError(f"{uri} is not a {self._scheme}:// URI")
        if self._scheme in ("abfs", "abfss"):  # container@account.dfs... -> container/path
            return parsed.netloc.split("@", 1)[0] + parsed.path
        return (parsed.netloc + parsed.path).rstrip("/")

    def _info(self, uri: str) -> Any:
        return self._fs.get_file_info(self._path(uri))

    def join(self, directory: str, name: str) -> str:
        return f"{directory.rstrip('/')}/{name}"

    def exists(self, path: str) -> bool:
        from pyarrow import fs as pafs

        return bool(self._info(path).type != pafs.FileType.NotFound)

    def is_dir(self, path: str) -> bool:
        from pyarrow import fs as pafs

        return bool(self._info(path).type == pafs.FileType.Directory)

    def list_names(self, directory: str) -> list[str]:
        return [name for name, _ in self.list_files(directory, files_only=False)]

    def list_files(self, directory: str, files_only: bool = True) -> list[tuple[str, float]]:
        from pyarrow import fs as pafs

        selector = pafs.FileSelector(self._path(directory), allow_not_found=True)
        return [
            (info.base_name, info.mtime.timestamp() if info.mtime is not None else 0.0)
            for info in self._fs.get_file_info(selector)
            if not files_only or info.type == pafs.FileType.File
        ]

    def read_bytes(self, path: str) -> bytes | None:
        try:
            with self._fs.open_input_stream(self._path(path)) as fh:
                return bytes(fh.read())
        except FileNotFoundError:
            return None

    def write_bytes(self, path: str, data: bytes) -> None:
        with self._fs.open_output_stream(self._path(path)) as fh:
            fh.write(data)

    def rename(self, src: str, dst: str) -> bool:
        if self.exists(dst):
            return False
        self._fs.move(self._path(src), self._path(dst))
        return True

    def replace(self, src: str, dst: str) -> None:
        self._fs.move(self._path(src), self._path(dst))

    def qualified(self, path: str) -> str:
        return path

    def delete(self, path: str, recursive: bool = False) -> None:
        if self.is_dir(path):
            self._fs.delete_dir(self._path(path))
        elif self.exists(path):
            self._fs.delete_file(self._path(path))

    def mkdirs(self, path: str) -> None:
        if self._scheme == "hdfs":
            self._fs.create_dir(self._path(path), recursive=True)
        # Object stores have no directories: a key's prefix exists once a key is under it.

    # On an object store one PUT is atomic (a reader gets the old object or the new one
    # whole) and a rename is a copy, so the final object is written directly.
    def create_exclusive(self, path: str, data: bytes) -> bool:
        if self._scheme == "hdfs":
            return super().create_exclusive(path, data)
        if self._scheme == "s3":
            return self._s3_put_if_absent(path, data)
        # GCS/Azure through pyarrow.fs have no conditional create: check, then write. Two
        # writers racing in that window are caught by the read-back in StateStore.
        if self.exists(path):
            return False
        self.write_bytes(path, data)
        return True

    def write_atomic(self, path: str, data: bytes) -> None:
        if self._scheme == "hdfs":
            super().write_atomic(path, data)
        else:
            self.write_bytes(path, data)

    def _s3_put_if_absent(self, path: str, data: bytes) -> bool:
        """One conditional PUT (``If-None-Match: *``): created, or False if the key exists."""
        try:
            import boto3
            from botocore.exceptions import ClientError
        except ImportError:  # without boto3: check, then write (see create_exclusive)
            if self.exists(path):
                return False
            self.write_bytes(path, data)
            return True
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        client = boto3.client("s3", endpoint_url=endpoint, region_name=self._region)
        bucket, _, key = self._path(path).partition("/")
        try:
            client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                return False
            raise
        return True


def filesystem(path: str, spark: SparkSession | None = None) -> FileSystem:
    """The file system that reaches ``path``.

    Local paths and ``file:`` URIs: Python's ``os``. ``s3://``, ``gs://``, ``abfs://``:
    ``pyarrow.fs`` (works on Spark Connect and with no Spark). Other schemes (``hdfs://``,
    ``s3a://``, ...) go through the Hadoop ``FileSystem`` of a classic ``spark`` session;
    ``hdfs://`` without one tries ``pyarrow.fs`` (it needs libhdfs).
    """
    if is_local(path):
        return LocalFileSystem()
    scheme = urlparse(path).scheme
    if scheme in ARROW_SCHEMES:
        return ArrowFileSystem(path)
    if spark is not None and _is_classic(spark):
        return HadoopFileSystem(spark, path)
    if scheme == "hdfs":
        return ArrowFileSystem(path)
    raise InvalidParameterError(
        f"{path}: the {scheme}:// scheme is reachable only through Hadoop, which needs a "
        f"classic SparkSession (not Spark Connect); use one of {', '.join(ARROW_SCHEMES)}:// "
        "or a local path"
    )


def _is_classic(spark: SparkSession) -> bool:
    return getattr(spark, "_jvm", None) is not None and hasattr(spark, "_jsc")


class HadoopFileSystem(_StagedWrites):
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

    def list_files(self, directory: str) -> list[tuple[str, float]]:
        p = self._path(directory)
        if not self._fs.exists(p):
            return []
        return [
            (str(s.getPath().getName()), int(s.getModificationTime()) / 1000.0)
            for s in self._fs.listStatus(p)
            if s.isFile()
        ]

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

    def replace(self, src: str, dst: str) -> None:
        if self.exists(dst):
            self.delete(dst)
        if not self._fs.rename(self._path(src), self._path(dst)):
            raise OSError(f"could not rename {src} to {dst}")

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
        self.fs: FileSystem = filesystem(self.path, spark)
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

    def remove_temporaries(self) -> None:
        """Delete temporary files left by a writer killed between its write and its rename.

        They were never committed, so nothing is lost. Call it only as the directory's single
        writer (a stream does at start): another writer's file in flight would go too.
        """
        for name in self.fs.list_names(self.path):
            if name.startswith(".") and name.endswith(_TMP_SUFFIX):
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
    every reader of a path follows. Raises :class:`CorruptStateError` naming the path when
    there is no state there or the file fails its checks.
    """
    path = str(path)
    fs = filesystem(path, spark)
    where = local_path(path) if isinstance(fs, LocalFileSystem) else path
    if not fs.is_dir(where):
        data = fs.read_bytes(where)
        if data is None:
            raise CorruptStateError(f"state file {where} does not exist")
        if batch_id is not None:
            raise InvalidParameterError(
                f"{where} is one state file; a batch id selects a version of a state directory"
            )
        return MXNormState.from_json(data, source=f"state file {where}")
    store = StateStore(path, spark)
    if batch_id is not None:
        state = store.get(batch_id)
        if state is None:
            raise CorruptStateError(
                f"state directory {where} holds no version for batch {batch_id} "
                f"(committed: {_describe_ids(store.batch_ids())})"
            )
        return state
    state = store.latest() or store.initial()
    if state is None:
        raise CorruptStateError(
            f"state directory {where} holds no committed version (v-<batch id>.json) "
            f"and no {INITIAL_FILE}"
        )
    return state


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


# ---- input files of a file stream -------------------------------------------------------
# A file source checks each new file before its micro-batch is folded: its first line (csv
# header, first json record) or its parquet footer. Only those bytes are read, through the
# file system that reaches the file, so local and pyarrow.fs paths need no JVM.
_LINE_CHUNK = 64 * 1024


def file_exists(uri: str, spark: SparkSession | None = None) -> bool:
    """Whether the file at ``uri`` (a path, or a URI as Spark's ``input_file_name()`` gives it)
    exists."""
    fs = filesystem(uri, spark)
    return fs.exists(local_path(uri) if isinstance(fs, LocalFileSystem) else uri)


def read_first_line(
    uri: str, encoding: str = "UTF-8", spark: SparkSession | None = None
) -> str | None:
    """The first line of the file at ``uri`` that is not blank (no line break), or None.

    Reads only as far as that line. Lines end at ``\\n``, ``\\r\\n`` or ``\\r``.
    """
    import codecs

    decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
    text = ""
    with _open_input(uri, spark) as fh:
        while True:
            chunk = fh.read(_LINE_CHUNK)
            text += decoder.decode(bytes(chunk), final=not chunk)
            *complete, text = re.split(r"\r\n|\r|\n", text)
            if not chunk:
                complete.append(text)  # the last line needs no line break
            for line in complete:
                if line.strip():
                    return line
            if not chunk:
                return None


def read_parquet_schema(uri: str, spark: SparkSession | None = None) -> Any:
    """The Arrow schema (``pyarrow.Schema``) of the parquet file at ``uri``, from its footer."""
    import pyarrow.parquet as pq

    with _open_input(uri, spark) as fh:
        return pq.read_schema(fh)


def _open_input(uri: str, spark: SparkSession | None) -> Any:
    """A seekable binary reader of the file at ``uri`` (a context manager)."""
    fs = filesystem(uri, spark)
    if isinstance(fs, LocalFileSystem):
        return open(local_path(uri), "rb")
    if isinstance(fs, ArrowFileSystem):
        return fs._fs.open_input_file(fs._path(uri))
    if isinstance(fs, HadoopFileSystem):
        return _HadoopInput(fs, uri)
    raise InvalidParameterError(f"{uri}: no reader for this file system")


class _HadoopInput:
    """A read-only, seekable Python file over a Hadoop input stream (classic Spark only).

    Enough of the file protocol for ``pyarrow.parquet.read_schema`` (which seeks to the
    footer) and for reading a first line, so neither reads the whole file.
    """

    def __init__(self, fs: HadoopFileSystem, uri: str) -> None:
        path = fs._path(uri)
        self._size = int(fs._fs.getFileStatus(path).getLen())
        self._stream = fs._fs.open(path)
        self._pos = 0
        self.closed = False

    def __enter__(self) -> _HadoopInput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
            self.closed = True

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._pos

    def size(self) -> int:
        return self._size

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, min(base + offset, self._size))
        self._stream.seek(self._pos)
        return self._pos

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self._size - self._pos
        size = min(size, self._size - self._pos)
        if size <= 0:
            return b""
        data = bytes(self._stream.readNBytes(size))  # java.io.InputStream (Java 11+)
        self._pos += len(data)
        return data
