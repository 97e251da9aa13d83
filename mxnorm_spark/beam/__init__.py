"""MXNorm on Apache Beam: the same numpy core, the same state file, no Spark.

Needs the ``[beam]`` extra (``pip install 'mxnorm-spark[beam]'``). See
``docs/guides/beam.md``.
"""

from mxnorm_spark.beam.coders import MomentsCoder, StateCoder
from mxnorm_spark.beam.combine import BatchMomentsCombineFn, MomentsCombineFn
from mxnorm_spark.beam.fit import BatchStates, FitHistory, FitMXNorm
from mxnorm_spark.beam.io import WriteKeyedExport, WriteState
from mxnorm_spark.beam.normalize import Normalize
from mxnorm_spark.beam.stream import LATE_TAG, STATES_TAG, FitWindows, LateWindow

__all__ = [
    "LATE_TAG",
    "STATES_TAG",
    "BatchMomentsCombineFn",
    "BatchStates",
    "FitHistory",
    "FitMXNorm",
    "FitWindows",
    "LateWindow",
    "MomentsCoder",
    "MomentsCombineFn",
    "Normalize",
    "StateCoder",
    "WriteKeyedExport",
    "WriteState",
]
