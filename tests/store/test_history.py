"""The per-batch history's compaction: segments keep every record once, crash or not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from mxnorm_spark import CorruptStateError, InvalidParameterError, Moments, MXNormState
from mxnorm_spark.store import StateStore, filesystem, history
from mxnorm_spark.store.history import batch_table, compact_records, read_record, read_records

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["local", "s3"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "state")
    return f"{request.getfixturevalue('s3_bucket')}/state"


def commit_batches(store: StateStore, ids: range) -> dict[int, pa.Table]:
    """Commit a batch per id as a stream does (record, then version); the records written,
    built apart from the store from the same inputs (the reference)."""
    rng = np.random.default_rng(ids.start)
    prev = store.latest() or MXNormState.create(["a", "b"], alpha=0.2)
    want = {}
    for b in ids:
        m = Moments.from_array(rng.normal(3.0, 2.0, (5, 2)))
        new = prev.update(m, batch_id=b)
        assert store.record_batch(b, rows=5, moments=m, state=new)
        store.commit(b, new)
        want[b] = batch_table(b, rows=5, moments=m, state=new)
        prev = new
    return want


def same_records(got: pa.Table, want: dict[int, pa.Table]) -> None:
    """``got`` holds each batch of ``want`` once, in id order, with its values."""
    ids = got.column("batch_id").to_pylist()
    assert ids == [b for b in sorted(want) for _ in range(2)]
    ref = pa.concat_tables([want[b] for b in sorted(want)])
    for col in ("rows", "valid", "batch_mean", "batch_var", "state_mean", "state_var"):
        assert got.column(col).to_pylist() == ref.column(col).to_pylist(), col


def names(where: str) -> list[str]:
    fs = filesystem(where)
    return sorted(fs.list_names(fs.join(where, "_history")))


@pytest.fixture(autouse=True)
def fanout(monkeypatch: pytest.MonkeyPatch) -> None:
    # Three segments of a level make one of the next (ten in use): small tests, all levels.
    monkeypatch.setattr(history, "SEGMENT_FANOUT", 3)


def test_segments_keep_every_record_once_in_few_files(where: str) -> None:
    store = StateStore(where, retention=3, history_segment=2)
    want = commit_batches(store, range(0, 34))
    got = store.history()
    same_records(got, want)
    files = names(where)
    # 2 records a level-0 segment, 3 of those a level-1 one (6 records), 3 of those a
    # level-2 one (18): 18 + 6 + 6 + 2 + 2 records, against 34 files without compaction.
    assert files == [
        "h-000000000032.parquet", "h-000000000033.parquet",
        "hs0-000000000030-000000000031.parquet", "hs1-000000000018-000000000023.parquet",
        "hs1-000000000024-000000000029.parquet", "hs2-000000000000-000000000017.parquet",
    ]  # fmt: skip
    # One batch's record, wherever it lives.
    for b in (0, 7, 20, 31, 33):
        one = read_record(store.fs, store.path, b)
        assert one is not None and one.column("state_mean").to_pylist() == (
            want[b].column("state_mean").to_pylist()
        )
    assert read_record(store.fs, store.path, 999) is None


def test_no_compaction_keeps_one_file_per_batch(tmp_path: Path) -> None:
    store = StateStore(tmp_path, history_segment=None)
    commit_batches(store, range(0, 30))
    assert len(names(str(tmp_path))) == 30
    with pytest.raises(InvalidParameterError, match="history_segment"):
        StateStore(tmp_path, history_segment=0)


class Killed(BaseException):
    """What a SIGKILL leaves: nothing after the operation it struck."""


class DyingFs:
    """The store's file system, killed at its ``budget``-th write, rename or delete."""

    def __init__(self, fs: Any, budget: int) -> None:
        self.fs, self.budget = fs, budget

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.fs, name)
        if name not in {"create_exclusive", "write_atomic", "write_bytes", "delete", "rename"}:
            return attr

        def dying(*args: Any, **kwargs: Any) -> Any:
            self.budget -= 1
            if self.budget < 0:
                raise Killed(name)
            return attr(*args, **kwargs)

        return dying


def test_a_crash_at_any_step_of_a_compaction_loses_and_duplicates_nothing(where: str) -> None:
    # 13 batches in segments of 2: a level-1 segment (0..5), 2 level-0 ones and 3 single
    # records. The compaction writes a level-0 segment of the 3 (deleting them), then
    # merges the three level-0 ones into a level-1 (deleting them): 8 steps, at each of
    # which the process may die.
    store = StateStore(where, history_segment=2, retention=None)
    want = commit_batches(store, range(0, 13))
    fs = store.fs
    base = names(where)
    steps = 0
    while True:  # the count of mutations one whole compaction makes
        copy = where + f"-copy{steps}"
        clone(fs, where, copy, base)
        dying = DyingFs(fs, steps)
        try:
            compact_records(dying, copy, 13 + 2, segment=2)  # type: ignore[arg-type]
        except Killed:
            # Killed after `steps` operations: every record readable exactly once ...
            same_records(read_records(fs, copy), want)
            # ... and the next run (a stream's first commit after its restart) finishes.
            compact_records(fs, copy, 13 + 2, segment=2)
            same_records(read_records(fs, copy), want)
            assert not [n for n in names(copy) if n.startswith(".")]
            steps += 1
            continue
        same_records(read_records(fs, copy), want)
        break
    assert steps == 1 + 3 + 1 + 3
    assert names(copy) == [
        "hs1-000000000000-000000000005.parquet", "hs1-000000000006-000000000012.parquet"
    ]  # fmt: skip


def clone(fs: Any, src: str, dst: str, files: list[str]) -> None:
    for n in files:
        data = fs.read_bytes(fs.join(fs.join(src, "_history"), n))
        fs.mkdirs(fs.join(dst, "_history"))
        fs.write_bytes(fs.join(fs.join(dst, "_history"), n), data)


def test_sigkill_while_compacting_then_restart(tmp_path: Path) -> None:
    # A real SIGKILL of a process compacting, between a segment's write and the last of
    # its inputs' deletes; the next writer's compaction finishes the job.
    state = tmp_path / "state"
    store = StateStore(state, history_segment=None)
    want = commit_batches(store, range(0, 12))
    code = (
        "import os, signal, sys\n"
        "from mxnorm_spark.store import filesystem\n"
        "from mxnorm_spark.store.history import compact_records\n"
        "fs = filesystem(sys.argv[1]); real = fs.delete; n = [0]\n"
        "def delete(path, recursive=False):\n"
        "    n[0] += 1\n"
        "    if n[0] == 5: os.kill(os.getpid(), signal.SIGKILL)\n"
        "    real(path, recursive)\n"
        "fs.delete = delete\n"
        "compact_records(fs, sys.argv[1], 11, segment=10)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(state)], cwd=ROOT, env=os.environ,
                       capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert r.returncode == -9, r.stderr
    left = names(str(state))
    assert "hs0-000000000000-000000000009.parquet" in left
    assert len([n for n in left if n.startswith("h-")]) == 12 - 4  # 4 deleted before the kill
    same_records(StateStore(state).history(), want)
    # The restarted stream's next commit finishes the compaction.
    store = StateStore(state, history_segment=10)
    want |= commit_batches(store, range(12, 13))
    assert names(str(state)) == [
        "h-000000000010.parquet", "h-000000000011.parquet", "h-000000000012.parquet",
        "hs0-000000000000-000000000009.parquet",
    ]  # fmt: skip
    same_records(store.history(), want)


def test_overlapping_segments_are_refused(tmp_path: Path) -> None:
    store = StateStore(tmp_path, history_segment=3)
    commit_batches(store, range(0, 8))
    seg = tmp_path / "_history" / "hs0-000000000000-000000000002.parquet"
    assert seg.exists()
    (tmp_path / "_history" / "hs0-000000000001-000000000004.parquet").write_bytes(seg.read_bytes())
    with pytest.raises(CorruptStateError, match="overlap"):
        store.history()
