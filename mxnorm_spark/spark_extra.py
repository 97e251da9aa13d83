"""Imported first by every module that needs pyspark, so that without it the import fails
with an error naming the ``[spark]`` extra instead of a bare ``No module named 'pyspark'``.

Installed without extras (numpy only), the package serves (:mod:`mxnorm_spark.serving`);
the Spark layers need its ``[spark]`` extra. The package is installed from a clone or from
its wheel (``scripts/package.sh``), so the message names both ways.
"""

from __future__ import annotations

try:
    import pyspark  # noqa: F401
except ImportError as exc:
    raise ImportError(
        "this part of mxnorm_spark runs on Spark and needs pyspark, which is not installed: "
        "install mxnorm-spark with its [spark] extra (in a clone: pip install '.[spark]'; "
        "from the wheel: pip install 'mxnorm_spark-<version>-py3-none-any.whl[spark]'); "
        "serving with mxnorm_spark.serving needs no Spark",
        name="pyspark",
    ) from exc
