"""The former path of :mod:`mxnorm_spark.cli.session`, kept so that code written against it
goes on importing; new code imports :mod:`mxnorm_spark.cli.session`."""

from mxnorm_spark.cli.session import (
    LOCAL_DEFAULTS,
    build_session,
    is_local_master,
    quiet_task_failures,
    session_conf,
    session_from_settings,
)

__all__ = [
    "LOCAL_DEFAULTS",
    "build_session",
    "is_local_master",
    "quiet_task_failures",
    "session_conf",
    "session_from_settings",
]
