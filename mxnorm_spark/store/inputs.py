"""What a file stream reads of each new file before its micro-batch is folded.

A file source checks each new file: its first line (csv header, first json record) or its
parquet footer. Only those bytes are read, through the file system that reaches the file,
so local and ``pyarrow.fs`` paths need no JVM.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from mxnorm_spark.store.filesystems import filesystem

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["file_exists", "open_text", "read_first_line", "read_head", "read_parquet_schema"]

_LINE_CHUNK = 64 * 1024


def file_exists(uri: str, spark: SparkSession | None = None) -> bool:
    """Whether the file at ``uri`` (a path, or a URI as Spark's ``input_file_name()`` gives it)
    exists."""
    return filesystem(uri, spark).exists(uri)


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


def read_head(uri: str, size: int, spark: SparkSession | None = None) -> bytes:
    """The first ``size`` bytes of the file at ``uri`` (fewer if it is shorter)."""
    with _open_input(uri, spark) as fh:
        return bytes(fh.read(size))


def open_text(uri: str, encoding: str = "UTF-8", spark: SparkSession | None = None) -> Any:
    """The file at ``uri`` as text, for reading record by record (a context manager);
    undecodable bytes are replaced, newlines are kept for the csv module."""
    import io

    return io.TextIOWrapper(
        _open_input(uri, spark), encoding=encoding, errors="replace", newline=""
    )


def read_parquet_schema(uri: str, spark: SparkSession | None = None) -> Any:
    """The Arrow schema (``pyarrow.Schema``) of the parquet file at ``uri``, from its footer."""
    import pyarrow.parquet as pq

    with _open_input(uri, spark) as fh:
        return pq.read_schema(fh)


def _open_input(uri: str, spark: SparkSession | None) -> Any:
    """A seekable binary reader of the file at ``uri`` (a context manager)."""
    return filesystem(uri, spark).open_input(uri)
