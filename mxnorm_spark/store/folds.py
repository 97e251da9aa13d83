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

__all__ = [
    "FOLDS_DIR",
    "fold_path",
    "read_fold",
    "state_as_of",
    "write_fold",
]


def _fold_file(number: int) -> str:
    return f"f-{number:012d}.json"


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


def read_fold(fs: FileSystem, state_path: str, number: int) -> tuple[Any, MXNormState]:
    """``(batch value, state after it)`` of fold ``number``."""
    path = fold_path(fs, state_path, number)
    data = fs.read_bytes(path)
    if data is None:
        raise CorruptStateError(f"fold record {path} is missing; the state directory lost it")
    try:
        doc = json.loads(data)
        if doc.get("type") != FOLD_TYPE or doc.get("fold") != number:
            raise ValueError("not a fold record of this number")
        state = MXNormState.from_json(json.dumps(doc["state"]), source=f"fold record {path}")
        return decode_value(doc["batch_value"]), state
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptStateError(f"fold record {path} is unreadable: {exc}") from exc


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
    while lo <= hi:
        mid = (lo + hi) // 2
        value, state = read_fold(fs, where, mid)
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
