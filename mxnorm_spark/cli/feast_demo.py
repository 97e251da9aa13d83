"""The Feast quick start (``make feast-demo``): fit, publish, ``feast apply``,
``feast materialize``, historical and online retrieval, our values beside Feast's.

1. reads the demo's sensor readings (``demo-output/events``, written by ``make run``; made
   here if missing) and fits ``MXNorm(batchCol="day", applyAt="before")``;
2. publishes the state history and the normalized rows to a Feast repo in
   ``demo-output/feast/`` (:func:`mxnorm_spark.feast.publish_model`; day ``d`` starts at
   2026-01-01 + d days, UTC);
3. runs the Feast CLI: ``feast apply`` and ``feast materialize``;
4. asks Feast for historical features at instants between the day starts and compares
   them with ``model.transform`` (``applyAt="before"``), and for online features compared
   with :meth:`Normalizer.transform_row <mxnorm_spark.serving.Normalizer.transform_row>`,
   printing both side by side. Exits 1 if any value differs in any bit.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mxnorm_spark.cli.demo import FEATURES, generate_events

UTC = dt.timezone.utc
ORIGIN = dt.datetime(2026, 1, 1, tzinfo=UTC)
OUTPUTS = tuple(f"{f}_z" for f in FEATURES)


def _feast(repo: Path, *args: str) -> None:
    exe = Path(sys.executable).with_name("feast")
    cmd = [str(exe) if exe.exists() else "feast", "-c", str(repo), *args]
    print("$ " + " ".join(["feast", "-c", str(repo), *args]), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "FEAST_USAGE": "False"})


def _same(a: Any, b: Any) -> bool:
    fa = float("nan") if a is None else float(a)
    fb = float("nan") if b is None else float(b)
    if math.isnan(fa) or math.isnan(fb):
        return math.isnan(fa) and math.isnan(fb)
    return bool(np.float64(fa).tobytes() == np.float64(fb).tobytes())


def _table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    print(f"\n{title}")
    cells = [header] + [[f"{c:.12g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        print("  " + "  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="demo-output")
    parser.add_argument("--rows", type=int, default=240_000, help="rows to make if none exist")
    args = parser.parse_args(argv)
    os.environ.setdefault("FEAST_USAGE", "False")
    out = Path(args.output_dir).resolve()
    repo = out / "feast"

    from pyspark.sql import SparkSession

    from mxnorm_spark.feast import BatchClock, open_store, publish_model
    from mxnorm_spark.ml.estimator import MXNorm
    from mxnorm_spark.serving.normalizer import Normalizer

    spark = (
        SparkSession.builder.master("local[2]")
        .appName("mxnorm-feast-demo")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    try:
        events_path = out / "events"
        if events_path.exists():
            events = spark.read.parquet(str(events_path))
            print(f"[feast-demo] events from {events_path}")
        else:
            events = generate_events(spark, args.rows, 12)
            print(f"[feast-demo] {args.rows:,} generated events (run `make run` for the full set)")
        model = MXNorm(
            inputCols=list(FEATURES), outputCols=list(OUTPUTS), batchCol="day", applyAt="before"
        ).fit(events)
        days = model.batch_values()
        print(f"[feast-demo] fitted MXNorm over {len(days)} days")
        if repo.exists():
            shutil.rmtree(repo)
        clock = BatchClock(origin=ORIGIN)
        publish_model(model, str(repo), clock=clock, rows=events, entity_cols=["sensor"])
        print(f"[feast-demo] published the state history and normalized rows to {repo}")
        _feast(repo, "apply")
        end = clock.final_at(days) + dt.timedelta(days=1)
        _feast(repo, "materialize", (ORIGIN - dt.timedelta(days=1)).isoformat(), end.isoformat())
        store: Any = open_store(str(repo))
        ok = _historical(spark, store, model, events, clock=clock, days=days)
        # After a historical retrieval the same store object asks online requests for the
        # rows view's key (KeyError "Missing join key values"); reloading the registry
        # clears it (Feast 0.67).
        store.refresh_registry()
        ok &= _online(
            store, Normalizer(model.state, input_cols=list(FEATURES), output_cols=list(OUTPUTS))
        )
    finally:
        spark.stop()
    print("\n[feast-demo] " + ("every value matches bit for bit" if ok else "MISMATCH"))
    print(f"[feast-demo] the feature repo is in {repo} (feast -c {repo} ui / serve)")
    return 0 if ok else 1


def _historical(
    spark: Any, store: Any, model: Any, events: Any, *, clock: Any, days: list[Any]
) -> bool:
    import pandas as pd
    from pyspark.sql import functions as F

    sample = events.where(F.col("day") >= 1).orderBy(F.rand(3)).limit(8).toPandas()
    rng = np.random.default_rng(3)
    sample["event_timestamp"] = [
        clock.start(int(d)) + dt.timedelta(seconds=int(s))
        for d, s in zip(sample["day"], rng.integers(0, 86_400, len(sample)), strict=True)
    ]
    late = sample.iloc[:1].copy()  # after the last day: the final state
    late["day"] = int(days[-1]) + 1
    late["event_timestamp"] = clock.final_at(days) + dt.timedelta(hours=3)
    sample = pd.concat([sample, late], ignore_index=True)
    sample["row"] = range(len(sample))
    got = (
        store.get_historical_features(
            entity_df=sample.drop(columns=["day"]), features=[f"mxnorm:{o}" for o in OUTPUTS]
        )
        .to_df()
        .sort_values("row")
    )
    want = model.transform(spark.createDataFrame(sample.drop(columns=["event_timestamp"])))
    want_df = want.toPandas().sort_values("row")
    rows, ok = [], True
    for (_, g), (_, w) in zip(got.iterrows(), want_df.iterrows(), strict=True):
        for o in OUTPUTS[:2]:
            same = _same(g[o], w[o])
            ok &= same
            rows.append([str(g["event_timestamp"])[:19], int(w["sensor"]), o, w[o], g[o], same])
    for o in OUTPUTS[2:]:
        ok &= all(_same(a, b) for a, b in zip(got[o], want_df[o], strict=True))
    _table(
        "historical retrieval (point in time) vs model.transform(applyAt='before')",
        ["event_timestamp", "sensor", "feature", "ours", "feast", "same bits"],
        rows,
    )
    return ok


def _online(store: Any, norm: Any) -> bool:
    requests: list[dict[str, Any]] = [
        {"sensor": 7, "temperature": 24.5, "pressure": 1013.2, "latency_ms": 18.0},
        {"sensor": 8, "temperature": 31.0, "pressure": 1009.0, "latency_ms": None},
        {"sensor": 9, "temperature": 19, "pressure": 1020.5, "latency_ms": 55.5},
    ]
    got = store.get_online_features(
        features=[f"mxnorm:{o}" for o in OUTPUTS], entity_rows=requests
    ).to_dict()
    rows, ok = [], True
    for i, r in enumerate(requests):
        want = norm.transform_row(r)
        for f, o in zip(FEATURES, OUTPUTS, strict=True):
            same = _same(got[o][i], want[o])
            ok &= same
            rows.append([i, f, r[f], want[o], got[o][i], same])
    _table(
        "online retrieval (the on-demand view) vs serving transform_row",
        ["request", "feature", "value", "ours", "feast", "same bits"],
        rows,
    )
    return ok


if __name__ == "__main__":
    sys.exit(main())
