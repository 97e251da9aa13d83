"""The drift report of a state's per-batch history: events and a self-contained HTML or
PNG chart (:mod:`.drift`). No Spark."""

from mxnorm_spark.report.drift import (
    DEFAULT_K,
    REPORT_TYPES,
    DriftEvent,
    MissingExtraError,
    drift_events,
    load_history,
    write_report,
)

__all__ = [
    "DEFAULT_K",
    "REPORT_TYPES",
    "DriftEvent",
    "MissingExtraError",
    "drift_events",
    "load_history",
    "write_report",
]
