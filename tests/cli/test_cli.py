"""The command line and the spark-submit jobs, end to end on tiny data.

Subprocesses (each starts a JVM, so there are few): ``mxnorm-spark fit`` and ``inspect``
through the installed entry points, and both ``jobs/`` scripts through ``spark-submit``.
Everything else calls :func:`mxnorm_spark.cli.main` in-process on the shared session.
Results are checked against the reference loop of docs/design.md and plain numpy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from reference import Reference, assert_state_close, two_pass

import mxnorm_spark
from mxnorm_spark import MXNormState, cli
from mxnorm_spark.store import read_state, write_state

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# A JVM that lives seconds spends more on C2 compilation than it gains; no UI either.
FAST_JVM = ["--conf", "spark.driver.extraJavaOptions=-XX:TieredStopAtLevel=1",
            "--conf", "spark.ui.enabled=false"]  # fmt: skip

# day, a, b: three batches of a backfill.
ROWS = [
    (3, 4.5, -1.0),
    (1, 1.0, 10.0),
    (1, 2.0, 20.0),
    (2, 3.0, 1e9 + 1.0),
    (2, 5.0, 1e9 - 1.0),
    (2, 4.0, 1e9),
    (3, 6.5, 1.0),
]


def env() -> dict[str, str]:
    return {
        **os.environ,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
    }


def run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout, check=False
    )


def write_csv(path: Path, rows: list[tuple[Any, ...]]) -> Path:
    path.write_text("day,a,b\n" + "".join(f"{d},{a!r},{b!r}\n" for d, a, b in rows))
    return path


def reference_by_day(
    rows: list[tuple[Any, ...]], alpha: float
) -> tuple[Reference, dict[int, tuple[np.ndarray, np.ndarray]]]:
    """The reference loop over the days, and the (mean, var) each day is normalized with
    under applyAt="before" (the state before it; the first day its own moments)."""
    ref = Reference(alpha=alpha)
    x = np.array([[a, b] for _, a, b in rows])
    days = np.array([d for d, _, _ in rows])
    before = {}
    for d in sorted(set(days.tolist())):
        if ref.mean is None:
            before[d] = (x[days == d].mean(0), x[days == d].var(0))
        else:
            assert ref.var is not None
            before[d] = (ref.mean, ref.var)
        ref.adapt(x[days == d])
    return ref, before


def read_parquet(path: Path) -> dict[str, list[Any]]:
    return pq.read_table(path).to_pydict()  # type: ignore[no-any-return]


def dictionary_columns(path: Path) -> set[str]:
    """Top-level columns with a dictionary page in any row group of the Parquet files."""
    found = set()
    for part in path.glob("*.parquet"):
        meta = pq.ParquetFile(part).metadata
        for g in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                chunk = meta.row_group(g).column(c)
                if chunk.has_dictionary_page:
                    found.add(chunk.path_in_schema.split(".")[0])
    return found


@pytest.mark.slow
def test_cli_fit_and_inspect_through_subprocess(tmp_path: Path) -> None:
    data = write_csv(tmp_path / "events.csv", ROWS)
    fit = run(
        [str(BIN / "mxnorm-spark"), "fit", "--input", str(data), "--format", "csv",
         "--cols", "a,b", "--batch-col", "day", "--alpha", "0.25", "--state", "state.json",
         "--output", "train", "--output-format", "json", "--output-cols", "a_z,b_z",
         "--apply-at", "before", "--master", "local[1]", *FAST_JVM],
        tmp_path,
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr
    assert "3 batches (1 .. 3)" in fit.stdout and "state written to" in fit.stdout

    ref, before = reference_by_day(ROWS, 0.25)
    state = read_state(tmp_path / "state.json")
    assert state.features == ("a", "b") and state.alpha == 0.25 and state.batches_seen == 3
    assert ref.mean is not None and ref.var is not None
    assert_state_close(state.mean, state.var, ref.mean, ref.var)
    # --output with --apply-at before: each day normalized with the state before it.
    lines = [json.loads(line) for f in sorted((tmp_path / "train").glob("*.json"))
             for line in f.read_text().splitlines()]  # fmt: skip
    assert sorted((r["day"], r["a"]) for r in lines) == sorted((d, a) for d, a, _ in ROWS)
    for r in lines:
        mean, var = before[r["day"]]
        want = (np.array([r["a"], r["b"]]) - mean) / np.sqrt(var + 1e-8)
        np.testing.assert_allclose([r["a_z"], r["b_z"]], want, rtol=1e-9)

    shown = run([sys.executable, "-m", "mxnorm_spark", "inspect", "state.json", "--json"], tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert MXNormState.from_json(shown.stdout).mean.tolist() == state.mean.tolist()
    table = run([str(BIN / "mxnorm-spark"), "inspect", "state.json"], tmp_path)
    assert "batches_seen=3" in table.stdout and table.stdout.count("\n") == 4
    assert f"{state.normalization_constants()[1][0]:.15g}" in table.stdout  # the scale

    # A config error fails before Spark starts: one line, exit 2, no traceback.
    bad = tmp_path / "bad.toml"
    bad.write_text('[transform]\ninput = "events.csv"\nhandle_invalid = "drop"\n')
    failed = run([str(BIN / "mxnorm-spark"), "transform", "--config", str(bad)], tmp_path)
    assert failed.returncode == 2
    assert failed.stderr == (
        f"error: {bad}: [transform] handle_invalid: expected one of "
        "['keep', 'error', 'skip'], got the string 'drop'\n"
    )


@pytest.mark.slow
def test_a_failing_task_ends_in_one_error_line(tmp_path: Path) -> None:
    # The failure is raised inside a Python worker (the arrow engine): Spark would log the
    # task's ERROR and traceback first; the command keeps only its own line.
    import pyarrow as pa

    data = tmp_path / "events.parquet"
    pq.write_table(pa.table({"a": [1.0, float("nan"), 3.0], "b": [2.0, 2.5, 3.0]}), data)
    state = MXNormState.create(["a", "b"]).update(mxnorm_spark.Moments.from_array([[1.0, 2.0]]))
    write_state(state, tmp_path / "s.json")
    failed = run(
        [str(BIN / "mxnorm-spark"), "transform", "--input", str(data),
         "--state", "s.json", "--output", "out", "--engine", "arrow",
         "--handle-invalid", "error", "--master", "local[1]", *FAST_JVM],
        tmp_path,
    )  # fmt: skip
    assert failed.returncode == 2, failed.stderr
    lines = failed.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "NaN" in lines[-1], lines[-1]
    noise = [ln for ln in lines[:-1] if "ERROR" in ln or "Traceback" in ln or "Lost task" in ln]
    assert not noise, "\n".join(noise[:5])


def test_inspect_reads_an_s3_uri(s3_bucket: str, tmp_path: Path) -> None:
    state = MXNormState.create(["a"]).update(mxnorm_spark.Moments.from_array([[1.0], [4.0]]))
    write_state(state, f"{s3_bucket}/models/state.json")
    shown = run([sys.executable, "-m", "mxnorm_spark", "inspect", f"{s3_bucket}/models/state.json",
                 "--json"], tmp_path)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == state.to_json()


@pytest.mark.slow
def test_jobs_through_spark_submit(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyspark

    days, a, b = (list(col) for col in zip(*ROWS, strict=True))
    pq.write_table(pa.table({"day": days, "a": a, "b": b}), tmp_path / "events.parquet")
    (tmp_path / "job.toml").write_text(
        "[spark.conf]\n"
        '"spark.sql.shuffle.partitions" = "2"\n'
        "[fit]\n"
        'input = "events.parquet"\ncols = ["a", "b"]\nalpha = "cumulative"\n'
        'state = "state/fitted.json"\n'
        "[transform]\n"
        'input = "events.parquet"\nstate = "state/fitted.json"\noutput = "out"\n'
        'output_cols = ["a_z", "b_z"]\n'
    )
    submit = str(Path(pyspark.__file__).parent / "bin" / "spark-submit")
    for job in ("fit_state.py", "normalize_batch.py"):
        job_path = str(ROOT / "jobs" / job)
        done = run([submit, "--master", "local[1]", *FAST_JVM, job_path, "--config", "job.toml"],
                   tmp_path)  # fmt: skip
        assert done.returncode == 0, done.stderr

    # alpha "cumulative" is the exact moments of all rows (one batch: whole input).
    state = read_state(tmp_path / "state" / "fitted.json")
    x = np.array([[r[1], r[2]] for r in ROWS])
    assert_state_close(state.mean, state.var, x.mean(0), x.var(0))
    out = read_parquet(tmp_path / "out")
    assert out["a"] == a and out["day"] == days  # inputs kept, row order kept
    got = np.column_stack([out["a_z"], out["b_z"]])
    np.testing.assert_array_equal(got, state.normalize(x))  # same constants, same bits


def test_cli_in_process(spark: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import pyarrow as pa

    nan = float("nan")
    x = np.array([[1.0, 2.0], [3.0, nan], [5.0, 4.0], [7.0, 10.0]])
    pq.write_table(
        pa.table({"id": [1, 2, 3, 4], "a": x[:, 0], "b": x[:, 1], "v": x.tolist()}),
        tmp_path / "in.parquet",
    )
    state = MXNormState.create(["a", "b"], alpha=0.5).update(mxnorm_spark.Moments.from_array(x))
    write_state(state, tmp_path / "s.json")
    data = str(tmp_path / "in.parquet")
    base = ["transform", "--input", data, "--state", str(tmp_path / "s.json")]

    def main(*args: str) -> tuple[int, str]:
        code = cli.main([*args])
        err = capsys.readouterr().err
        return code, err

    code, _ = main(*base, "--output", str(tmp_path / "keep"), "--output-cols", "a_z,b_z")
    assert code == 0
    out = read_parquet(tmp_path / "keep")
    got = np.column_stack([out["a_z"], out["b_z"]])
    np.testing.assert_array_equal(got, state.normalize(x))  # NaN stays NaN (keep)
    # z-scores are written without dictionary (values that repeat, so the writer would keep
    # one); the other columns keep Spark's default, unless the user sets dictionaries.
    rep = tmp_path / "repeating.parquet"
    i = np.arange(400)
    pq.write_table(pa.table({"id": i % 3, "a": (i % 2) * 1.0, "b": (i % 5) * 1.0}), rep)
    rep_args = ["transform", "--input", str(rep), "--state", str(tmp_path / "s.json")]
    code, _ = main(*rep_args, "--output", str(tmp_path / "plain"), "--output-cols", "a_z,b_z")
    assert code == 0
    assert dictionary_columns(tmp_path / "plain") == {"id", "a", "b"}
    code, _ = main(*rep_args, "--output", str(tmp_path / "dict"), "--output-cols", "a_z,b_z",
                   "--write-option", "parquet.enable.dictionary=true")  # fmt: skip
    assert code == 0
    assert dictionary_columns(tmp_path / "dict") == {"id", "a", "b", "a_z", "b_z"}

    code, _ = main(*base, "--output", str(tmp_path / "skip"), "--handle-invalid", "skip")
    assert code == 0
    assert read_parquet(tmp_path / "skip")["id"] == [1, 3, 4]  # replaced in place, row 2 gone

    err_args = ["--output", str(tmp_path / "err"), "--handle-invalid", "error", "--engine", "arrow"]
    code, err = main(*base, *err_args)
    assert code == 2
    assert err.startswith("error: column 'b' holds a NaN value and --handle-invalid error;")
    assert err.count("\n") == 1 and "Traceback" not in err

    code, err = main(*base, "--output", str(tmp_path / "x"), "--cols", "a,zz")
    assert code == 2
    assert (
        err
        == "error: column(s) ['zz'] not found; the DataFrame has columns ['id', 'a', 'b', 'v']\n"
    )
    code, err = main(*base, "--output", str(tmp_path / "keep"))
    assert code == 2 and "already exists; choose another path or pass --mode overwrite" in err

    # A vector column: fit names its features v[0], v[1]; transform finds it by them.
    v_state, fit_out = str(tmp_path / "v.json"), str(tmp_path / "fit_out")
    code, _ = main("fit", "--input", data, "--input-col", "v", "--alpha", "1", "--state", v_state,
                   "--output", fit_out, "--output-col", "vz")  # fmt: skip
    assert code == 0
    vstate = read_state(v_state)
    assert vstate.features == ("v[0]", "v[1]")
    ref = mxnorm_spark.Moments.from_array(x)
    assert_state_close(vstate.mean, vstate.var, ref.mean, ref.var)
    vz = np.array(read_parquet(Path(fit_out))["vz"], dtype=np.float64)
    np.testing.assert_array_equal(vz, vstate.normalize(x))  # fit --output: the fitted state
    code, _ = main(
        "transform", "--input", data, "--state", v_state, "--output", str(tmp_path / "vout")
    )
    assert code == 0
    v = np.array(read_parquet(tmp_path / "vout")["v"], dtype=np.float64)
    np.testing.assert_array_equal(v, vstate.normalize(x))


def test_demo_on_small_data(spark: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mxnorm_spark.cli import demo

    alpha = 0.5
    argv = ["--output-dir", str(tmp_path), "--rows", "3000", "--days", "3", "--alpha", "0.5"]
    argv.append("--skip-stream")  # the stream part has its own tests
    assert demo.main(argv) == 0
    printed = capsys.readouterr().out
    assert "mean(temperature)" in printed and str(tmp_path / "normalized") in printed

    # The reference loop over the generated data, day by day (NaN-aware: 1% nulls).
    events = read_parquet(tmp_path / "events")
    x = np.array([events[c] for c in demo.FEATURES], dtype=np.float64).T
    days = np.array(events["day"])
    before: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    mean = var = None
    for d in sorted(set(days.tolist())):
        m, v = two_pass(x[days == d])
        before[d] = (m, v) if mean is None else (mean, var)  # applyAt="before"
        mean, var = (m, v) if mean is None else ((1 - alpha) * mean + alpha * m,
                                                 (1 - alpha) * var + alpha * v)  # fmt: skip
    state = read_state(tmp_path / "state.json")
    assert mean is not None and var is not None
    assert_state_close(state.mean, state.var, mean, var)
    assert state.batches_seen == 3

    out = read_parquet(tmp_path / "normalized")
    z = np.array([out[f"{c}_z"] for c in demo.FEATURES], dtype=np.float64).T
    raw = np.array([out[c] for c in demo.FEATURES], dtype=np.float64).T
    mu = np.array([before[d][0] for d in out["day"]])
    sd = np.sqrt(np.array([before[d][1] for d in out["day"]]) + 1e-8)
    np.testing.assert_allclose(z, (raw - mu) / sd, rtol=1e-9, atol=1e-12)
    assert len(out["day"]) == 3000 and np.isnan(raw[:, 2]).any()
