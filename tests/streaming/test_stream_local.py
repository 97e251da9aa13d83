"""Small micro-batches processed on the driver (stream_local) give what the Spark path
gives: the same state bits, the same output rows, values and column types."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from reference import assert_state_close, two_pass
from test_streaming import COLS, updater

from mxnorm_spark.store import StateStore
from mxnorm_spark.streaming._local import DriverBatches

pytestmark = pytest.mark.spark
FEATURES = COLS
SCHEMA = "id LONG, a DOUBLE, b INT, tag STRING, at TIMESTAMP, flag BOOLEAN"


def batch(rows: int, k: int) -> pd.DataFrame:
    """One file: a double feature on a 1e9 offset with a NaN and a null, an int feature, and
    columns of other types that pass through."""
    rng = np.random.default_rng(40 + k)
    a = 1e9 + rng.normal(3.0 * k, 1.0 + k, rows)
    if rows > 3:
        a[1], a[2] = np.nan, None
    return pd.DataFrame(
        {
            "id": np.arange(1000 * k, 1000 * k + rows, dtype=np.int64),
            "a": a,
            "b": rng.integers(-50, 50 + 10 * k, rows).astype(np.int32),
            "tag": [f"t{i % 7}" if i % 5 else None for i in range(rows)],
            "at": pd.date_range("2026-01-01", periods=rows, freq="min", tz="UTC"),
            "flag": rng.random(rows) < 0.5,
        }
    )


def run(
    spark: Any,
    root: Path,
    frames: list[pd.DataFrame],
    driver: DriverBatches | None,
    **kw: Any,
) -> tuple[Any, pd.DataFrame, Any]:
    """Feed each frame as micro-batch 0, 1, ...; the last state, the output, its schema."""
    stream = updater(spark, root, **kw)  # features a, b; alpha 0.3
    if driver is not None:
        stream._driver = driver
    for batch_id, pdf in enumerate(frames):
        path = root / "in" / f"{batch_id}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pdf.to_parquet(path, index=False, coerce_timestamps="us")
        stream.foreach_batch(spark.read.schema(SCHEMA).parquet(str(path)), batch_id)
    out = spark.read.parquet(str(root / "out"))
    rows = out.toPandas().sort_values("id").reset_index(drop=True)
    return StateStore(str(root / "state")).latest(), rows, out.schema


SPARK_ONLY = DriverBatches(0, None)


@pytest.mark.parametrize("handle_invalid", ["keep", "skip"])
@pytest.mark.parametrize("apply_at", ["after", "before"])
def test_driver_batches_give_the_spark_paths_bits(
    spark: Any, tmp_path: Path, handle_invalid: str, apply_at: str
) -> None:
    frames = [batch(n, k) for k, n in enumerate([40, 0, 120, 75])]
    kw = {"handle_invalid": handle_invalid, "apply_at": apply_at}
    local = run(spark, tmp_path / "driver", frames, None, **kw)
    remote = run(spark, tmp_path / "spark", frames, SPARK_ONLY, **kw)
    assert local[0].to_json() == remote[0].to_json()
    assert local[2] == remote[2]  # every column, its type and the batch_id partition column
    pd.testing.assert_frame_equal(local[1], remote[1], check_exact=True)
    assert len(local[1]) == sum(len(f) for f in frames) - (6 if handle_invalid == "skip" else 0)


def test_driver_and_spark_batches_mix_and_match_the_reference(spark: Any, tmp_path: Path) -> None:
    # Room for about 50 rows of 6 columns: the 30-row batches go to the driver, the others
    # to Spark, in one stream.
    driver = DriverBatches(300, "snappy")
    frames = [batch(n, k) for k, n in enumerate([30, 400, 30, 250, 30])]
    state, out, _ = run(spark, tmp_path / "mixed", frames, driver)
    # The reference loop over each batch's valid values (two-pass float64 moments).
    mean, var = two_pass(frames[0][FEATURES].to_numpy(dtype=np.float64))
    for pdf in frames[1:]:
        m, v = two_pass(pdf[FEATURES].to_numpy(dtype=np.float64))
        mean, var = 0.7 * mean + 0.3 * m, 0.7 * var + 0.3 * v
    assert state is not None and state.batches_seen == len(frames)
    assert_state_close(state.mean, state.var, mean, var)
    assert sorted(out["id"]) == sorted(np.concatenate([f["id"] for f in frames]))
    # The last batch was normalized with the final state (apply_at="after").
    last = out[out["batch_id"] == len(frames) - 1].sort_values("id")
    raw = frames[-1].set_index("id").loc[last["id"], "b"].to_numpy(dtype=np.float64)
    expected = (raw - mean[1]) / np.sqrt(var[1] + 1e-8)
    np.testing.assert_allclose(last["b"].to_numpy(), expected, rtol=1e-12, atol=1e-12)


def test_driver_batches_only_where_nothing_differs(spark: Any, tmp_path: Path) -> None:
    from mxnorm_spark.streaming.sinks import StreamOutput

    out = str(tmp_path / "o")
    kw = {"engine": "auto", "scalar": True, "keyed": False}
    assert DriverBatches.for_stream(spark, StreamOutput(path=out), **kw).max_values > 0
    csv = StreamOutput(path=out, format="csv")
    assert DriverBatches.for_stream(spark, csv, **kw).codec is None
    opts = StreamOutput(path=out, write_options={"compression": "gzip"})
    assert DriverBatches.for_stream(spark, opts, **kw).codec is None
    assert (
        DriverBatches.for_stream(spark, StreamOutput(path=out), **kw | {"engine": "sql"}).codec
        is None
    )
    assert (
        DriverBatches.for_stream(spark, StreamOutput(path=out), **kw | {"keyed": True}).codec
        is None
    )
    spark.conf.set("spark.sql.parquet.compression.codec", "lz4")  # Hadoop framing
    try:
        assert DriverBatches.for_stream(spark, StreamOutput(path=out), **kw).codec is None
    finally:
        spark.conf.unset("spark.sql.parquet.compression.codec")


def test_z_scores_are_stored_without_parquet_dictionary(spark: Any, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    frames = [batch(60, 0), batch(5000, 1)]  # the second one through Spark
    run(spark, tmp_path, frames, DriverBatches(600, "snappy"))
    for batch_id in (0, 1):
        parts = sorted((tmp_path / "out").glob(f"batch_id={batch_id:012d}/*.parquet"))
        meta = pq.ParquetFile(parts[0]).metadata.row_group(0)
        encodings = {meta.column(j).path_in_schema: meta.column(j).encodings for j in range(6)}
        assert not any("DICTIONARY" in e for e in encodings["a"] + encodings["b"]), encodings
        assert any("DICTIONARY" in e for e in encodings["tag"]), encodings  # 7 values
