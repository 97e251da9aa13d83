"""Object-store faults under every operation a commit uses: retried once and for all, or a
named error with nothing committed; a replay afterwards is exactly once.

The S3 clients (pyarrow.fs, boto3) reach the moto server through a fault-injecting proxy
(faultproxy.py). Each case commits the same states as a fault-free local store and then
compares the committed files byte for byte; each asserts that its fault really fired on
the operation it names, so a commit that stopped using an operation fails the test.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from faultproxy import KINDS, FaultProxy

from mxnorm_spark import Moments, MXNormState
from mxnorm_spark.core.errors import (
    InvalidParameterError,
    StateConflictError,
    StoreUnavailableError,
)
from mxnorm_spark.store import RetryPolicy, StateStore, filesystem, read_state, write_state
from mxnorm_spark.store.retries import is_transient

pytestmark = pytest.mark.chaos

# Short pauses and a 1 s request timeout keep each case well under a few seconds; the
# bound is the same formula as the default's.
FAST = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.04, timeout=1.0, deadline=30.0)
VERSION = r"/v-\d{12}\.json$"

# (operation, HTTP method, path pattern, header): every request a commit makes.
OPERATIONS = {
    "check version (HEAD)": ("HEAD", VERSION, None),
    "create version (conditional PUT)": ("PUT", VERSION, "if-none-match"),
    "list versions (LIST)": ("GET", r"list-type=2", None),
    "retention (DELETE)": ("DELETE", VERSION, None),
    "history record (conditional PUT)": ("PUT", r"/h-\d{12}\.parquet$", "if-none-match"),
    "owner claim (conditional PUT)": ("PUT", r"/_owner\.json$", "if-none-match"),
    "read owner (HEAD)": ("HEAD", r"/_owner\.json$", None),
}


def states(n: int) -> list[MXNormState]:
    rng = np.random.default_rng(3)
    s = MXNormState.create(["a", "b"], alpha=0.3)
    out = []
    for b in range(n):
        x = np.column_stack([rng.normal(5, 2, 9), 1e9 + rng.normal(0, 1, 9)])
        s = s.update(Moments.from_array(x), batch_id=b)
        out.append(s)
    return out


STATES = states(3)


def commit_all(store: StateStore, upto: int = 3) -> None:
    """What a stream does per batch: claim, record the history, commit the version."""
    store.claim("query-1")
    for b, s in enumerate(STATES[:upto]):
        store.record_batch(b, rows=9, moments=Moments.empty(2), state=s)
        store.commit(b, s)


def reference_bytes(tmp_path: Path) -> dict[str, bytes]:
    ref = StateStore(tmp_path / "ref", retention=2)
    commit_all(ref)
    return {p.name: p.read_bytes() for p in (tmp_path / "ref").glob("v-*.json")}


def s3_store(bucket: str, policy: RetryPolicy = FAST) -> StateStore:
    return StateStore(f"{bucket}/state-{uuid.uuid4().hex[:8]}", retention=2, retry=policy)


def committed(store: StateStore) -> dict[str, bytes]:
    fs = store.fs
    return {
        name: fs.read_bytes(fs.join(store.path, name)) or b""
        for name in sorted(fs.list_names(store.path))
        if name.startswith("v-")
    }


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_a_transient_fault_is_retried_and_commits_exactly_once(
    proxy: FaultProxy, s3_bucket: str, tmp_path: Path, operation: str, kind: str
) -> None:
    method, path, header = OPERATIONS[operation]
    store = s3_store(s3_bucket)
    times = 1 if kind == "slow" else 2  # a timeout costs a second: one is enough
    rule = proxy.inject(kind, method, path, times=times, header=header, delay=3.0)
    commit_all(store)
    assert rule.fired == times, f"{operation} was not used by a commit: {proxy.log}"
    assert committed(store) == reference_bytes(tmp_path)
    # The history holds each batch once, even where its PUT landed with its answer lost.
    assert store.history().column("batch_id").to_pylist() == [0, 0, 1, 1, 2, 2]
    assert store.owner() == "query-1"


@pytest.mark.parametrize("kind", KINDS)
def test_a_lasting_fault_fails_named_then_a_replay_is_exactly_once(
    proxy: FaultProxy, s3_bucket: str, tmp_path: Path, kind: str
) -> None:
    store = s3_store(s3_bucket)
    commit_all(store, upto=2)
    before = committed(store)
    rule = proxy.inject(kind, "PUT", VERSION, times=10**6, header="if-none-match", delay=3.0)
    with pytest.raises(StoreUnavailableError) as info:
        store.commit(2, STATES[2])
    message = str(info.value)
    assert "PUT (if absent)" in message and "v-000000000002.json" in message
    assert f"failed {FAST.attempts} time(s)" in message and "MXNORM_STORE_RETRIES" in message
    # The policy alone bounds the tries: no client retried behind it.
    assert rule.fired == FAST.attempts
    after = committed(store)
    if kind == "lost":
        # Each PUT reached the store and lost its answer: the version is there, whole and
        # ours; it is what the replay commits, so the replay is a no-op.
        assert after == {**before, "v-000000000002.json": STATES[2].to_json().encode()}
    else:
        assert after == before  # nothing committed
    proxy.clear()
    store.commit(2, STATES[2])  # the replay, once the store answers again
    assert committed(store) == reference_bytes(tmp_path)


def test_each_lasting_read_fault_is_named_not_taken_for_a_missing_file(
    proxy: FaultProxy, s3_bucket: str
) -> None:
    store = s3_store(s3_bucket)
    commit_all(store, upto=2)
    # A 503 on every HEAD must not read as "no version there" (which would refold a batch).
    proxy.inject("503", "HEAD", VERSION, times=10**6)
    with pytest.raises(StoreUnavailableError, match=r"GET .*v-000000000001\.json failed 4"):
        store.get(1)
    proxy.clear()
    proxy.inject("reset", "GET", r"list-type=2", times=10**6)
    with pytest.raises(StoreUnavailableError, match=r"LIST .* failed 4 time"):
        store.batch_ids()
    proxy.clear()
    got = store.get(1)
    assert got is not None and got.to_json() == STATES[1].to_json()


@pytest.mark.parametrize("kind", ["503", "reset", "lost", "slow"])
@pytest.mark.parametrize(
    ("method", "request_path"),
    [("PUT", r"/fit/state\.json\?partNumber="), ("POST", r"/fit/state\.json\?uploadId=")],
    ids=["upload part", "complete upload"],
)
def test_state_file_write_is_retried_whole(  # noqa: PLR0917
    proxy: FaultProxy,
    s3_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    method: str,
    request_path: str,
) -> None:
    # `fit --state s3://...` writes one file through write_state (pyarrow: a multipart
    # upload of one part); a whole upload again after a lost answer writes the same bytes.
    monkeypatch.setenv("MXNORM_STORE_RETRIES", "4,1")
    target = f"{s3_bucket}/fit/state.json"
    write_state(STATES[0], target)
    times = 1 if kind == "slow" else 2
    rule = proxy.inject(kind, method, request_path, times=times, delay=3.0)
    write_state(STATES[1], target)
    assert rule.fired == times
    assert read_state(target).to_json() == STATES[1].to_json()
    assert filesystem(f"{s3_bucket}/fit").list_names(f"{s3_bucket}/fit") == ["state.json"]


def test_a_lost_create_is_ours_but_another_writers_object_is_a_conflict(
    proxy: FaultProxy, s3_bucket: str
) -> None:
    fs = filesystem(f"{s3_bucket}/x", retry=FAST)
    target = f"{s3_bucket}/x/v.json"
    proxy.inject("lost", "PUT", r"/x/v\.json$", header="if-none-match")
    assert fs.create_exclusive(target, b"mine") is True  # landed, answer lost: ours
    assert fs.create_exclusive(target, b"mine") is False  # a second create: exists
    # Someone else's object under our name is never taken for ours.
    other = f"{s3_bucket}/x/w.json"
    fs.write_bytes(other, b"theirs")
    proxy.inject("lost", "PUT", r"/x/w\.json$", header="if-none-match")
    assert fs.create_exclusive(other, b"mine") is False
    store = StateStore(f"{s3_bucket}/y", retry=FAST)
    store.fs.write_bytes(store.version_path(0), STATES[1].to_json().encode())
    proxy.inject("lost", "PUT", VERSION, header="if-none-match")
    with pytest.raises(StateConflictError, match="already holds a different state"):
        store.commit(0, STATES[0])


# ---- the policy itself (no server) ------------------------------------------------------
def test_backoff_is_bounded_doubling_and_jittered() -> None:
    pauses: list[float] = []
    policy = RetryPolicy(attempts=6, base_delay=0.2, max_delay=1.0, jitter=0.5,
                         sleep=pauses.append)  # fmt: skip
    calls = 0

    def always_reset() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionResetError("reset by peer")

    with pytest.raises(StoreUnavailableError, match=r"GET s3://b/k failed 6 time\(s\)"):
        policy.call("GET", "s3://b/k", always_reset)
    assert calls == 6 and len(pauses) == 5
    full = [0.2, 0.4, 0.8, 1.0, 1.0]  # doubling, capped at max_delay
    assert all(f * 0.5 <= p <= f for p, f in zip(pauses, full, strict=True))
    assert len(set(pauses)) > 1  # jittered: writers that failed together spread out


def test_what_is_retried_and_what_is_not() -> None:
    assert is_transient(ConnectionResetError())
    assert is_transient(TimeoutError())
    assert is_transient(OSError("AWS Error SLOW_DOWN during PutObject operation: HTTP status 503"))
    assert is_transient(OSError("AWS Error NETWORK_CONNECTION during HeadObject: curlCode: 56"))
    assert not is_transient(FileNotFoundError("gone"))
    assert not is_transient(PermissionError("denied"))
    assert not is_transient(OSError("AWS Error ACCESS_DENIED during GetObject: HTTP status 403"))
    assert not is_transient(OSError(28, "No space left on device"))  # a local disk
    assert not is_transient(ValueError("a bug"))
    calls: list[Any] = []

    def missing() -> None:
        calls.append(1)
        raise FileNotFoundError("no such key")

    with pytest.raises(FileNotFoundError):
        FAST.call("GET", "s3://b/k", missing)
    assert len(calls) == 1  # an answer a retry cannot change is raised at once


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"attempts": 0}, "attempts must be >= 1"),
        ({"attempts": 2.5}, "attempts must be a whole number"),
        ({"base_delay": -1}, "base_delay must be a finite number"),
        ({"timeout": 0}, "timeout must be > 0"),
        ({"jitter": 2}, r"jitter must be in \[0, 1\]"),
    ],
)
def test_policy_rejects_bad_settings(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidParameterError, match=fragment):
        RetryPolicy(**kwargs)


def test_policy_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MXNORM_STORE_RETRIES", "3,2.5")
    assert (RetryPolicy.from_env().attempts, RetryPolicy.from_env().timeout) == (3, 2.5)
    monkeypatch.setenv("MXNORM_STORE_RETRIES", "many")
    with pytest.raises(InvalidParameterError, match="expected <attempts>"):
        RetryPolicy.from_env()
