"""Per-key MXNorm (mxnorm_spark.keyed): states against the per-key reference loop, the
fallback rules, apply timing, persistence and serving parity.

The data: 1,000+ string keys over six batches; one key holds half of the rows, keys
appear mid-way and vanish, ``x`` is ``1e9 + N(0, 1)`` (digits are lost by sum-of-squares),
``y`` has NaN and null values, a few rows have a null key.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from reference import Reference, assert_state_close, two_pass

from mxnorm_spark.core.errors import CorruptStateError, InvalidParameterError, MissingColumnError
from mxnorm_spark.core.moments import Moments
from mxnorm_spark.core.state import MXNormState, StateOptions

pytestmark = pytest.mark.spark

N_BIG, N_OTHER, BATCHES = 3400, 3400, 6


def _rows(seed: int = 0) -> list[tuple[Any, ...]]:
    rng = np.random.default_rng(seed)
    batch = np.concatenate([rng.integers(0, BATCHES, N_BIG), rng.integers(0, BATCHES, N_OTHER)])
    # Keys 1..1150: a key's id range slides with the batch, so low ids vanish after the
    # first batches and high ids first appear in later ones.
    ids = np.concatenate(
        [np.zeros(N_BIG, int), 1 + 110 * batch[N_BIG:] + rng.integers(0, 600, N_OTHER)]
    )
    x = 1e9 + rng.normal(size=ids.shape[0])
    y = rng.normal(5.0, 2.0, size=ids.shape[0])
    rows = []
    for i, (b, k, xv, yv) in enumerate(zip(batch, ids, x, y, strict=True)):
        u = rng.random()
        yy: float | None = float("nan") if u < 0.04 else None if u < 0.08 else float(yv)
        key = None if i % 397 == 5 else f"k{k:04d}"
        rows.append((i, key, int(k % 2), int(b), float(xv), yy))
    return rows


SCHEMA = "id long, k string, g int, b int, x double, y double"


@pytest.fixture(scope="module")
def data(spark: Any) -> tuple[Any, pd.DataFrame]:
    rows = _rows()
    pdf = pd.DataFrame(rows, columns=["id", "k", "g", "b", "x", "y"])
    pdf["y"] = pdf["y"].astype(float)  # None -> NaN: invalid either way
    return spark.createDataFrame(rows, SCHEMA), pdf


def _oracle(pdf: pd.DataFrame, keys: list[str], options: StateOptions) -> dict[Any, Any]:
    """(key tuple, batch) -> (state before, state after), per key with MXNormState."""
    out: dict[Any, Any] = {}
    valid = pdf.dropna(subset=keys)
    for group, g in valid.groupby(keys, sort=True):
        key = group if isinstance(group, tuple) else (group,)
        s = MXNormState.create(["x", "y"], options=options)
        for b, gb in g.groupby("b", sort=True):
            new = s.update(Moments.from_array(gb[["x", "y"]].to_numpy()))
            out[(*key, b)] = (s, new)
            s = new
    return out


@pytest.fixture(scope="module")
def fitted(data: Any) -> Any:
    from mxnorm_spark.keyed.backfill import fit_keyed

    df, _ = data
    return fit_keyed(df, ["x", "y"], ["k"], "b", min_key_rows=3)


@pytest.fixture(scope="module")
def fitted_states(fitted: Any) -> pd.DataFrame:
    return _states_pdf(fitted)


def _states_pdf(model: Any) -> pd.DataFrame:
    order = [*model.key_cols, *([model.batch_col] if model.batch_col else [])]
    return with_arrays(model.states.toPandas(), order)


def with_arrays(pdf: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """A states table (sorted by ``order``, key columns then batch) with its flat
    ``f{j}_{field}`` columns also as one array per field, and the state before each batch
    (the key's previous row; none before its first) as ``count_before``, ``before_mean``
    and ``before_scale``."""
    k = sum(c.endswith("_scale") for c in pdf.columns)
    for field in ("count", "mean", "var", "scale"):
        pdf[field] = list(pdf[[f"f{j}_{field}" for j in range(k)]].to_numpy(float))
    pdf = pdf.sort_values(order).reset_index(drop=True)
    first = (pdf["batches_seen"] == 1).to_numpy()
    for before, after, fresh in (
        ("count_before", "count", 0.0),
        ("before_mean", "mean", np.nan),
        ("before_scale", "scale", np.nan),
    ):
        prev = [np.full(k, fresh), *pdf[after].iloc[:-1]]
        pdf[before] = [np.full(k, fresh) if f else p for f, p in zip(first, prev, strict=True)]
    return pdf


# ---- states -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options",
    [
        StateOptions(),
        StateOptions(alpha=None),
        StateOptions(alpha=0.3, var_update="mixture", decay="rows", zero_variance="unit"),
    ],
    ids=["ema", "cumulative", "mixture-rows"],
)
def test_states_equal_the_per_key_loop(request: Any, data: Any, options: StateOptions) -> None:
    from mxnorm_spark.keyed.backfill import fit_keyed

    df, pdf = data
    if options == StateOptions():  # min_key_rows does not change the states
        got = request.getfixturevalue("fitted_states")
    else:
        got = _states_pdf(fit_keyed(df, ["x", "y"], ["k"], "b", options=options))
    expected = _oracle(pdf, ["k"], options)
    assert len(got) == len(expected)
    keys = pdf["k"].dropna().unique()
    assert len(keys) >= 1000 and got["k"].nunique() == len(keys)
    assert got.groupby("k")["rows"].sum()["k0000"] == (pdf["k"] == "k0000").sum() > N_BIG // 2
    for r in got.itertuples():
        before, after = expected[(r.k, r.b)]
        has = after.initialized
        assert np.array_equal(r.count, after.count) and np.array_equal(r.count_before, before.count)
        had = before.initialized
        np.testing.assert_allclose(r.before_mean[had], before.mean[had], rtol=1e-12, atol=0)
        assert_state_close(
            np.asarray(r.mean)[has], np.asarray(r.var)[has], after.mean[has], after.var[has]
        )
    last = got[got["is_last"]]
    assert last["k"].is_unique and len(last) == len(keys)
    assert (last["batches_seen"] == got.groupby("k")["b"].count()[last["k"]].to_numpy()).all()


def test_states_equal_the_design_reference_loop(fitted_states: pd.DataFrame, data: Any) -> None:
    # x has no invalid value: the numpy loop of docs/design.md, section 1, per key. np.var of raw
    # 1e9 + N(0, 1) loses digits of its own (~3e-12 here), so the reference variance runs
    # on x - 1e9 (exact: same binade, and variance does not move with a shift).
    _, pdf = data
    got = fitted_states.set_index(["k", "b"])
    for key, g in pdf.dropna(subset=["k"]).groupby("k"):
        ref, shifted = Reference(), Reference()
        for b, gb in g.groupby("b", sort=True):
            ref.adapt(gb[["x"]].to_numpy())
            shifted.adapt(gb[["x"]].to_numpy() - 1e9)
            row = got.loc[(key, b)]
            assert ref.mean is not None and shifted.var is not None
            mean, var = np.asarray(row["mean"])[:1], np.asarray(row["var"])[:1]
            assert_state_close(mean, var, ref.mean, shifted.var)


def test_moments_are_exact_across_record_batches(spark: Any) -> None:
    # One key's single batch split over many Arrow record batches (Chan merges), 1e9 + N(0,1).
    from mxnorm_spark.keyed.backfill import fit_keyed

    rng = np.random.default_rng(3)
    n = 3000
    keys = np.where(rng.random(n) < 0.6, 0, rng.integers(1, 40, n))
    x = 1e9 + rng.normal(size=n)
    df = spark.createDataFrame(
        [(int(k), float(v)) for k, v in zip(keys, x, strict=True)], "k long, x double"
    )
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "97")
    try:
        got = fit_keyed(df, ["x"], ["k"], options=StateOptions(alpha=None)).key_states.toPandas()
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
    for r in got.itertuples():
        m, v = two_pass(x[keys == r.k].reshape(-1, 1))
        assert_state_close(np.array([r.f0_mean]), np.array([r.f0_var]), m, v)


def test_multi_column_keys(spark: Any, data: Any) -> None:
    from mxnorm_spark.keyed.backfill import fit_keyed

    df, pdf = data
    got = _states_pdf(fit_keyed(df, ["x", "y"], ["k", "g"], "b"))
    expected = _oracle(pdf, ["k", "g"], StateOptions())
    assert len(got) == len(expected)
    for r in got.itertuples():
        _, after = expected[(r.k, r.g, r.b)]
        has = after.initialized
        assert_state_close(
            np.asarray(r.mean)[has], np.asarray(r.var)[has], after.mean[has], after.var[has]
        )


# ---- transform ----------------------------------------------------------------------------
def _expected_transform(model: Any, pdf: pd.DataFrame, states: pd.DataFrame) -> np.ndarray:
    """The fallback rules of keyed/backfill.py row by row, from the model's own states."""
    thr = max(model.min_key_rows, 1)
    before = model.apply_at == "before"
    table = {(r.k, r.b): r for r in states.itertuples()}
    glob = {b: (m, s) for b, m, s in model.global_constants_by_batch()}
    out = np.empty((len(pdf), 2))
    for i, r in enumerate(pdf.itertuples()):
        gm, gs = glob[r.b]
        st = table.get((r.k, r.b))
        m, s = np.array(gm), np.array(gs)
        if st is not None:
            n = np.asarray(st.count_before if before else st.count)
            km = np.asarray(st.before_mean if before else st.mean)
            ks = np.asarray(st.before_scale if before else st.scale)
            m, s = np.where(n >= thr, km, m), np.where(n >= thr, ks, s)
        out[i] = (np.array([r.x, r.y]) - m) / s
    return out


@pytest.mark.parametrize("apply_at", ["after", "before"])
def test_transform_per_key_with_fallback(
    fitted: Any, fitted_states: pd.DataFrame, data: Any, apply_at: str
) -> None:
    from dataclasses import replace

    df, pdf = data
    model = replace(fitted, apply_at=apply_at, output_cols=("zx", "zy"))
    got = model.transform(df).toPandas().sort_values("id").reset_index(drop=True)
    assert list(got["id"]) == list(pdf["id"])
    states = fitted_states
    expected = _expected_transform(model, pdf, states)
    np.testing.assert_array_equal(got[["zx", "zy"]].to_numpy(), expected)
    # Under min_key_rows (and null keys): exactly the global constants of the batch.
    glob = {b: (m, s) for b, m, s in model.global_constants_by_batch()}
    thin = states[
        [
            np.asarray(c)[0] < 3
            for c in (states.count_before if apply_at == "before" else states["count"])
        ]
    ]
    assert len(thin) > 100
    fall = pdf.merge(thin[["k", "b"]], on=["k", "b"])
    nulls = pdf[pdf["k"].isna()]
    assert len(nulls) > 5
    for part in (fall, nulls):
        zx = got.set_index("id").loc[part["id"], "zx"].to_numpy()
        gm = np.array([glob[b][0][0] for b in part["b"]])
        gs = np.array([glob[b][1][0] for b in part["b"]])
        np.testing.assert_array_equal(zx, (part["x"].to_numpy() - gm) / gs)


def test_global_state_is_the_plain_mxnorm_fit(fitted: Any, data: Any) -> None:
    from mxnorm_spark.ml.estimator import MXNorm

    df, _ = data
    plain = MXNorm(inputCols=["x", "y"], batchCol="b").fit(df).state
    assert np.array_equal(plain.mean, fitted.global_state.mean)
    assert np.array_equal(plain.var, fitted.global_state.var)


def test_new_data_unseen_keys_and_batches(spark: Any, fitted: Any) -> None:
    # No batch column: every key uses its final state; unseen and null keys the global one.
    new = spark.createDataFrame(
        [(1, "k0000", 1e9 + 0.5, 4.0), (2, "nope", 1e9, 5.0), (3, None, 1e9, None)],
        "id long, k string, x double, y double",
    )
    got = fitted.transform(new).toPandas().sort_values("id")
    gm, gs = fitted.global_state.normalization_constants()
    last = fitted.key_states.where("k = 'k0000'").toPandas().iloc[0]
    assert got["x"].tolist()[0] == (1e9 + 0.5 - last["f0_mean"]) / last["f0_scale"]
    assert got["x"].tolist()[1:] == [(1e9 - gm[0]) / gs[0]] * 2
    assert np.isnan(got["y"].tolist()[2])


def test_write_read_round_trip(
    spark: Any, fitted: Any, fitted_states: pd.DataFrame, tmp_path: Any
) -> None:
    from mxnorm_spark.keyed.backfill import KeyedModel

    path = str(tmp_path / "model")
    fitted.write(path)
    back = KeyedModel.read(spark, path)
    assert back.key_cols == ("k",) and back.min_key_rows == 3 and back.batch_col == "b"
    assert [v for v, _ in back.global_history] == list(range(BATCHES))
    assert np.array_equal(back.global_state.var, fitted.global_state.var)
    read = back.states.toPandas().sort_values(["k", "b"]).reset_index(drop=True)
    mine = fitted_states.sort_values(["k", "b"]).reset_index(drop=True)
    assert list(back.states.columns) == list(fitted.states.columns)
    for col in ("f0_mean", "f1_var", "f1_scale", "f0_count", "key_rows", "is_last"):
        np.testing.assert_array_equal(read[col], mine[col])
    new = spark.createDataFrame([("k0000", 3, 1e9, 1.0)], "k string, b int, x double, y double")
    a, b = fitted.transform(new).collect(), back.transform(new).collect()
    assert a == b
    with pytest.raises(Exception, match="already exists"):
        fitted.write(path)


def test_reads_a_model_of_the_array_layout(spark: Any, fitted: Any, tmp_path: Any) -> None:
    # schema_version 1 kept one array per field (count, mean, var, after_scale, ...).
    import json

    from pyspark.sql import functions as F

    from mxnorm_spark.keyed.backfill import KeyedModel

    path = tmp_path / "old"
    fitted.write(str(path))
    states = fitted.states

    def arr(field: str) -> Any:
        return F.array(F.col(f"f0_{field}"), F.col(f"f1_{field}"))

    old = states.select(
        "k", "b", "rows", "key_rows", "batches_seen", "is_last",
        arr("count").alias("count_before"), arr("count").alias("count"),
        arr("mean").alias("mean"), arr("var").alias("var"),
        arr("mean").alias("after_mean"), arr("scale").alias("after_scale"),
    )  # fmt: skip
    old.write.mode("overwrite").parquet(str(path / "states2"))
    meta = json.loads((path / "keyed.json").read_text())
    assert meta["schema_version"] == 2
    (path / "keyed.json").write_text(json.dumps({**meta, "schema_version": 1}))
    import shutil

    shutil.rmtree(path / "states")
    (path / "states2").rename(path / "states")
    back = KeyedModel.read(spark, str(path))
    assert back.states.columns == fitted.states.columns
    a = back.states.orderBy("k", "b").toPandas()
    b = fitted.states.orderBy("k", "b").toPandas()
    pd.testing.assert_frame_equal(a, b)
    (path / "keyed.json").write_text(json.dumps({**meta, "schema_version": 7}))
    with pytest.raises(CorruptStateError, match="schema_version 7"):
        KeyedModel.read(spark, str(path))


# ---- serving ------------------------------------------------------------------------------
def test_serving_export_is_bit_identical(spark: Any, fitted: Any, data: Any, tmp_path: Any) -> None:
    import pyarrow as pa

    from mxnorm_spark.serving.keyed import load_keyed
    from mxnorm_spark.store import LocalFileSystem

    _, pdf = data
    out = str(tmp_path / "keyed_export")
    fitted.export(out)
    norm = load_keyed(LocalFileSystem(), out)
    assert norm.n_keys == pdf["k"].nunique()
    # Fitted rows and unseen keys, without the batch column: final per-key states.
    new = pdf.drop(columns=["b"]).copy()
    new.loc[new.index[:7], "k"] = "never-seen"
    sdf = spark.createDataFrame(
        new.astype(object).where(new.notna(), None).values.tolist(),
        "id long, k string, g int, x double, y double",
    )
    spark_out = fitted.transform(sdf).toPandas().sort_values("id").reset_index(drop=True)
    served = norm.transform(new).reset_index(drop=True)
    np.testing.assert_array_equal(served[["x", "y"]].to_numpy(), spark_out[["x", "y"]].to_numpy())
    table = norm.transform(pa.Table.from_pandas(new, preserve_index=False))
    np.testing.assert_array_equal(table.column("x").to_numpy(), spark_out["x"].to_numpy())
    for row in new.head(50).to_dict("records"):
        got = norm.transform_row(row)
        assert got is not None
        want = spark_out.loc[spark_out["id"] == row["id"]].iloc[0]
        assert got["x"] == want["x"]


def test_serving_load_dispatches_on_an_export(fitted: Any, tmp_path: Any) -> None:
    import json

    from mxnorm_spark import serving
    from mxnorm_spark.serving.keyed import KeyedNormalizer

    out = str(tmp_path / "export")
    fitted.export(out)
    # The model's states changed layout (schema_version 2); the export's did not.
    assert json.loads((tmp_path / "export" / "keyed.json").read_text())["schema_version"] == 1
    norm = serving.load(out)
    assert isinstance(norm, KeyedNormalizer)
    gm, gs = fitted.global_state.normalization_constants()
    assert norm.transform_row({"k": None, "x": 1e9, "y": 1.0})["x"] == (1e9 - gm[0]) / gs[0]


# ---- checks -------------------------------------------------------------------------------
def test_bad_keys_fail_before_any_job(data: Any) -> None:
    from mxnorm_spark.keyed.backfill import KeyedModel, fit_keyed

    df, _ = data
    with pytest.raises(MissingColumnError, match="nokey"):
        fit_keyed(df, ["x"], ["nokey"])
    with pytest.raises(InvalidParameterError, match="key columns"):
        fit_keyed(df, ["x"], ["x"])
    with pytest.raises(InvalidParameterError, match="key_cols"):
        fit_keyed(df, ["x"], "k")  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="min_key_rows"):
        KeyedModel(("x",), ("k",), None, StateOptions(), min_key_rows=-1)


# ---- Spark ML model -----------------------------------------------------------------------
def test_ml_model_save_load(spark: Any, tmp_path: Any) -> None:
    from mxnorm_spark.ml.keyed import KeyedMXNormModel, fit_keyed_model

    df = spark.createDataFrame(
        [("a", 0, 1.0), ("a", 0, 3.0), ("a", 1, 5.0), ("b", 0, 10.0), ("b", 1, 30.0)],
        "k string, b int, x double",
    )
    model = fit_keyed_model(df, ["x"], ["k"], "b", StateOptions(alpha=0.5))
    model.setMinKeyRows(3).setOutputCols(["z"])
    path = str(tmp_path / "ml")
    model.write().save(path)
    back = KeyedMXNormModel.load(path)
    assert back.getOrDefault(back.minKeyRows) == 3
    a = model.transform(df).orderBy("k", "b", "x").collect()
    assert a == back.transform(df).orderBy("k", "b", "x").collect()
    # Key a has 3 values after its batch 1 (its own state), key b never reaches 3 (global).
    glob = {v: (m, s) for v, m, s in model.keyed.global_constants_by_batch()}
    z = {(r.k, r.b, r.x): r.z for r in a}
    assert z[("b", 0, 10.0)] == (10.0 - glob[0][0][0]) / glob[0][1][0]
    ka = model.key_states.where("k = 'a'").first()
    assert z[("a", 1, 5.0)] == (5.0 - ka["f0_mean"]) / ka["f0_scale"]
    with pytest.raises(InvalidParameterError, match="minKeyRows"):
        model.setMinKeyRows(-2)


# ---- the kernel alone (no Spark) ----------------------------------------------------------
def test_kernel_keys_of_any_type_over_tiny_record_batches() -> None:
    import datetime as dt

    import pyarrow as pa

    from mxnorm_spark.keyed.kernel import fold_kernel

    # Rows sorted as Spark sorts them: NaN keys together (last), -0.0 equal to 0.0.
    k1 = [-0.0, 0.0, 0.0, 1.5, 1.5, float("nan"), float("nan")]
    k2 = [dt.date(2024, 1, 1)] * 7
    b = ["d1", "d1", "d2", "d1", "d1", "d1", "d2"]
    x = [1.0, 3.0, 5.0, 1e9, 1e9 + 2, 7.0, 9.0]
    table = pa.table({"k1": k1, "k2": k2, "b": b, "x": x})
    kernel = fold_kernel(2, True, StateOptions(alpha=0.5))
    out = pa.Table.from_batches(list(kernel(iter(table.to_batches(max_chunksize=2)))))
    got = out.to_pydict()
    assert got["rows"] == [2, 1, 2, 1, 1]
    assert got["key_rows"] == [2, 3, 2, 1, 2]
    assert got["is_last"] == [False, True, True, False, True]
    assert got["f0_mean"] == [2.0, 3.5, 1e9 + 1, 7.0, 8.0]
    assert got["f0_var"] == [1.0, 0.5, 1.0, 0.0, 0.0]
    assert got["f0_count"] == [2.0, 3.0, 2.0, 1.0, 2.0]


@pytest.mark.parametrize("apply_at", ["after", "before"])
def test_batches_a_key_had_no_rows_in_are_as_of(spark: Any, apply_at: str) -> None:
    from mxnorm_spark.keyed.backfill import fit_keyed

    df = spark.createDataFrame(
        [("a", 1, 1.0), ("a", 1, 3.0), ("a", 3, 7.0), ("b", 0, 50.0), ("b", 5, 52.0)],
        "k string, b int, x double",
    )
    model = fit_keyed(df, ["x"], ["k"], "b", apply_at=apply_at)
    states = {(r.k, r.b): r for r in _states_pdf(model).itertuples()}
    glob = {v: (m[0], s[0]) for v, m, s in model.global_constants_by_batch()}
    new = spark.createDataFrame(
        [(1, "a", 0, 2.0), (2, "a", 2, 2.0), (3, "a", 4, 2.0), (4, "a", 3, 2.0), (5, "a", 9, 2.0)],
        "id long, k string, b int, x double",
    )
    z = [r.x for r in model.transform(new).orderBy("id").collect()]
    a1, a3 = states[("a", 1)], states[("a", 3)]
    gm, gs = model.global_state.normalization_constants()
    own3 = (a1.mean, a1.scale) if apply_at == "before" else (a3.mean, a3.scale)
    assert z == [
        (2.0 - glob[0][0]) / glob[0][1],  # before a's first batch: the global state of batch 0
        (2.0 - a1.mean[0]) / a1.scale[0],  # batch 2: a's state after batch 1
        (2.0 - a3.mean[0]) / a3.scale[0],  # batch 4 (fitted for none of a)
        (2.0 - own3[0][0]) / own3[1][0],  # a's own batch 3: after it, or after batch 1
        (2.0 - a3.mean[0]) / a3.scale[0],  # after every batch
    ]
    assert 4 not in glob and 9 not in glob and gm.shape == gs.shape


@pytest.mark.parametrize(
    "options",
    [
        StateOptions(),
        StateOptions(alpha=None),
        StateOptions(alpha=0.7, var_update="mixture", decay="rows"),
    ],
    ids=["ema", "cumulative", "mixture-rows"],
)
def test_kernel_equals_the_per_key_fold_at_every_split(options: StateOptions) -> None:
    # Any record-batch size: pieces of one (key, batch) merge back to the key's own fold.
    import pyarrow as pa
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from mxnorm_spark.keyed import kernel as keyed_kernel
    from mxnorm_spark.keyed.kernel import fold_kernel

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        rows=st.lists(
            st.tuples(
                st.integers(0, 4),
                st.integers(0, 3),
                st.one_of(st.floats(-1e3, 1e3), st.just(float("nan"))),
            ),
            min_size=1,
            max_size=60,
        ),
        chunk=st.integers(1, 9),
        chunk_rows=st.sampled_from([1, 5, keyed_kernel.CHUNK_ROWS]),
        offset=st.sampled_from([0.0, 1e9]),
    )
    def check(
        rows: list[tuple[int, int, float]], chunk: int, chunk_rows: int, offset: float
    ) -> None:
        rows = sorted((k, b, x + offset) for k, b, x in rows)
        table = pa.table(
            {"k": [r[0] for r in rows], "b": [r[1] for r in rows], "x": [r[2] for r in rows]}
        )
        kernel = fold_kernel(1, True, options)
        saved, keyed_kernel.CHUNK_ROWS = keyed_kernel.CHUNK_ROWS, chunk_rows
        try:
            split = pa.Table.from_batches(list(kernel(iter(table.to_batches(chunk)))))
        finally:
            keyed_kernel.CHUNK_ROWS = saved
        # A segment is never split: the same bits however Arrow and the chunks cut the rows.
        whole = pa.Table.from_batches(list(kernel(iter(table.to_batches()))))
        assert split.schema == whole.schema
        for a, b in zip(split.columns, whole.columns, strict=True):
            assert np.array_equal(np.asarray(a), np.asarray(b), equal_nan=a.type == pa.float64())
        got = split.to_pylist()
        expected = []
        for key in sorted({r[0] for r in rows}):
            s = MXNormState.create(["x"], options=options)
            for b in sorted({r[1] for r in rows if r[0] == key}):
                xs = np.array([[r[2]] for r in rows if r[:2] == (key, b)])
                s = s.update(Moments.from_array(xs))
                expected.append((key, b, s))
        assert [(g["k"], g["b"]) for g in got] == [(k, b) for k, b, _ in expected]
        for g, (_, _, s) in zip(got, expected, strict=True):
            assert [g["f0_count"]] == s.count.tolist()
            if s.initialized[0]:
                assert_state_close(np.array([g["f0_mean"]]), np.array([g["f0_var"]]), s.mean, s.var)
            else:
                assert np.isnan(g["f0_mean"])

    check()


def test_estimator_key_cols(spark: Any, tmp_path: Any) -> None:
    from pyspark.ml import Pipeline, PipelineModel

    from mxnorm_spark.ml.estimator import MXNorm
    from mxnorm_spark.ml.keyed import KeyedMXNormModel

    df = spark.createDataFrame(
        [("a", 0, 1.0), ("a", 0, 3.0), ("a", 1, 5.0), ("b", 0, 10.0), ("b", 1, 30.0)],
        "k string, b int, x double",
    )
    est = MXNorm(inputCols=["x"], outputCols=["z"], batchCol="b", keyCols=["k"], minKeyRows=2)
    model = est.fit(df)
    assert isinstance(model, KeyedMXNormModel)
    assert model.getOrDefault(model.minKeyRows) == 2 and model.keyed.output_cols == ("z",)
    direct = model.keyed.transform(df).orderBy("k", "b", "x").collect()
    path = str(tmp_path / "pipe")
    Pipeline(stages=[est]).fit(df).write().save(path)
    again = PipelineModel.load(path).transform(df).orderBy("k", "b", "x").collect()
    assert again == direct
