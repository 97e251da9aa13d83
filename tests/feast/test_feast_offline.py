"""A real Feast repo (file offline store, SQLite online store) in a tmp dir, fed by
publish_model: historical retrieval == MXNormModel.transform(applyAt="before") and online
retrieval == serving's transform_row, bit for bit; the registry serves in a fresh process."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from typing import Any

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("FEAST_USAGE", "False")

pytestmark = pytest.mark.spark

UTC = dt.timezone.utc
DAYS = 5
CLOCK_ORIGIN = dt.datetime(2026, 3, 1, tzinfo=UTC)


def bits(values: Any) -> np.ndarray:
    """float64 bits, every NaN (a null too) as one pattern: equal arrays are bit-identical."""
    a = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), dtype=np.float64)
    return np.where(np.isnan(a), np.nan, a).view(np.uint64)


def events(seed: int, n: int, keys: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    # Skewed keys: many keys with one or two rows (below minKeyRows), a few busy ones.
    sensor = np.concatenate([np.arange(keys), np.minimum(rng.zipf(1.3, n - keys), keys) - 1])
    day = rng.integers(0, DAYS, n)
    a = rng.normal(20.0, 2.0, n) + 0.5 * day
    b = 1e6 + rng.normal(0.0, 1.0 + day, n)
    b[day == 0] = np.nan  # b has no value in the first batch: it starts in batch 1
    a[rng.random(n) < 0.02] = np.nan
    return pd.DataFrame(
        {"day": day.astype("int32"), "sensor": sensor.astype("int64"), "a": a, "b": b}
    )


def entity_rows(frame: pd.DataFrame, clock: Any, seed: int) -> pd.DataFrame:
    """One entity row per data row, at an instant inside its batch (between two starts),
    and a few after the last batch (they use the final state)."""
    rng = np.random.default_rng(seed)
    rows = frame.copy()
    late = rng.random(len(rows)) < 0.05
    rows.loc[late, "day"] = DAYS + 3  # a batch value the fit never saw
    offsets = rng.integers(0, 24 * 3600 * 1_000_000, len(rows))
    rows["event_timestamp"] = [
        clock.start(int(d)) + dt.timedelta(microseconds=int(o))
        for d, o in zip(rows["day"], offsets, strict=True)
    ]
    rows["row_id"] = np.arange(len(rows), dtype=np.int64)
    return rows


@pytest.fixture(scope="module")
def published(spark: Any, tmp_path_factory: Any) -> dict[str, Any]:
    from mxnorm_spark.feast import BatchClock, apply_repo, publish_model
    from mxnorm_spark.ml.estimator import MXNorm

    clock = BatchClock(origin=CLOCK_ORIGIN)
    frame = events(11, 4000, 1500)
    df = spark.createDataFrame(frame)
    common = {"inputCols": ["a", "b"], "outputCols": ["a_z", "b_z"], "batchCol": "day"}
    model = MXNorm(**common, applyAt="before").fit(df)
    keyed = MXNorm(**common, applyAt="before", keyCols=["sensor"], minKeyRows=3).fit(df)
    repo = str(tmp_path_factory.mktemp("feast_global"))
    key_repo = str(tmp_path_factory.mktemp("feast_keyed"))
    spec = publish_model(model, repo, clock=clock, rows=df, entity_cols=["sensor"])
    key_spec = publish_model(keyed, key_repo, clock=clock)
    store, key_store = apply_repo(repo), apply_repo(key_repo)
    end = clock.final_at(list(range(DAYS))) + dt.timedelta(days=1)
    store.materialize(clock.start(0) - dt.timedelta(days=1), end)
    key_store.materialize(clock.start(0) - dt.timedelta(days=1), end)
    return {
        "spark": spark,
        "clock": clock,
        "frame": frame,
        "model": model,
        "keyed": keyed,
        "repo": repo,
        "key_repo": key_repo,
        "store": store,
        "key_store": key_store,
        "spec": spec,
        "key_spec": key_spec,
    }


def historical(store: Any, rows: pd.DataFrame) -> pd.DataFrame:
    entity = rows.drop(columns=["day"])
    got = store.get_historical_features(
        entity_df=entity, features=["mxnorm:a_z", "mxnorm:b_z"]
    ).to_df()
    return got.sort_values("row_id").reset_index(drop=True)


def ours(p: dict[str, Any], model: Any, rows: pd.DataFrame) -> pd.DataFrame:
    out = model.transform(p["spark"].createDataFrame(rows.drop(columns=["event_timestamp"])))
    return out.toPandas().sort_values("row_id").reset_index(drop=True)


def test_historical_equals_the_point_in_time_transform(published: dict[str, Any]) -> None:
    p = published
    rows = entity_rows(p["frame"], p["clock"], 1)
    got, want = historical(p["store"], rows), ours(p, p["model"], rows)
    assert len(got) == len(want) == len(rows)
    for col in ("a_z", "b_z"):
        assert np.array_equal(bits(got[col]), bits(want[col])), col
    # b has no state before batch 1: batch 0's rows hold no b, batch 1 uses its own moments.
    assert want["b_z"].notna().sum() > 0.9 * (rows["day"] > 0).sum()


def test_historical_keyed_with_global_fallback(published: dict[str, Any]) -> None:
    p = published
    rows = entity_rows(p["frame"], p["clock"], 2)
    # Keys never fitted. Feast's file store keeps one entity row per timestamp when an
    # entityless view is joined (see the guide): these get timestamps of their own.
    unseen = rows.iloc[:50].assign(sensor=10**9, row_id=np.arange(50) + 10**6)
    unseen["event_timestamp"] += dt.timedelta(microseconds=1)
    rows = pd.concat([rows, unseen])
    got, want = historical(p["key_store"], rows), ours(p, p["keyed"], rows)
    assert len(got) == len(want) == len(rows)
    for col in ("a_z", "b_z"):
        assert np.array_equal(bits(got[col]), bits(want[col])), col
    # A key never fitted takes the global state: the plain MXNorm model's values.
    unseen_rows = rows[rows["sensor"] == 10**9]
    plain = ours(p, p["model"], unseen_rows)
    unseen_got = got[got["sensor"] == 10**9].reset_index(drop=True)
    for col in ("a_z", "b_z"):
        assert np.array_equal(bits(unseen_got[col]), bits(plain[col])), col
    # 1,000+ entities, and rows whose key has fewer than minKeyRows values: global constants.
    counts = p["frame"].groupby("sensor").size()
    assert len(counts) >= 1000
    few = rows["sensor"].map(counts).fillna(0) < 3
    assert few.sum() > 100


def test_published_rows_view_holds_the_normalized_rows(published: dict[str, Any]) -> None:
    p = published
    path = p["spec"].rows_path
    table = pd.read_parquet(path)
    want = p["model"].transform(p["spark"].createDataFrame(p["frame"])).toPandas()
    assert len(table) == len(want)
    key = ["sensor", "a_z"]
    got_sorted = table.sort_values(key, na_position="first")["b_z"]
    want_sorted = want.sort_values(key, na_position="first")["b_z"]
    assert np.array_equal(bits(got_sorted), bits(want_sorted))
    starts = {p["clock"].start(d).replace(tzinfo=None) for d in range(DAYS)}
    assert set(pd.to_datetime(table["event_timestamp"]).dt.tz_localize(None)) <= starts


def online(store: Any, rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    features = ["mxnorm:a_z", "mxnorm:b_z"]
    return dict(store.get_online_features(features=features, entity_rows=rows).to_dict())


def request_rows(keyed: bool) -> list[dict[str, Any]]:
    rng = np.random.default_rng(5)
    rows: list[dict[str, Any]] = [
        {"a": float(x), "b": float(y)}
        for x, y in zip(rng.normal(20, 3, 40), 1e6 + rng.normal(0, 3, 40), strict=True)
    ]
    rows += [{"a": None, "b": 1e6}, {"a": 7, "b": float("nan")}, {"a": float("inf"), "b": -1.5}]
    if keyed:
        for i, r in enumerate(rows):
            r["sensor"] = [0, 1, 2, 40, 700, 1499, 10**9][i % 7]
    else:
        for r in rows:
            r["sensor"] = 0
    return rows


def check_online(got: dict[str, list[Any]], rows: list[dict[str, Any]], norm: Any) -> None:
    for i, row in enumerate(rows):
        want = norm.transform_row(row)
        for col in ("a_z", "b_z"):
            g, w = got[col][i], want[col]
            if isinstance(w, float) and np.isnan(w):
                # Feast turns a NaN request value into null before the view sees it.
                assert g is None or np.isnan(g), (i, col, g)
                continue
            assert (g is None) == (w is None), (i, col, g, w)
            if w is not None:
                assert bits([g])[0] == bits([w])[0], (i, col, g, w)


def test_online_equals_transform_row(published: dict[str, Any]) -> None:
    from mxnorm_spark.serving import Normalizer

    p = published
    rows = request_rows(keyed=False)
    norm = Normalizer(p["model"].state, input_cols=["a", "b"], output_cols=["a_z", "b_z"])
    check_online(online(p["store"], rows), rows, norm)


def test_online_keyed_equals_the_export(published: dict[str, Any], tmp_path: Any) -> None:
    from mxnorm_spark.serving import load

    p = published
    p["keyed"].export(str(tmp_path / "export"))
    norm = load(str(tmp_path / "export"))
    rows = request_rows(keyed=True)
    check_online(online(p["key_store"], rows), rows, norm)


FRESH = """
import json, os, sys
os.environ["FEAST_USAGE"] = "False"
from mxnorm_spark.feast import open_store
rows = json.loads(sys.argv[2])
got = open_store(sys.argv[1]).get_online_features(
    features=["mxnorm:a_z", "mxnorm:b_z"], entity_rows=rows).to_dict()
print(json.dumps({k: got[k] for k in ("a_z", "b_z")}))
"""


def test_registry_reloaded_in_a_fresh_process_still_serves(published: dict[str, Any]) -> None:
    """The on-demand view is rebuilt from its registry source there (feast #6815)."""
    p = published
    rows = [r for r in request_rows(keyed=True) if r["a"] is not None][:10]
    rows = [
        {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()}
        for r in rows
    ]
    out = subprocess.run(
        [sys.executable, "-c", FRESH, p["key_repo"], json.dumps(rows)],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    want = online(p["key_store"], rows)
    for col in ("a_z", "b_z"):
        assert bits(got[col]).tolist() == bits(want[col]).tolist()


def test_spark_offline_store_on_the_local_session(published: dict[str, Any], tmp_path: Any) -> None:
    """Feast's Spark offline store, on the session the tests share (getOrCreate)."""
    from mxnorm_spark.feast import apply_repo, publish_model

    p = published
    repo = str(tmp_path / "spark_repo")
    publish_model(p["model"], repo, clock=p["clock"], offline="spark")
    store = apply_repo(repo)
    rows = entity_rows(p["frame"], p["clock"], 3).iloc[:400]
    got, want = historical(store, rows), ours(p, p["model"], rows)
    assert len(got) == len(want) == len(rows)
    for col in ("a_z", "b_z"):
        assert np.array_equal(bits(got[col]), bits(want[col])), col


def test_feast_views_command_for_a_saved_keyed_model(
    published: dict[str, Any], tmp_path: Any
) -> None:
    """The getting-started command on a saved model directory serves what the API does."""
    from mxnorm_spark.cli.commands import main
    from mxnorm_spark.feast import apply_repo

    p = published
    model_dir, repo = str(tmp_path / "model"), str(tmp_path / "cli_repo")
    p["keyed"].write().save(model_dir)
    origin = CLOCK_ORIGIN.isoformat()
    args = ["feast-views", "--model", model_dir, "--repo", repo, "--origin", origin]
    assert main(args) == 0
    store = apply_repo(repo)
    store.materialize(p["clock"].start(0), p["clock"].final_at(list(range(DAYS))))
    rows = [r for r in request_rows(keyed=True) if r["a"] is not None][:14]
    assert online(store, rows) == online(p["key_store"], rows)
