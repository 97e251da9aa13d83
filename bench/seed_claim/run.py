"""Train mini-batch classifiers on raw, static z-score and MXNorm inputs; write the report.

    python -m bench.seed_claim.run            # the full run of `make seed-claim`
    python -m bench.seed_claim.run --quick    # 2 seeds, short streams: checks the harness

Protocols, chosen so that no variant sees data it would not have at that point:

* digits: a stratified 75/25 split per seed; shuffled batches of 64 (the last partial
  batch of an epoch is dropped, as a data loader with ``drop_last`` would); after every
  training batch the test set is scored, normalized as it would be at serving time: with
  the scaler, or with the MXNorm state as it is after that batch.
* streams: prequential (test, then train). Batch t is first scored by the model and the
  normalizer as they are after batch t-1, then used for training. MXNorm's ``after`` mode
  normalizes a *training* batch with the state updated on it (the article's loop);
  ``before`` uses the state from before it. Neither ever sees the batch it is scored on.
* static z-score, first batches: fitted on the first 5 training batches, then frozen (the
  usual "fit the scaler on a warm-up sample" pipeline). Whole training set: fitted on every
  training row; on a stream that is look-ahead no real pipeline has, kept for comparison.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np

from bench.seed_claim.data import (
    N_CLASSES,
    Batch,
    FloatArray,
    digits_split,
    drift_stream,
    labelmix_stream,
)
from bench.seed_claim.learners import make_learner
from mxnorm_spark import MXNormState

Kind = Literal["raw", "static_first", "static_full", "mxnorm"]
OUT_DIR = Path(__file__).resolve().parent
WARMUP_BATCHES = 5
BATCH_SIZE = 64
# Batches-to-target thresholds, set below where every normalized variant ends up so that
# they measure speed, not the final level. Streams use a rolling prequential window.
TARGETS = {"digits": 0.93, "drift": 0.80, "labelmix": 0.80}
ROLLING = 10


@dataclass(frozen=True)
class Variant:
    name: str
    kind: Kind
    label: str
    alpha: float = 0.1
    apply_at: Literal["after", "before"] = "after"
    var_update: Literal["ema", "mixture"] = "ema"
    zero_variance: Literal["eps", "unit"] = "eps"


VARIANTS: tuple[Variant, ...] = (
    Variant("raw", "raw", "raw features"),
    Variant("static_first", "static_first", "static z-score, first 5 batches"),
    Variant("static_full", "static_full", "static z-score, whole training set"),
    Variant("mx_after_0.1", "mxnorm", "MXNorm after, alpha 0.1 (the article)"),
    Variant("mx_before_0.1", "mxnorm", "MXNorm before, alpha 0.1", apply_at="before"),
    # "before" meets a feature that was constant in every earlier batch with scale
    # sqrt(eps) = 1e-4 (a digits pixel that was always 0): zero_variance="unit" is the fix.
    Variant(
        "mx_before_unit_0.1",
        "mxnorm",
        "MXNorm before, alpha 0.1, zero_variance unit",
        apply_at="before",
        zero_variance="unit",
    ),
    Variant(
        "mx_mixture_0.1", "mxnorm", "MXNorm after, mixture var, alpha 0.1", var_update="mixture"
    ),
    Variant("mx_after_0.01", "mxnorm", "MXNorm after, alpha 0.01", alpha=0.01),
    Variant("mx_after_0.5", "mxnorm", "MXNorm after, alpha 0.5", alpha=0.5),
)
VARIANT_BY_NAME = {v.name: v for v in VARIANTS}


class Normalizer:
    """What a variant does to a training batch (``train``) and to data it scores (``serve``)."""

    def __init__(self, variant: Variant, n_features: int) -> None:
        self.variant = variant
        self.state: MXNormState | None = None
        self.mean = np.zeros(n_features)
        self.scale = np.ones(n_features)
        if variant.kind == "mxnorm":
            self.state = MXNormState.create(
                [f"f{j}" for j in range(n_features)],
                alpha=variant.alpha,
                var_update=variant.var_update,
                zero_variance=variant.zero_variance,
            )

    def fit_static(self, warmup: FloatArray, full: FloatArray) -> None:
        """Fit the static scalers; a no-op for raw and MXNorm."""
        if self.variant.kind not in ("static_first", "static_full"):
            return
        from sklearn.preprocessing import StandardScaler

        data = warmup if self.variant.kind == "static_first" else full
        scaler = StandardScaler().fit(data)
        # StandardScaler's own constants (scale 1 for a constant feature), applied with
        # numpy so that the per-batch cost compares like with like.
        self.mean = np.asarray(scaler.mean_, dtype=np.float64)
        self.scale = np.asarray(scaler.scale_, dtype=np.float64)

    def train(self, x: FloatArray) -> FloatArray:
        if self.state is not None:
            self.state, z = self.state.process_batch(x, apply_at=self.variant.apply_at)
            return z
        return self.serve(x)

    def serve(self, x: FloatArray) -> FloatArray:
        if self.state is not None:
            return self.state.normalize(x)
        if self.variant.kind == "raw":
            return x
        return np.asarray((x - self.mean) / self.scale, dtype=np.float64)


@dataclass
class RunResult:
    dataset: str
    model: str
    variant: str
    seed: int
    # digits: test accuracy after each training batch; streams: prequential accuracy of
    # each batch (NaN for batch 0, which nothing has been trained on yet).
    curve: list[float]
    epoch_acc: list[float]
    batches_per_epoch: int
    norm_train_s: float = 0.0
    norm_serve_s: float = 0.0
    fit_s: float = 0.0
    # Cumulative training wall time (normalization + fit) after each batch.
    train_clock: list[float] = field(default_factory=list)
    jump_batch: int | None = None


Trace = list[tuple[FloatArray, FloatArray]]


def _accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(pred == y))


def run_digits(
    variant: Variant,
    model: str,
    seed: int,
    epochs: int,
    *,
    trace: Trace | None = None,
    max_batches: int | None = None,
) -> RunResult:
    """Train for ``epochs`` epochs; score the held-out test set after every batch.

    ``max_batches`` cuts each epoch short (for a fast check of the harness only).
    """
    split = digits_split(seed)
    rng = np.random.default_rng(seed)
    n = split.x_train.shape[0]
    per_epoch = min(n // BATCH_SIZE, max_batches or n)
    orders = [rng.permutation(n) for _ in range(epochs)]
    norm = Normalizer(variant, split.x_train.shape[1])
    warm = split.x_train[orders[0][: WARMUP_BATCHES * BATCH_SIZE]]
    t0 = time.perf_counter()
    norm.fit_static(warm, split.x_train)
    res = RunResult("digits", model, variant.name, seed, [], [], per_epoch)
    res.norm_train_s = time.perf_counter() - t0
    learner = make_learner(model, split.x_train.shape[1], 10, seed)
    for order in orders:
        for b in range(per_epoch):
            idx = order[b * BATCH_SIZE : (b + 1) * BATCH_SIZE]
            x, y = split.x_train[idx], split.y_train[idx]
            t0 = time.perf_counter()
            z = norm.train(x)
            t1 = time.perf_counter()
            learner.partial_fit(z, y)
            t2 = time.perf_counter()
            res.norm_train_s += t1 - t0
            res.fit_s += t2 - t1
            res.train_clock.append(res.norm_train_s + res.fit_s)
            if trace is not None:
                trace.append((x, z))
            t0 = time.perf_counter()
            zt = norm.serve(split.x_test)
            res.norm_serve_s += time.perf_counter() - t0
            res.curve.append(_accuracy(learner.predict(zt), split.y_test))
        res.epoch_acc.append(res.curve[-1])
    return res


def run_stream(
    dataset: str,
    batches: list[Batch],
    variant: Variant,
    model: str,
    seed: int,
    *,
    segments: int,
    jump_batch: int | None = None,
    trace: Trace | None = None,
) -> RunResult:
    """Prequential: score batch t with what was learned up to t-1, then train on it."""
    norm = Normalizer(variant, batches[0][0].shape[1])
    t0 = time.perf_counter()
    norm.fit_static(
        np.concatenate([x for x, _ in batches[:WARMUP_BATCHES]]),
        np.concatenate([x for x, _ in batches]),
    )
    per_segment = len(batches) // segments
    res = RunResult(dataset, model, variant.name, seed, [], [], per_segment, jump_batch=jump_batch)
    res.norm_train_s = time.perf_counter() - t0
    learner = make_learner(model, batches[0][0].shape[1], N_CLASSES, seed)
    for t, (x, y) in enumerate(batches):
        if t == 0:
            res.curve.append(float("nan"))
        else:
            t0 = time.perf_counter()
            zs = norm.serve(x)
            res.norm_serve_s += time.perf_counter() - t0
            res.curve.append(_accuracy(learner.predict(zs), y))
        t0 = time.perf_counter()
        z = norm.train(x)
        t1 = time.perf_counter()
        learner.partial_fit(z, y)
        t2 = time.perf_counter()
        res.norm_train_s += t1 - t0
        res.fit_s += t2 - t1
        res.train_clock.append(res.norm_train_s + res.fit_s)
        if trace is not None:
            trace.append((x, z))
    curve = np.asarray(res.curve)
    res.epoch_acc = [
        float(np.nanmean(curve[k * per_segment : (k + 1) * per_segment])) for k in range(segments)
    ]
    return res


@dataclass(frozen=True)
class Config:
    seeds: int = 5
    epochs: int = 10
    drift_batches: int = 300
    labelmix_batches: int = 200
    segments: int = 10
    epoch_batches: int | None = None  # None: whole epochs
    models: tuple[str, ...] = ("sgd", "mlp")
    variants: tuple[str, ...] = tuple(v.name for v in VARIANTS)
    datasets: tuple[str, ...] = ("digits", "drift", "labelmix")


QUICK = Config(seeds=2, epochs=2, drift_batches=60, labelmix_batches=40, segments=4)


def run_all(cfg: Config, log: bool = True) -> list[RunResult]:
    import sklearn
    from threadpoolctl import threadpool_limits

    # One BLAS thread: the matrices are tiny, and on a shared 2-core machine threaded BLAS
    # spent more time spinning than computing (half the CPU time of a run, measured).
    # Parameter validation is skipped because the same estimator is called 200+ times.
    with threadpool_limits(1), sklearn.config_context(skip_parameter_validation=True):
        return _run_all(cfg, log)


def _run_all(cfg: Config, log: bool) -> list[RunResult]:
    results: list[RunResult] = []
    for seed in range(cfg.seeds):
        streams: dict[str, tuple[list[Batch], int | None]] = {}
        if "drift" in cfg.datasets:
            streams["drift"] = drift_stream(seed, cfg.drift_batches, BATCH_SIZE)
        if "labelmix" in cfg.datasets:
            streams["labelmix"] = (labelmix_stream(seed, cfg.labelmix_batches, BATCH_SIZE), None)
        for model in cfg.models:
            for name in cfg.variants:
                v = VARIANT_BY_NAME[name]
                if "digits" in cfg.datasets:
                    results.append(
                        run_digits(v, model, seed, cfg.epochs, max_batches=cfg.epoch_batches)
                    )
                for ds, (batches, jump) in streams.items():
                    results.append(
                        run_stream(
                            ds, batches, v, model, seed, segments=cfg.segments, jump_batch=jump
                        )
                    )
            if log:
                print(f"seed {seed} model {model}: done", file=sys.stderr, flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 seeds, short runs")
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--models", default=None, help="comma list of sgd, mlp")
    p.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help=f"default {OUT_DIR}; with --quick, a temporary directory (the committed "
        "results stay as they are)",
    )
    args = p.parse_args(argv)
    cfg = QUICK if args.quick else Config()
    if args.seeds is not None:
        cfg = replace(cfg, seeds=args.seeds)
    if args.models:
        cfg = replace(cfg, models=tuple(args.models.split(",")))
    if args.out_dir is None:
        args.out_dir = Path(tempfile.gettempdir()) / "seed_claim_quick" if args.quick else OUT_DIR

    from bench.seed_claim import report

    start = time.perf_counter()
    results = run_all(cfg)
    elapsed = time.perf_counter() - start
    meta = {
        "command": os.environ.get("SEED_CLAIM_COMMAND", "python -m bench.seed_claim.run"),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "elapsed_s": elapsed,
        "cpus": os.cpu_count() or 0,
        "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
        "python": platform.python_version(),
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    md = report.render(results, cfg, meta)
    (args.out_dir / "RESULTS.md").write_text(md)
    report.plot(results, cfg, args.out_dir / "accuracy.png")
    print(f"wrote {args.out_dir / 'RESULTS.md'} and accuracy.png in {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
