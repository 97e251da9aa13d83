"""``MomentsCombineFn``: the exact moments of a PCollection of feature-value rows as a Beam
``CombineFn``, so combiner lifting merges partials before the shuffle.

Rows are buffered and folded in chunks with :meth:`Moments.from_array` (one numpy call per
chunk, not per row); partials merge with the Chan formula of :meth:`Moments.merge`. The
accumulator travels as four float64 arrays and a row count (:mod:`.coders`), never pickled.

>>> import numpy as np
>>> fn = MomentsCombineFn(["x"])
>>> a = fn.add_inputs(fn.create_accumulator(), [(1.0,), (3.0,)])
>>> b = fn.add_input(fn.create_accumulator(), (None,))
>>> m = fn.extract_output(fn.merge_accumulators([a, b]))
>>> m.count.tolist(), m.mean.tolist(), m.var.tolist()
([2.0], [2.0], [1.0])
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Any

import apache_beam as beam

from mxnorm_spark.beam.coders import decode_moments, encode_moments
from mxnorm_spark.beam.rows import as_matrix, check_names
from mxnorm_spark.core.moments import Moments

__all__ = ["BatchMomentsCombineFn", "MomentsAccumulator", "MomentsCombineFn"]

# Rows folded per numpy call: large enough that the per-call cost vanishes, small enough
# that a bundle's buffer stays a few MB.
CHUNK_ROWS = 4096


class MomentsAccumulator:
    """Moments so far, the rows not folded into them yet, and the rows seen."""

    __slots__ = ("moments", "pending", "rows")

    def __init__(
        self, moments: Moments, pending: list[Sequence[Any]] | None = None, rows: int = 0
    ) -> None:
        self.moments = moments
        self.pending: list[Sequence[Any]] = pending if pending is not None else []
        self.rows = rows


class _AccumulatorCoder(beam.coders.Coder):  # type: ignore[misc]
    """Flushes the buffered rows, then writes the row count and the moments' arrays."""

    def __init__(self, fn: MomentsCombineFn) -> None:
        self._fn = fn

    def encode(self, acc: MomentsAccumulator) -> bytes:
        self._fn.flush(acc)
        return struct.pack("<q", acc.rows) + encode_moments(acc.moments)

    def decode(self, data: bytes) -> MomentsAccumulator:
        (rows,) = struct.unpack_from("<q", data)
        return MomentsAccumulator(decode_moments(data[8:]), rows=rows)

    def is_deterministic(self) -> bool:
        return True


class MomentsCombineFn(beam.CombineFn):  # type: ignore[misc]
    """Exact per-feature ``Moments`` of rows of feature values (one value per column of
    ``cols``, in that order; None, NaN and +/-inf are invalid and skipped per feature)."""

    def __init__(self, cols: Sequence[str]) -> None:
        names = check_names(cols, "cols")
        assert names is not None
        self.cols = names

    def create_accumulator(self) -> MomentsAccumulator:
        return MomentsAccumulator(Moments.empty(len(self.cols)))

    def flush(self, acc: MomentsAccumulator) -> MomentsAccumulator:
        """Fold the buffered rows into the moments."""
        if acc.pending:
            acc.moments = acc.moments.merge(Moments.from_array(as_matrix(acc.pending, self.cols)))
            acc.pending = []
        return acc

    def add_input(self, acc: MomentsAccumulator, element: Sequence[Any]) -> MomentsAccumulator:
        acc.pending.append(element)
        acc.rows += 1
        if len(acc.pending) >= CHUNK_ROWS:
            self.flush(acc)
        return acc

    def add_inputs(
        self, acc: MomentsAccumulator, elements: Iterable[Sequence[Any]]
    ) -> MomentsAccumulator:
        for element in elements:
            self.add_input(acc, element)
        return acc

    def merge_accumulators(self, accumulators: Iterable[MomentsAccumulator]) -> MomentsAccumulator:
        merged: MomentsAccumulator | None = None
        for acc in accumulators:
            self.flush(acc)
            if merged is None:
                merged = acc
            else:
                merged.moments = merged.moments.merge(acc.moments)
                merged.rows += acc.rows
        return merged if merged is not None else self.create_accumulator()

    def compact(self, acc: MomentsAccumulator) -> MomentsAccumulator:
        return self.flush(acc)

    def extract_output(self, acc: MomentsAccumulator) -> Any:
        return self.flush(acc).moments

    def get_accumulator_coder(self) -> beam.coders.Coder:
        return _AccumulatorCoder(self)


class BatchMomentsCombineFn(MomentsCombineFn):
    """:class:`MomentsCombineFn` whose output is ``(Moments, rows)``: the moments and the
    number of rows (valid or not) they were computed from."""

    def extract_output(self, acc: MomentsAccumulator) -> tuple[Moments, int]:
        return self.flush(acc).moments, acc.rows
