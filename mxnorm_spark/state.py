"""The former path of :mod:`mxnorm_spark.core.state`, kept so that code written against it
goes on importing; new code imports :mod:`mxnorm_spark.core.state`."""

from mxnorm_spark.core.state import (
    SCHEMA_VERSION,
    STATE_TYPE,
    MXNormState,
    StateOptions,
    check_alpha,
    check_eps,
    ema_step,
    scale_of,
    update_lanes,
)

__all__ = [
    "SCHEMA_VERSION",
    "STATE_TYPE",
    "MXNormState",
    "StateOptions",
    "check_alpha",
    "check_eps",
    "ema_step",
    "scale_of",
    "update_lanes",
]
