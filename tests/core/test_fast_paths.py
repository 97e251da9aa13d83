"""The per-batch fast paths of the numpy core against the general (masked) ones and
independent references: a batch of valid values skips the masks, an update where every
feature has data on both sides skips the lane selection, and the state caches its
normalization constants. Same answers, same immutability."""

from __future__ import annotations

import warnings
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from reference import assert_state_close, exact_var, two_pass

from mxnorm_spark import Moments, MXNormState, NotFittedError
from mxnorm_spark.core.errors import ValueRangeError
from mxnorm_spark.core.moments import _fp_modes, finite_rows_moments
from mxnorm_spark.core.state import StateOptions, scale_of, update_lanes

FIELDS = ("count", "shift", "delta", "m2")
# Both layouts of finite_rows_moments (columns: more rows than 2 k, and k <= 32 or
# k < 64 with rows <= 256; row-major blocks otherwise), block edges (128) and one-row /
# one-feature batches.
SHAPES = [(1, 5), (64, 64), (256, 16), (129, 1), (200, 48), (300, 80), (1000, 40), (257, 65)]


def bits(m: Moments) -> dict[str, bytes]:
    return {name: getattr(m, name).tobytes() for name in FIELDS}


def offset_rows(rng: np.random.Generator, rows: int, k: int) -> np.ndarray:
    """``1e9 + N(0, s_j)``: the data where unshifted sums lose their digits."""
    return 1e9 + rng.standard_normal((rows, k)) * (1.0 + np.arange(k) % 7)


@pytest.mark.parametrize(("rows", "k"), SHAPES)
def test_valid_batches_match_two_pass_and_exact_fractions(rows: int, k: int) -> None:
    rng = np.random.default_rng(rows * 1000 + k)
    x = offset_rows(rng, rows, k)
    m = Moments.from_array(x)
    assert m.count.tolist() == [float(rows)] * k
    if rows > 1:
        assert_state_close(m.mean, m.var, *two_pass(x))
        exact = exact_var(x[:, -1])
        assert abs(Fraction(float(m.var[-1])) - exact) <= exact / 10**12
    # A given pivot (a stream passes its state mean) is used where finite.
    shift = np.where(np.arange(k) % 2 == 0, 1e9 + 3.0, np.nan)
    s = Moments.from_array(x, shift=shift)
    assert s.shift.tolist() == np.where(np.isnan(shift), x[0], shift).tolist()
    if rows > 1:
        assert_state_close(s.mean, s.var, *two_pass(x))


@pytest.mark.parametrize(("rows", "k"), SHAPES)
def test_bits_do_not_depend_on_memory_layout_and_the_input_is_untouched(rows: int, k: int) -> None:
    x = offset_rows(np.random.default_rng(k), rows, k)
    keep = x.copy()
    want = bits(Moments.from_array(x))
    wide = np.zeros((rows, 2 * k))
    wide[:, ::2] = x
    for same in (np.asfortranarray(x), wide[:, ::2], x.T.copy().T):
        assert bits(Moments.from_array(same)) == want
        assert bits(finite_rows_moments(same)) == want
    assert np.array_equal(x, keep) and np.array_equal(wide[:, ::2], keep)


@pytest.mark.parametrize("rows", [64, 2048])  # checked before / after the moments (65,536)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_one_invalid_value_takes_the_masked_path(bad: float, rows: int) -> None:
    rng = np.random.default_rng(5)
    x = offset_rows(rng, rows, 40)
    x[0, 2] = x[40, 4] = bad  # the first row too: it is the default pivot
    x[7, 30] = -bad
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning from the unmasked attempt
        m = Moments.from_array(x)
    assert bits(m) == bits(Moments.from_columns(x.T))
    want = np.full(40, float(rows))
    want[[2, 4, 30]] -= 1
    assert m.count.tolist() == want.tolist()
    ok = np.isfinite(x[:, 2])
    assert_state_close(m.mean[2:3], m.var[2:3], *two_pass(x[ok, 2:3]))


OPTIONS = [
    StateOptions(),
    StateOptions(alpha=0.3, var_update="mixture"),
    StateOptions(alpha=0.2, decay="rows"),
    StateOptions(alpha=1.0, decay="rows"),
    StateOptions(alpha=None),
    StateOptions(alpha=0.5, zero_variance="zero"),
]


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: str(o.to_dict()))
def test_counted_update_is_the_masked_update_bit_for_bit(opts: StateOptions) -> None:
    rng = np.random.default_rng(2)
    state = MXNormState.create(["a", "b", "c"], options=opts)
    for i in range(12):
        x = rng.normal(10.0 * i, 1.0 + i, (int(rng.integers(1, 40)), 3))
        if i == 5:
            x[:, 1] = np.nan  # a batch without b: the masked path, b keeps its state
        m = Moments.from_array(x)
        mean, var, totals = update_lanes(
            opts, state.mean, state.var, state.totals.fields(), m.fields()
        )
        state = state.update(m, batch_id=i)
        assert state.mean.tobytes() == np.asarray(mean).tobytes(), i
        assert state.var.tobytes() == np.asarray(var).tobytes(), i
        assert bits(state.totals) == bits(Moments(*totals)), i
        assert state.batches_seen == i + 1 and state.last_batch_id == i


def test_states_and_their_constants_stay_read_only_and_exact() -> None:
    rng = np.random.default_rng(9)
    s = MXNormState.create(["a", "b"])
    for _ in range(3):
        s = s.update(Moments.from_array(rng.normal(5.0, 2.0, (30, 2))))
    arrays: list[Any] = [s.mean, s.var, *(getattr(s.totals, f) for f in FIELDS)]
    mean, scale = s.normalization_constants()
    for arr in [*arrays, mean, scale]:
        with pytest.raises(ValueError, match="read-only"):
            arr[0] = 0.0
    assert mean.tobytes() == s.mean.tobytes()
    assert scale.tobytes() == np.sqrt(s.var + s.eps).tobytes()
    x = rng.normal(5.0, 2.0, (7, 2))
    assert s.normalize(x).tobytes() == ((x - s.mean) / np.sqrt(s.var + s.eps)).tobytes()
    assert s.normalization_constants()[1].tobytes() == scale.tobytes()
    # A feature without state still raises, and the fallback still fills it.
    half = MXNormState.create(["a", "b"]).update(
        Moments.from_array(np.array([[1.0, np.nan], [3.0, np.nan]]))
    )
    with pytest.raises(NotFittedError, match=r"\['b'\]"):
        half.normalize(np.ones((1, 2)))
    filled = half.update(Moments.from_array(np.array([[2.0, 4.0], [2.0, 8.0]])))
    fm, fs = half.normalization_constants(fallback=filled)
    assert fm.tolist() == [2.0, 6.0]
    assert fs.tolist() == scale_of(np.array([1.0, 4.0]), half.options).tolist()


def test_finite_values_that_overflow_keep_their_moments_and_are_refused_without_warnings() -> None:
    # Finite values whose spread overflows float64: the unmasked moments come out inf, the
    # values are found finite, so the moments stay the unmasked ones (NaN and inf rules
    # untouched), and a counted update refuses them with its named error, no numpy
    # RuntimeWarning before it.
    x = np.array([[1e308, 1.0], [-1e308, 2.0], [0.0, 4.0]])
    with np.errstate(all="ignore"):
        want = bits(finite_rows_moments(x))
    state = MXNormState.create(["a", "b"]).update(Moments.from_array(np.ones((2, 2))))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = Moments.from_array(x)
        assert bits(m) == want
        assert m.count.tolist() == [3.0, 3.0] and not np.isfinite(m.m2[0])
        with pytest.raises(ValueRangeError, match=r"\['a'\].*overflow float64"):
            state.update(m)


@pytest.mark.parametrize("rows", [64, 2048])
def test_numpy_error_modes_are_restored(rows: int) -> None:
    # The unmasked attempt turns numpy's floating-point errors off and back on: a caller's
    # "raise" neither fires inside nor is lost after, with or without an inf in the batch.
    x = offset_rows(np.random.default_rng(3), rows, 40)
    bad = x.copy()
    bad[0, 1] = bad[9, 1] = np.inf
    state = MXNormState.create([f"f{j}" for j in range(40)]).update(Moments.from_array(x))
    with np.errstate(all="raise"):
        for batch in (x, bad):
            state = state.update(Moments.from_array(batch))
            assert np.geterr()["invalid"] == "raise" and np.geterr()["over"] == "raise"
        with pytest.raises(FloatingPointError):
            np.array([np.inf]) - np.array([np.inf])
    assert np.geterr()["invalid"] == "warn"


def test_the_numpy_1_error_modes_quiet_and_restore() -> None:
    # Without numpy 2's context variable, np.seterr turns the warnings off and back.
    quiet, restore = _fp_modes("no_such_module_here")
    with np.errstate(invalid="raise"):
        token = quiet()
        try:
            assert np.geterr()["invalid"] == "ignore"
            assert np.isnan(np.array([np.inf]) - np.array([np.inf]))[0]
        finally:
            restore(token)
        assert np.geterr()["invalid"] == "raise"
