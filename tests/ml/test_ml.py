"""The Estimator/Model (ml/estimator.py): backfill == reference loop, applyAt, persistence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from reference import Reference, assert_state_close, two_pass

from mxnorm_spark import (
    CorruptStateError,
    EmptyInputError,
    InvalidParameterError,
    Moments,
    MXNormState,
)
from mxnorm_spark.ml.estimator import MXNorm, MXNormModel

pytestmark = pytest.mark.spark
ENGINES = ["sql", "arrow"]


def bits(a: Any) -> list[int]:
    return np.ascontiguousarray(a, dtype=np.float64).view(np.int64).ravel().tolist()


@pytest.fixture(scope="module")
def days(spark: Any) -> tuple[Any, dict[int, np.ndarray]]:
    """Batches 30, 10, 20 (out of order in the data) of two drifting features, 2 partitions.

    Feature ``c`` has no valid value in the first batch (day 10).
    """
    rng = np.random.default_rng(17)
    batches = {
        30: rng.normal([5.0, 1e6], [2.0, 3.0], (9, 2)),
        10: rng.normal([0.0, 1e6], [1.0, 1.0], (7, 2)),
        20: rng.normal([2.0, 1e6 + 5], [1.5, 2.0], (12, 2)),
    }
    batches[10][:, 1] = np.nan
    rows = []
    for day, x in batches.items():
        for i, (a, c) in enumerate(x):
            rows.append((day, day * 100 + i, float(a), None if np.isnan(c) else float(c)))
    df = spark.createDataFrame(rows, "day int, id int, a double, c double")
    return df, batches


def expected_output(model: MXNormModel, batches: dict[int, np.ndarray], at: str) -> np.ndarray:
    """Rows ordered by (day, id), normalized with the constants of their batch's state."""
    out, prev = [], None
    for day, after in model.history:
        x = batches[day]
        if at == "after" or prev is None:
            filled = after.update(Moments.from_array(np.zeros((1, 2)))) if prev is None else after
            mean, scale = after.normalization_constants(fallback=filled)
        else:
            mean, scale = prev.normalization_constants(fallback=after)
        out.append((x - mean) / scale)
        prev = after
    return np.vstack(out)


@pytest.mark.parametrize("engine", ENGINES)
def test_backfill_equals_the_reference_loop(days: Any, engine: str) -> None:
    df, batches = days
    model = MXNorm(inputCols=["a", "c"], outputCols=["za", "zc"], batchCol="day", engine=engine)
    model = model.fit(df)
    assert [d for d, _ in model.history] == [10, 20, 30]
    # The reference loop of docs/design.md, fed per feature (c starts at the second batch).
    for j, first in ((0, 0), (1, 1)):
        ref = Reference(alpha=0.1)
        for k, (day, state) in enumerate(model.history):
            if k >= first:
                ref.adapt(batches[day][:, j : j + 1])
                assert ref.mean is not None and ref.var is not None
                assert_state_close(state.mean[j], state.var[j], ref.mean, ref.var, 1e-12)
    assert model.state is model.history[-1][1]

    for at in ("after", "before"):
        got = model.copy({model.applyAt: at}).transform(df).orderBy("day", "id").collect()
        z = np.array([[np.nan if v is None else v for v in (r.za, r.zc)] for r in got])
        assert bits(z) == bits(expected_output(model, batches, at)), at


def test_apply_at_before_is_point_in_time(days: Any) -> None:
    """'before' normalizes day 20 with the state after day 10; unseen days use the final."""
    df, batches = days
    model = MXNorm(inputCols=["a", "c"], outputCols=["za", "zc"], batchCol="day", applyAt="before")
    model = model.fit(df)
    day10, day20 = model.history[0][1], model.history[1][1]
    row = model.transform(df.where("id = 2000")).first()
    mean, scale = day10.normalization_constants(fallback=day20)  # c: day 20's own moments
    assert bits([row.za, row.zc]) == bits((batches[20][0] - mean) / scale)
    assert mean[1] == day20.mean[1]
    unseen = df.where("id = 2000").selectExpr("99 AS day", "id", "a", "c")
    row = model.transform(unseen).first()
    mean, scale = model.state.normalization_constants()
    assert bits([row.za, row.zc]) == bits((batches[20][0] - mean) / scale)


def test_options_reach_the_state(days: Any) -> None:
    df, batches = days
    cumulative = MXNorm(inputCols=["a"], batchCol="day", alpha=None).fit(df)
    everything = np.vstack([batches[d][:, :1] for d in (10, 20, 30)])
    assert_state_close(cumulative.state.mean, cumulative.state.var, *two_pass(everything))
    assert cumulative.getAlpha() == "cumulative"
    opts = {"alpha": 0.3, "varUpdate": "mixture", "decay": "rows", "epsilon": 1e-6}
    model = MXNorm(inputCols=["a"], batchCol="day", engine="arrow", **opts).fit(df)
    state = MXNormState.create(["a"], 0.3, 1e-6, var_update="mixture", decay="rows")
    for d in (10, 20, 30):
        state = state.update(Moments.from_array(batches[d][:, :1]))
    assert_state_close(model.state.mean, model.state.var, state.mean, state.var, 1e-12)
    assert (model.state.var_update, model.state.decay, model.state.eps) == ("mixture", "rows", 1e-6)


def test_vector_input_without_batches(spark: Any, days: Any) -> None:
    from pyspark.sql import functions as F

    from mxnorm_spark.batch.apply import to_vector

    df, batches = days
    vdf = df.where("day = 30").withColumn("v", to_vector(F.array("a", "c")))
    model = MXNorm(inputCol="v", outputCol="z").fit(vdf)
    assert model.state.features == ("v[0]", "v[1]") and model.history == []
    z = np.array([list(r.z) for r in model.transform(vdf).orderBy("id").collect()])
    assert bits(z) == bits(model.state.normalize(batches[30]))


@pytest.mark.parametrize("engine", ENGINES)
def test_array_backfill_equals_scalar_columns_bit_for_bit(days: Any, engine: str) -> None:
    from pyspark.sql import functions as F

    df, _ = days
    arr = df.withColumn("f", F.array("a", "c"))
    scalar = MXNorm(inputCols=["a", "c"], outputCols=["za", "zc"], batchCol="day", engine=engine)
    vector = MXNorm(inputCol="f", outputCol="f", batchCol="day", applyAt="before", engine=engine)
    want = scalar.setApplyAt("before").fit(df).transform(df).orderBy("id").collect()
    model = vector.fit(arr)
    assert model.state.features == ("f[0]", "f[1]")
    got = model.transform(arr).orderBy("id").collect()
    assert [list(r.f) for r in got] == [[r.za, r.zc] for r in want]


def test_pipeline_and_model_persistence_round_trip(days: Any, tmp_path: Path) -> None:
    from pyspark.ml import Pipeline, PipelineModel

    df, _ = days
    est = MXNorm(
        inputCols=["a", "c"], outputCols=["za", "zc"], batchCol="day", applyAt="before", alpha=0.5
    )
    pipeline = Pipeline(stages=[est])
    pipeline.write().save(str(tmp_path / "pipeline"))
    loaded_est = Pipeline.load(str(tmp_path / "pipeline")).getStages()[0]
    assert isinstance(loaded_est, MXNorm)
    assert (loaded_est.getApplyAt(), loaded_est.getAlpha()) == ("before", 0.5)

    fitted = pipeline.fit(df)
    fitted.write().save(str(tmp_path / "fitted"))
    again = PipelineModel.load(str(tmp_path / "fitted"))
    model, loaded = fitted.stages[0], again.stages[0]
    assert isinstance(loaded, MXNormModel) and loaded.uid == model.uid
    assert [d for d, _ in loaded.history] == [10, 20, 30]
    assert loaded.state.to_json() == model.state.to_json()
    a = fitted.transform(df).orderBy("id").select("za", "zc").collect()
    b = again.transform(df).orderBy("id").select("za", "zc").collect()
    assert a == b

    model.write().save(str(tmp_path / "model"))
    alone = MXNormModel.load(str(tmp_path / "model"))
    assert alone.getBatchCol() == "day" and alone.getOutputCols() == ["za", "zc"]
    # A state edited after it was written is refused by its own checksum.
    (part,) = (tmp_path / "model" / "state").glob("part-*")
    part.write_text(part.read_text().replace('"batches_seen": 3', '"batches_seen": 4'))
    for crc in (tmp_path / "model" / "state").glob(".*.crc"):
        crc.unlink()  # or the file system's own checksum refuses it first
    with pytest.raises(CorruptStateError, match="fails its checksum"):
        MXNormModel.load(str(tmp_path / "model"))


def test_from_state_normalizes_like_the_state(spark: Any) -> None:
    state = MXNormState.create(["a", "b"]).update(
        Moments.from_array(np.array([[1.0, 2.0], [3.0, 6.0]]))
    )
    df = spark.createDataFrame([(1.0, 2.0), (2.0, 5.0)], "a double, b double")
    model = MXNormModel.from_state(state, outputCols=["za", "zb"], engine="arrow")
    got = model.transform(df).select("za", "zb").collect()
    assert bits([list(r) for r in got]) == bits(state.normalize(np.array([[1.0, 2.0], [2.0, 5.0]])))
    with pytest.raises(InvalidParameterError, match=r"unknown param\(s\) \['inputcols'\]"):
        MXNormModel.from_state(state, inputcols=["a"])


def test_bad_params_fail_before_any_job(spark: Any, days: Any) -> None:
    df, _ = days
    with pytest.raises(InvalidParameterError, match="not both"):
        MXNorm(inputCols=["a"], inputCol="v").fit(df)
    with pytest.raises(InvalidParameterError, match="outputCols must have one name per input"):
        MXNorm(inputCols=["a", "c"], outputCols=["z"]).fit(df)
    with pytest.raises(InvalidParameterError, match="set inputCols"):
        MXNorm().fit(df)
    with pytest.raises(ValueError, match="handleInvalid must be one of"):
        MXNorm(inputCols=["a"], handleInvalid="drop")
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\]"):
        MXNorm(inputCols=["a"], alpha=1.5)
    with pytest.raises(EmptyInputError, match=r"\['c'\] have no valid value"):
        MXNorm(inputCols=["a", "c"]).fit(df.where("day = 10"))
