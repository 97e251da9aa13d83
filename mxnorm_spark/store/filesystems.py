"""The file systems the store reaches, behind one small protocol (the only file I/O).

* Local paths and ``file:`` URIs: Python's ``os``; whole-file writes are staged under a
  hidden name and renamed (atomic, and ``os.link`` refuses an existing target, no race).
* ``s3://``, ``gs://``, ``abfs://``: ``pyarrow.fs``, no JVM, so they work on Spark Connect
  and with no Spark at all. On an object store one PUT is atomic and a rename is a copy,
  so whole files are written as the final object in one request; on ``s3://`` an
  exclusive create is a conditional PUT (``If-None-Match: *``, needs boto3). Every
  request is retried on 5xx, timeouts and dropped connections by one bounded
  :class:`~mxnorm_spark.store.retries.RetryPolicy` (the clients' own retries are off).
* Any other scheme (``hdfs://``, ``s3a://``, ...): the Hadoop ``FileSystem`` of a classic
  SparkSession (classic only); ``hdfs://`` without one tries ``pyarrow.fs`` (libhdfs).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlparse

from mxnorm_spark.core.errors import InvalidParameterError
from mxnorm_spark.store.retries import RetryPolicy

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

TMP_SUFFIX = ".tmp"
# Schemes a Python filesystem layer (pyarrow.fs) reaches with no JVM: these work on Spark
# Connect and in serving. Anything else (s3a://, wasbs://, ...) needs Hadoop: classic only.
ARROW_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "az")

__all__ = [
    "ARROW_SCHEMES",
    "ArrowFileSystem",
    "FileSystem",
    "HadoopFileSystem",
    "LocalFileSystem",
    "filesystem",
    "is_classic",
    "is_local",
    "local_path",
    "unwritable_reason",
]


def is_local(path: str) -> bool:
    """A plain path or a ``file:`` URI (one-letter schemes are Windows drive letters)."""
    scheme = urlparse(str(path)).scheme
    return scheme in ("", "file") or len(scheme) == 1


def local_path(path: str) -> str:
    """The local file system path of a plain path or ``file:`` URI."""
    path = str(path)
    return unquote(urlparse(path).path) if path.startswith("file:") else path


def unwritable_reason(path: str, *, directory: bool) -> str | None:
    """Why nothing can be written at the local ``path``, or None when it can.

    ``directory``: ``path`` is a directory to create or to write into; otherwise it is a
    file, created or replaced in its parent. The nearest existing ancestor must be a
    directory that accepts a new file, which a probe file (created and removed at once)
    proves: permission bits say nothing for root, read-only mounts or ``/proc``. A URI
    (``s3://``, ``hdfs://``, ...) gives None: its store checks it when it writes.
    """
    if not is_local(path):
        return None
    target = Path(local_path(path)).absolute()
    if target.is_dir() and not directory:
        return "it is a directory"
    if target.exists() and not target.is_dir() and directory:
        return "it is a file, not a directory"
    probe_dir = target if directory and target.is_dir() else target.parent
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        return f"{probe_dir} is a file, not a directory"
    try:
        fd, probe = tempfile.mkstemp(prefix=".mxnorm-write-check-", dir=probe_dir)
    except OSError as exc:
        return f"no file can be created in {probe_dir} ({exc.strerror or exc})"
    os.close(fd)
    os.unlink(probe)
    return None


class FileSystem(Protocol):
    """The few file operations the store and the stream output need."""

    def join(self, directory: str, name: str) -> str: ...
    def exists(self, path: str) -> bool: ...
    def is_dir(self, path: str) -> bool: ...
    def list_names(self, directory: str) -> list[str]: ...
    def list_files(self, directory: str) -> list[tuple[str, float]]: ...
    def read_bytes(self, path: str) -> bytes | None: ...
    def write_bytes(self, path: str, data: bytes) -> None: ...
    def open_input(self, path: str) -> Any: ...
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
        return f"{parent or '.'}/.{name}.{uuid.uuid4().hex}{TMP_SUFFIX}"

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

    def open_input(self, path: str) -> Any:
        """A seekable binary reader (a context manager)."""
        return open(local_path(path), "rb")

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
    Paths are full URIs under the root the instance was made for. ``retry`` (default
    :meth:`RetryPolicy.from_env`) alone bounds each operation: the S3 clients' own retries
    are off, and ``retry.timeout`` is each request's timeout.
    """

    def __init__(self, root: str, retry: RetryPolicy | None = None) -> None:
        from pyarrow import fs as pafs

        parsed = urlparse(root)
        self._scheme = parsed.scheme
        self.retry = retry if retry is not None else RetryPolicy.from_env()
        self._client: Any = None
        if parsed.scheme == "s3":
            env = os.environ
            self._endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            self._region = region or "us-east-1"
            kwargs: dict[str, Any] = {
                "region": self._region,
                "connect_timeout": self.retry.timeout,
                "request_timeout": self.retry.timeout,
                "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=0),
            }
            if self._endpoint:
                ep = urlparse(self._endpoint)
                kwargs.update(endpoint_override=ep.netloc or ep.path, scheme=ep.scheme or "https")
            self._fs: Any = pafs.S3FileSystem(**kwargs)
        else:
            self._fs, _ = pafs.FileSystem.from_uri(root)

    def _call(self, operation: str, path: str, fn: Any) -> Any:
        return self.retry.call(operation, path, fn)

    def _path(self, uri: str) -> str:
        parsed = urlparse(uri)
        if parsed.scheme != self._scheme:
            raise InvalidParameterError(f"{uri} is not a {self._scheme}:// URI")
        if self._scheme in ("abfs", "abfss"):  # container@account.dfs... -> container/path
            return parsed.netloc.split("@", 1)[0] + parsed.path
        return (parsed.netloc + parsed.path).rstrip("/")

    def _info(self, uri: str) -> Any:
        return self._call("HEAD", uri, lambda: self._fs.get_file_info(self._path(uri)))

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
        infos = self._call("LIST", directory, lambda: self._fs.get_file_info(selector))
        return [
            (info.base_name, info.mtime.timestamp() if info.mtime is not None else 0.0)
            for info in infos
            if not files_only or info.type == pafs.FileType.File
        ]

    def read_bytes(self, path: str) -> bytes | None:
        def read() -> bytes:
            with self._fs.open_input_stream(self._path(path)) as fh:
                return bytes(fh.read())

        try:
            return bytes(self._call("GET", path, read))
        except FileNotFoundError:
            return None

    def open_input(self, path: str) -> Any:
        return self._call("GET", path, lambda: self._fs.open_input_file(self._path(path)))

    def write_bytes(self, path: str, data: bytes) -> None:
        # A PUT of the whole object: repeating it after a lost answer writes the same bytes.
        def write() -> None:
            with self._fs.open_output_stream(self._path(path)) as fh:
                fh.write(data)

        self._call("PUT", path, write)

    def rename(self, src: str, dst: str) -> bool:
        if self.exists(dst):
            return False
        self.replace(src, dst)
        return True

    def replace(self, src: str, dst: str) -> None:
        tries = [0]

        def move() -> None:
            tries[0] += 1  # a retried move whose first copy landed and deleted its source
            if tries[0] > 1 and not self.exists(src) and self.exists(dst):
                return
            self._fs.move(self._path(src), self._path(dst))

        self._call("MOVE", f"{src} -> {dst}", move)

    def qualified(self, path: str) -> str:
        return path

    def delete(self, path: str, recursive: bool = False) -> None:
        # Deleting what is gone already is fine: a retried DELETE whose answer was lost.
        if self.is_dir(path):
            self._call("DELETE", path, lambda: self._fs.delete_dir(self._path(path)))
        elif self.exists(path):
            with contextlib.suppress(FileNotFoundError):
                self._call("DELETE", path, lambda: self._fs.delete_file(self._path(path)))

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
        """One conditional PUT (``If-None-Match: *``): created, or False if the key exists.
        A failed try may have landed unanswered: if a retry finds the key, it is ours when it
        holds our bytes (identical bytes of another writer are the same version anyway)."""
        try:
            from botocore.exceptions import ClientError
        except ImportError:  # without boto3: check, then write (see create_exclusive)
            if self.exists(path):
                return False
            self.write_bytes(path, data)
            return True
        client = self._s3_client()
        bucket, _, key = self._path(path).partition("/")
        tries = [0]

        def put() -> bool:
            tries[0] += 1
            try:
                client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                    return False
                raise
            return True

        created = bool(self._call("PUT (if absent)", path, put))
        if not created and tries[0] > 1:
            return self.read_bytes(path) == data
        return created

    def _s3_client(self) -> Any:
        """One boto3 client per file system, with botocore's own retries off (see class)."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"total_max_attempts": 1, "mode": "standard"},
                connect_timeout=self.retry.timeout,
                read_timeout=self.retry.timeout,
            )
            self._client = boto3.client(
                "s3", endpoint_url=self._endpoint, region_name=self._region, config=config
            )
        return self._client


def filesystem(
    path: str, spark: SparkSession | None = None, *, retry: RetryPolicy | None = None
) -> FileSystem:
    """The file system that reaches ``path``.

    Local paths and ``file:`` URIs: Python's ``os``. ``s3://``, ``gs://``, ``abfs://``:
    ``pyarrow.fs`` (works on Spark Connect and with no Spark), each request retried by
    ``retry``. Other schemes (``hdfs://``, ``s3a://``, ...) go through the Hadoop
    ``FileSystem`` of a classic ``spark`` session (Hadoop's own retry settings apply);
    ``hdfs://`` without one tries ``pyarrow.fs`` (it needs libhdfs).
    """
    if is_local(path):
        return LocalFileSystem()
    scheme = urlparse(path).scheme
    if scheme in ARROW_SCHEMES:
        return ArrowFileSystem(path, retry)
    if spark is not None and is_classic(spark):
        return HadoopFileSystem(spark, path)
    if scheme == "hdfs":
        return ArrowFileSystem(path, retry)
    raise InvalidParameterError(
        f"{path}: the {scheme}:// scheme is reachable only through Hadoop, which needs a "
        f"classic SparkSession (not Spark Connect); use one of {', '.join(ARROW_SCHEMES)}:// "
        "or a local path"
    )


def is_classic(spark: SparkSession) -> bool:
    """A classic (py4j) session, as opposed to Spark Connect: Hadoop is reachable."""
    return not type(spark).__module__.startswith("pyspark.sql.connect")


class HadoopFileSystem(_StagedWrites):
    """Paths through the Hadoop ``FileSystem`` of a SparkSession (any scheme it supports).

    For ``file:`` paths the raw local file system is used: Hadoop's checksummed local file
    system would add ``.crc`` side files, and the state files carry their own checksum.
    """

    def __init__(self, spark: SparkSession, root: str) -> None:
        jvm = spark._jvm
        assert jvm is not None, "the SparkSession has no JVM gateway (Spark Connect?)"
        self._jvm = jvm
        self._gateway = spark.sparkContext._gateway
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

    def open_input(self, path: str) -> Any:
        return _HadoopInput(self, path)

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
        # FileContext's rename with OVERWRITE replaces the target in one step (atomic on
        # HDFS); FileSystem.rename refuses an existing target.
        jvm = self._jvm
        gateway = self._gateway
        assert gateway is not None
        rename_options = gateway.new_array(jvm.org.apache.hadoop.fs.Options.Rename, 1)
        rename_options[0] = jvm.org.apache.hadoop.fs.Options.Rename.OVERWRITE
        src_path, dst_path = self._path(src), self._path(dst)
        context = jvm.org.apache.hadoop.fs.FileContext.getFileContext(dst_path.toUri(), self._conf)
        try:
            context.rename(src_path, dst_path, rename_options)
        except Exception:  # a file system without an atomic overwrite: delete, then rename
            if self.exists(dst):
                self.delete(dst)
            if not self._fs.rename(src_path, dst_path):
                raise OSError(f"could not rename {src} to {dst}") from None

    def delete(self, path: str, recursive: bool = False) -> None:
        self._fs.delete(self._path(path), recursive)

    def mkdirs(self, path: str) -> None:
        self._fs.mkdirs(self._path(path))


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
