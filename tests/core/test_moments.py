"""Moments against independent references: two-pass float64, exact fractions."""

from __future__ import annotations

import itertools
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import exact_var, two_pass

from mxnorm_spark import Moments, NonNumericError, ShapeError
from mxnorm_spark.core.errors import FeatureMismatchError


def _close(m: Moments, x: np.ndarray, tol: float = 1e-12) -> None:
    ref_mean, ref_var = two_pass(x)
    sd = np.sqrt(ref_var)
    assert np.all(np.abs(m.var - ref_var) <= tol * np.abs(ref_var)), (m.var, ref_var)
    # A float64 mean cannot be closer than its own rounding (a few ulps of |mean|).
    mean_tol = tol * sd + 4 * np.spacing(np.abs(ref_mean))
    assert np.all(np.abs(m.mean - ref_mean) <= mean_tol), (m.mean, ref_mean)


def test_every_split_point_matches_two_pass() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(40, 3)) * np.array([1.0, 1e-3, 1e4])
    whole = Moments.from_array(x)
    _close(whole, x)
    for k in range(41):
        a, b = Moments.from_array(x[:k]), Moments.from_array(x[k:])
        _close(a + b, x)
        _close(b + a, x)
        assert np.array_equal((a + b).count, np.full(3, 40.0))


@settings(max_examples=60, deadline=None)
@given(
    # magnitudes below 1e-6 are flushed to 0 so exact variances stay in float range
    data=st.lists(
        st.floats(min_value=-1e6, max_value=1e6).map(lambda v: v if abs(v) > 1e-6 else 0.0),
        min_size=2,
        max_size=60,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=8),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_multiway_splits_in_any_order(data: list[float], cuts: list[int], seed: int) -> None:
    x = np.array(data).reshape(-1, 1)
    bounds = sorted({min(c, len(x)) for c in cuts} | {0, len(x)})
    parts = [Moments.from_array(x[lo:hi]) for lo, hi in itertools.pairwise(bounds)]
    order = np.random.default_rng(seed).permutation(len(parts))
    exact = exact_var(x[:, 0])
    exact_mean = sum(Fraction(v) for v in data) / len(data)
    for merged in (
        Moments.merge_all(parts, 1),
        Moments.merge_all([parts[i] for i in order], 1),
    ):
        got = Fraction(float(merged.var[0]))
        assert abs(got - exact) <= Fraction(1, 10**12) * exact, (float(got), float(exact))
        mean_err = abs(Fraction(float(merged.mean[0])) - exact_mean)
        ulps = 4 * Fraction(float(np.spacing(abs(float(exact_mean)))))
        assert mean_err <= Fraction(1, 10**12) * Fraction(float(np.sqrt(float(exact)))) + ulps


def test_merge_with_empty_is_exact_identity() -> None:
    m = Moments.from_array(np.random.default_rng(1).normal(size=(10, 2)))
    for merged in (m + Moments.empty(2), Moments.empty(2) + m):
        for f in ("count", "shift", "delta", "m2"):
            assert np.array_equal(getattr(merged, f), getattr(m, f))


def test_invalid_values_are_skipped_per_feature() -> None:
    x = np.array([[1.0, np.nan], [np.inf, 2.0], [3.0, 4.0], [-np.inf, np.nan]])
    m = Moments.from_array(x)
    assert m.count.tolist() == [2.0, 2.0]
    assert m.mean.tolist() == [2.0, 3.0]
    assert m.var.tolist() == [1.0, 1.0]


def test_feature_without_values_has_nan_moments() -> None:
    m = Moments.from_array(np.array([[np.nan, 1.0]]))
    assert m.count.tolist() == [0.0, 1.0]
    assert np.isnan(m.mean[0]) and np.isnan(m.var[0])
    assert m.var[1] == 0.0


def test_integer_float32_and_decimal_inputs_accumulate_in_float64() -> None:
    ints = np.arange(10, dtype=np.int32).reshape(5, 2)
    assert np.array_equal(Moments.from_array(ints).var, np.var(ints.astype(float), axis=0))
    f32 = np.array([[0.1], [0.2], [0.7]], dtype=np.float32)
    assert Moments.from_array(f32).var[0] == pytest.approx(np.var(f32.astype(np.float64)), 1e-15)
    dec = np.array([[Decimal("1.5")], [None], [Decimal("2.5")]], dtype=object)
    m = Moments.from_array(dec)
    assert m.count.tolist() == [2.0] and m.var.tolist() == [0.25]


def _sum_of_squares_var(parts: list[np.ndarray]) -> float:
    n = sum(p.size for p in parts)
    s = sum(p.sum() for p in parts)
    ss = sum((p * p).sum() for p in parts)
    return float((ss - s * s / n) / n)


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("1e9 + N(0,1)", lambda rng: 1e9 + rng.normal(size=1200)),
        ("1e15 + ints 0..6", lambda rng: 1e15 + rng.integers(0, 7, size=1200).astype(float)),
    ],
)
def test_cancellation_against_exact_fractions(name: str, make: object) -> None:
    rng = np.random.default_rng(7)
    values = make(rng)  # type: ignore[operator]
    exact = exact_var(values)
    parts = np.array_split(values, 12)
    merged = Moments.merge_all([Moments.from_array(p.reshape(-1, 1)) for p in parts], 1)
    rel = abs(Fraction(float(merged.var[0])) - exact) / exact
    assert rel <= Fraction(1, 10**9), f"{name}: relative error {float(rel):.3g}"
    # The textbook sum-of-squares formula loses every digit on the same data,
    # which is why the pivot-shifted two-pass computation exists.
    naive = _sum_of_squares_var(parts)
    naive_rel = abs(Fraction(naive) - exact) / exact
    assert naive_rel > Fraction(1, 10), f"{name}: sum of squares unexpectedly accurate"


def test_bad_input_errors_name_the_problem() -> None:
    with pytest.raises(ShapeError, match=r"2-D array.*got 1-D.*reshape"):
        Moments.from_array(np.arange(3.0))
    with pytest.raises(NonNumericError, match=r"dtype <U1.*not a real numeric type"):
        Moments.from_array(np.array([["a"], ["b"]]))
    with pytest.raises(NonNumericError, match=r"column 0 holds a non-numeric value '1.5'"):
        Moments.from_array(np.array([["1.5"]], dtype=object))
    with pytest.raises(NonNumericError, match="bool and complex are rejected"):
        Moments.from_array(np.array([[True]]))
    with pytest.raises(FeatureMismatchError, match="2 features with moments of 3 features"):
        Moments.empty(2).merge(Moments.empty(3))


def test_moments_are_immutable() -> None:
    m = Moments.from_array(np.ones((2, 2)))
    with pytest.raises(ValueError, match="read-only"):
        m.count[0] = 5.0
    with pytest.raises(AttributeError):
        m.count = np.zeros(2)  # type: ignore[misc]
