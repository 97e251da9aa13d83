"""The numpy core per batch against the seed article's own numpy loop, no Spark:
``python -m bench.core_vs_seed``.

Per batch, ours is ``state = state.update(Moments.from_array(x)); z = state.normalize(x)``
(exact pivot-shifted moments, NaN / inf rules, an immutable state, validation); the seed
is the article's class in plain numpy: ``m = x.mean(0); v = x.var(0)``, the EMA
``mu = (1 - a) * mu + a * m; var = (1 - a) * var + a * v``, then
``(x - mu) / np.sqrt(var + 1e-8)``. Both run over the same pre-generated float64 batches
(64x64, 256x16, 4096x64), one pass over all of them is one repetition, and the two are
interleaved round by round (which goes first alternates), so a busy machine slows both
alike. The ratio is pair by pair: repetition i of ours over repetition i of the seed,
median (min-max) over the rounds; per-batch times are the min and median of the
repetitions. ``--profile`` prints a cProfile of ours at each size instead;
``--breakdown`` the CPU time per call of each step of both (bench/PROFILE.md).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import math
import pstats
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mxnorm_spark import Moments, MXNormState
from mxnorm_spark.core.moments import (
    as_float_matrix,
    filled,
    finite_rows_moments,
    fp_quiet,
    fp_restore,
)

SHAPES: tuple[tuple[int, int], ...] = ((64, 64), (256, 16), (4096, 64))
TARGET = 1.3  # ours at most this many times the seed's time, at every size
ALPHA, EPS = 0.1, 1e-8


def batches(rows: int, cols: int, n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` batches of a drifting signal with an offset (so the moments matter)."""
    rng = np.random.default_rng(seed)
    offset = rng.uniform(-1e3, 1e3, cols)
    return [offset + i * 0.01 + rng.normal(0.0, 1.0, (rows, cols)) for i in range(n)]


def run_ours(xs: Sequence[np.ndarray], features: Sequence[str]) -> Any:
    state = MXNormState.create(features, alpha=ALPHA, eps=EPS)
    z = None
    for x in xs:
        state = state.update(Moments.from_array(x))
        z = state.normalize(x)
    return state, z


def run_seed(xs: Sequence[np.ndarray]) -> Any:
    a = ALPHA
    mu = var = None
    z = None
    for x in xs:
        m = x.mean(0)
        v = x.var(0)
        if mu is None:
            mu, var = m, v
        else:
            mu = (1 - a) * mu + a * m
            var = (1 - a) * var + a * v
        z = (x - mu) / np.sqrt(var + EPS)
    return mu, var, z


@dataclass(frozen=True)
class Row:
    shape: tuple[int, int]
    batches: int
    rounds: int
    ours_us: list[float]  # wall time per batch, one entry per round
    seed_us: list[float]
    ours_cpu_us: list[float]  # the thread's CPU time per batch
    seed_cpu_us: list[float]

    def ratios(self, cpu: bool = False) -> list[float]:
        ours, seed = (self.ours_cpu_us, self.seed_cpu_us) if cpu else (self.ours_us, self.seed_us)
        return [o / s for o, s in zip(ours, seed, strict=True) if s > 0]

    def ratio(self, cpu: bool = False) -> float:
        return statistics.median(self.ratios(cpu))

    @property
    def met(self) -> bool:
        """The verdict reads the CPU-time ratio: on a shared machine the wall clock also
        counts the time this thread waited for a core."""
        return self.ratio(cpu=True) <= TARGET

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "batches": self.batches,
            "rounds": self.rounds,
            "ours_us": self.ours_us,
            "seed_us": self.seed_us,
            "ours_cpu_us": self.ours_cpu_us,
            "seed_cpu_us": self.seed_cpu_us,
            "ratio": self.ratio(),
            "cpu_ratio": self.ratio(cpu=True),
        }


def _timed(call: Callable[[], Any]) -> tuple[float, float]:
    """Wall and CPU seconds of one call (CPU: this thread's, which a busy machine does not
    inflate by the time the thread waits for a core)."""
    c0, t0 = time.thread_time(), time.perf_counter()
    call()
    return time.perf_counter() - t0, time.thread_time() - c0


def measure(rows: int, cols: int, rounds: int, n_batches: int) -> Row:
    xs = batches(rows, cols, n_batches)
    features = [f"f{j}" for j in range(cols)]
    # The same answer before timing (to the seed's own rounding: its unshifted sums of
    # values near 1e3 are good to ~1e-11 of a standard deviation).
    (state, z), (mu, var, zs) = run_ours(xs, features), run_seed(xs)
    assert np.all(np.abs(state.mean - mu) <= 1e-9 * np.sqrt(var))
    assert np.all(np.abs(state.var - var) <= 1e-9 * var)
    assert np.allclose(z, zs, rtol=1e-9, atol=1e-9)
    ours_call, seed_call = (lambda: run_ours(xs, features)), (lambda: run_seed(xs))
    for _ in range(3):  # warm-up
        ours_call()
        seed_call()
    wall: dict[str, list[float]] = {"ours": [], "seed": []}
    cpu: dict[str, list[float]] = {"ours": [], "seed": []}
    calls = {"ours": ours_call, "seed": seed_call}
    gc.disable()
    try:
        for r in range(rounds):
            for name in ("seed", "ours") if r % 2 else ("ours", "seed"):
                w, c = _timed(calls[name])
                wall[name].append(w / n_batches * 1e6)
                cpu[name].append(c / n_batches * 1e6)
    finally:
        gc.enable()
    return Row(
        (rows, cols), n_batches, rounds, wall["ours"], wall["seed"], cpu["ours"], cpu["seed"]
    )


def run(quick: bool = False, shapes: Sequence[tuple[int, int]] = SHAPES) -> list[Row]:
    out = []
    for rows, cols in shapes:
        # About 5-10 ms of work per repetition at every size: short enough that a busy
        # machine rarely cuts into one pair, long enough for the clock.
        n_batches = max(4, min(200, 400_000 // (rows * cols)))
        out.append(measure(rows, cols, 21 if quick else 101, n_batches))
    return out


def table(rows: Sequence[Row]) -> list[str]:
    out = [
        "| batch (rows x features) | ours µs/batch, min / median | seed µs/batch, min / median "
        f"| ours / seed wall time, median (min-max) | same, CPU time | target <= {TARGET}x (CPU) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ratios, cpu = r.ratios(), r.ratios(cpu=True)
        verdict = "met" if r.met else f"missed by {r.ratio(cpu=True) / TARGET:.2f}x"
        out.append(
            f"| {r.shape[0]} x {r.shape[1]} | {min(r.ours_us):.1f} / "
            f"{statistics.median(r.ours_us):.1f} | {min(r.seed_us):.1f} / "
            f"{statistics.median(r.seed_us):.1f} | {r.ratio():.2f}x "
            f"({min(ratios):.2f}-{max(ratios):.2f}) | {r.ratio(cpu=True):.2f}x "
            f"({min(cpu):.2f}-{max(cpu):.2f}) | {verdict} |"
        )
    return out


def profile(shapes: Sequence[tuple[int, int]], top: int) -> None:
    for rows, cols in shapes:
        xs = batches(rows, cols, max(5, 200_000 // (rows * cols)) * 10)
        features = [f"f{j}" for j in range(cols)]
        run_ours(xs, features)
        prof = cProfile.Profile()
        prof.enable()
        run_ours(xs, features)
        prof.disable()
        print(f"\n==== {rows} x {cols}, {len(xs)} batches")
        pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def _per_call(stmt: Callable[[], Any], number: int, repeat: int = 7) -> float:
    """The thread's CPU µs per call of ``stmt``, the least over ``repeat`` runs of
    ``number`` calls (the least is the one a busy machine disturbed least)."""
    best = math.inf
    for _ in range(repeat):
        c0 = time.thread_time()
        for _ in range(number):
            stmt()
        best = min(best, time.thread_time() - c0)
    return best / number * 1e6


def _check_after(m: Moments) -> bool:
    """What from_array adds to finite_rows_moments to tell a batch with NaN or inf."""
    token = fp_quiet()
    try:
        return bool(m.m2.dot(filled(m.m2.shape[0], 0.0)) == 0.0)
    finally:
        fp_restore(token)


def breakdown(rows: int, cols: int, number: int = 2000) -> list[tuple[str, float]]:
    """CPU µs per call of each step of one batch, ours and the seed's, on a state that
    has seen five batches (the common case: every feature counted on both sides)."""
    xs = batches(rows, cols, 8)
    x = xs[6]
    state = MXNormState.create([f"f{j}" for j in range(cols)], alpha=ALPHA, eps=EPS)
    for b in xs[:6]:
        state = state.update(Moments.from_array(b))
    m = Moments.from_array(x)
    after = state.update(m)
    mu, var = state.mean.copy(), state.var.copy()
    bm, bv = x.mean(0), x.var(0)

    def fresh() -> MXNormState:
        # ``after`` with nothing cached, as each new state of the loop starts.
        s = object.__new__(MXNormState)
        s.__dict__.update({k: v for k, v in after.__dict__.items() if not k.startswith("_")})
        return s

    def ema() -> Any:
        return (1 - ALPHA) * mu + ALPHA * bm, (1 - ALPHA) * var + ALPHA * bv

    def seed_batch() -> Any:
        m_, v_ = x.mean(0), x.var(0)
        mu_, var_ = (1 - ALPHA) * mu + ALPHA * m_, (1 - ALPHA) * var + ALPHA * v_
        return (x - mu_) / np.sqrt(var_ + EPS)

    def ours_batch() -> Any:
        return state.update(Moments.from_array(x)).normalize(x)

    steps: list[tuple[str, Callable[[], Any]]] = [
        ("ours: one batch (update(from_array(x)) + normalize)", ours_batch),
        ("  Moments.from_array(x)", lambda: Moments.from_array(x)),
        ("    as_float_matrix(x)", lambda: as_float_matrix(x)),
        ("    (the former check before: np.isfinite(x).all())", lambda: np.isfinite(x).all()),
        ("    the check after: m2 . 0, numpy's warnings off", lambda: _check_after(m)),
        ("    finite_rows_moments(x)", lambda: finite_rows_moments(x)),
        ("  state.update(moments)", lambda: state.update(m)),
        ("  fresh state: normalize(x)", lambda: fresh().normalize(x)),
        ("    fresh state: normalization_constants()", lambda: fresh().normalization_constants()),
        ("    cached constants: normalize(x)", lambda: after.normalize(x)),
        ("    (the object a fresh state costs)", fresh),
        ("seed: one batch", seed_batch),
        ("  x.mean(0)", lambda: x.mean(0)),
        ("  x.var(0)", lambda: x.var(0)),
        ("  the EMA (mu and var)", ema),
        ("  (x - mu) / np.sqrt(var + eps)", lambda: (x - mu) / np.sqrt(var + EPS)),
    ]
    return [(label, _per_call(call, number)) for label, call in steps]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds and batches")
    p.add_argument("--profile", action="store_true", help="cProfile ours instead of timing")
    p.add_argument("--top", type=int, default=25)
    p.add_argument(
        "--breakdown", action="store_true", help="CPU µs per call of each step, ours and seed's"
    )
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)  # SPEC RESULT (bench/run.py)
    args = p.parse_args(argv)
    if args.worker:
        spec = json.loads(Path(args.worker[0]).read_text())
        rows = [r.to_dict() for r in run(bool(spec.get("quick")))]
        Path(args.worker[1]).write_text(json.dumps({"rows": rows, "target": TARGET}))
        return 0
    if args.profile:
        profile(SHAPES, args.top)
        return 0
    if args.breakdown:
        for rows, cols in SHAPES:
            print(f"\n| {rows} x {cols}: step | CPU µs per call (least of 7) |\n|---|---:|")
            number = max(20, 200_000 // (rows * cols))
            for label, us in breakdown(rows, cols, number):
                print(f"| {label} | {us:.2f} |")
        return 0
    print("\n".join(table(run(args.quick))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
