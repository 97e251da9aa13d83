"""Keyed online serving with 1M keys loaded, no Spark: ``python -m bench.serving_keyed``.

Builds a :class:`~mxnorm_spark.serving.keyed.KeyedNormalizer` over 1,000,000 keys x 16
features (random constants, as an export of that size would hold), then times
``transform_row`` on one row per call: p50 / p99 over 100k calls, keys drawn at random,
one call in ten for a key that is not loaded (the global fallback). Also reports the time
to build the lookup (target: at most 2 s) and the process's resident memory after it
(at most 500 MiB). Writes ``bench/SERVING-KEYED.md`` (not with ``--quick``: 100k keys
and 10k calls); ``--json PATH`` also writes the figures there (``bench/run.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.serving import latencies, pin_one_core, summary
from mxnorm_spark import Moments, MXNormState
from mxnorm_spark.serving.keyed import KeyedNormalizer

FEATURES = [f"f{j:02d}" for j in range(16)]
OUT = Path(__file__).resolve().parent / "SERVING-KEYED.md"
P99_TARGET_US = 100.0
BUILD_TARGET_S = 2.0
RSS_TARGET_MIB = 500.0


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def build(n_keys: int, rng: np.random.Generator) -> tuple[KeyedNormalizer, float, float]:
    """The normalizer over ``n_keys`` random keys, and the wall and CPU seconds of building
    its lookup (the constructor; the inputs are made before the clock starts)."""
    x = rng.normal(0.0, 1.0, (1000, len(FEATURES)))
    global_state = MXNormState.create(FEATURES).update(Moments.from_array(x))
    mean = rng.normal(0.0, 1.0, (n_keys, len(FEATURES)))
    scale = rng.uniform(0.5, 2.0, (n_keys, len(FEATURES)))
    count = rng.integers(0, 50, (n_keys, len(FEATURES))).astype(np.float64)
    keys = [(i,) for i in range(n_keys)]
    c0, t0 = time.thread_time(), time.perf_counter()
    normalizer = KeyedNormalizer(
        global_state, ["sensor"], keys, mean=mean, scale=scale, count=count, min_key_rows=5
    )
    return normalizer, time.perf_counter() - t0, time.thread_time() - c0


def measure(quick: bool = False) -> dict[str, Any]:
    """Build the lookup, then time ``transform_row``; every figure of the report."""
    n_keys, calls = (100_000, 10_000) if quick else (1_000_000, 100_000)
    rng = np.random.default_rng(3)
    before = rss_mib()
    normalizer, build_s, build_cpu_s = build(n_keys, rng)
    after = rss_mib()  # the inputs are gone with build(): the normalizer's own memory
    rows = [
        {"sensor": int(k), **dict(zip(FEATURES, rng.normal(0.0, 1.0, len(FEATURES)), strict=True))}
        for k in rng.integers(0, int(n_keys * 1.1), 1000)  # about one in ten not loaded
    ]
    it = iter(range(10**12))
    ns = latencies(lambda: normalizer.transform_row(rows[next(it) % len(rows)]), calls)
    p50, p99 = summary(ns)
    return {
        "keys": n_keys,
        "features": len(FEATURES),
        "calls": calls,
        "build_s": build_s,
        "build_cpu_s": build_cpu_s,
        "rss_before_mib": before,
        "rss_after_mib": after,
        "p50_us": p50,
        "p99_us": p99,
    }


def verdicts(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(target, measured, verdict)`` for the three keyed-serving targets."""
    out = []
    for target, value, bound, shown in (
        (
            f"keyed serving: building the lookup for {r['keys']:,} keys x {r['features']}, "
            f"<= {BUILD_TARGET_S:.0f} s (CPU time: one thread, no I/O, so a quiet machine's "
            "wall time)",
            r["build_cpu_s"],
            BUILD_TARGET_S,
            f"{r['build_cpu_s']:.2f} s (wall {r['build_s']:.2f} s)",
        ),
        (
            f"keyed serving: resident memory after building, <= {RSS_TARGET_MIB:.0f} MiB",
            r["rss_after_mib"],
            RSS_TARGET_MIB,
            f"{r['rss_after_mib']:,.0f} MiB",
        ),
        (
            f"keyed serving: `transform_row` p99 < {P99_TARGET_US:.0f} µs",
            r["p99_us"],
            P99_TARGET_US,
            f"{r['p99_us']:.1f} µs",
        ),
    ):
        verdict = "met" if value <= bound else f"missed by {value / bound:.2f}x"
        out.append((target, shown, verdict))
    return out


def command_line(quick: bool, pinned: str) -> str:
    return (
        f"Command: `python -m bench.serving_keyed{' --quick' if quick else ''}`. "
        f"Python {platform.python_version()}, numpy {np.__version__}, "
        f"{os.cpu_count()} logical cores, {pinned}, load average "
        f"{os.getloadavg()[0]:.1f}. {len(FEATURES)} features; building: the "
        "`KeyedNormalizer` constructor from the keys and the constant tables (wall, and the "
        "thread's CPU time); each `transform_row` call timed alone with "
        "`time.perf_counter_ns` after a warm-up, garbage collector off; keys at random, "
        "about one in ten not loaded (global fallback)."
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)  # SPEC RESULT (bench/run.py)
    args = parser.parse_args(argv)
    pinned = pin_one_core()
    if args.worker:
        spec = json.loads(Path(args.worker[0]).read_text())
        Path(args.worker[1]).write_text(json.dumps(measure(bool(spec.get("quick")))))
        return
    r = measure(args.quick)
    if args.json:
        args.json.write_text(json.dumps(r, indent=1))
    table = "\n".join(f"| {t} | {m} | {v} |" for t, m, v in verdicts(r))
    before, after = f"{r['rss_before_mib']:,.0f}", f"{r['rss_after_mib']:,.0f}"
    text = f"""# Keyed serving: one row with {r["keys"]:,} keys loaded

{command_line(args.quick, pinned)}

| | value |
|---|---:|
| keys loaded | {r["keys"]:,} |
| building the lookup | {r["build_s"]:.2f} s (CPU {r["build_cpu_s"]:.2f} s) |
| resident memory, before / after building | {before} / {after} MiB |
| `KeyedNormalizer.transform_row`, p50 | {r["p50_us"]:.2f} µs |
| `KeyedNormalizer.transform_row`, p99 | {r["p99_us"]:.2f} µs |

| target | measured | verdict |
|---|---:|---|
{table}
"""
    if not args.quick:
        OUT.write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
