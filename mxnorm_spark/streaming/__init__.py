"""Structured Streaming: the ``foreachBatch`` updater with exactly-once state
(:mod:`.updater`), the file source and its checks (:mod:`.sources`), the outputs
(:mod:`.sinks`), the per-micro-batch report (:mod:`.progress`) and the per-key stream
(:mod:`.keyed`)."""

from mxnorm_spark.streaming.keyed import (
    KeyOptions,
    export_latest,
)
from mxnorm_spark.streaming.progress import (
    BatchReport,
)
from mxnorm_spark.streaming.sinks import (
    StreamOutput,
)
from mxnorm_spark.streaming.sources import (
    FileSource,
)
from mxnorm_spark.streaming.updater import (
    MXNormStream,
)

__all__ = [
    "BatchReport",
    "FileSource",
    "KeyOptions",
    "MXNormStream",
    "StreamOutput",
    "export_latest",
]
