"""Exact, mergeable partial moments of a batch that is still open (numpy only, no Spark).

An event-time stream keeps each batch value it has not folded yet as an :class:`OpenBatch`:
per feature the count of valid values and the *exact* sums of ``x`` and of ``x**2``, held
as Python integers scaled by ``2**SCALE``. Integer addition is associative, so the partial
of a batch is the same bits however its rows were split over files, partitions and
micro-batches; the moments are rounded once, when the batch folds
(:meth:`OpenBatch.moments`): the mean correctly rounded, ``M2 = sum(x**2) - sum(x)**2 / n``
computed exactly and then rounded.

How a value enters the sums without rounding: ``x = m * 2**e`` (``np.frexp``) with the
53-bit integer ``M = m * 2**53`` split into a high and a low half (each below ``2**27``),
summed per exponent with ``np.bincount`` in float64, exact while fewer than ``2**25`` values
share a bin (:data:`CHUNK_ROWS`). ``x**2 = (p + err) * 2**(2e)`` with ``p + err = m * m``
exactly (Dekker's product of the 53-bit mantissa, which cannot overflow or underflow), and
``p`` and ``err`` enter the same way. Every finite float64 is exact, from subnormals to
``1.8e308`` (its square too).

>>> import numpy as np
>>> x = np.array([[1e9 + 1.0], [1e9 + 3.0], [np.nan]])
>>> parts = exact_partials(x, np.array([0, 0, 0]), 1)
>>> parts[0].rows, parts[0].count
(3, (2,))
>>> m = parts[0].moments()
>>> m.mean.tolist(), m.var.tolist()
([1000000002.0], [1.0])
>>> a = exact_partials(x[:1], np.zeros(1, int), 1)[0]
>>> b = exact_partials(x[1:], np.zeros(2, int), 1)[0]
>>> a.merge(b) == parts[0]
True
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from mxnorm_spark.core.errors import CorruptStateError, FeatureMismatchError
from mxnorm_spark.core.moments import Moments

__all__ = ["CHUNK_ROWS", "SCALE", "OpenBatch", "exact_partials"]

# Smallest binary exponent a term can have: the error term of the square of the smallest
# subnormal, 2 * -1073 - 106, with room to spare.
_EXP_MIN = -2300
# The integers hold value * 2**SCALE: a term M * 2**(e - 53) is then M << (e - _EXP_MIN).
SCALE = 53 - _EXP_MIN
# Values the general path (:func:`_tail_sums`) sums in float64 bins before they become
# integers: |sum of halves| < 2**25 * 2**27 = 2**52 per bin, exact.
CHUNK_ROWS = 1 << 25
# Rows per block of the fast path (:class:`_Sums`): its piece sums stay below
# 2**12 * 2**_PIECE_BITS = 2**53, exact in float64; and the temporaries stay in cache.
_BLOCK_ROWS = 1 << 12
_PIECE_BITS = 41
_TWO_K = float(1 << _PIECE_BITS)
# A value within _BAND binary orders of magnitude of its block's largest (same feature)
# takes the fast path: the most for which its square's pieces are still integers.
_BAND = 14
# Rows per run of one group below which the rows are sorted by group first (a block sums
# each run of a group as one slice).
_RUN_ROWS = 64
# Block exponents (largest magnitude below 2**E) for which the fast path's scalings, the
# squares and Dekker's product neither overflow nor underflow.
_FAST_EXP = (-400, 500)
# Blocks one int64 sum takes before it is drained (each adds at most 2**53).
_MAX_ADDS = 1000
_NO_GRID = np.iinfo(np.int64).min
_HALF_BITS = 27
_HALF = float(1 << _HALF_BITS)
_INV_HALF = 1.0 / _HALF
_TWO53 = float(1 << 53)
_TWO54 = float(1 << 54)
_TWO106 = float(1 << 106)
_SPLIT = float((1 << 27) + 1)  # Dekker's splitter for 53-bit mantissas


@dataclass(frozen=True)
class OpenBatch:
    """The exact partial of one batch value: ``rows`` (every row, valid or not) and per
    feature ``count`` (valid values), ``sum1`` and ``sum2`` (``sum(x) * 2**SCALE`` and
    ``sum(x**2) * 2**SCALE``, exact integers)."""

    rows: int
    count: tuple[int, ...]
    sum1: tuple[int, ...]
    sum2: tuple[int, ...]

    @classmethod
    def empty(cls, n_features: int) -> OpenBatch:
        zeros = (0,) * n_features
        return cls(0, zeros, zeros, zeros)

    @property
    def n_features(self) -> int:
        return len(self.count)

    def merge(self, other: OpenBatch) -> OpenBatch:
        """Exact sum of two partials: associative and commutative to the bit."""
        if other.n_features != self.n_features:
            raise FeatureMismatchError(
                f"cannot merge open batches of {self.n_features} and {other.n_features} features"
            )
        return OpenBatch(
            self.rows + other.rows,
            tuple(a + b for a, b in zip(self.count, other.count, strict=True)),
            tuple(a + b for a, b in zip(self.sum1, other.sum1, strict=True)),
            tuple(a + b for a, b in zip(self.sum2, other.sum2, strict=True)),
        )

    def moments(self) -> Moments:
        """The batch's moments, each rounded once: ``mean`` correctly rounded (kept as the
        shift, delta 0), ``M2`` the exact sum of squared deviations rounded."""
        k = self.n_features
        count, mean, m2 = np.zeros(k), np.zeros(k), np.zeros(k)
        unit = 1 << SCALE
        for j, (n, s1, s2) in enumerate(zip(self.count, self.sum1, self.sum2, strict=True)):
            if n == 0:
                continue
            count[j] = float(n)
            mean[j] = float(Fraction(s1, n * unit))
            # M2 = s2 / unit - s1**2 / (n * unit**2), over one denominator.
            m2[j] = float(Fraction(n * s2 * unit - s1 * s1, n * unit * unit))
        return Moments(count, mean, np.zeros(k), m2)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: the big integers as hexadecimal text (every JSON reader keeps them)."""
        return {
            "rows": self.rows,
            "count": list(self.count),
            "sum1": [hex(v) for v in self.sum1],
            "sum2": [hex(v) for v in self.sum2],
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "open batch") -> OpenBatch:
        try:
            batch = cls(
                int(data["rows"]),
                tuple(int(v) for v in data["count"]),
                tuple(int(v, 16) for v in data["sum1"]),
                tuple(int(v, 16) for v in data["sum2"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptStateError(f"{source} is malformed: {exc}") from exc
        if not len(batch.count) == len(batch.sum1) == len(batch.sum2):
            raise CorruptStateError(f"{source} has fields of different lengths")
        return batch


def exact_partials(x: Any, codes: Any, n_groups: int) -> list[OpenBatch]:
    """The exact :class:`OpenBatch` of each group ``0 .. n_groups - 1`` of the rows of ``x``
    (rows x features float64; NaN and +/-inf are invalid), row ``i`` in group ``codes[i]``."""
    x = np.asarray(x, dtype=np.float64)
    codes = np.asarray(codes, dtype=np.int64)
    n, k = x.shape
    rows = np.bincount(codes, minlength=n_groups)[:n_groups] if n else np.zeros(n_groups, int)
    sums = _Sums(n_groups, k)
    if n and k:
        xt = x.T  # features x rows: every reduction runs along a contiguous row
        runs = 1 + int(np.count_nonzero(codes[1:] != codes[:-1])) if n_groups > 1 else 1
        if runs * _RUN_ROWS > n:
            # Groups interleaved: rows of a group side by side (a radix sort for few
            # groups), gathered once, so that each block sums its groups as slices.
            key = codes.astype(np.int16) if n_groups <= np.iinfo(np.int16).max else codes
            order = np.argsort(key, kind="stable")
            codes = codes[order]
            xt = xt[:, order]
        xt = np.ascontiguousarray(xt)  # one copy for rows x features (C) input, not per block
        for start in range(0, n, _BLOCK_ROWS):
            block = xt[:, start : start + _BLOCK_ROWS]
            sums.add_block(block, codes[start : start + _BLOCK_ROWS])
    invalid, sum1, sum2 = sums.finish()
    count = np.repeat(rows.astype(np.int64), k) - invalid
    return [
        OpenBatch(
            int(rows[g]),
            tuple(int(v) for v in count[g * k : (g + 1) * k]),
            tuple(sum1[g * k : (g + 1) * k]),
            tuple(sum2[g * k : (g + 1) * k]),
        )
        for g in range(n_groups)
    ]


class _Sums:
    """The exact sums of one :func:`exact_partials` call, block by block.

    The fast path: in a block (at most ``_BLOCK_ROWS`` rows, rows of a group side by side),
    feature ``j`` has its largest magnitude below ``2**E``. Every value ``x`` with
    ``|x| >= 2**(E - _BAND - 1)`` is an integer multiple of ``2**(E - 2K)`` below ``2**E``
    (``K = _PIECE_BITS``), so ``y = x * 2**(K - E)`` is ``a + b * 2**-K`` with integers
    ``|a| <= 2**K``, ``|b| < 2**K``: ``a = trunc(y)``, ``b = (y - a) * 2**K``. Its square is
    ``p + err`` exactly (Dekker's product: ``p = x * x``, ``err`` from the split halves),
    and ``p`` (grid ``2**(2E - 2K)``) and ``err`` (``|err| <= 2**(2E - 54)``, grid
    ``2**(2E - 54 - 2K)``) split the same way. Each of these six integer pieces sums per
    group in float64 exactly (at most ``2**12 * 2**41 = 2**53``), then in int64 across
    blocks on the same grid (:data:`_MAX_ADDS` blocks), then as Python integers.

    The rest (a value far below its block's largest, a block beyond the exponents where the
    scalings and Dekker's product are exact: ``_FAST_EXP``) takes the general path,
    :func:`_tail_sums`, exact for every finite float64.
    """

    def __init__(self, n_groups: int, k: int) -> None:
        self.n_groups, self.k = n_groups, k
        self.invalid = np.zeros(n_groups * k, dtype=np.int64)
        self.sum1 = [0] * (n_groups * k)
        self.sum2 = [0] * (n_groups * k)
        # (x: a, b; p: a, b; err: a, b) per feature and group, on the grid of ``exp``.
        self.acc = np.zeros((6, k, n_groups), dtype=np.int64)
        self.exp = np.full((k, n_groups), _NO_GRID, dtype=np.int64)
        self.adds = np.zeros(n_groups, dtype=np.int64)
        self.general = _General(n_groups * k)

    def add_block(self, block: Any, codes: Any) -> None:
        """Add a block (features x rows, C-contiguous; ``codes[i]`` the group of row ``i``,
        best in long runs)."""
        k = self.k
        cuts = np.flatnonzero(codes[1:] != codes[:-1]) + 1
        starts = np.concatenate(([0], cuts))
        groups = codes[starts]
        valid = np.isfinite(block)
        if not valid.all():
            j, i = np.nonzero(~valid)
            self.invalid += np.bincount(codes[i] * k + j, minlength=self.invalid.size)
            block = np.where(valid, block, 0.0)
        mag = np.abs(block)
        top = mag.max(axis=1)
        _, exp = np.frexp(top)
        exp = exp.astype(np.int64)
        fast = (exp >= _FAST_EXP[0]) & (exp <= _FAST_EXP[1])  # frexp(0) gives 0
        exp[~fast] = 0  # its values all take the general path
        floor = np.ldexp(1.0, exp - _BAND - 1)
        floor[top == 0.0] = 0.0
        floor[~fast] = np.inf
        small = mag < floor[:, None]
        n_small = int(np.count_nonzero(small))
        if n_small * 4 > small.size:  # much of it far below the top: all of it the general way
            small = block != 0.0
            n_small = small.size
        if n_small:
            j, i = np.nonzero(small)
            values = block[j, i]
            keep = values != 0.0
            self.general.add((codes[i] * k + j)[keep], values[keep], self.sum1, self.sum2)
            if n_small == small.size:
                return
            block = np.where(small, 0.0, block)
        pieces = np.empty((6, k, len(groups)))
        _split(block, exp, pieces[0:2], starts)
        p = block * block
        t = block * _SPLIT
        hi = t - (t - block)
        lo = block - hi
        err = ((hi * hi - p) + 2.0 * hi * lo) + lo * lo
        _split(p, 2 * exp, pieces[2:4], starts)
        if err.any():
            _split(err, 2 * exp - 54, pieces[4:6], starts)
        else:  # x * x is exact (at most 26 significant bits): nothing to add
            pieces[4:6] = 0.0
        self._accumulate(groups, exp, pieces)

    def _accumulate(self, groups: Any, exp: Any, pieces: Any) -> None:
        held = self.exp[:, groups]
        full = self.adds[groups] >= _MAX_ADDS
        drain = ((held != exp[:, None]) | full[None, :]) & (held != _NO_GRID)
        if drain.any():
            j, g = np.nonzero(drain)
            self._drain(j, groups[g])
            self.adds[groups[full]] = 0
        self.exp[:, groups] = exp[:, None]
        if len(groups) > 1 and len(np.unique(groups)) < len(groups):
            by_group = np.moveaxis(self.acc, 2, 0)  # a view: groups first
            np.add.at(by_group, groups, np.moveaxis(pieces, 2, 0).astype(np.int64))
            self.adds[np.unique(groups)] += 1
        else:
            self.acc[:, :, groups] += pieces.astype(np.int64)
            self.adds[groups] += 1

    def _drain(self, features: Any, groups: Any) -> None:
        """Move the int64 sums of these (feature, group) pairs into the Python integers."""
        k, bits = self.k, _PIECE_BITS
        chosen = self.acc[:, features, groups].T.tolist()
        for j, g, e, (xa, xb, pa, pb, ea, eb) in zip(
            features.tolist(),
            groups.tolist(),
            self.exp[features, groups].tolist(),
            chosen,
            strict=True,
        ):
            lane = g * k + j
            self.sum1[lane] += ((xa << bits) + xb) << (e - 2 * bits + SCALE)
            square = (((pa << bits) + pb) << 54) + (ea << bits) + eb
            self.sum2[lane] += square << (2 * e - 54 - 2 * bits + SCALE)
        self.acc[:, features, groups] = 0
        self.exp[features, groups] = _NO_GRID

    def finish(self) -> tuple[Any, list[int], list[int]]:
        """``(invalid count per lane, sum1, sum2)``, every block drained."""
        j, g = np.nonzero(self.exp != _NO_GRID)
        self._drain(j, g)
        self.general.drain(self.sum1, self.sum2)
        return self.invalid, self.sum1, self.sum2


def _split(values: Any, exp: Any, out: Any, starts: Any) -> None:
    """Per feature row and group slice, the float64 sums of the two integer pieces of
    ``values`` on the grid ``2**(exp - 2K)`` (see :class:`_Sums`) into ``out[0]``,
    ``out[1]``."""
    scaled = values * np.ldexp(1.0, _PIECE_BITS - exp)[:, None]
    high = np.trunc(scaled)
    low = (scaled - high) * _TWO_K
    if len(starts) == 1:
        out[0, :, 0] = high.sum(axis=1)
        out[1, :, 0] = low.sum(axis=1)
    else:
        out[0] = np.add.reduceat(high, starts, axis=1)
        out[1] = np.add.reduceat(low, starts, axis=1)


class _General:
    """The general path: exact for every finite float64. ``x = M * 2**(e - 53)``
    (``np.frexp``) with the 53-bit integer ``M = m * 2**53``; ``x**2 = (P * 2**52 + E) *
    2**(2e - 106)`` with ``m * m = p + err`` exactly (Dekker's product of the mantissa, which
    cannot overflow or underflow), ``P = p * 2**54``, ``E = err * 2**106``. Each term sums
    per (lane, exponent) in float64 bins (:class:`_Bins`), drained to integers every
    :data:`CHUNK_ROWS` values and at the end."""

    def __init__(self, lanes: int) -> None:
        self.acc1 = [_Bins(lanes, 0)]
        self.acc2 = [_Bins(lanes, -1), _Bins(lanes, -53)]
        self.pending = 0

    def add(self, lane: Any, values: Any, sum1: list[int], sum2: list[int]) -> None:
        if not len(values):
            return
        if self.pending + len(values) > CHUNK_ROWS:  # keep every float64 bin sum exact
            self.drain(sum1, sum2)
        self.pending += len(values)
        mant, exp = np.frexp(values)
        self.acc1[0].add(lane, exp, mant * _TWO53)
        t = _SPLIT * mant
        hi = t - (t - mant)
        lo = mant - hi
        p = mant * mant
        err = ((hi * hi - p) + 2.0 * hi * lo) + lo * lo
        exp2 = 2 * exp
        self.acc2[0].add(lane, exp2, p * _TWO54)
        self.acc2[1].add(lane, exp2, err * _TWO106)

    def drain(self, sum1: list[int], sum2: list[int]) -> None:
        for b in self.acc1:
            b.drain(sum1)
        for b in self.acc2:
            b.drain(sum2)
        self.pending = 0


class _Bins:
    """Sums per (lane, binary exponent) of one term ``V * 2**(e + shift - 53)`` (``V`` an
    integer-valued float below ``2**54``), split in two halves below ``2**27`` each so
    that float64 adds them exactly; the exponent range grows as blocks need it."""

    def __init__(self, lanes: int, shift: int) -> None:
        self.lanes, self.shift = lanes, shift
        self.low = 0
        self.hi = np.zeros((lanes, 0))
        self.lo = np.zeros((lanes, 0))

    def add(self, lane: Any, exp: Any, value: Any) -> None:
        low, high = int(exp.min()), int(exp.max())
        width = high - low + 1
        index = lane * width + (exp - low)
        hi = np.trunc(value * _INV_HALF)
        lo = value - hi * _HALF
        size = self.lanes * width
        hi_sum = np.bincount(index, weights=hi, minlength=size).reshape(self.lanes, width)
        lo_sum = np.bincount(index, weights=lo, minlength=size).reshape(self.lanes, width)
        self._cover(low, high)
        at = low - self.low
        self.hi[:, at : at + width] += hi_sum
        self.lo[:, at : at + width] += lo_sum

    def _cover(self, low: int, high: int) -> None:
        if self.hi.shape[1] == 0:
            self.low = low
            self.hi = np.zeros((self.lanes, high - low + 1))
            self.lo = np.zeros((self.lanes, high - low + 1))
            return
        new_low = min(low, self.low)
        new_high = max(high, self.low + self.hi.shape[1] - 1)
        if new_low == self.low and new_high == self.low + self.hi.shape[1] - 1:
            return
        pad = ((0, 0), (self.low - new_low, new_high - (self.low + self.hi.shape[1] - 1)))
        self.hi, self.lo, self.low = np.pad(self.hi, pad), np.pad(self.lo, pad), new_low

    def drain(self, into: list[int]) -> None:
        """Add the sums as exact integers (scaled by ``2**SCALE``) and start again."""
        if self.hi.shape[1] == 0:
            return
        base = self.low - _EXP_MIN + self.shift
        for lane in np.flatnonzero(self.hi.any(axis=1) | self.lo.any(axis=1)).tolist():
            total = 0
            for table, bits in ((self.hi, _HALF_BITS), (self.lo, 0)):
                row = table[lane]
                for b in np.flatnonzero(row).tolist():
                    total += int(row[b]) << (b + base + bits)
            into[lane] += total
        self.hi[:] = 0.0
        self.lo[:] = 0.0
