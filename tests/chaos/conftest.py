"""Fixtures of the chaos tests: a fault-injecting proxy in front of the moto server."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from faultproxy import FaultProxy, fault_proxy


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
