"""Imported first by every module that needs pyspark, so that without it the import fails
with an error naming the ``[spark]`` extra instead of a bare ``No module named 'pyspark'``.

``pip install mxnorm-spark`` brings only what serving needs (:mod:`mxnorm_spark.serving`,
numpy); the Spark layers need ``pip install 'mxnorm-spark[spark]'``.
"""

from __future__ import annotations

try:
    import pyspark  # noqa: F401
except ImportError as exc:
    raise ImportError(
        "this part of mxnorm_spark runs on Spark and needs pyspark, which is not installed: "
        "pip install 'mxnorm-spark[spark]' (serving with mxnorm_spark.serving needs no Spark)",
        name="pyspark",
    ) from exc
