"""Fixtures of the chaos tests: a fault-injecting proxy in front of the moto server.

The heavy chaos tests (a standalone cluster, a Spark Connect server, racing streams: minutes
each) are collected only with ``MXNORM_CHAOS=1``: ``make test-chaos``, the second stage of
``make test``, runs them in a pytest process of their own after the first stage, where the
object-store faults and the fuzzing run with the ordinary suite. The Makefile's
``CHAOS_HEAVY`` lists the same files as ``HEAVY`` here.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from faultproxy import FaultProxy, fault_proxy

HEAVY = ["test_executor_kills.py", "test_connect_kill.py", "test_racing.py"]
collect_ignore = [] if os.environ.get("MXNORM_CHAOS") == "1" else HEAVY


@pytest.fixture(scope="session")
def proxy_server(s3_endpoint: str) -> Iterator[FaultProxy]:
    with fault_proxy(s3_endpoint) as proxy:
        yield proxy


@pytest.fixture
def proxy(proxy_server: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """The proxy with no rules; the S3 clients made in the test go through it."""
    proxy_server.clear()
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy_server.endpoint)
    yield proxy_server
    proxy_server.clear()
