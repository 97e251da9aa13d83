"""Shared fixtures. One local[2] SparkSession for the whole test session, made on first use."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

# tests/connect runs in a process of its own (`make test` starts it with MXNORM_CONNECT=1):
# a Spark Connect session switches PySpark into Connect mode for the whole process.
collect_ignore = [] if os.environ.get("MXNORM_CONNECT") == "1" else ["connect"]
# conftest.py files hold fixtures, not doctests: with --doctest-modules two of them
# would both be collected as the module "conftest".
collect_ignore_glob = ["conftest.py", "*/conftest.py"]

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
# Every JVM of the tests (the shared session's, and those of the command lines, spark-submit
# runs and Connect servers they start, which inherit this) goes through spark-submit, which
# reads SPARK_SUBMIT_OPTS. The first JIT tier and the serial collector: on 2 cores the tests'
# small jobs took a third less CPU so (tests/batch: 118 s against 172 s), since the second
# tier's compiler threads cost more than they save. Java's arithmetic is IEEE whatever
# compiles it: no result changes.
os.environ.setdefault("SPARK_SUBMIT_OPTS", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("mxnorm-spark-tests")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.default.parallelism", "2")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.python.worker.reuse", "true")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """An S3-compatible server (moto) on 127.0.0.1; the AWS variables point at it."""
    from s3server import ENV, moto_server

    saved = {k: os.environ.get(k) for k in [*ENV, "AWS_ENDPOINT_URL"]}
    with moto_server() as endpoint:
        os.environ.update(ENV, AWS_ENDPOINT_URL=endpoint)
        try:
            yield endpoint
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh bucket on the test S3 server: ``s3://<name>``."""
    from s3server import new_bucket

    return f"s3://{new_bucket(s3_endpoint)}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A test that takes the shared session needs the JVM: `make test-fast` leaves it out.
    for item in items:
        if "spark" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.spark)
