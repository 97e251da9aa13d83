"""Per-key MXNorm on Spark Connect: fit, transform, write/read and the serving export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mxnorm_spark.core.moments import Moments
from mxnorm_spark.core.state import MXNormState, StateOptions


def test_keyed_on_connect(spark: Any, tmp_path: Path) -> None:
    from mxnorm_spark.keyed.backfill import KeyedModel, fit_keyed
    from mxnorm_spark.serving import load

    rng = np.random.default_rng(5)
    rows = [
        (f"k{int(k)}", int(b), float(1e9 + rng.normal()))
        for k, b in zip(rng.integers(0, 30, 600), rng.integers(0, 4, 600), strict=True)
    ]
    df = spark.createDataFrame(rows, "k string, b int, x double")
    model = fit_keyed(df, ["x"], ["k"], "b", options=StateOptions(alpha=0.3), min_key_rows=2)
    got = {r["k"]: r for r in model.key_states.collect()}
    assert len(got) == 30
    for key, r in got.items():
        s = MXNormState.create(["x"], alpha=0.3)
        for b in sorted({b for k, b, _ in rows if k == key}):
            xs = np.array([[x] for k, bb, x in rows if k == key and bb == b])
            s = s.update(Moments.from_array(xs))
        assert abs(r["f0_var"] - s.var[0]) <= 1e-12 * s.var[0]
    path = str(tmp_path / "model")
    model.write(path)
    back = KeyedModel.read(spark, path)
    new = spark.createDataFrame([(1, "k3", 1e9), (2, "zz", 1e9)], "id long, k string, x double")
    a = model.transform(new).orderBy("id").collect()
    assert a == back.transform(new).orderBy("id").collect()
    model.export(str(tmp_path / "export"))
    served = load(str(tmp_path / "export"))
    inputs = [{"id": 1, "k": "k3", "x": 1e9}, {"id": 2, "k": "zz", "x": 1e9}]
    assert [served.transform_row(r)["x"] for r in inputs] == [r["x"] for r in a]


def test_keyed_stream_on_connect(spark: Any, tmp_path: Path) -> None:
    """A keyed stream run through a Connect session: per-key snapshots equal the reference
    loop per key, and the export serves them."""
    import os

    import pandas as pd

    from mxnorm_spark.serving import load
    from mxnorm_spark.streaming.keyed import KEYS_DIR, KeyOptions, export_latest, snapshot_dir
    from mxnorm_spark.streaming.sources import FileSource
    from mxnorm_spark.streaming.updater import MXNormStream

    rng = np.random.default_rng(9)
    (tmp_path / "in").mkdir()
    frames = []
    for b in range(3):
        f = pd.DataFrame(
            {
                "id": np.arange(200 * b, 200 * (b + 1)),
                "k": [f"k{int(k)}" for k in rng.integers(10 * b, 10 * b + 25, 200)],
                "x": 1e9 + rng.normal(size=200),
            }
        )
        path = tmp_path / "in" / f"f{b}.parquet"
        f.to_parquet(path, index=False)
        os.utime(path, (1_000_000_000 + 10 * b, 1_000_000_000 + 10 * b))
        frames.append(f)
    options = StateOptions(alpha=0.3)
    stream = MXNormStream(
        spark,
        str(tmp_path / "state"),
        cols=["x"],
        output=str(tmp_path / "out"),
        options=options,
        progress=None,
        keys=KeyOptions(("k",), min_key_rows=2),
    )
    source = FileSource(str(tmp_path / "in"), "parquet", max_files_per_trigger=1)
    stream.run(source.read(spark, ["x"]), str(tmp_path / "chk"), source=source)
    snap = pd.read_parquet(tmp_path / "state" / KEYS_DIR / snapshot_dir(2)).set_index("k")
    ref: dict[str, MXNormState] = {}
    for f in frames:
        for key, g in f.groupby("k"):
            s = ref.get(key, MXNormState.create(["x"], options=options))
            ref[key] = s.update(Moments.from_array(g[["x"]].to_numpy()))
    assert sorted(snap.index) == sorted(ref)
    for key, s in ref.items():
        assert abs(snap.loc[key, "f0_var"] - s.var[0]) <= 1e-12 * s.var[0]
        assert (
            snap.loc[key, "f0_mean"] == s.mean[0]
            or abs(snap.loc[key, "f0_mean"] - s.mean[0]) <= 1e-12 * s.mean[0]
        )
    out = pd.read_parquet(tmp_path / "out")
    assert sorted(out["id"]) == list(range(600))  # every row once
    export_latest(spark, str(tmp_path / "state"), str(tmp_path / "export"))
    mean, scale = ref["k30"].normalization_constants()
    row = load(str(tmp_path / "export")).transform_row({"k": "k30", "x": 1e9})
    assert abs(row["x"] - (1e9 - mean[0]) / scale[0]) <= 1e-9
