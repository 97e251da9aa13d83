"""A table of ``Moments`` cases (tensorflow/transform style): empty, degenerate, extreme.

Each case carries its expected per-feature count, mean and population variance, worked
out independently: by hand where obvious, else in exact ``Fraction`` arithmetic on the
float64 values, rounded once. ``exact`` cases must match those roundings bit for bit; the
others within the tolerance of docs/design.md (variance 1e-12 relative, mean 1e-12 standard
deviations plus two ulps of ``|mean|``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

import numpy as np
import pytest

from mxnorm_spark.core.moments import Moments

NAN, INF = math.nan, math.inf
TOL = 1e-12


def fraction_moments(columns: list[list[float]]) -> tuple[list[float], list[float], list[float]]:
    """Count, mean and population variance per column of the given valid values, exact."""
    counts, means, vars_ = [], [], []
    for col in columns:
        values = [Fraction(v) for v in col]
        n = len(values)
        counts.append(float(n))
        if not n:
            means.append(NAN)
            vars_.append(NAN)
            continue
        mean = sum(values, Fraction(0)) / n
        means.append(float(mean))
        vars_.append(float(sum(((v - mean) ** 2 for v in values), Fraction(0)) / n))
    return counts, means, vars_


@dataclass(frozen=True)
class Case:
    x: Any
    count: list[float]
    mean: list[float]
    var: list[float]
    exact: bool = False


def by_fraction(x: Any, valid: list[list[float]], exact: bool = False) -> Case:
    return Case(x, *fraction_moments(valid), exact=exact)


F32 = np.array([[0.1], [0.2], [0.7], [1e7], [-3.3]], dtype=np.float32)
GAUSS = 1e9 + np.random.default_rng(5).normal(0, 1, (50, 1))

CASES: dict[str, Case] = {
    "empty": Case(np.empty((0, 2)), [0.0, 0.0], [NAN, NAN], [NAN, NAN], exact=True),
    "one row": Case(np.array([[3.5, -2e9]]), [1.0, 1.0], [3.5, -2e9], [0.0, 0.0], exact=True),
    "all-NaN column": by_fraction(
        np.array([[NAN, 1.0], [NAN, 2.0], [NAN, 4.0]]), [[], [1.0, 2.0, 4.0]]
    ),
    "constant": Case(np.full((7, 1), 0.1), [7.0], [0.1], [0.0], exact=True),
    # float32 values are read exactly as float64 and accumulated there.
    "float32": by_fraction(F32, [[float(v) for v in F32[:, 0]]]),
    "1e15 + ints 0..6": Case(
        1e15 + np.arange(7.0).reshape(-1, 1), [7.0], [1e15 + 3], [4.0], exact=True
    ),
    "mixed inf/NaN": by_fraction(
        np.array([[1.0, INF], [NAN, 2.0], [-INF, 3.0], [4.0, NAN], [INF, -INF]]),
        [[1.0, 4.0], [2.0, 3.0]],
        exact=True,
    ),
    "int64 near 2**53": by_fraction(
        np.array([[2**53], [2**53 + 2], [2**53 + 4]], dtype=np.int64),
        [[2.0**53, 2.0**53 + 2, 2.0**53 + 4]],
        exact=True,
    ),
    "object None/Decimal/int": by_fraction(
        np.array([[None, 1], [Decimal("2.5"), None], [3, 2]], dtype=object),
        [[2.5, 3.0], [1.0, 2.0]],
        exact=True,
    ),
    "1e9 + N(0,1)": by_fraction(GAUSS, [GAUSS[:, 0].tolist()]),
    "huge constant 1e300": Case(np.full((3, 1), 1e300), [3.0], [1e300], [0.0], exact=True),
    # The largest scale whose M2 (count * var) still fits in a float64.
    "1e150 spread": by_fraction(np.array([[1e150], [2e150], [3e150]]), [[1e150, 2e150, 3e150]]),
}


def bits(m: Moments) -> list[bytes]:
    return [getattr(m, f).tobytes() for f in ("count", "shift", "delta", "m2")]


def check(m: Moments, case: Case, what: str) -> None:
    count, mean, var = np.array(case.count), np.array(case.mean), np.array(case.var)
    np.testing.assert_array_equal(m.count, count, err_msg=f"{what}: count")
    if case.exact:
        np.testing.assert_array_equal(m.mean, mean, err_msg=f"{what}: mean")
        np.testing.assert_array_equal(m.var, var, err_msg=f"{what}: var")
        return
    none = count == 0
    assert np.isnan(m.mean[none]).all() and np.isnan(m.var[none]).all(), what
    has = ~none
    got_m, got_v, ref_m, ref_v = m.mean[has], m.var[has], mean[has], var[has]
    assert np.all(np.abs(got_v - ref_v) <= TOL * ref_v + np.finfo(float).tiny), (
        f"{what}: var {got_v} vs exact {ref_v}"
    )
    mean_tol = TOL * np.sqrt(ref_v) + 2 * np.spacing(np.abs(ref_m))
    assert np.all(np.abs(got_m - ref_m) <= mean_tol), f"{what}: mean {got_m} vs {ref_m}"


@pytest.fixture(params=list(CASES), ids=list(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    return CASES[request.param]


def test_moments_of_the_case(case: Case) -> None:
    check(Moments.from_array(case.x), case, "from_array")


def test_merge_with_empty_is_identity(case: Case) -> None:
    m = Moments.from_array(case.x)
    k = m.n_features
    for empty in (Moments.empty(k), Moments.from_array(np.empty((0, k)))):
        assert bits(m + empty) == bits(m)
        assert bits(empty + m) == bits(m)
        assert (empty + m).mean.tobytes() == m.mean.tobytes()
        assert (m + empty).var.tobytes() == m.var.tobytes()


def test_every_split_point_merges_to_the_case(case: Case) -> None:
    x = case.x
    for i in range(len(x) + 1):
        head, tail = Moments.from_array(x[:i]), Moments.from_array(x[i:])
        check(head + tail, case, f"split at {i}")
        check(tail + head, case, f"split at {i}, reversed")
    rows = [Moments.from_array(x[i : i + 1]) for i in range(len(x))]
    check(Moments.merge_all(rows, np.shape(x)[1]), case, "row by row")


def test_merge_with_empty_warns_nothing_for_huge_values() -> None:
    huge = Moments.from_array(np.array([[1e200], [1e200]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bits(huge + Moments.empty(1)) == bits(huge)
        assert bits(Moments.empty(1) + huge) == bits(huge)
