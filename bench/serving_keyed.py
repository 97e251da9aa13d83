"""Keyed online serving with 1M keys loaded, no Spark: ``python -m bench.serving_keyed``.

Builds a :class:`~mxnorm_spark.serving.keyed.KeyedNormalizer` over 1,000,000 keys x 16
features (random constants, as an export of that size would hold), then times
``transform_row`` on one row per call: p50 / p99 over 100k calls, keys drawn at random,
one call in ten for a key that is not loaded (the global fallback). Also reports the time
to build the lookup and the process's resident memory after it. Writes
``bench/SERVING-KEYED.md``. ``--quick``: 100k keys and 10k calls.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from bench.serving import latencies, pin_one_core, summary
from mxnorm_spark import Moments, MXNormState
from mxnorm_spark.serving.keyed import KeyedNormalizer

FEATURES = [f"f{j:02d}" for j in range(16)]
OUT = Path(__file__).resolve().parent / "SERVING-KEYED.md"
P99_TARGET_US = 100.0


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def build(n_keys: int, rng: np.random.Generator) -> tuple[KeyedNormalizer, float]:
    x = rng.normal(0.0, 1.0, (1000, len(FEATURES)))
    global_state = MXNormState.create(FEATURES).update(Moments.from_array(x))
    mean = rng.normal(0.0, 1.0, (n_keys, len(FEATURES)))
    scale = rng.uniform(0.5, 2.0, (n_keys, len(FEATURES)))
    count = rng.integers(0, 50, (n_keys, len(FEATURES))).astype(np.float64)
    keys = [(i,) for i in range(n_keys)]
    t0 = time.perf_counter()
    normalizer = KeyedNormalizer(
        global_state, ["sensor"], keys, mean=mean, scale=scale, count=count, min_key_rows=5
    )
    return normalizer, time.perf_counter() - t0


def command_line(quick: bool, pinned: str) -> str:
    return (
        f"Command: `python -m bench.serving_keyed{' --quick' if quick else ''}`. "
        f"Python {platform.python_version()}, numpy {np.__version__}, "
        f"{os.cpu_count()} logical cores, {pinned}. {len(FEATURES)} features; each call "
        "timed alone with `time.perf_counter_ns` after a warm-up, garbage collector off; "
        "keys at random, about one in ten not loaded (global fallback)."
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    n_keys, calls = (100_000, 10_000) if args.quick else (1_000_000, 100_000)
    pinned = pin_one_core()
    rng = np.random.default_rng(3)
    before = rss_mib()
    normalizer, build_s = build(n_keys, rng)
    after = rss_mib()
    rows = [
        {"sensor": int(k), **dict(zip(FEATURES, rng.normal(0.0, 1.0, len(FEATURES)), strict=True))}
        for k in rng.integers(0, int(n_keys * 1.1), 1000)  # about one in ten not loaded
    ]
    it = iter(range(10**12))
    ns = latencies(lambda: normalizer.transform_row(rows[next(it) % len(rows)]), calls)
    p50, p99 = summary(ns)
    verdict = "met" if p99 < P99_TARGET_US else "missed"
    text = f"""# Keyed serving: one row with {n_keys:,} keys loaded

{command_line(args.quick, pinned)}

| | value |
|---|---:|
| keys loaded | {n_keys:,} |
| building the lookup | {build_s:.1f} s |
| resident memory, before / after building | {before:,.0f} / {after:,.0f} MiB |
| `KeyedNormalizer.transform_row`, p50 | {p50:.2f} µs |
| `KeyedNormalizer.transform_row`, p99 | {p99:.2f} µs |

Target p99 < {P99_TARGET_US:.0f} µs (keyed): {verdict}.
"""
    OUT.write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
