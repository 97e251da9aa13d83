"""MXNormState against the reference loop of docs/design.md and each option's own formula."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from reference import Reference, assert_state_close, two_pass

from mxnorm_spark import (
    CorruptStateError,
    FeatureMismatchError,
    InvalidParameterError,
    Moments,
    MXNormState,
    NotFittedError,
    ShapeError,
    StateNotFoundError,
    UnsupportedSchemaVersionError,
)
from mxnorm_spark.store import read_state, write_state

FEATURES = ["a", "b", "c"]


def _batches(seed: int = 0, k: int = 12) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    loc, scale = np.array([5.0, -3.0, 1e3]), np.array([2.0, 0.5, 40.0])
    return [rng.normal(loc + i, scale, size=(rng.integers(2, 50), 3)) for i in range(k)]


@pytest.mark.parametrize("alpha", [0.1, 0.5, 1.0])
def test_default_equals_reference_loop(alpha: float) -> None:
    ref, state = Reference(alpha), MXNormState.create(FEATURES, alpha=alpha)
    for i, x in enumerate(_batches()):
        ref.adapt(x)
        state = state.update(Moments.from_array(x), batch_id=i)
        assert ref.mean is not None and ref.var is not None
        assert_state_close(state.mean, state.var, ref.mean, ref.var)
        np.testing.assert_allclose(state.normalize(x), ref.normalize(x), rtol=0, atol=1e-12)
    assert state.batches_seen == 12 and state.last_batch_id == 11


def _option_reference(batches: list[np.ndarray], alpha: float, var_update: str, decay: str):
    mu = var = None
    for x in batches:
        m, v = two_pass(x)
        if mu is None:
            mu, var = m, v
            continue
        a = 1 - (1 - alpha) ** len(x) if decay == "rows" else alpha
        if var_update == "mixture":
            var = (1 - a) * (var + a * (m - mu) ** 2) + a * v
        else:
            var = (1 - a) * var + a * v
        mu = (1 - a) * mu + a * m
    return mu, var


@pytest.mark.parametrize(
    ("var_update", "decay"), [("mixture", "batch"), ("ema", "rows"), ("mixture", "rows")]
)
def test_options_equal_their_formulas(var_update: str, decay: str) -> None:
    batches = _batches(3)
    state = MXNormState.create(FEATURES, alpha=0.02, var_update=var_update, decay=decay)  # type: ignore[arg-type]
    for x in batches:
        state = state.update(Moments.from_array(x))
    mu, var = _option_reference(batches, 0.02, var_update, decay)
    assert_state_close(state.mean, state.var, mu, var)


def test_cumulative_equals_statistics_of_all_rows() -> None:
    batches = _batches(5)
    state = MXNormState.create(FEATURES, alpha=None)
    for x in batches:
        state = state.update(Moments.from_array(x))
    mu, var = two_pass(np.vstack(batches))
    assert_state_close(state.mean, state.var, mu, var)
    assert MXNormState.create(FEATURES, alpha="cumulative").alpha is None


def test_mixture_keeps_spread_where_ema_collapses() -> None:
    rows = np.random.default_rng(0).normal(size=(100, 1))
    ema, mix = (MXNormState.create(["x"], var_update=v) for v in ("ema", "mixture"))  # type: ignore[arg-type]
    for r in rows:
        ema = ema.update(Moments.from_array(r.reshape(1, 1)))
        mix = mix.update(Moments.from_array(r.reshape(1, 1)))
    assert ema.var[0] < 1e-3
    assert 0.2 < mix.var[0] < 5.0


def test_each_feature_initializes_on_its_first_valid_batch() -> None:
    s = MXNormState.create(["x", "y"], alpha=0.5)
    s = s.update(Moments.from_array(np.array([[1.0, np.nan], [3.0, np.nan]])))
    assert s.mean[0] == 2.0 and np.isnan(s.mean[1])
    s = s.update(Moments.from_array(np.array([[5.0, 10.0], [5.0, 14.0]])))
    assert s.mean.tolist() == [3.5, 12.0]  # y initializes, x folds in
    assert s.var.tolist() == [0.5, 4.0]
    kept = s.update(Moments.from_array(np.array([[np.nan, 0.0]])))
    assert kept.mean[0] == 3.5 and kept.var[0] == 0.5


def test_empty_batch_changes_nothing_but_is_counted() -> None:
    s = MXNormState.create(["x"]).update(Moments.from_array(np.array([[1.0], [2.0]])))
    e = s.update(Moments.empty(1), batch_id=7)
    assert np.array_equal(e.mean, s.mean) and np.array_equal(e.var, s.var)
    assert e.batches_seen == s.batches_seen + 1 and e.last_batch_id == 7


def test_update_returns_a_new_state() -> None:
    s0 = MXNormState.create(["x"])
    s1 = s0.update(Moments.from_array(np.array([[1.0]])))
    assert np.isnan(s0.mean[0]) and s1.mean[0] == 1.0
    with pytest.raises(ValueError, match="read-only"):
        s1.mean[0] = 2.0


def test_zero_variance_policies() -> None:
    x = np.array([[2.0, 1.0], [2.0, 3.0]])
    for policy, expected in (("eps", 0.5 / np.sqrt(1e-8)), ("unit", 0.5), ("zero", 0.0)):
        s = MXNormState.create(["c", "v"], zero_variance=policy).update(Moments.from_array(x))  # type: ignore[arg-type]
        out = s.normalize(np.array([[2.5, 3.0], [np.nan, 1.0]]))
        assert out[0, 0] == pytest.approx(expected, rel=1e-12)
        assert np.isnan(out[1, 0])
        assert out[0, 1] == pytest.approx(1.0, rel=1e-7)


def test_apply_before_uses_the_previous_state() -> None:
    s = MXNormState.create(["x"], alpha=0.5)
    first = np.array([[0.0], [2.0]])
    s1, out1 = s.process_batch(first, apply_at="before")
    # a feature with no state uses the batch's own moments
    np.testing.assert_allclose(out1, (first - 1.0) / np.sqrt(1.0 + 1e-8), rtol=1e-15)
    second = np.array([[10.0], [12.0]])
    s2, out2 = s1.process_batch(second, apply_at="before")
    np.testing.assert_array_equal(out2, s1.normalize(second))
    _, after = s1.process_batch(second, apply_at="after")
    np.testing.assert_array_equal(after, s2.normalize(second))


def test_json_round_trip_is_bit_exact(tmp_path: Path) -> None:
    s = MXNormState.create(FEATURES, alpha=0.3, eps=1e-6, var_update="mixture")
    for i, x in enumerate(_batches(9)):
        s = s.update(Moments.from_array(x), batch_id=i)
    back = MXNormState.from_json(s.to_json())
    for f in ("mean", "var"):
        assert getattr(back, f).tobytes() == getattr(s, f).tobytes()
    for f in ("count", "shift", "delta", "m2"):
        assert getattr(back.totals, f).tobytes() == getattr(s.totals, f).tobytes()
    assert (back.alpha, back.eps, back.var_update, back.last_batch_id) == (0.3, 1e-6, "mixture", 11)
    loaded = read_state(write_state(s, tmp_path / "state.json"))
    assert loaded.to_json() == s.to_json()
    # a state with unseen features keeps its NaNs through JSON
    fresh = MXNormState.from_json(MXNormState.create(["x"]).to_json())
    assert np.isnan(fresh.mean[0])


def test_flipped_digit_is_rejected(tmp_path: Path) -> None:
    s = MXNormState.create(["x"]).update(Moments.from_array(np.array([[1.25], [3.5]])))
    path = Path(write_state(s, tmp_path / "s.json"))
    text = path.read_text()
    i = text.index('"mean"')
    j = next(k for k in range(i, len(text)) if text[k].isdigit())
    tampered = text[:j] + ("7" if text[j] != "7" else "8") + text[j + 1 :]
    path.write_text(tampered)
    with pytest.raises(CorruptStateError, match="fails its checksum"):
        read_state(path)


def test_corrupt_unknown_and_truncated_files(tmp_path: Path) -> None:
    good = MXNormState.create(["x"]).to_json()
    with pytest.raises(CorruptStateError, match="not valid JSON"):
        MXNormState.from_json(good[: len(good) // 2])
    with pytest.raises(CorruptStateError, match="not an MXNorm state"):
        MXNormState.from_json('{"type": "other"}')
    doc = json.loads(good)
    doc["schema_version"] = 99
    with pytest.raises(UnsupportedSchemaVersionError, match=r"schema_version 99.*only version 1"):
        MXNormState.from_json(json.dumps(doc))
    with pytest.raises(StateNotFoundError, match="not found"):
        read_state(tmp_path / "missing.json")
    with pytest.raises(StateNotFoundError, match="no committed version"):
        read_state(tmp_path)


def test_load_directory_takes_newest_version(tmp_path: Path) -> None:
    s = MXNormState.create(["x"])
    for i in range(3):
        s = s.update(Moments.from_array(np.array([[float(i)], [i + 2.0]])), batch_id=i)
        write_state(s, tmp_path / f"v-{i:012d}.json")
    (tmp_path / ".v-000000000003.json.tmp").write_text("partial")
    assert read_state(tmp_path).last_batch_id == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": 0.0}, r"alpha must be in \(0, 1\], got 0.0"),
        ({"alpha": 1.5}, r"alpha must be in \(0, 1\], got 1.5"),
        ({"alpha": float("nan")}, r"alpha must be in \(0, 1\]"),
        ({"alpha": "fast"}, r"alpha must be a number in \(0, 1\] or None/'cumulative'"),
        ({"eps": 0.0}, r"eps must be a positive finite number \(> 0\), got 0.0"),
        ({"eps": -1e-8}, r"eps must be a positive finite number"),
        ({"var_update": "welford"}, r"var_update must be one of \['ema', 'mixture'\]"),
        ({"decay": "time"}, r"decay must be one of \['batch', 'rows'\]"),
        ({"zero_variance": "drop"}, r"zero_variance must be one of"),
        ({"alpha": None, "decay": "rows"}, r"alpha=None \(cumulative\).*no var_update or decay"),
    ],
)
def test_bad_parameters_raise_named_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidParameterError, match=message):
        MXNormState.create(["x"], **kwargs)


def test_bad_features_and_arrays() -> None:
    with pytest.raises(InvalidParameterError, match="repeated"):
        MXNormState.create(["x", "x"])
    with pytest.raises(InvalidParameterError, match="the string 'x'"):
        MXNormState.create("x")
    s = MXNormState.create(["x", "y"])
    with pytest.raises(FeatureMismatchError, match=r"moments have 3 features but the state has 2"):
        s.update(Moments.empty(3))
    with pytest.raises(NotFittedError, match=r"\['x', 'y'\] have no state yet"):
        s.normalize(np.zeros((1, 2)))
    s = s.update(Moments.from_array(np.ones((2, 2))))
    with pytest.raises(ShapeError, match="got 1-D"):
        s.normalize(np.zeros(2))
    with pytest.raises(FeatureMismatchError, match="x has 3 columns but the state has 2"):
        s.normalize(np.zeros((1, 3)))
