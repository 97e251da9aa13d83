"""The Beam engine in batch on the FnApiRunner, direct_running_mode=multi_processing with 2
workers: one shared pipeline fits and normalizes the same rows as the Spark backfill, and
each test checks one of its outputs against an independent reference (the reference loop,
the numpy core, the Spark model, serving)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from beam_outputs import key_state_line, read_lines, row_line
from reference import Reference, assert_state_close

from mxnorm_spark import Moments, MXNormState
from mxnorm_spark.beam import FitHistory, FitMXNorm, Normalize, WriteKeyedExport, WriteState
from mxnorm_spark.core.state import StateOptions
from mxnorm_spark.serving import KeyedNormalizer, Normalizer, load
from mxnorm_spark.store import read_state

pytestmark = [pytest.mark.spark, pytest.mark.slow]

FEATURES = ["a", "b"]
OUTS = ["za", "zb"]
MIXTURE = StateOptions(alpha=0.3, var_update="mixture")
MIN_KEY_ROWS = 40


def _rows() -> list[dict[str, Any]]:
    rng = np.random.default_rng(2027)
    rows = []
    for i in range(400):
        day = int(rng.integers(0, 5))
        b: float | None = float(rng.normal(5.0 + day, 2.0))
        u = rng.random()
        if day == 3 or u < 0.05:
            b = None  # day 3: no valid value of b (its state is kept through that batch)
        elif u < 0.08:
            b = float("nan")
        elif u < 0.1:
            b = float("inf")
        key = [None, "x", "y", "z", "z"][int(rng.integers(0, 5))]
        rows.append(
            {"id": i, "day": day, "k": key, "a": 1e9 + float(rng.normal(0, 1 + day)), "b": b}
        )
    return rows


def _text(pcoll: Any, tmp: Path, name: str, line: Any = row_line) -> None:
    _ = (
        pcoll
        | f"Lines-{name}" >> beam.Map(line)
        | f"Write-{name}" >> beam.io.WriteToText(str(tmp / name))
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, spark: Any) -> dict[str, Any]:
    """Spark fits first (its state is normalized on Beam), then the one Beam pipeline."""
    from pyspark.sql import types as T

    from mxnorm_spark.ml import MXNorm

    tmp = tmp_path_factory.mktemp("beam")
    rows = _rows()
    schema = T.StructType(
        [
            T.StructField("id", T.LongType()),
            T.StructField("day", T.LongType()),
            T.StructField("k", T.StringType()),
            T.StructField("a", T.DoubleType()),
            T.StructField("b", T.DoubleType()),
        ]
    )
    df = spark.createDataFrame([tuple(r[c] for c in schema.names) for r in rows], schema)
    est = MXNorm(inputCols=FEATURES, outputCols=OUTS, batchCol="day")
    spark_ema = est.fit(df)
    spark_out = {
        at: {r["id"]: r.asDict() for r in spark_ema.setApplyAt(at).transform(df).collect()}
        for at in ("after", "before")
    }
    keyed = MXNorm(inputCols=FEATURES, outputCols=OUTS, keyCols=["k"], minKeyRows=MIN_KEY_ROWS)
    keyed_model = keyed.fit(df)
    spark_keyed = {r["id"]: r.asDict() for r in keyed_model.transform(df).collect()}
    keyed_model.export(str(tmp / "spark-export"))
    as_of = keyed.copy().setBatchCol("day").fit(df)
    spark_as_of = {
        at: {r["id"]: r.asDict() for r in as_of.setApplyAt(at).transform(df).collect()}
        for at in ("after", "before")
    }

    # The SDK worker processes import beam_outputs from this directory.
    here = str(Path(__file__).resolve().parent)
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [here, saved] if p)
    options = PipelineOptions([], direct_running_mode="multi_processing", direct_num_workers=2)
    try:
        with beam.Pipeline(runner=FnApiRunner(), options=options) as p:
            data = p | "Rows" >> beam.Create(rows)
            ema = data | "FitEma" >> FitHistory(FEATURES, batch_col="day")
            _ = (
                data
                | "FinalEma" >> FitMXNorm(FEATURES, "day")
                | "WEma" >> WriteState(tmp / "ema.json")
            )
            _ = (
                data
                | "FinalMix" >> FitMXNorm(FEATURES, "day", MIXTURE)
                | "WMix" >> WriteState(tmp / "mixture.json")
            )
            for at in ("after", "before"):
                out = data | f"Norm{at}" >> Normalize(ema, output_cols=OUTS, apply_at=at)
                _text(out, tmp, f"norm-{at}")
            glob = data | "FitGlobal" >> FitMXNorm(FEATURES)
            _ = glob | "WGlobal" >> WriteState(tmp / "global.json")
            keys = data | "FitKeys" >> FitMXNorm(FEATURES, key_cols=["k"])
            _text(keys, tmp, "key-states", key_state_line)
            key_days = data | "FitKeyDays" >> FitMXNorm(FEATURES, "day", MIXTURE, key_cols=["k"])
            _text(key_days, tmp, "key-day-states", key_state_line)
            key_history = data | "KeyHistory" >> FitHistory(FEATURES, "day", key_cols=["k"])
            for at in ("after", "before"):
                out = data | f"NormAsOf{at}" >> Normalize(
                    ema,
                    key_states=key_history,
                    key_cols=["k"],
                    min_key_rows=MIN_KEY_ROWS,
                    output_cols=OUTS,
                    apply_at=at,
                )
                _text(out, tmp, f"norm-as-of-{at}")
            _ = keys | "Export" >> WriteKeyedExport(
                tmp / "beam-export",
                glob,
                key_cols=["k"],
                min_key_rows=MIN_KEY_ROWS,
                output_cols=OUTS,
            )
            keyed_out = data | "NormKeyed" >> Normalize(
                glob,
                key_states=keys,
                key_cols=["k"],
                min_key_rows=MIN_KEY_ROWS,
                output_cols=OUTS,
            )
            _text(keyed_out, tmp, "norm-keyed")
            from_spark = p | "SparkState" >> beam.Create([spark_ema.state])
            _text(
                data | "NormSpark" >> Normalize(from_spark, output_cols=OUTS),
                tmp,
                "norm-spark",
            )
            skip = data | "NormSkip" >> Normalize(glob, output_cols=OUTS, handle_invalid="skip")
            _text(skip, tmp, "norm-skip")
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    return {
        "tmp": tmp,
        "rows": rows,
        "spark_ema": spark_ema.state,
        "spark_out": spark_out,
        "spark_keyed": spark_keyed,
        "spark_as_of": spark_as_of,
    }


# ---- helpers -----------------------------------------------------------------------------
def _by_day(rows: list[dict[str, Any]]) -> list[np.ndarray]:
    days = sorted({r["day"] for r in rows})
    return [
        np.array(
            [[np.nan if r[c] is None else r[c] for c in FEATURES] for r in rows if r["day"] == d],
            dtype=np.float64,
        )
        for d in days
    ]


def _numpy_fold(rows: list[dict[str, Any]], options: StateOptions) -> MXNormState:
    state = MXNormState.create(FEATURES, options=options)
    for x in _by_day(rows):
        state = state.update(Moments.from_array(x))
    return state


def _same(a: Any, b: Any) -> bool:
    """Equal values, NaN equal to NaN (bit-level for floats)."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    return bool(a == b)


def _rows_equal(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert sorted(got) == sorted(want)
    bad = {c: (got[c], want[c]) for c in got if not _same(got[c], want[c])}
    assert not bad, f"row {got.get('id')}: {bad}"


def _close(got: Any, want: Any, tol: float = 1e-9) -> bool:
    if got is None or want is None:
        return got is None and want is None
    if math.isnan(want) or math.isinf(want):
        return _same(float(got), float(want))
    return abs(got - want) <= tol * max(1.0, abs(want))


# ---- fit parity --------------------------------------------------------------------------
def test_fit_matches_reference_loop_numpy_core_and_spark_backfill(run: dict[str, Any]) -> None:
    tmp, rows = run["tmp"], run["rows"]
    ema = read_state(str(tmp / "ema.json"))
    # The reference loop of DESIGN.md over feature a (valid in every row), per day.
    ref = Reference()
    for x in _by_day(rows):
        ref.adapt(x[:, :1])
    assert ref.mean is not None and ref.var is not None
    assert_state_close(ema.mean[:1], ema.var[:1], ref.mean, ref.var)
    spark_state = run["spark_ema"]
    assert ema.batches_seen == spark_state.batches_seen == 5
    assert ema.count.tolist() == spark_state.count.tolist()
    assert_state_close(ema.mean, ema.var, spark_state.mean, spark_state.var)
    # Every option of the core (here the mixture update) folds as the numpy core does.
    for name, options in (("ema.json", StateOptions()), ("mixture.json", MIXTURE)):
        beam_state = read_state(str(tmp / name))
        core = _numpy_fold(rows, options)
        assert beam_state.batches_seen == core.batches_seen == 5
        assert beam_state.count.tolist() == core.count.tolist()
        assert_state_close(beam_state.mean, beam_state.var, core.mean, core.var)
        assert beam_state.options == options


def test_keyed_fit_is_the_numpy_fold_of_each_keys_batches(run: dict[str, Any]) -> None:
    rows = run["rows"]
    got = {
        tuple(d["key"]): MXNormState.from_json(d["state"])
        for d in read_lines(str(run["tmp"] / "key-day-states"))
    }
    assert sorted(got) == [("x",), ("y",), ("z",)]  # null keys belong to no key
    for key, state in got.items():
        mine = [r for r in rows if r["k"] == key[0]]
        core = _numpy_fold(mine, MIXTURE)
        assert state.batches_seen == core.batches_seen
        assert_state_close(state.mean, state.var, core.mean, core.var)


# ---- normalization parity ----------------------------------------------------------------
def test_normalize_per_batch_matches_the_spark_model(run: dict[str, Any]) -> None:
    for at in ("after", "before"):
        got = {r["id"]: r for r in read_lines(str(run["tmp"] / f"norm-{at}"))}
        want = run["spark_out"][at]
        assert sorted(got) == sorted(want)
        for i, row in got.items():
            for c in OUTS:
                assert _close(row[c], want[i][c]), (at, i, c, row[c], want[i][c])
    # Independently of the fold's constants: the numpy core's state after each day, and
    # before it (the previous day's, for a feature that had a state then).
    rows = run["rows"]
    states, state = {}, MXNormState.create(FEATURES)
    for d, x in zip(sorted({r["day"] for r in rows}), _by_day(rows), strict=True):
        prev, state = state, state.update(Moments.from_array(x))
        states[d] = (prev, state)
    for at in ("after", "before"):
        got = {r["id"]: r for r in read_lines(str(run["tmp"] / f"norm-{at}"))}
        for r in rows:
            prev, new = states[r["day"]]
            use = prev if at == "before" and prev.batches_seen else new
            for j, (c, o) in enumerate(zip(FEATURES, OUTS, strict=True)):
                if r[c] is None:
                    assert got[r["id"]][o] is None
                    continue
                mean = use.mean[j] if use.initialized[j] else new.mean[j]
                var = use.var[j] if use.initialized[j] else new.var[j]
                if np.isnan(mean):  # no valid value of the feature yet: passed through
                    mean, var = 0.0, 1.0
                want = (r[c] - mean) / np.sqrt(var + 1e-8)
                assert _close(got[r["id"]][o], float(want)), (at, r, o)
    after = read_lines(str(run["tmp"] / "norm-after"))
    before = {r["id"]: r for r in read_lines(str(run["tmp"] / "norm-before"))}
    # "before" is not "after": a later day's rows use the state before their day.
    assert any(r["day"] > 0 and r["za"] != before[r["id"]]["za"] for r in after)


def test_beam_fitted_state_is_served_and_normalize_equals_serving(run: dict[str, Any]) -> None:
    tmp, rows = run["tmp"], run["rows"]
    served = load(str(tmp / "global.json"), output_cols=OUTS)
    assert isinstance(served, Normalizer)
    skip = load(str(tmp / "global.json"), output_cols=OUTS, handle_invalid="skip")
    got = {r["id"]: r for r in read_lines(str(tmp / "norm-skip"))}
    kept = [r for r in rows if skip.transform_row(r) is not None]
    assert 0 < len(kept) < len(rows)
    assert sorted(got) == sorted(r["id"] for r in kept)
    for r in kept:
        _rows_equal(got[r["id"]], skip.transform_row(r))  # type: ignore[arg-type]
    assert served.transform_row(rows[0]) is not None


def test_spark_fitted_state_normalizes_on_beam_as_serving(run: dict[str, Any]) -> None:
    norm = Normalizer(run["spark_ema"], output_cols=OUTS)
    got = {r["id"]: r for r in read_lines(str(run["tmp"] / "norm-spark"))}
    assert len(got) == len(run["rows"])
    for r in run["rows"]:
        _rows_equal(got[r["id"]], norm.transform_row(r))  # type: ignore[arg-type]


def test_keyed_normalize_matches_spark_with_the_global_fallback(run: dict[str, Any]) -> None:
    got = {r["id"]: r for r in read_lines(str(run["tmp"] / "norm-keyed"))}
    want = run["spark_keyed"]
    assert sorted(got) == sorted(want)
    glob = Normalizer(read_state(str(run["tmp"] / "global.json")), output_cols=OUTS)
    fallback = 0
    for i, row in got.items():
        for c in OUTS:
            assert _close(row[c], want[i][c]), (i, c, row[c], want[i][c])
        g = glob.transform_row(row)
        assert g is not None
        fallback += int(row["za"] == g["za"])
    # Null keys and keys under min_key_rows fall back to the global state; others do not.
    nulls = sum(r["k"] is None for r in run["rows"])
    assert nulls <= fallback < len(got)


def test_beam_keyed_export_is_served_and_matches_the_spark_export(run: dict[str, Any]) -> None:
    tmp = run["tmp"]
    beam_export = load(str(tmp / "beam-export"))
    spark_export = load(str(tmp / "spark-export"))
    assert isinstance(beam_export, KeyedNormalizer) and isinstance(spark_export, KeyedNormalizer)
    assert beam_export.n_keys == spark_export.n_keys == 3
    assert beam_export.outputs == tuple(OUTS) and beam_export.min_key_rows == MIN_KEY_ROWS
    for key in [("x",), ("y",), ("z",), ("unseen",), (None,)]:
        bm, bs = beam_export.constants(key)
        sm, ss = spark_export.constants(key)
        assert np.allclose(bm, sm, rtol=0, atol=1e-12 * np.abs(sm).max())
        assert np.allclose(bs, ss, rtol=1e-12, atol=0)
    # Served rows equal Beam's keyed Normalize bit for bit (same states, same row function).
    got = {r["id"]: r for r in read_lines(str(tmp / "norm-keyed"))}
    for r in run["rows"]:
        _rows_equal(got[r["id"]], beam_export.transform_row(r))  # type: ignore[arg-type]


def test_keyed_normalize_as_of_each_batch_matches_the_spark_keyed_backfill(
    run: dict[str, Any],
) -> None:
    outs = {}
    for at in ("after", "before"):
        got = {r["id"]: r for r in read_lines(str(run["tmp"] / f"norm-as-of-{at}"))}
        want = run["spark_as_of"][at]
        assert sorted(got) == sorted(want)
        for i, row in got.items():
            for c in OUTS:
                assert _close(row[c], want[i][c]), (at, i, c, row[c], want[i][c])
        outs[at] = got
    # The lookup is per batch: "before" differs from "after" for keys with earlier batches.
    assert any(outs["after"][i]["za"] != outs["before"][i]["za"] for i in outs["after"])
