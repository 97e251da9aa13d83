"""Feast online latency of the MXNorm on-demand view: ``python -m bench.feast_latency``.

A local Feast repo (SQLite online store) with one state of 8 features, made with no
Spark (a committed state directory, :func:`mxnorm_spark.feast.publish_stream`), and
``get_online_features`` for one request row, p50 / p99 over N calls each timed alone:

* ``mxnorm`` (ours): python-mode view over the request and the ``mxnorm_state`` view
  (state as features: point in time offline, latest online);
* the same sources with no normalization (a python-mode view that returns the raw values):
  what Feast itself costs for this view shape;
* the state view alone (no on-demand view): the online-store read;
* state by path with a cache: a python-mode view over the request only that normalizes
  with the state file read once per process (``normalize_with_state_file``);
* hard-coded constants, pandas mode: ``(df[x] - m) / s`` with the constants in the source.

Writes ``bench/FEAST.md``. ``--calls`` sets N (default 2000).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("FEAST_USAGE", "False")

FEATURES = [f"f{j}" for j in range(8)]
OUTPUTS = [f"{f}_z" for f in FEATURES]


def build(root: Path) -> tuple[Any, str, Any]:
    from mxnorm_spark.core.moments import Moments
    from mxnorm_spark.core.state import MXNormState
    from mxnorm_spark.feast import FeastStatePush, apply_repo, publish_stream
    from mxnorm_spark.store import StateStore

    state_dir, repo = str(root / "state"), str(root / "repo")
    store = StateStore(state_dir)
    rng = np.random.default_rng(0)
    state = MXNormState.create(FEATURES)
    for batch in range(3):
        m = Moments.from_array(rng.normal(5.0, 2.0, size=(200, len(FEATURES))))
        state = state.update(m, batch)
        store.record_batch(batch, rows=200, moments=m, state=state)
        store.commit(batch, state)
    publish_stream(state_dir, repo, outputs=OUTPUTS)
    feast_store = apply_repo(repo)
    FeastStatePush(repo, state_dir)(2, state)
    return feast_store, state_dir, state


def extra_views(feast_store: Any, state_dir: str, state: Any) -> list[str]:
    """Apply the comparison views; returns their names."""
    from feast import Field
    from feast.on_demand_feature_view import OnDemandFeatureView
    from feast.types import Float64

    request = feast_store.get_on_demand_feature_view("mxnorm").source_request_sources[
        "mxnorm_request"
    ]
    state_view = feast_store.get_feature_view("mxnorm_state")
    schema = [Field(name=o, dtype=Float64) for o in OUTPUTS]
    pairs = tuple(zip(FEATURES, OUTPUTS, strict=True))
    mean, scale = state.normalization_constants()
    sources = {
        "raw_passthrough": (
            "def raw_passthrough(inputs):\n"
            f"    return {{o: list(inputs[f]) for f, o in {pairs!r}}}\n",
            [request, state_view],
            "python",
        ),
        "by_path": (
            "def by_path(inputs):\n"
            "    from mxnorm_spark.feast.udf import normalize_with_state_file\n\n"
            f"    return normalize_with_state_file(inputs, {state_dir!r}, {pairs!r})\n",
            [request],
            "python",
        ),
        "pandas_constants": (
            "def pandas_constants(df):\n"
            "    import pandas as pd\n\n"
            "    out = pd.DataFrame()\n"
            + "".join(
                f"    out[{o!r}] = (df[{f!r}] - {m!r}) / {s!r}\n"
                for f, o, m, s in zip(FEATURES, OUTPUTS, mean.tolist(), scale.tolist(), strict=True)
            )
            + "    return out\n",
            [request],
            "pandas",
        ),
    }
    views = []
    for name, (text, srcs, mode) in sources.items():
        ns: dict[str, Any] = {}
        exec(text, ns)
        views.append(
            OnDemandFeatureView(
                name=name, sources=srcs, schema=schema, udf=ns[name], udf_string=text, mode=mode
            )
        )
    feast_store.apply(views)
    return list(sources)


def timed(call: Callable[[], Any], n: int) -> tuple[float, float]:
    for _ in range(min(100, n)):
        call()
    times = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter_ns()
        call()
        times[i] = time.perf_counter_ns() - t0
    return float(np.percentile(times, 50)) / 1e6, float(np.percentile(times, 99)) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--out", default=str(Path(__file__).with_name("FEAST.md")))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        feast_store, state_dir, state = build(Path(tmp))
        names = extra_views(feast_store, state_dir, state)
        row = [{f: 5.0 + j * 0.25 for j, f in enumerate(FEATURES)}]
        cases = {
            "mxnorm (ours: state as features, python mode)": [f"mxnorm:{o}" for o in OUTPUTS],
            "same sources, no normalization (python mode)": [f"{names[0]}:{o}" for o in OUTPUTS],
            "state view alone (no on-demand view)": [
                f"mxnorm_state:{f}__{k}" for f in FEATURES for k in ("mean", "scale")
            ],
            "state by path with a cache (python mode)": [f"{names[1]}:{o}" for o in OUTPUTS],
            "hard-coded constants (pandas mode)": [f"{names[2]}:{o}" for o in OUTPUTS],
        }
        results = {}
        for label, features in cases.items():
            results[label] = timed(
                lambda features=features: feast_store.get_online_features(
                    features=features, entity_rows=row
                ).to_dict(),
                args.calls,
            )
            print(f"{label:<50} p50 {results[label][0]:.3f} ms  p99 {results[label][1]:.3f} ms")
    import feast

    lines = [
        "# Feast online latency of the MXNorm on-demand view",
        "",
        f"`python -m bench.feast_latency --calls {args.calls}`: one request row of "
        f"{len(FEATURES)} features, `get_online_features(...).to_dict()`, each call timed alone "
        f"after 100 warm-up calls; SQLite online store; feast {feast.__version__}, Python "
        f"{platform.python_version()}, {platform.machine()}, a shared 2-core machine (ratios "
        "within one run are what to read).",
        "",
        "| view | p50 (ms) | p99 (ms) | p50 / ours |",
        "|---|---|---|---|",
    ]
    ours = results[next(iter(results))][0]
    for label, (p50, p99) in results.items():
        lines.append(f"| {label} | {p50:.3f} | {p99:.3f} | {p50 / ours:.2f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
