"""Feature-store preprocessing on Feast: MXNorm states as point-in-time features, and an
on-demand feature view that normalizes as :mod:`mxnorm_spark.serving` does.

Needs the ``[feast]`` extra (and ``[spark]`` to publish a Spark model). Nothing here
imports Feast or pyspark at import time.
"""

from mxnorm_spark.feast.clock import BatchClock
from mxnorm_spark.feast.definitions import feature_store_yaml, render_definitions
from mxnorm_spark.feast.publish import publish_model, publish_stream, state_table
from mxnorm_spark.feast.push import FeastStatePush
from mxnorm_spark.feast.repo import apply_repo, load_definitions, open_store, read_spec, write_repo
from mxnorm_spark.feast.spec import ViewSpec
from mxnorm_spark.feast.udf import normalize_inputs, udf_source

__all__ = [
    "BatchClock",
    "FeastStatePush",
    "ViewSpec",
    "apply_repo",
    "feature_store_yaml",
    "load_definitions",
    "normalize_inputs",
    "open_store",
    "publish_model",
    "publish_stream",
    "read_spec",
    "render_definitions",
    "state_table",
    "udf_source",
    "write_repo",
]
