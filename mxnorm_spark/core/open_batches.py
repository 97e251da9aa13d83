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
# Rows summed in float64 bins before they become integers: |sum of halves| < 2**25 * 2**27
# = 2**52 per bin, exact.
CHUNK_ROWS = 1 << 25
# Rows per numpy pass: the temporaries of a block stay in cache (1M x 8 in one pass was
# 3x slower per value than in blocks).
_BLOCK_ROWS = 1 << 15
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
    k = x.shape[1]
    lanes = n_groups * k
    rows = np.bincount(codes, minlength=n_groups)[:n_groups] if len(codes) else np.zeros(0)
    count = np.zeros(lanes, dtype=np.int64)
    sum1, sum2 = [0] * lanes, [0] * lanes
    # x = M * 2**(e - 53) with the integer M = m * 2**53; x**2 = (P * 2**52 + E) * 2**(2e - 106)
    # (below): one accumulator per term, its exponent shift relative to 2**(e - 53).
    acc1 = [_Bins(lanes, 0)]
    acc2 = [_Bins(lanes, -1), _Bins(lanes, -53)]
    pending = 0
    lane_of = np.arange(k)[None, :]
    for start in range(0, x.shape[0], _BLOCK_ROWS):
        block, c = x[start : start + _BLOCK_ROWS], codes[start : start + _BLOCK_ROWS]
        if pending + len(block) > CHUNK_ROWS:  # keep every float64 bin sum exact
            _flush(acc1, sum1)
            _flush(acc2, sum2)
            pending = 0
        pending += len(block)
        lane = c[:, None] * k + lane_of
        valid = np.isfinite(block)
        if valid.all():
            lane, values = lane.reshape(-1), block.reshape(-1)
        else:
            lane, values = lane[valid], block[valid]
        if not len(values):
            continue
        count += np.bincount(lane, minlength=lanes)
        mant, exp = np.frexp(values)
        acc1[0].add(lane, exp, mant * _TWO53)
        # m*m = p + err exactly (Dekker): p * 2**54 and err * 2**106 are integers below
        # 2**54 and 2**52.
        t = _SPLIT * mant
        hi = t - (t - mant)
        lo = mant - hi
        p = mant * mant
        err = ((hi * hi - p) + 2.0 * hi * lo) + lo * lo
        exp2 = 2 * exp
        acc2[0].add(lane, exp2, p * _TWO54)
        acc2[1].add(lane, exp2, err * _TWO106)
    _flush(acc1, sum1)
    _flush(acc2, sum2)
    return [
        OpenBatch(
            int(rows[g]),
            tuple(int(v) for v in count[g * k : (g + 1) * k]),
            tuple(sum1[g * k : (g + 1) * k]),
            tuple(sum2[g * k : (g + 1) * k]),
        )
        for g in range(n_groups)
    ]


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


def _flush(bins: list[_Bins], into: list[int]) -> None:
    for b in bins:
        b.drain(into)
