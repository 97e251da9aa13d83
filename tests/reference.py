"""Independent oracles for the tests: the reference loop of docs/design.md and float64 two-pass."""

from __future__ import annotations

from fractions import Fraction

import numpy as np


class Reference:
    """The reference loop of docs/design.md, section 1 (defaults: EMA of means and variances)."""

    def __init__(self, alpha: float = 0.1, eps: float = 1e-8) -> None:
        self.a, self.eps = alpha, eps
        self.mean: np.ndarray | None = None
        self.var: np.ndarray | None = None

    def adapt(self, x: np.ndarray) -> None:
        a = self.a
        if self.mean is None:
            self.mean, self.var = x.mean(0), x.var(0)
        else:
            assert self.var is not None
            self.mean = (1 - a) * self.mean + a * x.mean(0)
            self.var = (1 - a) * self.var + a * x.var(0)

    def normalize(self, x: np.ndarray) -> np.ndarray:
        assert self.mean is not None and self.var is not None
        return (x - self.mean) / np.sqrt(self.var + self.eps)


def two_pass(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and population variance, float64 two-pass over finite values."""
    means, vars_ = [], []
    for col in np.asarray(x, dtype=np.float64).T:
        v = col[np.isfinite(col)]
        m = v.sum() / v.size
        means.append(m)
        vars_.append(((v - m) ** 2).sum() / v.size)
    return np.array(means), np.array(vars_)


def exact_var(values: np.ndarray) -> Fraction:
    """Exact population variance of the stored float64 values."""
    fr = [Fraction(float(v)) for v in values]
    n = len(fr)
    mean = sum(fr, Fraction(0)) / n
    return sum(((v - mean) ** 2 for v in fr), Fraction(0)) / n


def assert_state_close(
    mean: np.ndarray, var: np.ndarray, ref_mean: np.ndarray, ref_var: np.ndarray, tol: float = 1e-12
) -> None:
    """var within ``tol`` relative; mean within ``tol`` standard deviations."""
    mean, var = np.asarray(mean), np.asarray(var)
    ref_mean, ref_var = np.asarray(ref_mean), np.asarray(ref_var)
    scale = np.sqrt(np.maximum(ref_var, np.finfo(float).tiny))
    var_err = np.abs(var - ref_var) / np.maximum(np.abs(ref_var), np.finfo(float).tiny)
    # A float64 mean cannot be closer than its own rounding (a few ulps of |mean|).
    mean_err = np.maximum(np.abs(mean - ref_mean) - 4 * np.spacing(np.abs(ref_mean)), 0) / scale
    assert np.all(var_err <= tol), f"variance relative error {var_err.max():.3g} > {tol}"
    assert np.all(mean_err <= tol), f"mean error {mean_err.max():.3g} std devs > {tol}"
