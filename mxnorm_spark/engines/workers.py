"""The Python that runs our kernels in Spark's workers.

A classic SparkSession started from plain Python (``SparkSession.builder.master("local[2]")``)
without ``PYSPARK_PYTHON`` runs its Python workers on ``python3`` from ``PATH``: usually
the system interpreter, which has neither ``mxnorm_spark`` nor ``pyarrow``, so the first
``mapInArrow`` would fail with ``ModuleNotFoundError`` inside a task. On a local master
the workers run on this machine, so this interpreter (``sys.executable``), which imported
this module, is the right one; :func:`use_driver_python` points the session's workers at
it before a job ships a kernel. An explicit choice (``PYSPARK_PYTHON``,
``spark.pyspark.python``) and every non-local master are left alone: there the cluster's
configuration decides. Spark Connect sessions are left alone too: the server's Python runs
the workers.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from mxnorm_spark.store.filesystems import is_classic

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

__all__ = ["map_in_arrow", "use_driver_python"]


def use_driver_python(spark: SparkSession) -> None:
    """On a classic local session whose worker Python nobody chose, use this interpreter.

    Classic only: ``SparkContext.pythonExec`` is what each Python function created from
    now on is shipped with (it is read when the function is wrapped, not when the context
    starts), so setting it takes effect for the next job.
    """
    if not sys.executable or not is_classic(spark):
        return
    sc = spark.sparkContext
    if sc.pythonExec == sys.executable:
        return
    if os.environ.get("PYSPARK_PYTHON") or sc.getConf().get("spark.pyspark.python"):
        return  # chosen by the user (or by spark-submit from its settings)
    if not str(sc.master).startswith("local"):
        return
    sc.pythonExec = sys.executable


def map_in_arrow(df: DataFrame, kernel: Any, schema: StructType | str) -> DataFrame:
    """``df.mapInArrow(kernel, schema)``, with the workers' Python checked first."""
    use_driver_python(df.sparkSession)
    return df.mapInArrow(kernel, schema)
