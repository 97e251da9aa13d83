"""The public paths, each as a function of a SparkSession: run on classic Spark and on Spark
Connect, their states and outputs must be bit-identical.

Each case returns ``(state JSON, normalized rows as a pandas DataFrame sorted by id)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

Case = Callable[[Any, Path], tuple[str, pd.DataFrame]]
FEATURES = ["a", "b", "c"]


def write_inputs(root: Path) -> None:
    """Deterministic inputs: scalars with nulls, NaN and a 1e9 offset; an array column."""
    rng = np.random.default_rng(42)
    n = 600
    frame = pd.DataFrame(
        {
            "id": np.arange(n, dtype=np.int64),
            "day": np.repeat(np.arange(4), n // 4).astype(np.int32),
            "a": rng.standard_normal(n),
            "b": 1e9 + rng.standard_normal(n),
            "c": rng.exponential(3.0, n),
        }
    )
    frame.loc[frame.index % 29 == 0, "c"] = np.nan
    frame["v"] = [list(row) for row in frame[FEATURES].to_numpy()]
    (root / "scalars").mkdir(parents=True, exist_ok=True)
    frame.drop(columns="v").to_parquet(root / "scalars" / "part-0.parquet", index=False)
    (root / "arrays").mkdir(parents=True, exist_ok=True)
    frame[["id", "day", "v"]].to_parquet(root / "arrays" / "part-0.parquet", index=False)
    # Stream input: one file per day, oldest first.
    (root / "incoming").mkdir(parents=True, exist_ok=True)
    for i, (day, part) in enumerate(frame.drop(columns="v").groupby("day")):
        path = root / "incoming" / f"day-{day}.parquet"
        part.to_parquet(path, index=False)
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
    # Event-time stream input: days out of order across files (within a lateness of 1), a
    # key column with nulls.
    events = frame.drop(columns="v").assign(
        k=np.array(["k0", "k1", "k2", None], dtype=object)[rng.integers(0, 4, n)]
    )
    (root / "events").mkdir(parents=True, exist_ok=True)
    for i, days in enumerate([[0, 1], [1, 2, 0], [3, 2, 1], [3, 2]]):
        part = events.iloc[i * 150 : (i + 1) * 150].copy()
        part["day"] = np.resize(np.array(days, dtype=np.int32), len(part))
        path = root / "events" / f"f{i}.parquet"
        part.to_parquet(path, index=False)
        os.utime(path, (1_000_000 + i, 1_000_000 + i))


def _rows(df: Any, drop: tuple[str, ...] = ()) -> pd.DataFrame:
    out = df.toPandas().drop(columns=list(drop), errors="ignore")
    return out.sort_values("id").reset_index(drop=True)


def _fit_transform(engine: str, batch: bool) -> Case:
    def case(spark: Any, root: Path) -> tuple[str, pd.DataFrame]:
        from mxnorm_spark.ml.estimator import MXNorm

        df = spark.read.parquet(str(root / "scalars"))
        est = MXNorm(
            inputCols=FEATURES,
            outputCols=[f"z_{f}" for f in FEATURES],
            engine=engine,
            batchCol="day" if batch else None,
            applyAt="before" if batch else "after",
        )
        model = est.fit(df)
        return model.state.to_json(), _rows(model.transform(df))

    return case


def _array_column(engine: str) -> Case:
    def case(spark: Any, root: Path) -> tuple[str, pd.DataFrame]:
        from mxnorm_spark.ml.estimator import MXNorm

        df = spark.read.parquet(str(root / "arrays"))
        model = MXNorm(inputCol="v", outputCol="z", engine=engine, batchCol="day").fit(df)
        out = _rows(model.transform(df))
        out["z"] = out["z"].map(lambda z: np.asarray(z, dtype=np.float64).tobytes())
        return model.state.to_json(), out.drop(columns="v")

    return case


def _vector_column(spark: Any, root: Path) -> tuple[str, pd.DataFrame]:
    from pyspark.ml.functions import array_to_vector, vector_to_array
    from pyspark.sql import functions as F

    from mxnorm_spark.ml.estimator import MXNorm

    # A vector holds no nulls: the array's missing elements become NaN first.
    nan = F.lit(float("nan"))
    arrays = spark.read.parquet(str(root / "arrays"))
    df = arrays.withColumn("v", array_to_vector(F.transform("v", lambda x: F.coalesce(x, nan))))
    model = MXNorm(inputCol="v", outputCol="z").fit(df)
    out = model.transform(df).withColumn("z", vector_to_array("z")).drop("v")
    rows = _rows(out)
    rows["z"] = rows["z"].map(lambda z: np.asarray(z, dtype=np.float64).tobytes())
    return model.state.to_json(), rows


def _saved_model(spark: Any, root: Path) -> tuple[str, pd.DataFrame]:
    from pyspark.ml import Pipeline, PipelineModel

    from mxnorm_spark.ml.estimator import MXNorm, MXNormModel

    df = spark.read.parquet(str(root / "scalars"))
    work = root / f"saved-{spark.version}-{id(spark)}"
    model = MXNorm(inputCols=FEATURES, outputCols=["za", "zb", "zc"], batchCol="day").fit(df)
    model.write().save(str(work / "model"))
    model.write().overwrite().save(str(work / "model"))
    loaded = MXNormModel.load(str(work / "model"))
    pipe = Pipeline(stages=[MXNorm(inputCols=FEATURES, outputCols=["za", "zb", "zc"])])
    pipe.write().save(str(work / "pipeline"))
    fitted = Pipeline.load(str(work / "pipeline")).fit(df)
    fitted.write().save(str(work / "pipeline-model"))
    again = PipelineModel.load(str(work / "pipeline-model"))
    both = _rows(loaded.transform(df)).merge(
        _rows(again.transform(df)), on=["id", "day", *FEATURES], suffixes=("", "_pipe")
    )
    history = "".join(s.to_json() for _, s in loaded.history)
    return loaded.state.to_json() + history + again.stages[0].state.to_json(), both


def _stream(spark: Any, root: Path) -> tuple[str, pd.DataFrame]:
    from mxnorm_spark.store import StateStore
    from mxnorm_spark.streaming.sources import FileSource
    from mxnorm_spark.streaming.updater import MXNormStream

    work = root / f"stream-{id(spark)}"
    source = FileSource(str(root / "incoming"), "parquet", max_files_per_trigger=1)
    stream = MXNormStream(spark, str(work / "state"), cols=FEATURES, output=str(work / "out"))
    stream.run(source.read(spark, FEATURES), str(work / "checkpoint"), source=source)
    store = StateStore(str(work / "state"))
    states = "".join(s.to_json() for b in store.batch_ids() if (s := store.get(b)) is not None)
    out = pd.read_parquet(work / "out")
    out["batch_id"] = out["batch_id"].astype("int64")
    return states, out.sort_values("id").reset_index(drop=True)


def _event_stream(keyed: bool) -> Case:
    def case(spark: Any, root: Path) -> tuple[str, pd.DataFrame]:
        from mxnorm_spark.core.event_time import EventTime
        from mxnorm_spark.core.state import StateOptions
        from mxnorm_spark.store import StateStore
        from mxnorm_spark.streaming.keyed import KeyOptions
        from mxnorm_spark.streaming.sources import FileSource
        from mxnorm_spark.streaming.updater import MXNormStream, StreamOutput

        work = root / f"event-{keyed}-{id(spark)}"
        source = FileSource(str(root / "events"), "parquet", max_files_per_trigger=1)
        output = StreamOutput(path=str(work / "out"), cols=[f"z_{f}" for f in FEATURES])
        stream = MXNormStream(
            spark, str(work / "state"), cols=FEATURES, output=output, apply_at="before",
            options=StateOptions(alpha=0.3), progress=None,
            event_time=EventTime(batch_col="day", lateness=1, lineage_col="state_day"),
            keys=KeyOptions(("k",), min_key_rows=2) if keyed else None,
        )  # fmt: skip
        stream.run(
            source.read(spark, FEATURES), str(work / "checkpoint"), source=source,
            end_of_input=True,
        )  # fmt: skip
        store = StateStore(str(work / "state"))
        # Every version's bytes: the state and the event-time section (every key's part).
        states = "".join(
            (store.fs.read_bytes(store.version_path(b)) or b"").decode() for b in store.batch_ids()
        )
        out = pd.read_parquet(work / "out")
        out["batch_id"] = out["batch_id"].astype("int64")
        return states, out.sort_values("id").reset_index(drop=True)

    return case


CASES: dict[str, Case] = {
    "fit_transform_auto": _fit_transform("auto", batch=False),
    "fit_transform_sql": _fit_transform("sql", batch=False),
    "fit_transform_arrow": _fit_transform("arrow", batch=False),
    "backfill_sql_before": _fit_transform("sql", batch=True),
    "backfill_arrow_before": _fit_transform("arrow", batch=True),
    "array_backfill_auto": _array_column("auto"),
    "array_backfill_sql": _array_column("sql"),
    "vector_auto": _vector_column,
    "save_load_pipeline": _saved_model,
    "stream": _stream,
    "stream_event_time": _event_stream(keyed=False),
    "stream_event_time_keyed": _event_stream(keyed=True),
}


def run_all(spark: Any, root: Path, out: Path) -> None:
    """Run every case, writing ``NAME.json`` (the state text) and ``NAME.parquet``."""
    out.mkdir(parents=True, exist_ok=True)
    for name, case in CASES.items():
        state, rows = case(spark, root)
        (out / f"{name}.json").write_text(state)
        rows.to_parquet(out / f"{name}.parquet", index=False)
