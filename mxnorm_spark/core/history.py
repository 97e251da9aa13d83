"""The state after each batch of a backfill, as (batches x features) arrays:
:func:`fold_history` is :meth:`MXNormState.update` over many batches in turn, bit for
bit, with no object per batch (the backfill of ``MXNorm.fit`` with a batch column, and
the global state of a keyed fit)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from mxnorm_spark.core.errors import FeatureMismatchError
from mxnorm_spark.core.moments import Fields, FloatArray, Moments, merge_running
from mxnorm_spark.core.state import MXNormState, check_range, scale_of

__all__ = ["StateHistory", "fold_history"]


@dataclass(frozen=True, eq=False)
class StateHistory:
    """The state after each batch of a backfill, columnar: row ``i`` of ``mean``, ``var``
    and the four ``totals`` arrays (batches x features) is the state after batch ``i``.

    Built by :func:`fold_history` without one object per batch; :meth:`state` makes the
    :class:`MXNormState` of one row when asked.
    """

    start: MXNormState
    mean: FloatArray
    var: FloatArray
    totals: Fields

    def __len__(self) -> int:
        return int(self.mean.shape[0])

    def state(self, i: int) -> MXNormState:
        """The state after batch ``i`` (0-based; negative counts from the end)."""
        i = range(len(self))[i]
        return replace(
            self.start,
            mean=self.mean[i],
            var=self.var[i],
            totals=Moments(*(x[i] for x in self.totals)),
            batches_seen=self.start.batches_seen + i + 1,
        )

    def constants(self, before: bool) -> tuple[FloatArray, FloatArray]:
        """Each batch's ``(mean, scale)`` (batches x features), as a backfill model
        normalizes the rows of that batch.

        ``after``: the state after the batch, a feature without state taking mean 0 and
        variance 1 (its rows hold only invalid values). ``before``: the state before the
        batch, a feature without state yet taking the batch's own (after) values; the
        first batch uses its after state.
        """
        mean = np.where(np.isnan(self.mean), 0.0, self.mean)
        var = np.where(np.isnan(self.var), 1.0, self.var)
        if before and len(self) > 1:
            had = self.totals[0][:-1] > 0
            mean[1:] = np.where(had, self.mean[:-1], mean[1:])
            var[1:] = np.where(had, self.var[:-1], var[1:])
        return mean, scale_of(var, self.start.options)


def fold_history(state: MXNormState, moments: Fields) -> StateHistory:
    """``state.update`` with each row of the (batches x features) ``moments`` arrays
    ``(count, shift, delta, m2)`` in turn, bit for bit, as arrays, no object per batch.

    What does not depend on the batches before (running counts, shifts, batch means and
    variances, merge weights) is computed for all batches at once; the loops keep only the
    recurrences, each operation the one of :func:`~mxnorm_spark.core.moments.merge_fields` /
    :func:`~mxnorm_spark.core.state.ema_step` on the same operands, so the bits are those of
    :meth:`MXNormState.update`.

    >>> s = MXNormState.create(["a"], alpha=0.5)
    >>> rows = [np.array([[1.0], [3.0]]), np.array([[5.0]])]
    >>> parts = [Moments.from_array(x) for x in rows]
    >>> h = fold_history(s, tuple(np.stack(f) for f in zip(*(p.fields() for p in parts))))
    >>> h.state(-1).mean.tolist() == s.update(parts[0]).update(parts[1]).mean.tolist()
    True
    """
    count = np.asarray(moments[0], dtype=np.float64)
    if count.ndim != 2 or count.shape[1] != state.n_features:
        raise FeatureMismatchError(
            f"moments must be batches x {state.n_features} features, got shape {count.shape}"
        )
    c, sh, de, m2 = (np.asarray(x, dtype=np.float64).reshape(count.shape) for x in moments)
    totals = merge_running(state.totals.fields(), (c, sh, de, m2))
    if state.alpha is None:
        mean = np.where(totals[0] > 0, totals[1] + totals[2], np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            var = np.where(totals[0] > 0, totals[3] / totals[0], np.nan)
        _check_rows(state, mean, var, totals[0] > 0)
        return StateHistory(state, mean, var, totals)
    had = np.empty(count.shape, dtype=bool)
    had[:1] = state.initialized
    had[1:] = totals[0][:-1] > 0
    mean, var = _fold_ema(state, had, (c, sh, de, m2))
    _check_rows(state, mean, var, totals[0] > 0)
    return StateHistory(state, mean, var, totals)


def _check_rows(state: MXNormState, mean: FloatArray, var: FloatArray, seen: Any) -> None:
    # One vectorized test; the row loop runs only to name the first batch that overflowed.
    if (seen & ~(np.isfinite(mean) & np.isfinite(var))).any():
        for i in range(mean.shape[0]):
            check_range(state.features, mean[i], var[i], seen[i], f"batch {i} (0-based)")


def _fold_ema(state: MXNormState, had: Any, rows: Fields) -> tuple[FloatArray, FloatArray]:
    """:func:`~mxnorm_spark.core.state.ema_step` for each row of ``rows`` in turn: the EMA mean
    and variance after every batch."""
    count, shift, delta, m2 = rows
    options, alpha = state.options, state.alpha
    assert alpha is not None
    in_batch = count > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.where(in_batch, shift + delta, np.nan)
        v = np.where(in_batch, m2 / count, np.nan)
    per_row = options.decay == "rows"
    mixture = options.var_update == "mixture"
    mean, var = np.empty_like(count), np.empty_like(count)
    mu, s2 = state.mean, state.var
    a: Any = alpha
    with np.errstate(invalid="ignore", divide="ignore"):
        # With a fixed alpha the products with the batch values are the same per row.
        am, av = (m, v) if per_row else (a * m, a * v)
        every = (in_batch & had).all(axis=1).tolist()
        for i in range(count.shape[0]):
            if per_row:  # the row's own alpha, computed as ema_step does
                a = -np.expm1(count[i] * np.log1p(-alpha))
                am_i, av_i = a * m[i], a * v[i]
            else:
                am_i, av_i = am[i], av[i]
            ema_mean = (1 - a) * mu + am_i
            if mixture:
                ema_var = (1 - a) * (s2 + a * (m[i] - mu) ** 2) + av_i
            else:
                ema_var = (1 - a) * s2 + av_i
            if every[i]:  # every lane had a state and has values (the common row)
                mu, s2 = ema_mean, ema_var
            else:
                mu = np.where(in_batch[i], np.where(had[i], ema_mean, m[i]), mu)
                s2 = np.where(in_batch[i], np.where(had[i], ema_var, v[i]), s2)
            mean[i], var[i] = mu, s2
    return mean, var
