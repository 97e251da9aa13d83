"""The training-loop experiment (bench/seed_claim) on a tiny configuration, no Spark.

It checks that the loop normalizes what it claims to: MXNorm ``after`` is the reference
loop of docs/design.md, ``before`` never looks at the batch it normalizes, the static scaler is
a z-score of the training set, and the report has one finite row per variant. No timing
is asserted; the figures themselves come from ``make seed-claim``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.seed_claim import report, run  # noqa: E402
from bench.seed_claim.data import digits_split, drift_stream  # noqa: E402

EPS = 1e-8


def _reference_states(
    batches: list[np.ndarray], alpha: float
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(mean, var) after each batch, the reference loop of docs/design.md written out in numpy."""
    states = []
    mean = var = None
    for x in batches:
        if mean is None or var is None:
            mean, var = x.mean(0), x.var(0)
        else:
            mean = (1 - alpha) * mean + alpha * x.mean(0)
            var = (1 - alpha) * var + alpha * x.var(0)
        states.append((mean, var))
    return states


def _digits_trace(variant: str) -> run.Trace:
    trace: run.Trace = []
    run.run_digits(run.VARIANT_BY_NAME[variant], "sgd", seed=0, epochs=1, trace=trace)
    return trace


def test_after_in_the_loop_is_the_reference_loop() -> None:
    trace = _digits_trace("mx_after_0.1")
    assert len(trace) == digits_split(0).x_train.shape[0] // run.BATCH_SIZE
    states = _reference_states([x for x, _ in trace], alpha=0.1)
    for (x, z), (mean, var) in zip(trace, states, strict=True):
        expected = (x - mean) / np.sqrt(var + EPS)
        np.testing.assert_allclose(z, expected, rtol=1e-12, atol=1e-12)


def test_before_normalizes_each_batch_with_the_state_before_it() -> None:
    batches, _ = drift_stream(3, n_batches=12)
    trace: run.Trace = []
    run.run_stream(
        "drift", batches, run.VARIANT_BY_NAME["mx_before_0.1"], "mlp", 3, segments=2, trace=trace
    )
    xs = [x for x, _ in trace]
    states = _reference_states(xs, alpha=0.1)
    # The first batch has no earlier state: it uses its own moments (docs/design.md, section 1).
    prior = [(xs[0].mean(0), xs[0].var(0)), *states[:-1]]
    for (x, z), (mean, var) in zip(trace, prior, strict=True):
        np.testing.assert_allclose(z, (x - mean) / np.sqrt(var + EPS), rtol=1e-12, atol=1e-12)


def test_static_whole_set_is_a_z_score_of_the_training_set() -> None:
    split = digits_split(1)
    norm = run.Normalizer(run.VARIANT_BY_NAME["static_full"], split.x_train.shape[1])
    norm.fit_static(split.x_train[:320], split.x_train)
    z = norm.serve(split.x_train)
    varying = split.x_train.std(0) > 0
    assert varying.sum() > 50
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(z.std(0)[varying], 1.0, rtol=1e-12)
    # The warm-up scaler sees only its warm-up rows.
    first = run.Normalizer(run.VARIANT_BY_NAME["static_first"], split.x_train.shape[1])
    first.fit_static(split.x_train[:320], split.x_train)
    np.testing.assert_allclose(first.serve(split.x_train[:320]).mean(0), 0.0, atol=1e-12)


def test_serving_does_not_move_the_state() -> None:
    batches, _ = drift_stream(0, n_batches=3)
    norm = run.Normalizer(run.VARIANT_BY_NAME["mx_after_0.1"], batches[0][0].shape[1])
    norm.train(batches[0][0])
    before = norm.serve(batches[1][0])
    norm.serve(batches[2][0])
    np.testing.assert_array_equal(norm.serve(batches[1][0]), before)


def test_drift_stream_drifts() -> None:
    batches, jump = drift_stream(0, n_batches=50)
    assert 0 < jump < 50
    first = np.concatenate([x for x, _ in batches[:5]])
    last = np.concatenate([x for x, _ in batches[-5:]])
    moved = np.abs(last.mean(0) - first.mean(0)) / first.std(0)
    assert np.median(moved) > 1.0  # most means move by more than one initial sd


def test_tiny_run_gives_one_finite_row_per_variant(tmp_path: Path) -> None:
    cfg = run.Config(
        seeds=1, epochs=2, epoch_batches=4, drift_batches=24, labelmix_batches=20, segments=2
    )
    results = run.run_all(cfg, log=False)
    table = report.collect(results)
    for ds in cfg.datasets:
        for model in cfg.models:
            for name in cfg.variants:
                ms = table[(ds, model, name)]
                assert sorted(ms) == [0]
                for m in ms.values():
                    for value in (m.acc_first, m.acc_end, m.acc_mean, m.norm_us):
                        assert math.isfinite(value)
                    assert 0.0 <= m.acc_mean <= 1.0
    meta = {"command": "test", "date": "-", "elapsed_s": 0.0, "cpus": 1, "load": 0.0}
    md = report.render(results, cfg, {**meta, "python": "-"})
    sections = md.split("\n### ")[1:]
    assert len(sections) == len(cfg.datasets) * len(cfg.models)
    for section in sections:
        rows = [line for line in section.splitlines() if line.startswith("| ")][1:]
        labels = [row.split(" | ")[0].removeprefix("| ") for row in rows]
        assert labels == [run.VARIANT_BY_NAME[n].label for n in cfg.variants]
        for row in rows:
            first_cell = row.split(" | ")[1]
            assert math.isfinite(float(first_cell.split(" ± ")[0]))
    report.plot(results, cfg, tmp_path / "accuracy.png")
    assert (tmp_path / "accuracy.png").stat().st_size > 10_000
