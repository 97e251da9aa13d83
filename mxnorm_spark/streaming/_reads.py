"""How a stream reads each micro-batch: kept in memory or read twice, and the engine and
pivot of its moments job.

A micro-batch is read by two jobs: its moments, then its normalized write. Both should
cost what a plain read costs, and their generated code should not change from batch to
batch (Spark compiles new code for every new plan text: tens to hundreds of ms).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

from mxnorm_spark.core.choices import LOCAL_VALUES, WIDE_FEATURES
from mxnorm_spark.core.state import MXNormState
from mxnorm_spark.store import is_classic

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

__all__ = [
    "REUSED_CODE_ROWS",
    "SMALL_BATCH_VALUES",
    "WIDE_FEATURES",
    "moments_engine",
    "moments_pivot",
    "rereads_same_rows",
]

# The values auto's probe folds on the driver.
SMALL_BATCH_VALUES = LOCAL_VALUES

# Up to this many rows a micro-batch is normalized with constants read from an array
# (apply.normalize(reused_code=True)): no new code to compile per batch (0.1-0.35 s), but
# about 0.4 s of CPU per million rows of 16 features to read them (measured, local[2]).
REUSED_CODE_ROWS = 250_000

# Plan nodes through which a second read gives the same rows as the first, cheaply: files
# (read as a table, or as a file stream), and row-wise projections and filters over them.
_REREAD_NODES = frozenset({"Relation", "FileStream", "Project", "Filter", "SubqueryAlias"})
_NODE = re.compile(r"^[\s:+\-|~]*(StreamingRelation FileSource\[|[A-Za-z]+)")


def moments_pivot(prev: MXNormState) -> np.ndarray:
    """The pivot of a batch's moments: the state mean rounded to a multiple of a power of
    two near half a standard deviation (the mean itself where there is no spread).

    Any pivot near the data is exact (docs/design.md, section 2); this one is within a quarter
    of a standard deviation of the state mean, and it stays the same from batch to batch
    until the mean moves across a step, so the moments job's generated code, which holds
    the pivot as a literal, is compiled once instead of on every batch. It depends only on
    the committed state: a replay uses the same pivot and gives the same bits.

    >>> from mxnorm_spark.core.moments import Moments
    >>> s = MXNormState.create(["x"]).update(Moments.from_array(np.array([[1.1], [3.2]])))
    >>> moments_pivot(s).tolist()  # mean 2.15, sd 1.05: steps of 0.5
    [2.0]
    """
    mean = prev.mean
    with np.errstate(divide="ignore", invalid="ignore"):
        step = np.exp2(np.floor(np.log2(0.5 * np.sqrt(prev.var))))
        rounded = np.round(mean / step) * step
    return np.asarray(np.where(np.isfinite(rounded) & (step > 0), rounded, mean))


def moments_engine(engine: str, prev: MXNormState, scalar_cols: int | None) -> str:
    """The engine of a batch's moments: for ``auto`` with at most :data:`WIDE_FEATURES`
    scalar columns, once every feature has a state, chosen by the batches so far.

    Small batches (at most :data:`SMALL_BATCH_VALUES` values on average) keep ``auto``:
    its probe reads the whole batch in one job and folds it on the driver. Larger ones go
    straight to ``sql``: no probe job, one aggregation (a map stage and its result under
    adaptive execution). ``arrow`` (one job, no shuffle) measured slower from 1M rows.
    Only the committed state decides, so a replay takes the same engine: the same bits.
    """
    if engine != "auto" or scalar_cols is None or scalar_cols > WIDE_FEATURES:
        return engine
    if not bool(prev.initialized.all()):
        return "auto"
    per_batch = float(prev.totals.count.max()) / max(prev.batches_seen, 1)
    return "auto" if per_batch * scalar_cols <= SMALL_BATCH_VALUES else "sql"


def rereads_same_rows(df: DataFrame) -> bool:
    """Whether reading ``df`` again gives the same rows at the cost of a plain read: its
    plan is deterministic and only projects and filters files (a table or a file stream).

    Ask it of the streaming DataFrame: a micro-batch's own DataFrame hides its plan (Spark
    hands ``foreachBatch`` an RDD of it). Classic Spark only (the plan is asked through
    py4j); on Spark Connect, False.
    """
    if not is_classic(df.sparkSession):
        return False
    try:
        plan = df._jdf.queryExecution().analyzed()  # classic-only: the JVM plan
        if not plan.deterministic():
            return False
        lines = str(plan.treeString()).splitlines()
    except Exception:  # an unexpected plan object: keep the batch in memory
        return False
    nodes = {_node_name(line) for line in lines if line.strip()}
    return bool(nodes) and nodes <= _REREAD_NODES


def _node_name(line: str) -> str:
    found = _NODE.match(line)
    if found is None:
        return "?"
    name = found.group(1)
    return "FileStream" if name == "StreamingRelation FileSource[" else name
