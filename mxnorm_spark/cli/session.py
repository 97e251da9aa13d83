"""Build the SparkSession for the CLI, the jobs and the demo (never at import time).

Settings are layered, later layers winning:

1. :data:`LOCAL_DEFAULTS` when the master is local (loopback networking, Arrow on, few
   shuffle partitions): the same properties as ``conf/spark-local.conf``;
2. a ``spark-defaults.conf``-style properties file (``properties_file``);
3. explicit ``conf`` (``[spark.conf]`` of a job config, ``--spark-conf KEY=VALUE``).

Under ``spark-submit`` the JVM already exists and its settings (``--master``, ``--conf``,
``--properties-file``) come first; only the layers above that the user asked for are
added, and the local defaults only when spark-submit's master is local.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from mxnorm_spark.cli.config import SparkSettings, read_properties
from mxnorm_spark.core.errors import ConfigError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# Keep in step with conf/spark-local.conf (a test checks that they agree).
LOCAL_DEFAULTS: Mapping[str, str] = MappingProxyType(
    {
        # Loopback only: a laptop or CI box needs no routable hostname for local mode.
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # 200 shuffle partitions is sized for clusters; locally it is mostly overhead.
        "spark.sql.shuffle.partitions": "8",
        "spark.python.worker.reuse": "true",
        "spark.ui.showConsoleProgress": "true",
    }
)


def is_local_master(master: str | None) -> bool:
    return master is None or master == "local" or master.startswith("local[")


def _submitted_conf() -> dict[str, str] | None:
    """spark-submit's settings (``--master``, ``--conf``, ...), or None outside spark-submit."""
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        return None
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()
    return {str(k): str(v) for k, v in SparkConf().getAll()}


def session_conf(
    master: str | None,
    conf: Mapping[str, str] | None = None,
    properties_file: str | os.PathLike[str] | None = None,
) -> dict[str, str]:
    """The Spark properties :func:`build_session` sets, layered as the module says.

    >>> props = session_conf("local[2]", {"spark.sql.shuffle.partitions": "2"})
    >>> props["spark.sql.shuffle.partitions"], props["spark.driver.host"]
    ('2', '127.0.0.1')
    >>> "spark.driver.host" in session_conf("spark://10.0.0.1:7077")
    False
    """
    props: dict[str, str] = dict(LOCAL_DEFAULTS) if is_local_master(master) else {}
    if properties_file is not None:
        props.update(read_properties(properties_file))
    props.update(conf or {})
    return props


def _explicit(
    conf: Mapping[str, str] | None, properties_file: str | os.PathLike[str] | None
) -> set[str]:
    keys = set(read_properties(properties_file)) if properties_file is not None else set()
    return keys | set(conf or {})


def build_session(
    app_name: str,
    master: str | None = None,
    conf: Mapping[str, str] | None = None,
    *,
    properties_file: str | os.PathLike[str] | None = None,
    log_level: str = "WARN",
    remote: str | None = None,
) -> SparkSession:
    """Get or create the SparkSession for a job.

    ``remote`` (or ``$SPARK_REMOTE``) makes a Spark Connect session instead: see
    :func:`_connect_session`.

    ``master=None`` keeps spark-submit's master, or runs ``local[*]`` outside spark-submit.
    An active session is reused with only the explicit ``conf`` / ``properties_file``
    settings applied (runtime SQL settings take effect; others need a new session) and
    its log level left alone.
    For a local run, ``SPARK_LOCAL_IP`` and ``PYSPARK_PYTHON`` default to 127.0.0.1 and
    this interpreter, so the Python workers import the same environment.
    """
    from pyspark.sql import SparkSession

    remote = remote or os.environ.get("SPARK_REMOTE")
    if remote:
        if master is not None:
            raise ConfigError(
                f"give either a master ({master}) or a Spark Connect remote ({remote}), not both"
            )
        return _connect_session(app_name, remote, conf, properties_file)
    submitted = _submitted_conf()
    effective = master or (submitted or {}).get("spark.master") or "local[*]"
    if is_local_master(effective):
        # On a cluster the driver's interpreter path may not exist on the executors, so
        # only local runs pin the workers to it.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

    reusing = SparkSession.getActiveSession() is not None
    props = _layered_conf(effective, conf, properties_file, reusing, submitted)
    builder = SparkSession.builder.appName(app_name)
    if master is not None:
        builder = builder.master(master)
    elif submitted is None:
        builder = builder.master("local[*]")
    if not reusing:
        # spark.log.level acts while the context starts, before setLogLevel below can.
        props.setdefault("spark.log.level", log_level)
    for key, value in props.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    if not reusing:
        spark.sparkContext.setLogLevel(log_level)
    return spark


def _layered_conf(
    master: str,
    conf: Mapping[str, str] | None,
    properties_file: str | os.PathLike[str] | None,
    reusing: bool,
    submitted: dict[str, str] | None,
) -> dict[str, str]:
    props = session_conf(master, conf, properties_file)
    if reusing:
        # Reusing a session (a notebook, a test suite, an embedding job): only what the
        # caller asked for explicitly is applied, never our defaults or log level.
        return {k: v for k, v in props.items() if k in _explicit(conf, properties_file)}
    if submitted is not None:
        # What the user told spark-submit beats our defaults; only explicit settings
        # (properties file, conf) override it.
        explicit = _explicit(conf, properties_file)
        return {k: v for k, v in props.items() if k in explicit or k not in submitted}
    return props


def _connect_session(
    app_name: str,
    remote: str,
    conf: Mapping[str, str] | None,
    properties_file: str | os.PathLike[str] | None,
) -> SparkSession:
    """A Spark Connect session: ``sc://HOST:PORT``, or ``local[N]`` for an in-process server.

    Only explicit settings are sent: the server owns its static configuration, and a
    remote server's networking is not ours to set. An in-process server (``local[N]``)
    gets the local defaults, as a classic local session would.
    """
    from pyspark.sql import SparkSession

    if remote.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        props = session_conf(remote, conf, properties_file)
    else:
        props = {
            k: v
            for k, v in session_conf(None, conf, properties_file).items()
            if k in _explicit(conf, properties_file)
        }
    builder = SparkSession.builder.remote(remote).appName(app_name)
    for key, value in props.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    bound_connect_retries(session)
    return session


CONNECT_RETRIES_ENV = "MXNORM_CONNECT_RETRIES"
# 50 ms, x4 each time, at most 10 s: 10 retries wait about 64 s in all.
CONNECT_RETRIES = 10


def bound_connect_retries(session: SparkSession) -> None:
    """Give up on an unreachable Spark Connect server after about a minute, not ten.

    PySpark's default policy retries an unavailable server for at least ten minutes, so a
    job whose server died looks hung; a job's session retries ``MXNORM_CONNECT_RETRIES``
    times (default 10: about 64 s, 50 ms growing 4x to at most 10 s), then fails, and a
    stream reports :class:`~mxnorm_spark.core.errors.ServerLostError`.
    """
    from pyspark.sql.connect.client.retries import DefaultPolicy

    raw = os.environ.get(CONNECT_RETRIES_ENV, "").strip()
    try:
        retries = int(raw) if raw else CONNECT_RETRIES
    except ValueError:
        raise ConfigError(
            f"{CONNECT_RETRIES_ENV}={raw!r}: expected a whole number of retries, e.g. 10"
        ) from None
    client = getattr(session, "client", None)
    if client is not None and hasattr(client, "set_retry_policies"):
        client.set_retry_policies([DefaultPolicy(max_retries=retries, max_backoff=10_000)])


def session_from_settings(settings: SparkSettings, default_app_name: str) -> SparkSession:
    """:func:`build_session` from the ``[spark]`` table of a job config."""
    return build_session(
        settings.app_name or default_app_name,
        settings.master,
        settings.conf,
        properties_file=settings.properties_file,
        log_level=settings.log_level,
        remote=settings.remote,
    )


# Spark logs a failed task (with the Python traceback) from these, before the failure
# reaches the driver; the command line reports it itself, as one line, afterwards.
_TASK_FAILURE_LOGGERS = (
    "org.apache.spark.executor.Executor",
    "org.apache.spark.scheduler.TaskSetManager",
    "org.apache.spark.util.Utils",
    "org.apache.spark.sql.execution.datasources.FileFormatWriter",
    "org.apache.spark.sql.execution.streaming.MicroBatchExecution",
    "org.apache.spark.sql.execution.streaming.runtime.MicroBatchExecution",
    # Stopping an idle stream (Ctrl-C) warns that it found no job to cancel.
    "org.apache.spark.scheduler.DAGScheduler",
)


def quiet_task_failures(spark: SparkSession) -> None:
    """Keep Spark's own task-failure ERROR/WARN lines off the console of a command.

    Classic only (log4j through py4j); on Spark Connect those lines are in the server's
    log, not the client's console. An unexpected failure still ends the command with its
    full traceback.
    """
    from mxnorm_spark.store import is_classic

    if not is_classic(spark):
        return
    jvm = spark._jvm
    assert jvm is not None
    level = jvm.org.apache.logging.log4j.Level.FATAL
    for name in _TASK_FAILURE_LOGGERS:
        jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(name, level)
