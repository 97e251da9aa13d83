"""Per-key MXNorm on the command line: fit --key-cols, transform with the keyed model,
export-keys, the keyed config keys and the errors, in-process on the shared session.

Results are checked against the library (``fit_keyed(...).transform``, same bits) and a
numpy reference: the reference loop of docs/design.md per key and per day, with the global fallback.
"""

from __future__ import annotations

import contextlib
import io
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from reference import Reference
from test_cli import read_parquet

from mxnorm_spark.cli import commands as cli

pytestmark = pytest.mark.spark

ALPHA, EPS, MIN_ROWS = 0.5, 1e-8, 3
FEATURES = ["a", "b"]


def _table(seed: int = 7) -> dict[str, list[Any]]:
    """Three sensors over three days, one sensor with too few rows, two null-key rows."""
    rng = np.random.default_rng(seed)
    sensor: list[str | None] = []
    day: list[int] = []
    for d in (1, 2, 3):
        for s, n in (("s1", 6), ("s2", 4), ("s3", 3)):
            if (s, d) != ("s3", 1):  # s3 appears on day 2
                sensor += [s] * n
                day += [d] * n
        sensor += ["rare"] if d == 2 else []  # 1 row: under MIN_ROWS, global fallback
        day += [2] if d == 2 else []
    sensor += [None, None]
    day += [1, 3]
    n = len(sensor)
    a = 20.0 + 3.0 * rng.normal(size=n) + np.array(day) * 0.5
    b = 1000.0 + 5.0 * rng.normal(size=n)
    site = [i % 2 for i in range(n)]
    return {"id": list(range(n)), "sensor": sensor, "site": site, "day": day,
            "a": a.tolist(), "b": b.tolist()}  # fmt: skip


def _reference(t: dict[str, list[Any]]) -> np.ndarray:
    """(a, b) normalized per key as of each row's day, numpy only (applyAt after)."""
    x = np.column_stack([t["a"], t["b"]])
    days, keys = np.array(t["day"]), np.array(t["sensor"], dtype=object)
    after: dict[Any, tuple[np.ndarray, np.ndarray, int]] = {}
    glob = Reference(ALPHA, EPS)
    for d in sorted(set(days.tolist())):
        glob.adapt(x[days == d])
        assert glob.mean is not None and glob.var is not None
        after[(None, d)] = (glob.mean, glob.var, 10**9)
    for k in {k for k in keys if k is not None}:
        ref, rows = Reference(ALPHA, EPS), 0
        for d in sorted(set(days[keys == k].tolist())):
            chunk = x[(keys == k) & (days == d)]
            ref.adapt(chunk)
            rows += len(chunk)
            assert ref.mean is not None and ref.var is not None
            after[(k, d)] = (ref.mean, ref.var, rows)
    out = np.empty_like(x)
    for i, (k, d) in enumerate(zip(keys, days, strict=True)):
        mean, var, n = after[(k, d)]
        if n < MIN_ROWS:
            mean, var, _ = after[(None, d)]
        out[i] = (x[i] - mean) / np.sqrt(var + EPS)
    return out


def main(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(args))
    return code, out.getvalue(), err.getvalue()


def _sorted(table: dict[str, list[Any]], cols: list[str]) -> np.ndarray:
    order = np.argsort(table["id"])
    return np.column_stack([np.asarray(table[c], dtype=np.float64)[order] for c in cols])


@pytest.fixture(scope="module")
def keyed_run(spark: Any, tmp_path_factory: Any) -> dict[str, Any]:
    """One CLI fit --key-cols (with --output) and one transform of the same input."""
    tmp = tmp_path_factory.mktemp("cli_keyed")
    t = _table()
    pq.write_table(pa.table(t), tmp / "events.parquet")
    fit = main("fit", "--input", str(tmp / "events.parquet"), "--cols", "a,b",
               "--key-cols", "sensor", "--batch-col", "day", "--alpha", str(ALPHA),
               "--min-key-rows", str(MIN_ROWS), "--state", str(tmp / "model"),
               "--output", str(tmp / "fit_out"), "--output-cols", "a_z,b_z")  # fmt: skip
    transform = main("transform", "--input", str(tmp / "events.parquet"),
                     "--state", str(tmp / "model"), "--output", str(tmp / "out"))  # fmt: skip
    return {"tmp": tmp, "table": t, "fit": fit, "transform": transform}


def test_fit_and_transform_equal_the_library_and_numpy(spark: Any, keyed_run: Any) -> None:
    from mxnorm_spark.core.state import StateOptions
    from mxnorm_spark.keyed.backfill import fit_keyed

    tmp, t = keyed_run["tmp"], keyed_run["table"]
    code, out, err = keyed_run["fit"]
    assert code == 0, err
    assert "fitted 2 feature(s) per key of ['sensor']" in out and "4 key(s)" in out, out
    assert "3 batches (1 .. 3)" in out and f"keyed model written to {tmp / 'model'}" in out
    meta = json.loads((tmp / "model" / "keyed.json").read_text())
    assert (meta["key_cols"], meta["min_key_rows"], meta["batch_col"]) == (["sensor"], 3, "day")
    code, out, err = keyed_run["transform"]
    assert code == 0, err
    assert "per key of ['sensor'] with the keyed model" in out

    df = spark.read.parquet(str(tmp / "events.parquet"))  # the same partitions, the same sums
    lib = fit_keyed(df, FEATURES, ["sensor"], "day", options=StateOptions(alpha=ALPHA),
                    min_key_rows=MIN_ROWS).transform(df).toPandas()  # fmt: skip
    want = lib.sort_values("id")[FEATURES].to_numpy()
    got = _sorted(read_parquet(tmp / "out"), FEATURES)
    np.testing.assert_array_equal(got, want)  # the CLI is the library, bit for bit
    fit_out = read_parquet(tmp / "fit_out")
    np.testing.assert_array_equal(_sorted(fit_out, ["a_z", "b_z"]), want)
    np.testing.assert_array_equal(_sorted(fit_out, FEATURES), _sorted(t, FEATURES))  # kept
    np.testing.assert_allclose(got, _reference(t), rtol=0, atol=1e-12)


def test_export_keys_serves_the_same_rows(spark: Any, keyed_run: Any) -> None:
    from mxnorm_spark import serving
    from mxnorm_spark.serving.keyed import KeyedNormalizer

    tmp, t = keyed_run["tmp"], keyed_run["table"]
    code, out, err = main("export-keys", str(tmp / "model"), str(tmp / "export"))
    assert code == 0, err
    assert f"to {tmp / 'export'}" in out
    norm = serving.load(str(tmp / "export"))
    assert isinstance(norm, KeyedNormalizer) and norm.n_keys == 4

    # Without the day column Spark uses each key's final state, as serving does.
    new = {k: v for k, v in t.items() if k != "day"}
    new["sensor"] = [*new["sensor"][:-3], "unseen", None, None]
    pq.write_table(pa.table(new), tmp / "new.parquet")
    new_out = tmp / "new_out"
    code, _, err = main("transform", "--input", str(tmp / "new.parquet"),
                        "--state", str(tmp / "model"), "--output", str(new_out))  # fmt: skip
    assert code == 0, err
    spark_rows = _sorted(read_parquet(new_out), FEATURES)
    served = norm.transform(pa.table(new))
    np.testing.assert_array_equal(_sorted(served.to_pydict(), FEATURES), spark_rows)
    row = norm.transform_row({"sensor": "s2", "a": 21.0, "b": 999.0})
    assert row is not None and np.isfinite(row["a"])

    # Again: only with --overwrite, and then the export is replaced.
    code, _, err = main("export-keys", str(tmp / "model"), str(tmp / "export"))
    assert code == 2 and "already exists; choose another path or pass --overwrite" in err
    code, _, err = main("export-keys", str(tmp / "model"), str(tmp / "export"), "--overwrite")
    assert code == 0, err
    assert serving.load(str(tmp / "export")).n_keys == 4  # type: ignore[union-attr]


def test_keyed_config_keys(spark: Any, keyed_run: Any) -> None:
    tmp = keyed_run["tmp"]
    conf = tmp / "keyed.toml"
    conf.write_text(
        "[fit]\n"
        f'input = "{tmp / "events.parquet"}"\ncols = ["a", "b"]\nbatch_col = "day"\n'
        f'alpha = {ALPHA}\nkey_cols = ["sensor", "site"]\nmin_key_rows = 0\n'
        f'state = "{tmp / "model2"}"\n'
        "[transform]\n"
        f'input = "{tmp / "events.parquet"}"\nstate = "{tmp / "model2"}"\n'
        f'key_cols = ["sensor", "site"]\noutput = "{tmp / "out2"}"\n'
    )
    code, out, err = main("fit", "--config", str(conf))
    assert code == 0, err
    assert "per key of ['sensor', 'site']" in out and "7 key(s)" in out, out
    meta = json.loads((tmp / "model2" / "keyed.json").read_text())
    assert meta["key_cols"] == ["sensor", "site"] and meta["min_key_rows"] == 0
    # --key-cols on the command line wins over the file; transform checks the model's keys.
    code, _, err = main("transform", "--config", str(conf), "--key-cols", "sensor")
    assert code == 2
    assert "is keyed by ['sensor', 'site'], not by key_cols ['sensor']" in err
    code, _, err = main("transform", "--config", str(conf))
    assert code == 0, err
    assert len(read_parquet(tmp / "out2")["id"]) == len(keyed_run["table"]["id"])


def fails(*args: str) -> str:
    """The one error line of a command that must exit with status 2."""
    code, _, err = main(*args)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_bad_keyed_fit_fails_with_one_clear_line(spark: Any, keyed_run: Any) -> None:
    tmp = keyed_run["tmp"]
    data, model = str(tmp / "events.parquet"), str(tmp / "model")
    fit = ["fit", "--input", data, "--cols", "a,b", "--state", str(tmp / "bad_model")]
    assert "key column(s) ['zone'] not found in --input" in fails(*fit, "--key-cols", "zone")
    err = fails(*fit, "--key-cols", "sensor,a")
    assert "--key-cols and --cols/--batch-col share ['a']" in err
    assert "--key-cols and --cols/--batch-col share ['day']" in fails(
        *fit, "--key-cols", "day", "--batch-col", "day"
    )
    err = fails(*fit, "--key-cols", "sensor", "--min-key-rows", "-1")
    assert "--min-key-rows: expected a whole number >= 0, got -1" in err
    assert "--min-key-rows only applies with --key-cols" in fails(*fit, "--min-key-rows", "2")
    assert "per-key states of a vector column" in fails(
        "fit", "--input", data, "--input-col", "v", "--key-cols", "sensor", "--state", "x"
    )
    # --state must be a new directory or a keyed model: not a file, not any directory.
    (tmp / "plain.json").write_text("{}")
    err = fails(*fit[:-1], str(tmp / "plain.json"), "--key-cols", "sensor")
    assert "is not a keyed model directory (it is a file" in err
    assert "it has no keyed.json" in fails(*fit[:-1], str(tmp / "fit_out"), "--key-cols", "sensor")
    assert "(it holds a keyed model: add --key-cols)" in fails(*fit[:-1], model)
    assert not (tmp / "bad_model").exists()


def test_bad_keyed_transform_and_export_fail_with_one_clear_line(
    spark: Any, keyed_run: Any
) -> None:
    tmp = keyed_run["tmp"]
    data, model = str(tmp / "events.parquet"), str(tmp / "model")
    (tmp / "plain.json").write_text("{}")
    # transform: key columns must be in the input; a plain state takes no key_cols.
    no_key = pa.table(keyed_run["table"]).drop(["sensor"])
    pq.write_table(no_key, tmp / "no_key.parquet")
    err = fails("transform", "--input", str(tmp / "no_key.parquet"), "--state", model,
                "--output", str(tmp / "never"))  # fmt: skip
    assert "key column(s) ['sensor'] not found in --input" in err
    err = fails("transform", "--input", data, "--state", model, "--output", str(tmp / "never"),
                "--cols", "b")  # fmt: skip
    assert "normalizes all its features ['a', 'b']" in err
    err = fails("transform", "--input", data, "--state", str(tmp / "plain.json"),
                "--output", str(tmp / "never"), "--key-cols", "sensor")  # fmt: skip
    assert "is not a keyed model directory (it is a file" in err

    # A serving export is not a model: neither transform nor export-keys takes one.
    (tmp / "an_export").mkdir()
    (tmp / "an_export" / "keyed.json").write_text('{"type": "mxnorm_spark.KeyedExport"}')
    err = fails("transform", "--input", data, "--state", str(tmp / "an_export"),
                "--output", str(tmp / "never"))  # fmt: skip
    assert "is not a keyed model directory (it is a serving export" in err
    err = fails("export-keys", str(tmp / "an_export"), str(tmp / "never"))
    assert "nor a keyed stream's state directory (it is a serving export" in err

    # export-keys: only a keyed model directory exports.
    err = fails("export-keys", str(tmp / "fit_out"), str(tmp / "never"))
    assert f"MODEL_DIR {tmp / 'fit_out'} is neither a keyed model directory nor" in err
    assert "(it has no keyed.json" in err
    assert "no such file or directory" in fails("export-keys", str(tmp / "nope"), str(tmp / "x"))
    assert "is MODEL_DIR itself" in fails("export-keys", model, model, "--overwrite")
    assert "--overwrite replaces only an earlier export" in fails(
        "export-keys", model, str(tmp / "fit_out"), "--overwrite"
    )
    assert not (tmp / "never").exists()


def test_a_saved_estimator_model_transforms_and_exports(spark: Any, keyed_run: Any) -> None:
    """``MXNorm(keyCols=...).fit(df).save(dir)``: transform --state dir and export-keys dir
    read it with the params set on the model after the fit (here minKeyRows)."""
    from mxnorm_spark import serving
    from mxnorm_spark.ml.estimator import MXNorm

    tmp, t = keyed_run["tmp"], keyed_run["table"]
    df = spark.read.parquet(str(tmp / "events.parquet"))
    est = MXNorm(inputCols=FEATURES, keyCols=["sensor"], batchCol="day", alpha=ALPHA)
    model = est.setMinKeyRows(1).fit(df).setMinKeyRows(MIN_ROWS)
    model.save(str(tmp / "ml_model"))

    ml_model = str(tmp / "ml_model")
    code, _, err = main("transform", "--input", str(tmp / "events.parquet"),
                        "--state", ml_model, "--output", str(tmp / "ml_out"))  # fmt: skip
    assert code == 0, err
    got = _sorted(read_parquet(tmp / "ml_out"), FEATURES)
    np.testing.assert_allclose(got, _reference(t), rtol=0, atol=1e-12)  # MIN_ROWS applied
    np.testing.assert_array_equal(got, _sorted(read_parquet(tmp / "out"), FEATURES))

    code, _, err = main("export-keys", ml_model, str(tmp / "ml_export"))
    assert code == 0, err
    norm = serving.load(str(tmp / "ml_export"))
    assert norm.min_key_rows == MIN_ROWS  # type: ignore[union-attr]
    model.export(str(tmp / "lib_export"))  # the library's export of the same model
    want = serving.load(str(tmp / "lib_export"))
    new = pa.table({k: v for k, v in t.items() if k != "day"})
    served = _sorted(norm.transform(new).to_pydict(), FEATURES)
    np.testing.assert_array_equal(served, _sorted(want.transform(new).to_pydict(), FEATURES))
    assert np.isfinite(served).all()
