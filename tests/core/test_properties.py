"""Property tests (hypothesis) for the algebra of Moments and MXNormState, river style.

Every law is checked against an independent oracle, exact ``Fraction`` arithmetic on the
stored float64 values, with the tolerance of docs/design.md: variance within 1e-12 relative (an
absolute floor of the smallest normal float for zero variance), mean within 1e-12
standard deviations plus the rounding of a float64 mean itself (a couple of ulps of
``|mean|``: with 1e12 + N(0, 1) one ulp is already 1e-4 standard deviations), counts equal.
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from reference import Reference, assert_state_close

from mxnorm_spark.core.moments import Moments
from mxnorm_spark.core.state import MXNormState, StateOptions

TOL = 1e-12
ULPS = 2
TINY = np.finfo(np.float64).tiny
OFFSETS = [0.0, 1e3, -1e3, 1e6, -1e6, 1e9, -1e9, 1e12, -1e12]
INVALID = [math.nan, math.inf, -math.inf]
MOMENT_FIELDS = ("count", "shift", "delta", "m2")

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---- oracle --------------------------------------------------------------------------------
def exact_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column count, mean and population variance of the finite values, in exact
    arithmetic, each rounded once to float64 (NaN where a column has no finite value).

    Each float is an integer over a power of two; on a common denominator ``d`` the sums
    are exact integers: ``mean = S / (n d)``, ``var = (n Q - S**2) / (n d)**2``.
    """
    counts, means, vars_ = [], [], []
    for col in np.asarray(x, dtype=np.float64).T:
        ratios = [float(v).as_integer_ratio() for v in col[np.isfinite(col)]]
        n = len(ratios)
        counts.append(float(n))
        if n == 0:
            means.append(math.nan)
            vars_.append(math.nan)
            continue
        d = max(den for _, den in ratios)
        ints = [num * (d // den) for num, den in ratios]
        s, q = sum(ints), sum(i * i for i in ints)
        means.append(float(Fraction(s, n * d)))
        vars_.append(float(Fraction(n * q - s * s, (n * d) ** 2)))
    return np.array(counts), np.array(means), np.array(vars_)


def assert_close(
    count: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    ref: tuple[np.ndarray, np.ndarray, np.ndarray],
    what: str = "",
    *,
    pivot: np.ndarray | None = None,
) -> None:
    """Within 1e-12 (variance relative, mean in sd units), plus a few ulps of the mean and,
    with ``pivot``, of the pivot: the mean is ``pivot + delta``, rounded once at the pivot's
    scale, so a constant column (sd 0) read around a pivot next to it keeps that rounding
    (and its variance the rounding's square)."""
    ref_count, ref_mean, ref_var = ref
    np.testing.assert_array_equal(count, ref_count, err_msg=f"{what}: counts")
    none = ref_count == 0
    assert np.all(np.isnan(mean[none])) and np.all(np.isnan(var[none])), f"{what}: no data"
    has = ~none
    m, v, rm, rv = mean[has], var[has], ref_mean[has], ref_var[has]
    assert np.all(np.isfinite(m)) and np.all(np.isfinite(v)) and np.all(v >= 0), what
    var_err = np.abs(v - rv)
    var_tol = TOL * np.abs(rv) + TINY
    if pivot is not None:
        # Around a pivot the variance is m2 / n - delta**2 with delta rounded at the
        # pivot's scale: a constant column keeps the square of that rounding (sd 0 has
        # no digits to lose).
        var_tol = var_tol + ULPS * np.spacing(np.nan_to_num(np.abs(pivot[has]), nan=0.0)) ** 2
    var_ok = var_err <= var_tol
    assert var_ok.all(), f"{what}: var {v[~var_ok]} vs exact {rv[~var_ok]}"
    scale = np.abs(rm)
    if pivot is not None:
        scale = np.maximum(scale, np.nan_to_num(np.abs(pivot[has]), nan=0.0))
    mean_ok = np.abs(m - rm) <= TOL * np.sqrt(rv) + ULPS * np.spacing(scale)
    assert mean_ok.all(), (
        f"{what}: mean {m[~mean_ok]!r} vs exact {rm[~mean_ok]!r} (sd {np.sqrt(rv[~mean_ok])})"
    )


def assert_moments_close(a: Moments, b: Moments, what: str) -> None:
    """``a`` and ``b`` agree in the same sense as against the oracle (``b`` as reference)."""
    assert_close(a.count, a.mean, a.var, (b.count, b.mean, b.var), what)


def bits(m: Moments) -> dict[str, bytes]:
    return {f: getattr(m, f).tobytes() for f in MOMENT_FIELDS}


# ---- strategies ----------------------------------------------------------------------------
small_values = st.floats(-10, 10, allow_nan=False, allow_infinity=False, allow_subnormal=False)


@st.composite
def batch(draw: Any, k: int, offsets: np.ndarray, max_rows: int = 40) -> np.ndarray:
    """``offsets`` + modest values (some rounded to integers), with random invalid cells
    (NaN or +/-inf) and sometimes all-invalid columns."""
    rows = draw(st.integers(0, max_rows))
    shape = (rows, k)
    vals = draw(hnp.arrays(np.float64, shape, elements=small_values))
    vals[np.abs(vals) < 1e-30] = 0.0  # keep squares away from underflow
    cells = draw(hnp.arrays(np.uint8, shape, elements=st.integers(0, 7)))
    vals = np.where(cells & 1, np.round(vals), vals)
    x = offsets + vals
    # About a quarter of the cells are invalid: NaN, inf or -inf.
    bad = (cells >> 1) == 0
    if draw(st.integers(0, 3)) == 0:
        bad[:, draw(hnp.arrays(np.bool_, k, elements=st.booleans()))] = True
    x[bad] = np.where(vals[bad] >= 0, math.nan, draw(st.sampled_from(INVALID)))
    return x


@st.composite
def parts(draw: Any, n: int, max_rows: int = 40) -> list[np.ndarray]:
    """``n`` arrays of the same features; offsets shared by the parts, or drifting."""
    k = draw(st.integers(1, 4))
    offsets = st.lists(st.sampled_from(OFFSETS), min_size=k, max_size=k).map(np.array)
    shared = draw(offsets)
    drift = draw(st.booleans())
    return [draw(batch(k, draw(offsets) if drift else shared, max_rows)) for _ in range(n)]


@st.composite
def options(draw: Any) -> StateOptions:
    alpha = draw(st.one_of(st.none(), st.floats(0, 1, exclude_min=True)))
    if alpha is None:
        var_update, decay = "ema", "batch"
    else:
        var_update = draw(st.sampled_from(["ema", "mixture"]))
        decay = draw(st.sampled_from(["batch", "rows"]))
    return StateOptions(
        alpha=alpha,
        eps=draw(st.floats(1e-12, 1.0)),
        var_update=var_update,
        decay=decay,
        zero_variance=draw(st.sampled_from(["eps", "unit", "zero"])),
    )


# ---- merge laws ----------------------------------------------------------------------------
@SETTINGS
@given(parts(3))
def test_merge_is_exact_associative_and_commutative(xs: list[np.ndarray]) -> None:
    a, b, c = (Moments.from_array(x) for x in xs)
    for x, m in zip(xs, (a, b, c), strict=True):
        assert_close(m.count, m.mean, m.var, exact_moments(x), "from_array")
    ab, ba = a + b, b + a
    ref_ab = exact_moments(np.concatenate(xs[:2]))
    assert_close(ab.count, ab.mean, ab.var, ref_ab, "a+b")
    assert_close(ba.count, ba.mean, ba.var, ref_ab, "b+a")
    assert_moments_close(ab, ba, "a+b vs b+a")
    left, right = (a + b) + c, a + (b + c)
    ref_abc = exact_moments(np.concatenate(xs))
    assert_close(left.count, left.mean, left.var, ref_abc, "(a+b)+c")
    assert_close(right.count, right.mean, right.var, ref_abc, "a+(b+c)")
    assert_moments_close(left, right, "(a+b)+c vs a+(b+c)")
    assert_moments_close((c + a) + b, left, "(c+a)+b vs (a+b)+c")


@SETTINGS
@given(parts(1))
def test_empty_partial_is_an_identity_bit_for_bit(xs: list[np.ndarray]) -> None:
    a = Moments.from_array(xs[0])
    k = a.n_features
    for empty in (Moments.empty(k), Moments.from_array(np.empty((0, k)))):
        for merged in (a + empty, empty + a, Moments.merge_all([empty, a, empty], k)):
            assert bits(merged) == bits(a)
            assert merged.mean.tobytes() == a.mean.tobytes()
            assert merged.var.tobytes() == a.var.tobytes()
        assert bits(empty + empty) == bits(Moments.empty(k))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts(1, max_rows=12))
def test_every_split_point_gives_the_exact_moments(xs: list[np.ndarray]) -> None:
    x = xs[0]
    ref = exact_moments(x)
    for i in range(x.shape[0] + 1):
        for m in (
            Moments.from_array(x[:i]) + Moments.from_array(x[i:]),
            Moments.from_array(x[i:]) + Moments.from_array(x[:i]),
        ):
            assert_close(m.count, m.mean, m.var, ref, f"split at {i}")
    rows = [Moments.from_array(x[i : i + 1]) for i in range(x.shape[0])]
    one_by_one = Moments.merge_all(rows, x.shape[1])
    assert_close(one_by_one.count, one_by_one.mean, one_by_one.var, ref, "row by row")


@SETTINGS
@given(parts(1), st.data())
def test_any_nearby_pivot_gives_the_exact_moments(xs: list[np.ndarray], data: Any) -> None:
    """A pivot near the data (as a stream's state mean is) must not cost digits."""
    x = xs[0]
    k = x.shape[1]
    finite = np.where(np.isfinite(x), x, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: no centre
        centre = np.nanmedian(finite, axis=0) if x.shape[0] else np.full(k, np.nan)
    jitter = np.array(data.draw(st.lists(small_values, min_size=k, max_size=k)))
    unknown = np.array(data.draw(st.lists(st.booleans(), min_size=k, max_size=k)))
    shift = np.where(unknown, np.nan, centre + jitter)
    m = Moments.from_array(x, shift=shift)
    assert_close(m.count, m.mean, m.var, exact_moments(x), "shifted", pivot=shift)


# ---- JSON round trip -----------------------------------------------------------------------
@st.composite
def states(draw: Any) -> MXNormState:
    """A state after 0-4 random batches under random options; some features never see a
    valid value (their mean and var stay NaN)."""
    k = draw(st.integers(1, 4))
    names = draw(st.lists(st.text(min_size=1, max_size=6), min_size=k, max_size=k, unique=True))
    opts = draw(options())
    state = (
        MXNormState.create(names, options=opts)
        if draw(st.booleans())
        else MXNormState.create(
            names,
            opts.alpha,
            opts.eps,
            var_update=opts.var_update,
            decay=opts.decay,
            zero_variance=opts.zero_variance,
        )
    )
    offsets = np.array(draw(st.lists(st.sampled_from(OFFSETS), min_size=k, max_size=k)))
    dead = np.array(draw(st.lists(st.booleans(), min_size=k, max_size=k)))
    for _ in range(draw(st.integers(0, 4))):
        x = draw(batch(k, offsets, max_rows=6))
        x[:, dead] = math.nan
        batch_id = draw(st.one_of(st.none(), st.integers(0, 2**40)))
        state = state.update(Moments.from_array(x), batch_id)
    return state


def state_bits(s: MXNormState) -> dict[str, Any]:
    return {
        "features": s.features,
        "options": s.options.to_dict(),
        "mean": s.mean.tobytes(),
        "var": s.var.tobytes(),
        "totals": bits(s.totals),
        "batches_seen": s.batches_seen,
        "last_batch_id": s.last_batch_id,
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(states())
def test_json_round_trip_is_bit_exact(state: MXNormState) -> None:
    text = state.to_json()
    back = MXNormState.from_json(text)
    assert state_bits(back) == state_bits(state)
    assert back.options == state.options
    assert back.to_json() == text
    assert np.array_equal(back.initialized, state.initialized)
    if state.batches_seen and not state.initialized.all():
        assert np.isnan(back.mean[~back.initialized]).all()


# ---- numpy loop == Spark backfill ----------------------------------------------------------
DAYS = [20240103, 20240101, 20240104, 20240102]  # deliberately not in order
COLS = ["a", "b", "c"]


def day_frame() -> tuple[list[tuple[Any, ...]], dict[int, np.ndarray]]:
    """Rows ``(day, a, b, c)`` with nulls, NaN and inf; per day the float64 matrix.

    ``a`` is 1e9 + multiples of 1/8 and ``c`` is -1e6 + multiples of 1/4 (numpy's own sums
    are exact there, so the reference loop is an oracle to 1e-12 too); ``b`` is normal
    noise and has no valid value on 20240102; ``c`` has one valid value on 20240104.
    """
    rng = np.random.default_rng(10)
    rows: list[tuple[Any, ...]] = []
    per_day: dict[int, np.ndarray] = {}
    for i, day in enumerate(DAYS):
        n = 9 + 4 * i
        x = np.column_stack(
            [
                1e9 + rng.integers(-80, 80, n) / 8 + i,
                rng.normal(0.5 * i, 1 + i, n),
                -1e6 + rng.integers(-40, 40, n) / 4,
            ]
        )
        invalid = rng.random(x.shape) < 0.15
        if day == 20240102:
            invalid[:, 1] = True
        if day == 20240104:
            invalid[:, 2] = True
            invalid[3, 2] = False
        kinds = rng.choice(np.array([None, math.nan, math.inf, -math.inf], dtype=object), x.shape)
        for r in range(n):
            row = [kinds[r, j] if invalid[r, j] else float(x[r, j]) for j in range(3)]
            rows.append((day, *row))
        per_day[day] = np.where(invalid, math.nan, x)
    return rows, per_day


FOLD_OPTIONS = [
    StateOptions(alpha=0.3),
    StateOptions(alpha=0.2, var_update="mixture", decay="rows"),
    StateOptions(alpha=None),
]


@pytest.mark.spark
@pytest.mark.parametrize("engine", ["sql", "arrow"])
def test_numpy_loop_equals_moments_by_batch_fold(spark: Any, engine: str) -> None:
    from mxnorm_spark.batch.aggregate import moments_by_batch

    rows, per_day = day_frame()
    df = spark.createDataFrame(rows, "day long, a double, b double, c double").repartition(2)
    groups = moments_by_batch(df, COLS, "day", engine=engine)
    assert [d for d, _ in groups] == sorted(DAYS)
    for day, m in groups:
        assert_close(m.count, m.mean, m.var, exact_moments(per_day[day]), f"day {day}")
    assert groups[1][1].count[1] == 0 and groups[3][1].count[2] == 1
    everything = exact_moments(np.concatenate([per_day[d] for d in sorted(DAYS)]))
    for opts in FOLD_OPTIONS:
        spark_state = MXNormState.create(COLS, options=opts)
        for day, m in groups:
            spark_state = spark_state.update(m, batch_id=day)
        np_state = MXNormState.create(COLS, options=opts)
        for day in sorted(DAYS):
            np_state = np_state.update(Moments.from_array(per_day[day]), batch_id=day)
        what = f"{engine} {opts.to_dict()}"
        assert spark_state.batches_seen == np_state.batches_seen == len(DAYS)
        assert spark_state.last_batch_id == np_state.last_batch_id == max(DAYS)
        assert_close(
            spark_state.count,
            spark_state.mean,
            spark_state.var,
            (np_state.count, np_state.mean, np_state.var),
            what,
        )
        totals = spark_state.totals
        assert_close(totals.count, totals.mean, totals.var, everything, f"{what} totals")
        if opts.alpha is None:
            assert_close(spark_state.count, spark_state.mean, spark_state.var, everything, what)
        if opts.var_update == "ema" and opts.decay == "batch" and opts.alpha is not None:
            # The reference loop knows no missing values: run it per feature on the
            # days where that feature has valid values (a day without keeps the state).
            for j in range(len(COLS)):
                ref = Reference(alpha=opts.alpha)
                for day in sorted(DAYS):
                    col = per_day[day][:, j]
                    if np.isfinite(col).any():
                        ref.adapt(col[np.isfinite(col)].reshape(-1, 1))
                assert ref.mean is not None and ref.var is not None
                assert_state_close(
                    spark_state.mean[j : j + 1], spark_state.var[j : j + 1], ref.mean, ref.var
                )
