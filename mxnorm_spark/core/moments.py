"""Mergeable per-feature moments ``(count, mean, M2)`` in float64, numpy only.

Each partial keeps a per-feature *shift* (pivot): a value of that feature, usually its
first valid one. Sums are taken in shifted coordinates, so data such as ``1e9 + N(0, 1)``
keeps its digits; merging re-expresses one partial in the other's shift before the Chan
et al. parallel update. The public ``mean`` is ``shift + delta``.

>>> import numpy as np
>>> a = Moments.from_array(np.array([[1.0], [2.0]]))
>>> b = Moments.from_array(np.array([[3.0], [np.nan], [4.0]]))
>>> ab = a + b
>>> ab.count.tolist(), ab.mean.tolist(), ab.var.tolist()
([4.0], [2.5], [1.25])
>>> (Moments.empty(1) + ab).var.tolist()
[1.25]
"""

from __future__ import annotations

import functools
import importlib
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from mxnorm_spark.core.errors import FeatureMismatchError, NonNumericError, ShapeError

FloatArray = npt.NDArray[np.float64]

_FLOAT64 = np.dtype(np.float64)


def _c_einsum() -> Callable[..., Any]:
    """The C function ``np.einsum`` hands its operands to when ``optimize`` is off (the
    default): the same sums, without the ~1 µs of its Python wrapper per call."""
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            found: Callable[..., Any] = importlib.import_module(module).c_einsum
        except (ImportError, AttributeError):
            continue
        return found
    return np.einsum


_einsum = _c_einsum()


def _fp_modes(
    module: str = "numpy._core.umath",
) -> tuple[Callable[[], Any], Callable[[Any], Any]]:
    """``(quiet, restore)``: ``token = quiet()`` turns numpy's floating-point warnings off
    (as ``np.errstate(all="ignore")``) until ``restore(token)``.

    numpy 2 keeps those modes in a context variable, which ``np.errstate`` rebuilds and
    sets around each block (about 1.2 µs); setting it to a mode built once here costs a
    tenth of that. Only the error modes matter in the blocks it guards (float64 arrays,
    no casting, so no buffering and the same bits). numpy 1 keeps them per thread:
    ``np.seterr``.
    """
    try:
        umath: Any = importlib.import_module(module)
        modes, ignore = umath._extobj_contextvar, umath._make_extobj(all="ignore")
    except (ImportError, AttributeError, TypeError):

        def seterr() -> Any:
            return np.seterr(all="ignore")

        def restore(old: Any) -> None:
            np.seterr(**old)

        return seterr, restore
    return functools.partial(modes.set, ignore), modes.reset


fp_quiet, fp_restore = _fp_modes()

# ``writeable(arr, False)`` makes ``arr`` read-only: ``ndarray.setflags`` called
# positionally, as numpy accepts it (its stubs say keyword-only); ``write=False`` costs
# about three times as much, in parsing the keyword (0.45 against 0.15 µs).
writeable = cast(Callable[[Any, bool], None], np.ndarray.setflags)


def _frozen(values: Any, name: str, n: int | None = None) -> FloatArray:
    arr = np.array(values, dtype=np.float64, copy=True).reshape(-1)
    if n is not None and arr.shape[0] != n:
        raise FeatureMismatchError(f"{name} has {arr.shape[0]} features, expected {n}")
    arr.flags.writeable = False
    return arr


def as_float_matrix(x: Any, name: str = "x") -> FloatArray:
    """Return ``x`` as a 2-D float64 array (rows x features), or raise a named error.

    Accepts every real numeric dtype (bool excluded), and object arrays of ints, floats,
    ``Decimal`` or ``None`` (read as NaN, i.e. invalid).
    """
    if type(x) is np.ndarray and x.dtype is _FLOAT64 and x.ndim == 2:
        return x  # the common batch, as is (what the general path returns for it)
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ShapeError(
            f"{name} must be a 2-D array (rows x features); got {arr.ndim}-D with shape "
            f"{arr.shape}. Use {name}.reshape(-1, 1) for one feature or "
            f"{name}.reshape(1, -1) for one row."
        )
    if arr.dtype.kind in "iuf":
        return arr.astype(np.float64, copy=False)
    if arr.dtype.kind == "O":
        for j in range(arr.shape[1]):
            for v in arr[:, j]:
                if v is not None and not (
                    isinstance(v, (numbers.Real, Decimal)) and not isinstance(v, bool)
                ):
                    raise NonNumericError(
                        f"{name} column {j} holds a non-numeric value {v!r} of type "
                        f"{type(v).__name__}; only real numbers (int, float, Decimal) or None"
                    )
        return np.array(
            [[np.nan if v is None else float(v) for v in row] for row in arr],
            dtype=np.float64,
        ).reshape(arr.shape)
    raise NonNumericError(
        f"{name} has dtype {arr.dtype} which is not a real numeric type; "
        "expected int, unsigned int or float (bool and complex are rejected)"
    )


@dataclass(frozen=True, eq=False)
class Moments:
    """Per-feature ``count``, ``mean`` and ``m2`` (sum of squared deviations), float64.

    Stored as ``count``, ``shift`` (pivot), ``delta`` (mean minus shift) and ``m2``.
    A feature with ``count == 0`` has no data; its mean and var are NaN. Instances are
    immutable; ``merge`` returns a new one. ``Moments.empty(n)`` is the identity of
    ``merge``.
    """

    count: FloatArray
    shift: FloatArray
    delta: FloatArray
    m2: FloatArray

    def __post_init__(self) -> None:
        n = np.asarray(self.count).reshape(-1).shape[0]
        for name in ("count", "shift", "delta", "m2"):
            object.__setattr__(self, name, _frozen(getattr(self, name), name, n))

    # ---- construction -------------------------------------------------------------
    @classmethod
    def empty(cls, n_features: int) -> Moments:
        """No data for any of ``n_features`` features.

        >>> Moments.empty(2).count.tolist()
        [0.0, 0.0]
        """
        z = np.zeros(n_features)
        return cls(z, z, z, z)

    @classmethod
    def from_array(cls, x: Any, shift: Any = None) -> Moments:
        """Moments of a 2-D array (rows x features); NaN and +/-inf are skipped per feature.

        ``shift`` optionally gives a pivot per feature (NaN where none is known, e.g. the
        current state mean); otherwise each feature's first valid value is used.

        >>> Moments.from_array(np.array([[1e9 + 1, 5.0], [1e9 + 3, np.inf]])).var.tolist()
        [1.0, 0.0]
        """
        arr = as_float_matrix(x)
        if arr.shape[0] and arr.shape[1]:
            given = None if shift is None else _shift_of(shift, arr.shape[1])
            # Every value valid (the common batch): the same two-pass with no masks, tried
            # first and checked after, one pass fewer than a check before. A NaN or inf
            # anywhere in a column makes its sum, so its delta, every residual and their
            # squares' sum m2 NaN or inf (IEEE: a sum with a NaN or inf term is NaN or
            # inf). So a finite m2 (m2 . 0 == 0) means every value was finite.
            token = fp_quiet()  # the attempt on NaN or inf must not warn
            try:
                m = finite_rows_moments(arr, given)
                if arr.size < _CHECK_AFTER:
                    finite = m.m2.dot(filled(arr.shape[1], 0.0)) == 0.0
                else:
                    finite = math.isfinite(float(np.dot(m.delta, m.m2)))
            finally:
                fp_restore(token)
            if finite:
                return m
            # A NaN or inf, or finite values whose sums overflow: a small batch of finite
            # values keeps the unmasked moments (the update then refuses what overflowed),
            # a large one takes the masked path, as each did when checked first / after.
            if arr.size < _CHECK_AFTER and np.logical_and.reduce(np.isfinite(arr), axis=None):
                return m
        return cls.from_columns(arr.T, shift)

    @classmethod
    def from_columns(cls, columns: Any, shift: Any = None) -> Moments:
        """Moments of a features x rows float array (one row per feature).

        Each feature is computed two-pass in shifted coordinates with a compensating
        term, so the result is accurate to a few ulps of the variance.
        """
        cols = np.ascontiguousarray(columns, dtype=np.float64)
        if cols.ndim != 2:
            raise ShapeError(f"columns must be 2-D (features x rows); got shape {cols.shape}")
        k, rows = cols.shape
        valid = np.isfinite(cols)
        all_valid = bool(valid.all())
        n = np.full(k, float(rows)) if all_valid else valid.sum(axis=1).astype(np.float64)
        has = n > 0
        first = cols[:, 0] if all_valid and rows else _first_valid(cols, valid)
        pivot = first
        if shift is not None:
            given = _shift_of(shift, k)
            pivot = np.where(np.isfinite(given), given, first)
        pivot = np.where(has, pivot, 0.0)
        d = cols - pivot[:, None]
        if not all_valid:
            d[~valid] = 0.0
        with np.errstate(invalid="ignore", divide="ignore"):
            delta = np.where(has, d.sum(axis=1) / n, 0.0)
            r = d - delta[:, None]
            if not all_valid:
                r[~valid] = 0.0
            # The second term removes the residual error of ``delta`` (compensated two-pass).
            m2 = np.where(has, np.einsum("ij,ij->i", r, r) - r.sum(axis=1) ** 2 / n, 0.0)
        return cls(n, pivot, delta, np.maximum(m2, 0.0))

    # ---- algebra ------------------------------------------------------------------
    @property
    def n_features(self) -> int:
        return int(self.count.shape[0])

    @property
    def mean(self) -> FloatArray:
        """Per-feature mean; NaN where ``count == 0``."""
        return np.where(self.count > 0, self.shift + self.delta, np.nan)

    @property
    def var(self) -> FloatArray:
        """Per-feature population variance (ddof = 0); NaN where ``count == 0``."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.m2 / self.count, np.nan)

    def merge(self, other: Moments) -> Moments:
        """Chan et al. parallel combination; ``self``'s shift is kept where it has data.

        >>> a = Moments.from_array(np.array([[1.0], [3.0]]))
        >>> b = Moments.from_array(np.array([[5.0]]))
        >>> a.merge(b).var.tolist() == np.var([1.0, 3.0, 5.0], keepdims=True).tolist()
        True
        """
        if other.n_features != self.n_features:
            raise FeatureMismatchError(
                f"cannot merge moments of {self.n_features} features with moments of "
                f"{other.n_features} features"
            )
        return Moments(*merge_fields(self.fields(), other.fields()))

    def fields(self) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """``(count, shift, delta, m2)``."""
        return self.count, self.shift, self.delta, self.m2

    def __add__(self, other: Moments) -> Moments:
        return self.merge(other)

    @classmethod
    def merge_all(cls, parts: Sequence[Moments], n_features: int) -> Moments:
        """Merge partials left to right (a fixed order gives the same bits every run)."""
        total = cls.empty(n_features)
        for p in parts:
            total = total.merge(p)
        return total

    # ---- plain data ---------------------------------------------------------------
    def to_dict(self) -> dict[str, list[float]]:
        """Plain lists, for JSON; floats round-trip exactly through ``repr``."""
        return {k: getattr(self, k).tolist() for k in ("count", "shift", "delta", "m2")}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Moments:
        return cls(data["count"], data["shift"], data["delta"], data["m2"])


Fields = tuple[Any, Any, Any, Any]


def merge_fields(a: Fields, b: Fields) -> Fields:
    """The Chan merge of :meth:`Moments.merge` on plain ``(count, shift, delta, m2)``
    arrays of any shape, lane by lane (a backfill folds thousands of batches with it
    without one object per batch)."""
    (na, shift_a, delta_a, m2_a), (nb, shift_b, delta_b, m2_b) = a, b
    n = na + nb
    both = (na > 0) & (nb > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        # Re-express the other's mean in this shift: shifts are close, so the
        # difference is exact (Sterbenz) and the sum stays in small coordinates.
        db = (shift_b - shift_a) + delta_b
        # Zero where a side is empty: those lanes are discarded below, and squaring a
        # huge mean there would only raise an overflow warning (empty partitions).
        d = np.where(both, db - delta_a, 0.0)
        w = np.where(both, nb / n, 0.0)
        delta = delta_a + d * w
        m2 = m2_a + m2_b + d * d * na * w
    only_b = na == 0
    return (
        n,
        np.where(only_b, shift_b, shift_a),
        np.where(both, delta, np.where(only_b, delta_b, delta_a)),
        np.where(both, m2, np.where(only_b, m2_b, m2_a)),
    )


def merge_running(start: Fields, rows: Fields) -> Fields:
    """:func:`merge_fields` of ``start`` with each row of the (rows x lanes) ``rows`` in
    turn: every running total, bit for bit as the loop of merges, which keeps only the
    recurrence of ``delta`` and ``m2`` (counts and shifts are computed for all rows)."""
    nb, shift_b, delta_b, m2_b = rows
    b, k = nb.shape
    # The running counts as the loop adds them (accumulate adds in order).
    n = np.add.accumulate(np.concatenate([np.asarray(start[0])[None], nb]), axis=0)
    na, n = n[:-1], n[1:]
    both, only_b = (na > 0) & (nb > 0), na == 0
    # The shift is the batch's own while nothing was merged yet, then kept.
    last = np.maximum.accumulate(np.where(only_b, np.arange(b)[:, None], -1), axis=0)
    picked = shift_b[np.maximum(last, 0), np.arange(k)]
    shift = np.where(last >= 0, picked, np.asarray(start[1])[None])
    shift_a = np.concatenate([np.asarray(start[1])[None], shift[:-1]])
    delta, m2 = np.empty_like(nb), np.empty_like(nb)
    da, ma = np.asarray(start[2]), np.asarray(start[3])
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        db = (shift_b - shift_a) + delta_b
        w = np.where(both, nb / n, 0.0)
        every = both.all(axis=1).tolist()
        for i in range(b):
            d = db[i] - da
            merged_delta = da + d * w[i]
            merged_m2 = ma + m2_b[i] + d * d * na[i] * w[i]
            if every[i]:  # every lane merges (the common row): nothing to pick
                da, ma = merged_delta, merged_m2
            else:
                da = np.where(both[i], merged_delta, np.where(only_b[i], delta_b[i], da))
                ma = np.where(both[i], merged_m2, np.where(only_b[i], m2_b[i], ma))
            delta[i], m2[i] = da, ma
    return n, shift, delta, m2


def all_counted(m: Moments) -> bool:
    """Whether every feature of ``m`` has data (``count > 0``), cached on ``m`` (immutable):
    the per-batch update takes its unmasked path when both sides have it."""
    full = m.__dict__.get("_all_counted")
    if full is None:
        full = m.__dict__["_all_counted"] = bool((m.count > 0).all())
    return bool(full)


# From this many values on, from_array tells a batch with NaN or inf from its unmasked
# moments' delta . m2 (as it did before: the same path for every batch); below, from
# m2 . 0, then isfinite on the values when that is not 0.
_CHECK_AFTER = 1 << 16

# Rows summed one after the other per block, then the block sums: the rounding error of a
# column sum grows with ~_BLOCK + rows / _BLOCK, not with the rows of a batch.
_BLOCK = 128


def column_sums(x: FloatArray) -> FloatArray:
    """Per-column sums of a rows x features array, in blocks of ``_BLOCK`` rows."""
    rows, k = x.shape
    full = rows - rows % _BLOCK
    if not full:
        out: FloatArray = np.add.reduce(x, axis=0)
        return out
    head: FloatArray = np.add.reduce(np.add.reduce(x[:full].reshape(-1, _BLOCK, k), axis=1), axis=0)
    return head + np.add.reduce(x[full:], axis=0) if full < rows else head


def column_squares(x: FloatArray) -> FloatArray:
    """Per-column sums of squares, in the blocks of :func:`column_sums` (``einsum``: no
    squared copy of ``x``)."""
    rows, k = x.shape
    full = rows - rows % _BLOCK
    if not full:
        out: FloatArray = _einsum("ij,ij->j", x, x)
        return out
    blocks = x[:full].reshape(-1, _BLOCK, k)
    head: FloatArray = np.add.reduce(_einsum("bij,bij->bj", blocks, blocks), axis=0)
    return head + _einsum("ij,ij->j", x[full:], x[full:]) if full < rows else head


def finite_rows_moments(x: FloatArray, shift: FloatArray | None = None) -> Moments:
    """The moments of a rows x features float64 array of finite values (at least one
    row): two-pass in shifted coordinates (pivot: the finite ``shift``, else the first
    row), with no masks.

    The mean is ``pivot + delta`` with ``delta`` the mean of the shifted values, and
    ``m2`` the sum of squares around it. (``from_columns`` also subtracts the square of
    the residual sum; that term is of the order of ``eps**2 * (delta / std)**2`` of the
    variance, below its last bit unless the pivot lies ~1e8 standard deviations away.)

    More rows than twice the features, fewer than 64 features (and, from 33 of them, at
    most 256 rows): on a transposed copy, each feature's values contiguous. Otherwise
    read row-major with no copy, summed down the columns in blocks (there the transposed
    copy, or its per-feature sums, cost more than the sums down the columns). Measured
    on 2 cores in a loop over fresh batches, each layout is the faster one where it is
    used (bench/PROFILE.md). The layout depends on the shape only, and the numpy API
    and the arrow engine's kernel both run this function, so one batch of valid values
    gets the same bits from either.
    """
    rows, k = x.shape
    counts = filled(k, float(rows))  # shared by the batches of one shape
    pivot = x[0].copy()
    if shift is not None:
        pivot = np.where(np.isfinite(shift), shift, pivot)
    if rows > 2 * k and (k <= 32 or (k < 64 and rows <= 256)):
        cols = np.subtract(x.T, pivot[:, None], order="C")  # features x rows, ours
        delta = np.add.reduce(cols, axis=1) / counts
        cols -= delta[:, None]
        m2 = _einsum("ij,ij->i", cols, cols)
    else:
        # C-ordered whatever the layout of ``x``: the sums below, hence the bits, do not
        # depend on it (checked after: the keyword ``order="C"`` costs more than that).
        r = x - pivot
        if not r.flags.c_contiguous:
            r = np.ascontiguousarray(r)
        if rows < _BLOCK:  # column_sums and column_squares of one partial block, inline
            delta = np.add.reduce(r, 0)
            delta /= counts
            r -= delta
            m2 = _einsum("ij,ij->j", r, r)
        else:
            delta = column_sums(r) / counts
            r -= delta
            m2 = column_squares(r)
    writeable(pivot, False)
    writeable(delta, False)
    writeable(m2, False)
    return counted_moments(counts, pivot, delta, m2)


def counted_moments(
    count: FloatArray, shift: FloatArray, delta: FloatArray, m2: FloatArray
) -> Moments:
    """A Moments with every feature counted, over read-only 1-D float64 arrays of equal
    length that nothing else writes to (fresh results the caller froze, or fields of
    another Moments): not copied or checked. The constructor of the per-batch hot paths,
    a plain function (a classmethod with keywords costs more per batch)."""
    m = object.__new__(Moments)
    m.__dict__.update(count=count, shift=shift, delta=delta, m2=m2, _all_counted=True)
    return m


def filled(n: int, value: float) -> FloatArray:
    """``n`` copies of ``value``, read-only: the per-feature constants of the per-batch
    paths (a batch's row count, alpha, eps). numpy combines two arrays in about half the
    time it takes to combine an array with a Python number, with the same bits. Shared up
    to 4096 values (the small batches where that time counts; the cache stays small)."""
    found = _FILLED.get((n, value))
    if found is None:
        found = _full(n, value)
        if n <= 4096:
            if len(_FILLED) >= 128:  # bounded: a new shape or alpha starts afresh
                _FILLED.clear()
            _FILLED[(n, value)] = found
    return found


# A dict rather than functools.lru_cache: one lookup, no wrapper call per batch.
_FILLED: dict[tuple[int, float], FloatArray] = {}


def _full(n: int, value: float) -> FloatArray:
    arr = np.full(n, value, dtype=np.float64)
    writeable(arr, False)
    return arr


def _shift_of(shift: Any, k: int) -> FloatArray:
    given = np.asarray(shift, dtype=np.float64).reshape(-1)
    if given.shape[0] != k:
        raise FeatureMismatchError(f"shift has {given.shape[0]} features, expected {k}")
    return given


def _first_valid(cols: FloatArray, valid: npt.NDArray[np.bool_]) -> FloatArray:
    if cols.shape[1] == 0:
        return np.zeros(cols.shape[0])
    idx = valid.argmax(axis=1)
    return np.asarray(cols[np.arange(cols.shape[0]), idx], dtype=np.float64)
