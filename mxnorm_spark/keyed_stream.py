"""The former path of :mod:`mxnorm_spark.streaming.keyed`, kept so that code written against it
goes on importing; new code imports :mod:`mxnorm_spark.streaming.keyed`."""

from mxnorm_spark.streaming.keyed import (
    KEYED_STREAM_TYPE,
    KEYS_DIR,
    KeyedStreamState,
    KeyOptions,
    export_latest,
)

__all__ = [
    "KEYED_STREAM_TYPE",
    "KEYS_DIR",
    "KeyOptions",
    "KeyedStreamState",
    "export_latest",
]
