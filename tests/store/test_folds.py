"""Compaction of an event-time stream's fold records (``_folds/``): whole segments of folds
become one file, and a crash at any point of it loses no fold and changes no bits.

Oracle: the states written as single records, read back before any compaction, and the
bytes of an uninterrupted compaction."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mxnorm_spark.store.folds as folds_mod
from mxnorm_spark import Moments, MXNormState
from mxnorm_spark.core.errors import CorruptStateError
from mxnorm_spark.store.filesystems import LocalFileSystem
from mxnorm_spark.store.folds import (
    FOLDS_DIR,
    compact_folds,
    read_fold,
    state_as_of,
    write_fold,
)

FOLDS = 7  # segments of 3: two whole ones (folds 0-5), fold 6 alone


@pytest.fixture(autouse=True)
def small_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(folds_mod, "SEGMENT_FOLDS", 3)


def write_days(root: Path) -> list[tuple[int, MXNormState]]:
    state = MXNormState.create(["x", "y"])
    written = []
    rng = np.random.default_rng(2)
    for number in range(FOLDS):
        day = 10 + 2 * number
        state = state.update(Moments.from_array(rng.normal(day, 1.0, (5, 2))))
        write_fold(str(root), number, day, state)
        written.append((day, state))
    return written


def names(root: Path) -> list[str]:
    return sorted(p.name for p in (root / FOLDS_DIR).iterdir())


def everything(root: Path) -> tuple[list[tuple[Any, str]], list[str | None]]:
    """Every fold as read, and the state as of each day (between and on the folds)."""
    fs = LocalFileSystem()
    reads = [(v, s.to_json()) for v, s in (read_fold(fs, str(root), n) for n in range(FOLDS))]
    pinned = [state_as_of(str(root), d, folds=FOLDS) for d in range(8, 26)]
    return reads, [None if s is None else s.to_json() for s in pinned]


def test_whole_segments_become_one_file_and_read_the_same(tmp_path: Path) -> None:
    written = write_days(tmp_path)
    before = everything(tmp_path)
    assert before[0] == [(d, s.to_json()) for d, s in written]
    assert compact_folds(str(tmp_path), FOLDS, after=0) == [0, 1]
    assert names(tmp_path) == ["f-000000000006.json", "s-000000000.json", "s-000000001.json"]
    assert everything(tmp_path) == before
    # Later commits compact only the segments they complete; fold 6 waits for 7 and 8.
    assert compact_folds(str(tmp_path), FOLDS, after=FOLDS) == []
    assert compact_folds(str(tmp_path), FOLDS, after=FOLDS, recover=True) == []


@pytest.mark.parametrize(
    "crash",
    ["before_segment", "after_segment", "between_deletes"],
)
def test_a_crash_at_any_point_loses_nothing_and_recovery_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash: str
) -> None:
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    write_days(clean)
    write_days(crashed)
    before = everything(crashed)
    compact_folds(str(clean), FOLDS, after=0)

    deletes = {"before_segment": -1, "after_segment": 0, "between_deletes": 1}[crash]
    real_delete, real_write = LocalFileSystem.delete, LocalFileSystem.write_atomic
    calls = {"delete": 0}

    class Killed(Exception):
        pass

    def write_atomic(self: Any, path: str, data: bytes) -> None:
        if deletes < 0:
            raise Killed
        real_write(self, path, data)

    def delete(self: Any, path: str, recursive: bool = False) -> None:
        if calls["delete"] == deletes:
            raise Killed
        calls["delete"] += 1
        real_delete(self, path, recursive)

    monkeypatch.setattr(LocalFileSystem, "write_atomic", write_atomic)
    monkeypatch.setattr(LocalFileSystem, "delete", delete)
    with pytest.raises(Killed):
        compact_folds(str(crashed), FOLDS, after=0)
    monkeypatch.undo()
    monkeypatch.setattr(folds_mod, "SEGMENT_FOLDS", 3)
    assert everything(crashed) == before  # every fold readable, same bits
    # The restarted stream's first commit (no new segment) finishes what was left.
    compact_folds(str(crashed), FOLDS, after=FOLDS, recover=True)
    assert names(crashed) == names(clean)
    for name in names(clean):
        assert (crashed / FOLDS_DIR / name).read_bytes() == (clean / FOLDS_DIR / name).read_bytes()
    assert everything(crashed) == before


def test_a_damaged_segment_is_refused(tmp_path: Path) -> None:
    write_days(tmp_path)
    compact_folds(str(tmp_path), FOLDS, after=0)
    path = tmp_path / FOLDS_DIR / "s-000000001.json"
    path.write_bytes(path.read_bytes().replace(b'"mean"', b'"meen"', 1))
    with pytest.raises(CorruptStateError, match="s-000000001"):
        read_fold(LocalFileSystem(), str(tmp_path), 3)  # the first record of the segment
    (tmp_path / FOLDS_DIR / "s-000000000.json").unlink()  # and a lost one is named
    with pytest.raises(CorruptStateError, match=r"f-000000000001\.json is missing"):
        read_fold(LocalFileSystem(), str(tmp_path), 1)
