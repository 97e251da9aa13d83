"""Per-key MXNorm on Spark Connect: fit, transform, write/read and the serving export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mxnorm_spark.moments import Moments
from mxnorm_spark.state import MXNormState, StateOptions


def test_keyed_on_connect(spark: Any, tmp_path: Path) -> None:
    from mxnorm_spark.keyed import KeyedModel, fit_keyed
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
        assert abs(r["var"][0] - s.var[0]) <= 1e-12 * s.var[0]
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
