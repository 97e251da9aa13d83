"""A newcomer's first hour: bad input gets one named ``error:`` line and exit status 2,
before Spark runs a job where it can be known before; examples run as written.

Most checks call :func:`mxnorm_spark.cli.main` in-process: with no Spark at all where the
error must come before Spark starts (``JobSession`` is made to fail the test if entered),
or on the shared session. Subprocesses only where the process itself is the subject: a
user's own SparkSession without ``PYSPARK_PYTHON``, Ctrl-C to a running stream, and the
wheel installed in a fresh environment with numpy alone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mxnorm_spark import CorruptStateError, Moments, MXNormState, StateNotFoundError, cli
from mxnorm_spark.cli._base import inspect_table
from mxnorm_spark.core.state import StateOptions
from mxnorm_spark.store import StateStore, read_state, record_batch, write_state

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# A JVM that lives seconds spends more on C2 compilation than it gains; no UI either.
FAST_JVM = {
    "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1",
    "spark.ui.enabled": "false",
}
CSV_HEADER = "day,a,b\n"
# Line 3 is short a field, line 4 has one too many: Spark's PERMISSIVE default would read
# a null and drop a value, silently.
BAD_CSV = CSV_HEADER + "1,1.0,2.0\n2,3.0\n3,5.0,6.0,7.0\n"


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code: int, err: str, *parts: str) -> str:
    """Exit status 2 and exactly one line, ``error: ...``, holding every part."""
    assert code == 2, err
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    for part in parts:
        assert part in err, (part, err)
    return err.strip()


@pytest.fixture
def no_spark(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a command starts its SparkSession."""
    from mxnorm_spark.cli import _base as cli_base

    def refuse(self: Any) -> None:
        raise AssertionError("the command started Spark before rejecting its input")

    monkeypatch.setattr(cli_base.JobSession, "__enter__", refuse)


@pytest.fixture
def fitted(tmp_path: Path) -> Path:
    """A small state file."""
    state = MXNormState.create(["a", "b"]).update(Moments.from_array([[1.0, 2.0], [3.0, 6.0]]))
    path = tmp_path / "fitted.json"
    write_state(state, path)
    return path


# ---- 2. unwritable outputs, states and checkpoints: before any Spark job ------------------
def _unwritable_cases(tmp: Path, fitted: Path) -> list[tuple[list[str], str]]:
    data = tmp / "in.csv"
    data.write_text(CSV_HEADER + "1,1.0,2.0\n")
    a_file = tmp / "plain.txt"
    a_file.write_text("not a directory")
    under_file = str(a_file / "sub")
    fit = ["fit", "--input", str(data), "--format", "csv", "--cols", "a,b"]
    stream = ["stream", "--input", str(tmp), "--format", "csv", "--cols", "a,b"]
    s_ok = ["--state", str(tmp / "st"), "--output", str(tmp / "o"), "--checkpoint", str(tmp / "c")]
    transform = ["transform", "--input", str(data), "--format", "csv", "--state", str(fitted)]
    cases = [
        ([*fit, "--state", f"{under_file}/state.json"], "--state"),
        ([*fit, "--state", str(tmp / "s.json"), "--output", under_file], "--output"),
        ([*fit, "--key-cols", "day", "--state", under_file], "--state"),
        ([*stream, *s_ok[2:], "--state", under_file], "--state"),
        ([*stream, *s_ok[:4], "--checkpoint", under_file], "--checkpoint"),
        ([*transform, "--output", under_file], "--output"),
        (["export-keys", str(tmp), under_file], "OUT_DIR"),
        (["report", str(fitted), "--out", f"{under_file}/r.html"], "--out"),
    ]
    if Path("/proc/self").is_dir():  # the issue's own examples: exists, but takes no files
        cases += [
            ([*fit, "--state", "/proc/state.json"], "--state"),
            ([*stream, *s_ok[2:], "--state", "/proc/x"], "--state"),
            ([*transform, "--output", "/proc/out"], "--output"),
        ]
    return cases


def test_unwritable_locations_fail_before_spark(
    tmp_path: Path, fitted: Path, no_spark: None, capsys: pytest.CaptureFixture[str]
) -> None:
    for args, flag in _unwritable_cases(tmp_path, fitted):
        code, _, err = run_cli(capsys, *args)
        target = args[args.index(flag) + 1] if flag.startswith("--") else args[-1]
        assert_one_error_line(code, err, f"{flag} {target} is not writable: ", "choose another")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fitted.json", "in.csv", "plain.txt"]


# ---- 8. a file of another format than --format -------------------------------------------
def test_format_that_the_files_are_not(
    tmp_path: Path, no_spark: None, capsys: pytest.CaptureFixture[str]
) -> None:
    parquet = tmp_path / "events"
    parquet.mkdir()
    (parquet / "_SUCCESS").write_text("")  # skipped, as Spark skips it
    pq.write_table(pa.table({"a": [1.0], "b": [2.0]}), parquet / "part-0.parquet")
    code, _, err = run_cli(capsys, "fit", "--input", str(parquet), "--format", "csv",
                           "--cols", "a,b", "--state", str(tmp_path / "s.json"))  # fmt: skip
    assert_one_error_line(code, err, "part-0.parquet is a Parquet file, not CSV",
                          "pass --format parquet")  # fmt: skip
    text = tmp_path / "in.csv"
    text.write_text(CSV_HEADER)
    code, _, err = run_cli(capsys, "fit", "--input", str(text), "--cols", "a,b",
                           "--state", str(tmp_path / "s.json"))  # fmt: skip
    assert_one_error_line(code, err, "in.csv is not a Parquet file", "pass --format csv")


# ---- 8. flags, not Python parameters; "not found", not "corrupt" ---------------------------
def test_errors_name_flags_and_missing_states(
    tmp_path: Path, no_spark: None, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["fit", "--input", str(tmp_path), "--state", str(tmp_path / "s.json")]
    code, _, err = run_cli(capsys, *base, "--cols", "a", "--input-col", "v")
    assert_one_error_line(code, err, "give either --cols (scalar columns) or --input-col")
    code, _, err = run_cli(capsys, *base, "--cols", "a", "--handle-invalid", "skip")
    assert_one_error_line(code, err, "--handle-invalid only apply to", "add --output PATH")
    # From a config file, its keys are the names to fix.
    conf = tmp_path / "job.toml"
    conf.write_text('[fit]\ncols = ["a"]\nhandle_invalid = "skip"\n')
    code, _, err = run_cli(capsys, *base, "--config", str(conf))
    assert_one_error_line(code, err, "handle_invalid only apply to", "add output=PATH")

    missing = tmp_path / "missing.json"
    with pytest.raises(StateNotFoundError, match="not found") as info:
        read_state(missing)
    assert not isinstance(info.value, CorruptStateError)
    code, _, err = run_cli(capsys, "inspect", str(missing))
    assert_one_error_line(code, err, f"STATE_PATH {missing} not found")


# ---- 6. report on a damaged state fails as inspect does; 7. inspect --batch-id ------------
@pytest.fixture
def state_dir(tmp_path: Path) -> tuple[Path, list[MXNormState]]:
    """A stream's state directory: three versions and their history."""
    store, state = StateStore(tmp_path / "state"), MXNormState.create(["x"], alpha=0.5)
    versions = []
    for b, batch in enumerate([[0.0, 2.0], [1.0, 5.0], [9.0, 11.0]]):
        m = Moments.from_array([[v] for v in batch])
        state = state.update(m, batch_id=b)
        record_batch(store.path, b, rows=2, moments=m, state=state)
        store.commit(b, state)
        versions.append(state)
    return Path(store.path), versions


def test_report_of_a_damaged_state_fails_like_inspect(
    state_dir: tuple[Path, list[MXNormState]], no_spark: None, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = state_dir
    newest = path / "v-000000000002.json"
    doc = json.loads(newest.read_text())
    doc["payload"]["batches_seen"] += 1  # a changed number, the checksum left as it was
    newest.write_text(json.dumps(doc))
    code, _, inspect_err = run_cli(capsys, "inspect", str(path))
    line = assert_one_error_line(code, inspect_err, str(newest), "checksum")
    for out in ("r.html", "r.png"):
        code, printed, err = run_cli(capsys, "report", str(path), "--out", str(path / out))
        assert assert_one_error_line(code, err) == line and not printed
        assert not (path / out).exists()


def test_inspect_reads_a_pinned_version(
    state_dir: tuple[Path, list[MXNormState]],
    fitted: Path,
    no_spark: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, versions = state_dir
    for b, state in enumerate(versions):
        code, out, _ = run_cli(capsys, "inspect", str(path), "--batch-id", str(b), "--json")
        assert code == 0 and out == state.to_json()
    code, out, _ = run_cli(capsys, "inspect", str(path), "--batch-id", "1")
    assert out.strip() == inspect_table(versions[1])
    code, _, err = run_cli(capsys, "inspect", str(path), "--batch-id", "7")
    assert_one_error_line(code, err, "holds no version for batch 7 (committed: 3 versions, 0..2)")
    code, _, err = run_cli(capsys, "inspect", str(fitted), "--batch-id", "0")
    assert_one_error_line(code, err, "--batch-id selects a version of a state directory")


# ---- 8. a warm start that does not fit lists every difference ------------------------------
def test_warm_start_mismatch_lists_every_difference(spark: Any, tmp_path: Path) -> None:
    from mxnorm_spark.core.errors import InvalidParameterError
    from mxnorm_spark.streaming.updater import MXNormStream

    saved = MXNormState.create(["a", "b"], alpha=0.1, var_update="mixture")
    write_state(saved.update(Moments.from_array([[1.0, 2.0]])), tmp_path / "init.json")
    with pytest.raises(InvalidParameterError) as info:
        MXNormStream(
            spark,
            str(tmp_path / "state"),
            cols=["a", "c"],
            output=str(tmp_path / "o"),
            options=StateOptions(alpha=0.2),
            initial_state=str(tmp_path / "init.json"),
        )
    message = str(info.value)
    for part in ("alpha=0.1 (stream: 0.2)", "var_update='mixture' (stream: 'ema')",
                 "features ['a', 'b'] (stream: columns ['a', 'c'])"):  # fmt: skip
        assert part in message, message
    assert not (tmp_path / "state").exists()


# ---- 3. malformed csv: one policy for fit, transform and stream ----------------------------
def test_malformed_csv_is_an_error_in_fit_transform_and_stream(
    spark: Any, tmp_path: Path, fitted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in"
    src.mkdir()
    bad = src / "bad.csv"
    bad.write_text(BAD_CSV)
    record = "line 3 has 2 field(s) where the header has 3 (record: '2,3.0')"
    fit = ["fit", "--input", str(bad), "--format", "csv", "--cols", "a,b"]
    code, out, err = run_cli(capsys, *fit, "--state", str(tmp_path / "s.json"))
    assert_one_error_line(code, err, str(bad), record, "--read-option mode=DROPMALFORMED")
    assert not out and not (tmp_path / "s.json").exists()
    # FAILFAST given explicitly (the default): the same line, not Spark's traceback.
    code, _, err = run_cli(capsys, "transform", "--input", str(bad), "--format", "csv",
                           "--read-option", "mode=FAILFAST", "--state", str(fitted),
                           "--output", str(tmp_path / "out"))  # fmt: skip
    assert_one_error_line(code, err, str(bad), record)
    assert not (tmp_path / "out").exists()

    code, _, err = run_cli(capsys, "stream", "--input", str(src), "--format", "csv",
                           "--cols", "a,b", "--state", str(tmp_path / "st"),
                           "--output", str(tmp_path / "so"), "--checkpoint", str(tmp_path / "c"),
                           "--available-now")  # fmt: skip
    assert_one_error_line(
        code, err, "bad.csv", "a record has 2 field(s) where the stream reads 3 columns",
        "(record: '2,3.0')",
    )  # fmt: skip
    assert StateStore(tmp_path / "st").batch_ids() == []


# ---- 5. a failed fit --output leaves nothing; fit says when it replaces a state -------------
def test_failed_fit_output_leaves_nothing_and_the_retry_works(
    spark: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = np.array([[1.0, 2.0], [np.nan, 4.0], [5.0, 9.0]])
    pq.write_table(pa.table({"a": x[:, 0], "b": x[:, 1]}), tmp_path / "in.parquet")
    state, out = tmp_path / "s.json", tmp_path / "out"
    write_state(MXNormState.create(["a", "b"]), state)  # an earlier state, to be replaced
    first = state.read_bytes()
    fit = ["fit", "--input", str(tmp_path / "in.parquet"), "--cols", "a,b", "--state", str(state)]

    code, _, err = run_cli(capsys, *fit, "--output", str(out), "--handle-invalid", "error",
                           "--engine", "arrow")  # fmt: skip
    assert_one_error_line(code, err, "column 'a' holds a NaN value and --handle-invalid error")
    assert not out.exists() and state.read_bytes() == first  # nothing new, the old state kept

    code, printed, err = run_cli(capsys, *fit, "--output", str(out))
    assert code == 0, err
    assert f"state written to {state} (it replaced the state there)" in printed
    z = np.column_stack([pq.read_table(out).column(c).to_numpy() for c in ("a", "b")])
    np.testing.assert_array_equal(z, read_state(state).normalize(x))


# ---- 9. the examples' outputs are ignored by git; 4. make run installs the spark extra -----
def test_example_outputs_are_ignored_by_git() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    paths = ["demo-output/events", "stream-demo/state", "stream-py/output", "fs-demo/state",
             "keyed-demo/state", "connect-out/part-0", "connect-state.json",
             "connect-state.history/h-000000000000.parquet", "state.json"]  # fmt: skip
    done = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=ROOT,
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.stdout.split() == paths, done.stderr


def test_make_run_installs_only_what_the_demo_needs() -> None:
    if shutil.which("make") is None:
        pytest.skip("no make")
    plan = {}
    for target in ("run", "test"):
        done = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True,
                              check=True, env={**os.environ, "MAKEFLAGS": ""})  # fmt: skip
        plan[target] = [ln for ln in done.stdout.splitlines() if "bootstrap.sh" in ln]
    assert plan == {
        "run": ["scripts/bootstrap.sh spark,report"],
        "test": ["scripts/bootstrap.sh test,dev,docs"],
    }


# ---- subprocesses --------------------------------------------------------------------------
def _env_without_venv(**extra: str) -> dict[str, str]:
    """This environment as a new user's shell has it: no PYSPARK_* variables, and PATH
    without this venv, so ``python3`` is whatever the system has."""
    unset = ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "PYTHONPATH", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p) != BIN]
    return {**env, "PATH": os.pathsep.join(path), "SPARK_LOCAL_IP": "127.0.0.1", **extra}


USER_SCRIPT = """
import numpy as np
from pyspark.sql import SparkSession
from mxnorm_spark.ml import MXNorm
from mxnorm_spark.store import write_state

builder = SparkSession.builder.master("local[1]")
for key, value in {conf!r}.items():
    builder = builder.config(key, value)
spark = builder.getOrCreate()
rows = [(d, float(d * 10 + i), float(i % 3)) for d in (3, 1, 2) for i in range(6)]
df = spark.createDataFrame(rows, "day int, price double, qty double")
est = MXNorm(inputCols=["price", "qty"], outputCols=["pz", "qz"], engine="arrow")
model = est.fit(df)
out = model.transform(df).orderBy("day", "price").select("pz", "qz").toArrow()
write_state(model.state, {state_path!r})
np.save({out_path!r}, np.column_stack([out.column(0).to_numpy(), out.column(1).to_numpy()]))
"""


@pytest.mark.slow
def test_a_users_own_local_session_runs_the_python_kernels(tmp_path: Path) -> None:
    # The arrow engine ships its kernels to Python workers, which a plain local session
    # starts with `python3` from PATH when PYSPARK_PYTHON is not set.
    env = _env_without_venv()
    system = subprocess.run(["python3", "-c", "import mxnorm_spark, pyarrow"], cwd=tmp_path,
                            env=env, capture_output=True, check=False)  # fmt: skip
    if system.returncode == 0:
        pytest.skip("PATH's python3 has mxnorm_spark and pyarrow: no mismatch to test")
    script = tmp_path / "user.py"
    script.write_text(USER_SCRIPT.format(conf=FAST_JVM, out_path=str(tmp_path / "z.npy"),
                                         state_path=str(tmp_path / "state.json")))  # fmt: skip
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    state = read_state(tmp_path / "state.json")
    x = np.array(sorted((float(d * 10 + i), float(i % 3)) for d in (3, 1, 2) for i in range(6)))
    np.testing.assert_allclose(state.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(state.var, x.var(0), rtol=1e-12)
    z = np.load(tmp_path / "z.npy")
    np.testing.assert_array_equal(z, state.normalize(x))


def _lines(stream: Any, until: str, deadline: float) -> Iterator[str]:
    for line in stream:
        yield line
        if until in line or time.monotonic() > deadline:
            return


@pytest.mark.slow
def test_ctrl_c_stops_a_waiting_stream_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "day-0.csv").write_text(CSV_HEADER + "0,1.0,2.0\n0,3.0,6.0\n")
    args = ["stream", "--input", "in", "--format", "csv", "--cols", "a,b", "--state", "state",
            "--output", "out", "--checkpoint", "chk", "--master", "local[1]"]  # fmt: skip
    for key, value in FAST_JVM.items():
        args += ["--conf", f"{key}={value}"]
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
    # Its own process group: Ctrl-C in a terminal signals the whole foreground group.
    proc = subprocess.Popen([str(BIN / "mxnorm-spark"), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        seen = list(_lines(proc.stdout, "[mxnorm] waiting for new files", time.monotonic() + 300))
        assert seen and "waiting for new files in in (Ctrl-C to stop)" in seen[-1], seen
        os.killpg(proc.pid, signal.SIGINT)
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    for noise in ("Traceback", "ERROR", "Py4J", "DAGScheduler"):
        assert noise not in err, err
    assert rest.strip().splitlines() == [
        "[mxnorm] stopped by Ctrl-C after 1 micro-batch(es), 2 rows; state committed up to batch 0"
    ]
    assert any(line.startswith("[mxnorm] batch 0: 2 rows") for line in seen)
    state = read_state(tmp_path / "state", batch_id=0)
    np.testing.assert_array_equal(state.mean, [2.0, 4.0])


@pytest.mark.slow
def test_the_wheel_in_a_numpy_only_environment(tmp_path: Path, fitted: Path) -> None:
    import numpy

    dist = tmp_path / "dist"
    built = subprocess.run([str(ROOT / "scripts" / "package.sh")], cwd=ROOT,
                           env={**os.environ, "DIST": str(dist), "PYTHON": sys.executable},
                           capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert built.returncode == 0, built.stderr
    wheel = next(dist.glob("mxnorm_spark-*-py3-none-any.whl"))
    # The wheel holds the package as it is now: every module, and none left from an
    # earlier build (setuptools reuses build/lib).
    with zipfile.ZipFile(wheel) as z:
        shipped = {n for n in z.namelist() if n.startswith("mxnorm_spark/")}
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "mxnorm_spark").rglob("*")
               if p.suffix in (".py", ".typed") and "__pycache__" not in p.parts}  # fmt: skip
    assert shipped == sources
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    vpy = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(vpy), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True)  # fmt: skip
    # numpy, the one dependency, from this environment: only its own directories.
    numpy_only = tmp_path / "numpy-only"
    numpy_only.mkdir()
    site = Path(numpy.__file__).resolve().parents[1]
    for entry in site.iterdir():
        if entry.name == "numpy" or entry.name.startswith(("numpy.libs", "numpy-")):
            (numpy_only / entry.name).symlink_to(entry)
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = subprocess.run([str(vpy), "-c", where], capture_output=True, text=True, check=True)
    Path(purelib.stdout.strip(), "numpy-only.pth").write_text(f"{numpy_only}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120, check=False)  # fmt: skip

    absent = run(str(vpy), "-c", "import pyarrow")
    assert absent.returncode != 0 and "No module named 'pyarrow'" in absent.stderr
    shown = run(str(venv / "bin" / "mxnorm-spark"), "inspect", str(fitted))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == inspect_table(read_state(fitted))
    as_json = run(str(venv / "bin" / "mxnorm-spark"), "inspect", str(fitted), "--json")
    assert json.loads(as_json.stdout) == json.loads(fitted.read_text())
    fit = run(str(venv / "bin" / "mxnorm-spark"), "fit", "--input", str(fitted), "--cols", "a",
              "--state", "s.json", "--format", "json")  # fmt: skip
    assert fit.returncode == 2 and "Traceback" not in fit.stderr
    assert fit.stderr.count("\n") == 1 and "with its [spark] extra" in fit.stderr
