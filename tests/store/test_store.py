"""The state store: immutable checksummed versions per batch id, local, Hadoop and s3://."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mxnorm_spark import CorruptStateError, InvalidParameterError, Moments, MXNormState
from mxnorm_spark.core.errors import StateConflictError, StateNotFoundError
from mxnorm_spark.store import INITIAL_FILE, StateStore, filesystem, read_state


def states(n: int, seed: int = 0) -> list[MXNormState]:
    """States after each of ``n`` batches (batch ids 0..n-1), with awkward values."""
    rng = np.random.default_rng(seed)
    s = MXNormState.create(["a", "b"], alpha=0.3)
    out = []
    for b in range(n):
        x = np.column_stack([rng.normal(5, 2, 7), 1e9 + rng.normal(0, 1, 7)])
        s = s.update(Moments.from_array(x), batch_id=b)
        out.append(s)
    return out


class Backend:
    """Where a store lives: plain local files, Hadoop's FileSystem, or s3:// (moto)."""

    def __init__(self, kind: str, root: str, spark: Any = None) -> None:
        self.kind, self.root, self.spark = kind, root, spark

    def uri(self, sub: str) -> str:
        return f"{self.root}/{sub}"

    def store(self, retention: int | None = None, sub: str = "state") -> StateStore:
        return StateStore(self.uri(sub), self.spark, retention=retention)

    def names(self, sub: str = "state") -> list[str]:
        """Every object or file in ``sub`` (hidden ones too)."""
        if self.kind != "s3":
            return sorted(os.listdir(self.uri(sub).removeprefix("file://")))
        fs = filesystem(self.uri(sub))
        return sorted(fs.list_names(self.uri(sub)))

    def read(self, sub: str, name: str) -> bytes:
        data = filesystem(self.uri(sub)).read_bytes(self.uri(f"{sub}/{name}"))
        assert data is not None
        return data

    def write(self, sub: str, name: str, data: bytes) -> None:
        filesystem(self.uri(sub)).write_bytes(self.uri(f"{sub}/{name}"), data)


@pytest.fixture(params=["local", pytest.param("hadoop", marks=pytest.mark.spark), "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":
        return Backend("local", str(tmp_path))
    if request.param == "hadoop":
        return Backend("hadoop", f"file://{tmp_path}", request.getfixturevalue("spark"))
    return Backend("s3", request.getfixturevalue("s3_bucket"))


@pytest.fixture
def make_store(backend: Backend) -> Any:
    return backend.store


def test_commit_get_latest_bit_exact(make_store: Any, backend: Backend) -> None:
    store = make_store()
    assert store.latest() is None and store.batch_ids() == [] and store.get(0) is None
    written = states(4)
    for b, s in enumerate(written):
        store.commit(b, s)
    assert store.batch_ids() == [0, 1, 2, 3]
    for b, s in enumerate(written):
        got = store.get(b)
        assert got is not None and got.to_json() == s.to_json()
    latest = store.latest()
    assert latest is not None and latest.to_json() == written[-1].to_json()
    before = store.before(3)
    assert before is not None and before[0] == 2 and before[1].to_json() == written[2].to_json()
    assert store.before(0) is None
    # Only committed versions: no temporary files, no Hadoop .crc side files.
    assert backend.names() == [f"v-{b:012d}.json" for b in range(4)]
    # The core loader reads the same directory (newest version).
    assert read_state(backend.uri("state"), backend.spark).to_json() == written[-1].to_json()


def test_retention_keeps_newest_versions(make_store: Any) -> None:
    store = make_store(retention=2)
    for b, s in enumerate(states(5)):
        store.commit(b, s)
    assert store.batch_ids() == [3, 4]
    with pytest.raises(InvalidParameterError, match="retention must be a whole number >= 2"):
        make_store(retention=1)


def test_versions_are_immutable(make_store: Any) -> None:
    store = make_store()
    s0, s1 = states(2)
    path = store.commit(0, s0)
    assert store.commit(0, s0) == path  # the same state again: a no-op (a replay)
    with pytest.raises(StateConflictError, match="already holds a different state for batch 0"):
        store.commit(0, s1)
    got = store.get(0)
    assert got is not None and got.to_json() == s0.to_json()


def test_flipped_digit_is_reported_with_the_file(make_store: Any, backend: Backend) -> None:
    store = make_store()
    for b, s in enumerate(states(3)):
        store.commit(b, s)
    victim = "v-000000000002.json"
    doc = json.loads(backend.read("state", victim))
    doc["payload"]["mean"][0] += 1e-9  # a plausible-looking number: only the checksum knows
    backend.write("state", victim, json.dumps(doc).encode())
    with pytest.raises(CorruptStateError) as info:
        store.latest()
    msg = str(info.value)
    assert "v-000000000002.json" in msg and "fails its checksum" in msg
    assert "recomputes batch 2" in msg and "commits/2" in msg
    # Older versions stay readable.
    assert store.get(1) is not None


def test_truncated_file_is_reported(make_store: Any, backend: Backend) -> None:
    store = make_store()
    store.commit(0, states(1)[0])
    victim = "v-000000000000.json"
    backend.write("state", victim, backend.read("state", victim)[:100])
    with pytest.raises(CorruptStateError, match=r"v-000000000000\.json is not valid JSON"):
        store.get(0)


def test_leftover_temporary_is_ignored_then_removed(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.commit(0, states(1)[0])
    # What a writer killed between its write and its rename leaves behind.
    (tmp_path / ".v-000000000001.json.0123abcd.tmp").write_text("{partial")
    assert store.batch_ids() == [0]
    latest = store.latest()
    assert latest is not None and latest.last_batch_id == 0
    store.remove_temporaries()
    assert os.listdir(tmp_path) == ["v-000000000000.json"]


def test_initial_state_and_owner(make_store: Any) -> None:
    store = make_store()
    s0, s1 = states(2)
    assert store.initial() is None and store.owner() is None
    store.set_initial(s0)
    store.set_initial(s0)
    with pytest.raises(StateConflictError):
        store.set_initial(s1)
    got = store.initial()
    assert got is not None and got.to_json() == s0.to_json()
    assert store.batch_ids() == []  # init.json is not a version
    store.claim("query-1")
    store.claim("query-1")
    assert store.owner() == "query-1"
    with pytest.raises(StateConflictError, match="belongs to streaming query query-1"):
        store.claim("query-2")


def test_initial_file_is_not_loaded_as_a_version(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.set_initial(states(1)[0])
    assert (tmp_path / INITIAL_FILE).exists()
    assert store.latest() is None and store.batch_ids() == []
    # read_state's one fallback rule: no version yet, so the warm-start state.
    assert read_state(tmp_path).to_json() == states(1)[0].to_json()
    (tmp_path / INITIAL_FILE).unlink()
    with pytest.raises(StateNotFoundError, match="holds no committed version"):
        read_state(tmp_path)


def test_create_exclusive_refuses_an_existing_file(backend: Backend) -> None:
    # The primitive under every commit: a second create of the same name must lose, on
    # every backend (s3://: a conditional PUT), leaving the first bytes in place.
    fs = filesystem(backend.uri("x"), backend.spark)
    fs.mkdirs(backend.uri("x"))
    target = backend.uri("x/v.json")
    assert fs.create_exclusive(target, b"first") is True
    assert fs.create_exclusive(target, b"second") is False
    assert backend.read("x", "v.json") == b"first"
    assert backend.names("x") == ["v.json"]  # no staging file left behind


def test_state_file_replaced_whole(backend: Backend) -> None:
    from mxnorm_spark.store import write_state

    s0, s1 = states(2)
    target = backend.uri("fit/state.json")
    write_state(s0, target, backend.spark)
    write_state(s1, target, backend.spark)
    assert read_state(target, backend.spark).to_json() == s1.to_json()
    assert backend.names("fit") == ["state.json"]
    with pytest.raises(StateNotFoundError, match="not found"):
        read_state(backend.uri("fit/missing.json"), backend.spark)


def test_read_state_pins_a_version(make_store: Any, backend: Backend) -> None:
    store = make_store()
    written = states(3)
    for b, s in enumerate(written):
        store.commit(b, s)
    uri = backend.uri("state")
    assert read_state(uri, backend.spark, batch_id=1).to_json() == written[1].to_json()
    with pytest.raises(StateNotFoundError, match=r"no version for batch 7 \(committed: 3 versions"):
        read_state(uri, backend.spark, batch_id=7)
