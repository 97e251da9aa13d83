"""The state store: immutable checksummed versions per batch id, local and through Hadoop."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mxnorm_spark import CorruptStateError, InvalidParameterError, Moments, MXNormState
from mxnorm_spark.errors import StateConflictError
from mxnorm_spark.store import INITIAL_FILE, StateStore


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


@pytest.fixture(params=["local", "hadoop"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A store factory: plain local files, or the Hadoop FileSystem of the Spark session."""

    def make(retention: int | None = None, sub: str = "state") -> StateStore:
        if request.param == "local":
            return StateStore(tmp_path / sub, retention=retention)
        spark = request.getfixturevalue("spark")
        return StateStore(f"file://{tmp_path / sub}", spark, retention=retention)

    return make


def test_commit_get_latest_bit_exact(make_store: Any, tmp_path: Path) -> None:
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
    assert sorted(os.listdir(tmp_path / "state")) == [f"v-{b:012d}.json" for b in range(4)]
    # The core loader reads the same directory (newest version).
    assert MXNormState.load(tmp_path / "state").to_json() == written[-1].to_json()


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


def test_flipped_digit_is_reported_with_the_file(make_store: Any, tmp_path: Path) -> None:
    store = make_store()
    for b, s in enumerate(states(3)):
        store.commit(b, s)
    victim = tmp_path / "state" / "v-000000000002.json"
    doc = json.loads(victim.read_text())
    doc["payload"]["mean"][0] += 1e-9  # a plausible-looking number: only the checksum knows
    victim.write_text(json.dumps(doc))
    with pytest.raises(CorruptStateError) as info:
        store.latest()
    msg = str(info.value)
    assert "v-000000000002.json" in msg and "fails its checksum" in msg
    assert "recomputes batch 2" in msg and "commits/2" in msg
    # Older versions stay readable.
    assert store.get(1) is not None


def test_truncated_file_is_reported(make_store: Any, tmp_path: Path) -> None:
    store = make_store()
    store.commit(0, states(1)[0])
    victim = tmp_path / "state" / "v-000000000000.json"
    victim.write_bytes(victim.read_bytes()[:100])
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
    with pytest.raises(CorruptStateError, match="holds no committed version"):
        MXNormState.load(tmp_path)
