"""The exact open-batch partials (:func:`exact_partials`) against a straightforward reference
in exact fractions, on adversarial inputs: every path of the kernel (the fast fixed-point
blocks, the general per-exponent bins, their int64 and float64 drains) must give the same
integers as summing ``Fraction(x)`` and ``Fraction(x) ** 2`` one value at a time."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import mxnorm_spark.core.open_batches as ob
from mxnorm_spark.core.open_batches import SCALE, OpenBatch, exact_partials

TINY = 5e-324
HUGE = 1.7976931348623157e308


def reference(x: np.ndarray, codes: np.ndarray, n_groups: int) -> list[OpenBatch]:
    """One value at a time, in exact fractions: ``sum(x) * 2**SCALE`` and
    ``sum(x**2) * 2**SCALE`` as integers (they are: every term is a multiple of
    ``2**-SCALE``)."""
    unit = Fraction(1 << SCALE)
    out = []
    for g in range(n_groups):
        rows = x[codes == g]
        count, s1, s2 = [], [], []
        for j in range(x.shape[1]):
            vals = [Fraction(float(v)) for v in rows[:, j] if np.isfinite(v)]
            t1 = sum(vals, Fraction(0)) * unit
            t2 = sum((v * v for v in vals), Fraction(0)) * unit
            assert t1.denominator == 1 and t2.denominator == 1
            count.append(len(vals))
            s1.append(int(t1))
            s2.append(int(t2))
        out.append(OpenBatch(len(rows), tuple(count), tuple(s1), tuple(s2)))
    return out


def adversarial(rng: np.random.Generator, rows: int) -> np.ndarray:
    """Columns that hit every edge: subnormals, the largest doubles (squares far beyond
    float64), mixed signs, NaN/inf, zeros, integers (exact squares), 600 decades of
    exponents, values at the edge of the fast band, a constant and an all-NaN column, and
    blocks at the ends of the exponents the fast path takes (squares near overflow, Dekker's
    error term near underflow)."""
    k = 12
    x = rng.normal(0.0, 1.0, (rows, k))
    x[:, 0] = TINY * rng.integers(-(1 << 52), 1 << 52, rows)  # subnormals
    x[:, 1] = HUGE * rng.uniform(-1.0, 1.0, rows)
    x[:, 2] = rng.normal(0, 1, rows) * 10.0 ** rng.integers(-300, 300, rows)
    x[:, 3] = np.round(rng.normal(0, 1e6, rows))  # integers: x * x is exact
    x[:, 4] = 1e9 + rng.normal(0, 1, rows)
    x[:, 5] = rng.choice([1.0, -1.0], rows) * np.ldexp(
        1.0 + rng.random(rows), -rng.integers(0, 20, rows)
    )
    x[:, 6] = 3.25
    x[:, 7] = np.nan
    x[:, 8] = rng.normal(0, 1, rows) * np.where(rng.random(rows) < 0.5, 1e-200, 1e200)
    x[:, 9] = np.exp(rng.normal(0, 6, rows))  # mostly far below the block's largest
    x[:, 10] = np.ldexp(rng.normal(0, 1, rows), 505)
    x[:, 11] = np.ldexp(rng.normal(0, 1, rows), -470)
    special = rng.random((rows, k)) < 0.03
    x[special] = rng.choice([np.nan, np.inf, -np.inf, 0.0, -0.0, TINY, -HUGE], special.sum())
    return x


@pytest.mark.parametrize("layout", ["C", "F"])
def test_partials_equal_exact_fractions_on_adversarial_values(layout: str) -> None:
    rng = np.random.default_rng(24)
    x = np.asarray(adversarial(rng, 1500), order=layout)
    codes = rng.integers(0, 4, len(x))  # unsorted, and group 4 of 5 has no row
    assert exact_partials(x, codes, 5) == reference(x, codes, 5)


def test_every_drain_path_gives_the_same_integers(monkeypatch: Any) -> None:
    rng = np.random.default_rng(8)
    x = adversarial(rng, 1200)
    x[600:, 4] = 1e12 + rng.normal(0, 1, 600)  # a new grid for a feature: its int64 sums drain
    codes = np.sort(rng.integers(0, 3, len(x)))
    want = reference(x, codes, 3)
    assert exact_partials(x, codes, 3) == want
    monkeypatch.setattr(ob, "_BLOCK_ROWS", 64)  # many blocks, groups across block edges
    monkeypatch.setattr(ob, "_MAX_ADDS", 2)  # the int64 sums drain every two blocks
    monkeypatch.setattr(ob, "CHUNK_ROWS", 100)  # the float64 bins drain midway
    assert exact_partials(x, codes, 3) == want


def test_block_sums_stay_below_two_to_the_53() -> None:
    # A full block of one sign near its top: the piece sums reach their bound.
    rng = np.random.default_rng(9)
    x = np.ldexp(float(1 << 52) - rng.integers(1, 1 << 30, (ob._BLOCK_ROWS, 1)), -51)
    codes = np.zeros(len(x), dtype=int)
    assert exact_partials(x, codes, 1) == reference(x, codes, 1)


def test_many_groups_and_one_row_groups() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(5.0, 2.0, (400, 3))
    x[::7, 1] = np.nan
    codes = rng.permutation(400) % 150
    assert exact_partials(x, codes, 150) == reference(x, codes, 150)


def test_long_runs_of_groups_are_summed_unsorted() -> None:
    # Runs of 200 rows (files of one batch value): no sort, a group twice in one block.
    rng = np.random.default_rng(6)
    codes = np.repeat([0, 1, 0, 2, 1, 0], 200)
    x = rng.normal(5.0, 2.0, (len(codes), 2))
    x[::11, 0] = np.inf
    assert exact_partials(x, codes, 3) == reference(x, codes, 3)


def test_empty_input_gives_empty_partials() -> None:
    parts = exact_partials(np.zeros((0, 2)), np.zeros(0, dtype=int), 2)
    assert parts == [OpenBatch.empty(2), OpenBatch.empty(2)]


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 40), st.integers(1, 3)),
        elements=st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True),
    ),
    st.integers(1, 3),
)
def test_any_floats_give_the_exact_sums(x: np.ndarray, n_groups: int) -> None:
    codes = np.arange(len(x)) % n_groups
    assert exact_partials(x, codes, n_groups) == reference(x, codes, n_groups)
