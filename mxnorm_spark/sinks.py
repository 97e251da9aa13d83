"""Where a stream's normalized micro-batches go: a directory, one sub-directory per batch id,
replaced whole on a replay, or a function of the user's.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from mxnorm_spark.choices import FORMATS, check_choice
from mxnorm_spark.errors import InvalidParameterError
from mxnorm_spark.progress import fault
from mxnorm_spark.store import FileSystem, filesystem

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

OUTPUT_ATTEMPTS = "_attempts"

__all__ = ["OUTPUT_ATTEMPTS", "BatchDirectories", "StreamOutput", "batch_output_dir"]


def batch_output_dir(batch_id: int) -> str:
    """Name of a batch's output directory; Spark reads ``batch_id`` back as a column."""
    return f"batch_id={batch_id:012d}"


@dataclass(frozen=True)
class StreamOutput:
    """Where the normalized micro-batches go, and under which column names.

    Exactly one of ``path`` (a directory: one sub-directory per batch id, written as
    ``format`` with ``write_options``) or ``sink`` (``sink(df, batch_id)`` writes each
    normalized micro-batch itself and must replace that batch's earlier output: replays).
    ``cols`` names the outputs of scalar features (default: in place), ``col`` that of a
    vector or array input.
    """

    path: str | None = None
    sink: Callable[[DataFrame, int], None] | None = None
    format: str = "parquet"
    write_options: Mapping[str, str] = field(default_factory=dict)
    cols: Sequence[str] | None = None
    col: str | None = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.sink is None):
            raise InvalidParameterError(
                "give exactly one of output (a directory, one sub-directory per batch id) "
                "or sink (a function writing each normalized micro-batch)"
            )
        check_choice("output_format", self.format, FORMATS)
        object.__setattr__(self, "write_options", MappingProxyType(dict(self.write_options)))
        if self.cols is not None:
            object.__setattr__(self, "cols", tuple(self.cols))


class BatchDirectories:
    """Publishes each batch as ``<root>/batch_id=<12 digits>``: written aside, then renamed
    into place, replacing an earlier attempt whole (a crash in between leaves the batch
    without output, and the replay writes it again)."""

    def __init__(self, root: str, spark: SparkSession | None = None) -> None:
        self.fs: FileSystem = filesystem(root, spark)
        self.root = root

    def clear_attempts(self) -> None:
        """Remove what killed attempts left behind (one writer per output directory)."""
        self.fs.delete(self.fs.join(self.root, OUTPUT_ATTEMPTS), True)

    def publish(self, out: DataFrame, output: StreamOutput, batch_id: int) -> str:
        fs, root = self.fs, self.root
        final = fs.join(root, batch_output_dir(batch_id))
        attempt = fs.join(
            fs.join(root, OUTPUT_ATTEMPTS), f"{batch_output_dir(batch_id)}-{uuid.uuid4().hex}"
        )
        out.write.format(output.format).options(**output.write_options).save(attempt)
        fault("during_write", batch_id, out.sparkSession)
        if fs.exists(final):
            fs.delete(final, recursive=True)
        if not fs.rename(attempt, final):
            raise OSError(f"could not rename {attempt} to {final}")
        self.clear_attempts()
        return final
