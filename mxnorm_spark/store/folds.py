"""The folds of an event-time stream: one immutable record per batch value it folded.

``<state dir>/_folds/f-<fold number, 12 digits>.json`` holds the batch value (a tagged
JSON value, :func:`encode_value`) and the state after folding it (the state file's own
type-tagged, checksummed JSON). Fold numbers count the folds from 0 in ascending batch
value, so the files list in batch order and :func:`state_as_of` finds the state that
applied at a batch value with a binary search (a few reads, not one per fold).

A record is written once, before the state version that commits its fold: a replay
writes the same bytes again (a no-op), and a record without a committed version is
rewritten by the replay, never read (readers stop at the folds the newest version
counts).

**Compaction.** Once a committed version counts every fold of a segment (folds
``s * SEGMENT_FOLDS`` to ``(s + 1) * SEGMENT_FOLDS - 1``), :func:`compact_folds` writes
their records into one file, ``_folds/s-<segment, 9 digits>.json`` (the records as they
were, each still checksummed), atomically, and only then deletes the single records,
ascending. A crash at any point leaves every fold readable: readers take the segment
when it is there, the single record otherwise, and look at the segment again if the
record went in between. A committed fold never changes, so a segment is written with the
same bytes however often compaction runs again; a stream checks at its first micro-batch
that the segments before it are whole and their single records gone
(:func:`compact_folds` with ``recover=True``). No replay writes into a compacted segment:
a replayed micro-batch writes only folds its committed predecessor does not count.

>>> import tempfile
>>> from mxnorm_spark import Moments, MXNormState
>>> d = tempfile.mkdtemp()
>>> s = MXNormState.create(["x"])
>>> for k, day in enumerate([3, 5, 8]):
...     s = s.update(Moments.from_array([[float(day)], [day + 2.0]]))
...     write_fold(d, k, day, s)
>>> state_as_of(d, 6, folds=3).mean.tolist(), state_as_of(d, 8, folds=3).batches_seen
([4.2], 3)
>>> state_as_of(d, 2, folds=3) is None
True
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from mxnorm_spark.core.errors import CorruptStateError, InvalidParameterError
from mxnorm_spark.core.event_time import decode_value, encode_value
from mxnorm_spark.core.state import MXNormState
from mxnorm_spark.store.filesystems import FileSystem, LocalFileSystem, filesystem, local_path

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

FOLDS_DIR = "_folds"
FOLD_TYPE = "mxnorm_spark.Fold"
SEGMENT_TYPE = "mxnorm_spark.FoldSegment"
# Folds per segment file: a segment of 8 features is about 0.5 MB.
SEGMENT_FOLDS = 256

__all__ = [
    "FOLDS_DIR",
    "SEGMENT_FOLDS",
    "compact_folds",
    "fold_path",
    "read_fold",
    "segment_path",
    "state_as_of",
    "write_fold",
]


def _fold_file(number: int) -> str:
    return f"f-{number:012d}.json"


def segment_path(fs: FileSystem, state_path: str, segment: int) -> str:
    return fs.join(fs.join(state_path, FOLDS_DIR), f"s-{segment:09d}.json")


def fold_path(fs: FileSystem, state_path: str, number: int) -> str:
    return fs.join(fs.join(state_path, FOLDS_DIR), _fold_file(number))


def fold_bytes(number: int, value: Any, state: MXNormState) -> bytes:
    doc = {
        "type": FOLD_TYPE,
        "fold": number,
        "batch_value": encode_value(value),
        "state": json.loads(state.to_json()),
    }
    return (json.dumps(doc, indent=1, allow_nan=False) + "\n").encode("utf-8")


def write_fold(
    state_path: str,
    number: int,
    value: Any,
    state: MXNormState,
    *,
    spark: SparkSession | None = None,
    fs: FileSystem | None = None,
) -> None:
    """Write the record of fold ``number`` (batch ``value``, the state after it), replacing
    a record that no committed version counts yet (see the module text)."""
    fs = fs if fs is not None else filesystem(state_path, spark)
    data = fold_bytes(number, value, state)
    target = fold_path(fs, state_path, number)
    if fs.read_bytes(target) == data:
        return
    fs.mkdirs(fs.join(state_path, FOLDS_DIR))
    fs.write_atomic(target, data)


def read_fold(
    fs: FileSystem,
    state_path: str,
    number: int,
    *,
    cache: dict[int, list[Any]] | None = None,
) -> tuple[Any, MXNormState]:
    """``(batch value, state after it)`` of fold ``number``, from its segment file if it was
    compacted, else from its own record (see the module text). ``cache``: segments read
    already (segment -> its records), for several reads."""
    per = SEGMENT_FOLDS
    segment = number // per
    path = fold_path(fs, state_path, number)
    records = _segment_records(fs, state_path, segment, per, cache)
    if records is None:
        data = fs.read_bytes(path)
        if data is None:  # compacted after the segment was looked for
            records = _segment_records(fs, state_path, segment, per, cache)
            if records is None:
                raise CorruptStateError(
                    f"fold record {path} is missing, and no segment file holds it; the "
                    "state directory lost it"
                )
        else:
            return _parse_fold(data, number, path)
    where = segment_path(fs, state_path, segment)
    return _fold_of(records[number - segment * per], number, f"{where} (fold {number})")


def _segment_records(
    fs: FileSystem,
    state_path: str,
    segment: int,
    per: int,
    cache: dict[int, list[Any]] | None,
) -> list[Any] | None:
    if cache is not None and segment in cache:
        return cache[segment]
    path = segment_path(fs, state_path, segment)
    data = fs.read_bytes(path)
    if data is None:
        return None
    try:
        doc = json.loads(data)
        records = doc["folds"]
        if doc.get("type") != SEGMENT_TYPE or doc.get("first") != segment * per:
            raise ValueError("not the fold segment of this number")
        if not isinstance(records, list) or len(records) != per:
            raise ValueError(f"it holds {len(records)} folds, not {per}")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptStateError(f"fold segment {path} is unreadable: {exc}") from exc
    if cache is not None:
        cache[segment] = records
    return list(records)


def _parse_fold(data: bytes, number: int, source: str) -> tuple[Any, MXNormState]:
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise CorruptStateError(f"fold record {source} is unreadable: {exc}") from exc
    return _fold_of(doc, number, source)


def _fold_of(doc: Any, number: int, source: str) -> tuple[Any, MXNormState]:
    try:
        if doc.get("type") != FOLD_TYPE or doc.get("fold") != number:
            raise ValueError("not a fold record of this number")
        state = MXNormState.from_json(json.dumps(doc["state"]), source=f"fold record {source}")
        return decode_value(doc["batch_value"]), state
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptStateError(f"fold record {source} is unreadable: {exc}") from exc


def compact_folds(
    state_path: str,
    folds: int,
    *,
    after: int,
    recover: bool = False,
    fs: FileSystem | None = None,
) -> list[int]:
    """Compact the segments a committed version counting ``folds`` folds completes (its
    predecessor counted ``after``): each segment's records into one file, then its single
    records deleted. ``recover``: also finish the segments before them that a crash left
    uncompacted or with single records (walking back to the first whole one). Call it
    only after the version is committed, as the directory's single writer. Returns the
    segments it wrote or finished."""
    fs = fs if fs is not None else filesystem(state_path)
    per = SEGMENT_FOLDS
    complete = folds // per
    todo = list(range(min(after // per, complete), complete))
    if recover:
        s = (todo[0] if todo else complete) - 1
        while s >= 0 and not _whole(fs, state_path, s, per):
            todo.insert(0, s)
            s -= 1
    for s in todo:
        _compact_segment(fs, state_path, s, per)
    return todo


def _whole(fs: FileSystem, state_path: str, segment: int, per: int) -> bool:
    """Segment written and its single records gone (they go in ascending order, so the
    last one is the one left if a crash came in between)."""
    last = fold_path(fs, state_path, (segment + 1) * per - 1)
    return fs.exists(segment_path(fs, state_path, segment)) and not fs.exists(last)


def _compact_segment(fs: FileSystem, state_path: str, segment: int, per: int) -> None:
    target = segment_path(fs, state_path, segment)
    numbers = range(segment * per, (segment + 1) * per)
    if not fs.exists(target):
        records = []
        for n in numbers:
            path = fold_path(fs, state_path, n)
            data = fs.read_bytes(path)
            if data is None:
                raise CorruptStateError(
                    f"fold record {path} is missing and segment {target} was not written; "
                    "the state directory lost it"
                )
            doc = json.loads(data)
            _fold_of(doc, n, path)  # checked before it is kept
            records.append(doc)
        body = {"type": SEGMENT_TYPE, "first": segment * per, "folds": records}
        fs.write_atomic(target, (json.dumps(body, allow_nan=False) + "\n").encode("utf-8"))
    for n in numbers:
        fs.delete(fold_path(fs, state_path, n))


def state_as_of(
    state_path: str,
    as_of: Any,
    *,
    folds: int,
    spark: SparkSession | None = None,
) -> MXNormState | None:
    """The state after folding every batch value ``<= as_of``, among the first ``folds``
    folds (the count the newest committed version holds); None if no batch was folded by
    then (the caller falls back to the initial state)."""
    fs = filesystem(state_path, spark)
    where = local_path(state_path) if isinstance(fs, LocalFileSystem) else state_path
    lo, hi, found = 0, folds - 1, None
    segments: dict[int, list[Any]] = {}
    while lo <= hi:
        mid = (lo + hi) // 2
        value, state = read_fold(fs, where, mid, cache=segments)
        try:
            after = value > as_of
        except TypeError:
            raise InvalidParameterError(
                f"as_of={as_of!r} ({type(as_of).__name__}) cannot be compared with the batch "
                f"values of {where} ({type(value).__name__}, e.g. {value!r})"
            ) from None
        if after:
            hi = mid - 1
        else:
            found, lo = state, mid + 1
    return found


def read_state_as_of(state_path: str, as_of: Any, spark: SparkSession | None = None) -> MXNormState:
    """The state of an event-time stream's directory that applied at batch value ``as_of``:
    every batch ``<= as_of`` folded (for windows: window starts, as microseconds since the
    epoch or a ``datetime``; a naive one is UTC). With no batch folded by then, the
    directory's initial state."""
    import datetime as dt

    from mxnorm_spark.store.states import StateStore

    store = StateStore(state_path, spark)
    latest = store.latest_batch_id()
    section = None if latest is None else store.section(latest, "event_time")
    if section is None:
        raise InvalidParameterError(
            f"{store.path} is not the state directory of an event-time stream (no folds to "
            "pin); as_of applies to streams with batch_col or event_time, batch_id to others"
        )
    if isinstance(as_of, dt.datetime) and section["spec"].get("window") is not None:
        aware = as_of if as_of.tzinfo is not None else as_of.replace(tzinfo=dt.timezone.utc)
        epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
        as_of = (aware - epoch) // dt.timedelta(microseconds=1)
    found = state_as_of(store.path, as_of, folds=int(section["folds"]), spark=spark)
    if found is None:
        found = store.initial()
    if found is None:
        raise CorruptStateError(
            f"no batch <= {as_of!r} was folded in {store.path} and it has no initial state: "
            "no state applied at that batch value"
        )
    return found
