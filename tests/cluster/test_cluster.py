"""The jobs on a real Spark standalone cluster, and what the driver holds.

A module-scoped fixture starts ``scripts/cluster.sh up`` in the background (one master and
two workers on 127.0.0.1, free ports so a developer's cluster on 7077 is left alone) and
always stops it by PID. Each job (``fit``, ``transform``, ``stream`` available-now) runs
with the same arguments and Spark settings on ``local[2]`` (in this process, on the shared
session, while the cluster starts) and through ``spark-submit --master spark://...`` (the
three at once, each with two 1-core executors, one per worker); the state files and outputs
must be equal to the last bit, and agree with the numpy reference.

Why the two runs can be bit-identical: partials are merged on the driver in a fixed order
(batch value, then partition id), so only the partitioning and the row order inside each
partition matter. The inputs are written here as Parquet files of a few KB, each below
``spark.sql.files.openCostInBytes`` (4 MB), so Spark packs exactly one file per input
partition on any master, and a file is always read in the same row order.

The package is never installed on the "cluster": driver and executors run a Python that
cannot import ``mxnorm_spark`` (the venv's interpreter with ``-S``: site-packages on the
path, but no ``.pth`` files, so no editable install), and get it only from the zip that
``scripts/package.sh --zip`` builds and ``--py-files`` ships. Every job runs with
``--engine arrow`` so that executors execute package code (mapInArrow, Arrow UDFs);
the ``sql`` engine would compute in the JVM alone and prove nothing about shipping.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from reference import assert_state_close, two_pass

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SH = ROOT / "scripts" / "cluster.sh"
PACKAGE_SH = ROOT / "scripts" / "package.sh"
FEATURES = ["a", "b", "c"]
# One spark-submit on a shared, busy 2-core box can take minutes; a hang must still end.
SUBMIT_TIMEOUT = 420
# Short-lived JVMs: the C1 compiler alone starts faster on a busy 2-core box, and Java 17
# arithmetic is strict IEEE whichever compiler runs it.
FAST_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


def _spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def _base_env() -> dict[str, str]:
    env = dict(os.environ)
    env["SPARK_LOCAL_IP"] = "127.0.0.1"
    env["PYSPARK_PYTHON"] = sys.executable
    env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    env.pop("PYTHONPATH", None)
    return env


# ---- the package, shipped ----------------------------------------------------------------
@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    out = subprocess.run(
        [str(PACKAGE_SH), "--zip"],
        env={**_base_env(), "DIST": str(dist), "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    path = Path(out.stdout.strip().splitlines()[-1])
    assert path.parent == dist and path.suffix == ".zip"
    return path


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An interpreter with numpy/pandas/pyarrow but without the (editable) mxnorm_spark."""
    path = tmp_path_factory.mktemp("bin") / "python-without-mxnorm"
    site = sysconfig.get_paths()["purelib"]
    path.write_text(
        "#!/bin/sh\n"
        "# -S: no site module, so no .pth file (the editable install) is processed.\n"
        f'PYTHONPATH="${{PYTHONPATH:+$PYTHONPATH:}}{site}" exec "{sys.executable}" -S "$@"\n'
    )
    path.chmod(0o755)
    return path


def test_zip_is_what_makes_the_package_importable(
    artifact: Path, bare_python: Path, tmp_path: Path
) -> None:
    probe = "import mxnorm_spark, numpy, pyarrow; print(mxnorm_spark.__file__)"
    env = _base_env()
    without = subprocess.run(
        [str(bare_python), "-c", probe],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert without.returncode != 0
    assert "No module named 'mxnorm_spark'" in without.stderr
    with_zip = subprocess.run(
        [str(bare_python), "-c", probe],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(artifact)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert with_zip.stdout.strip() == f"{artifact}/mxnorm_spark/__init__.py"


def test_zip_is_reproducible(artifact: Path, tmp_path: Path) -> None:
    again = subprocess.run(
        [str(PACKAGE_SH), "--zip"],
        env={**_base_env(), "DIST": str(tmp_path), "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    rebuilt = Path(again.stdout.strip().splitlines()[-1])
    assert rebuilt.read_bytes() == artifact.read_bytes()
    import zipfile

    names = zipfile.ZipFile(rebuilt).namelist()
    assert "mxnorm_spark/__init__.py" in names and "mxnorm_spark/core/moments.py" in names
    assert not [n for n in names if "__pycache__" in n or not n.startswith("mxnorm_spark/")]


# ---- the cluster -------------------------------------------------------------------------
@dataclass(frozen=True)
class Cluster:
    url: str
    ui: str
    state_dir: Path
    pids: tuple[int, ...]


def _cluster_env(state_dir: Path) -> dict[str, str]:
    return {
        **_base_env(),
        "MXNORM_CLUSTER_DIR": str(state_dir),
        # 0 = always a free port: never collide with a cluster already on 7077/8080.
        "MXNORM_CLUSTER_PORT": "0",
        "MXNORM_CLUSTER_UI_PORT": "0",
        "MXNORM_CLUSTER_WORKERS": "2",
        # Room for the three jobs at once: each takes one 1-core executor on each worker.
        "MXNORM_CLUSTER_CORES": str(len(JOBS)),
        "MXNORM_CLUSTER_MEMORY": "2g",
        "SPARK_DAEMON_JAVA_OPTS": FAST_JVM,
        "PYTHON": sys.executable,
    }


def _is_spark_daemon(pid: int) -> bool:
    try:
        return b"org.apache.spark.deploy" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


class ClusterBoot:
    """``cluster.sh up`` started in the background; :meth:`ready` waits for it once."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.env = _cluster_env(state_dir)
        self.proc = subprocess.Popen(
            [str(CLUSTER_SH), "up"],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._cluster: Cluster | None = None
        self._output = ""

    def ready(self) -> Cluster:
        if self._cluster is None:
            self._output, _ = self.proc.communicate(timeout=300)
            assert self.proc.returncode == 0, f"cluster.sh up failed:\n{self._output}"
            url = (self.state_dir / "master.url").read_text().strip()
            ui = (self.state_dir / "master.ui").read_text().strip()
            assert f"master URL:  {url}" in self._output
            assert f"web UI:      {ui}" in self._output
            self._cluster = Cluster(url, ui, self.state_dir, self.pids())
            assert len(self._cluster.pids) == 3
        return self._cluster

    def pids(self) -> tuple[int, ...]:
        return tuple(int(p.read_text()) for p in sorted(self.state_dir.glob("*.pid")))

    def stop(self) -> None:
        if self.proc.poll() is None:
            # Its trap stops whatever it had started.
            self.proc.terminate()
            self.proc.communicate(timeout=120)
        pids = self.pids() or (self._cluster.pids if self._cluster else ())
        down = subprocess.run(
            [str(CLUSTER_SH), "down"],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        survivors = [pid for pid in pids if _is_spark_daemon(pid)]
        for pid in survivors:  # never leave a JVM behind, even if the script misbehaved
            os.kill(pid, signal.SIGKILL)
        assert down.returncode == 0, down.stderr
        assert not survivors, f"cluster.sh down left {survivors} running"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterBoot]:
    boot = ClusterBoot(tmp_path_factory.mktemp("cluster"))
    try:
        yield boot
    finally:
        boot.stop()


def test_cluster_up_refuses_a_taken_port(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        env = {**_cluster_env(tmp_path), "MXNORM_CLUSTER_PORT": str(taken)}
        res = subprocess.run(
            [str(CLUSTER_SH), "up"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
    assert res.returncode != 0
    assert f"port {taken} on 127.0.0.1 is in use" in res.stderr
    assert not list(tmp_path.glob("*.pid"))  # nothing was started


def test_cluster_up_stops_what_it_started_when_start_up_fails(tmp_path: Path) -> None:
    # No time to wait for registration: the daemons are started, then the failure path
    # must stop every one of them by PID.
    env = {**_cluster_env(tmp_path), "MXNORM_CLUSTER_TIMEOUT": "0"}
    res = subprocess.run(
        [str(CLUSTER_SH), "up"], env=env, capture_output=True, text=True, check=False, timeout=120
    )
    assert res.returncode != 0
    assert "only 0 of 2 workers registered" in res.stderr
    assert "start-up failed" in res.stderr
    stopped = [
        int(line.rsplit("pid ", 1)[1].split(")")[0])
        for line in res.stderr.splitlines()
        if line.startswith(("stopped ", "killed "))
    ]
    assert len(stopped) == 3 and not list(tmp_path.glob("*.pid"))
    assert all(not _is_spark_daemon(pid) for pid in stopped)
    assert (tmp_path / "master.log").exists()


# ---- inputs and exact comparison ---------------------------------------------------------
def _input_table(rng: np.random.Generator, start: int, rows: int) -> pa.Table:
    ids = np.arange(start, start + rows, dtype=np.int64)
    c = rng.integers(-50, 50, rows).astype(np.float64)
    c[rng.random(rows) < 0.05] = np.nan
    c_mask = rng.random(rows) < 0.05  # nulls
    return pa.table(
        {
            "id": ids,
            "day": (ids * 7919 % 3).astype(np.int32),  # every day in every file
            "a": rng.normal(5.0, 3.0, rows),
            "b": 1e9 + rng.normal(0.0, 1.0, rows),  # digits only pivot shifting keeps
            "c": pa.array(c, mask=c_mask),
        }
    )


def _write_files(directory: Path, n_files: int, rows: int, seed: int) -> list[pa.Table]:
    directory.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    tables = []
    for i in range(n_files):
        t = _input_table(rng, i * rows, rows)
        path = directory / f"part-{i:03d}.parquet"
        pq.write_table(t, path)
        # A file stream takes files oldest first: make the order explicit.
        os.utime(path, (1_700_000_000 + i, 1_700_000_000 + i))
        tables.append(t)
    return tables


def _as_matrix(t: pa.Table) -> np.ndarray:
    return np.column_stack(
        [t[f].to_numpy(zero_copy_only=False).astype(np.float64) for f in FEATURES]
    )


def reference_ema(batches: Sequence[np.ndarray], alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Reference loop (docs/design.md) on float64 two-pass batch moments, invalid values skipped."""
    mean, var = two_pass(batches[0])
    for x in batches[1:]:
        m, v = two_pass(x)
        mean, var = (1 - alpha) * mean + alpha * m, (1 - alpha) * var + alpha * v
    return mean, var


def _read_parquet_dir(path: Path) -> pa.Table:
    files = sorted(p for p in path.rglob("*.parquet") if not p.name.startswith((".", "_")))
    assert files, f"no parquet output under {path}"
    table = pa.concat_tables([pq.read_table(p) for p in files])
    return table.sort_by("id")


def assert_bit_equal(a: pa.Table, b: pa.Table) -> None:
    """Same columns, same nulls, and every double equal as a bit pattern (NaN and -0.0 too)."""
    assert a.column_names == b.column_names
    assert a.num_rows == b.num_rows
    for name in a.column_names:
        ca, cb = a[name].combine_chunks(), b[name].combine_chunks()
        assert ca.type == cb.type, name
        assert ca.is_null().to_pylist() == cb.is_null().to_pylist(), name
        va = ca.fill_null(0).to_numpy(zero_copy_only=False)
        vb = cb.fill_null(0).to_numpy(zero_copy_only=False)
        if va.dtype.kind == "f":
            va, vb = va.view(np.int64), vb.view(np.int64)
        assert np.array_equal(va, vb), f"column {name} differs"


def assert_state_files_equal(a: Path, b: Path) -> dict[str, Any]:
    da, db = json.loads(a.read_text()), json.loads(b.read_text())
    pa_, pb = da["payload"], db["payload"]
    for key in ("mean", "var"):
        assert [float(x).hex() for x in pa_[key]] == [float(x).hex() for x in pb[key]], key
    for key in ("count", "shift", "delta", "m2"):
        ta, tb = pa_["totals"][key], pb["totals"][key]
        assert [float(x).hex() for x in ta] == [float(x).hex() for x in tb], key
    assert a.read_bytes() == b.read_bytes()  # options, counters and checksum too
    return dict(pa_)


# ---- the three jobs, on the cluster and on local[2] ---------------------------------------
@dataclass(frozen=True)
class Inputs:
    events: Path  # 4 Parquet files, a batch column "day"
    tables: list[pa.Table]
    incoming: Path  # 3 Parquet files for the stream, oldest first
    stream_tables: list[pa.Table]
    state: Path  # a state made by the numpy core alone, for transform
    numpy_state: Any


def _fit_args(inputs: Inputs, out: Path) -> list[str]:
    return [
        "--input", str(inputs.events), "--cols", ",".join(FEATURES), "--batch-col", "day",
        "--alpha", "0.3", "--engine", "arrow", "--log-level", "ERROR",
        "--state", str(out / "state.json"),
    ]  # fmt: skip


def _transform_args(inputs: Inputs, out: Path) -> list[str]:
    return [
        "--input", str(inputs.events), "--state", str(inputs.state),
        "--output", str(out / "norm"), "--engine", "arrow", "--log-level", "ERROR",
    ]  # fmt: skip


def _stream_args(inputs: Inputs, out: Path) -> list[str]:
    return [
        "--input", str(inputs.incoming), "--format", "parquet", "--cols", ",".join(FEATURES),
        "--alpha", "0.25", "--engine", "arrow", "--log-level", "ERROR",
        "--max-files-per-trigger", "1", "--available-now",
        "--state", str(out / "state"), "--output", str(out / "out"),
        "--checkpoint", str(out / "checkpoint"),
    ]  # fmt: skip


# Settings that decide partitions and Arrow batches, hence the merge order and the bits:
# set on the shared session for the local[2] runs (another test may have changed them) and
# passed to every submission.
PINNED_CONF = {
    "spark.sql.shuffle.partitions": "4",
    "spark.sql.files.maxPartitionBytes": str(128 * 1024 * 1024),
    "spark.sql.files.openCostInBytes": str(4 * 1024 * 1024),
    "spark.sql.execution.arrow.maxRecordsPerBatch": "10000",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
}

# command -> (spark-submit script, arguments for an output root)
JOBS: dict[str, tuple[str, Any]] = {
    "fit": ("fit_state.py", _fit_args),
    "transform": ("normalize_batch.py", _transform_args),
    "stream": ("stream_normalize.py", _stream_args),
}


def _submit_cmd(
    master: str, script: str, args: Sequence[str], artifact: Path, python: Path
) -> list[str]:
    conf = {
        "spark.pyspark.python": str(python),
        "spark.pyspark.driver.python": str(python),
        "spark.driver.host": "127.0.0.1",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        **PINNED_CONF,
        "spark.python.worker.reuse": "true",
        # Two 1-core executors per job, one on each worker (standalone spreads them out).
        "spark.cores.max": "2",
        "spark.executor.cores": "1",
        "spark.executor.memory": "512m",
        "spark.driver.extraJavaOptions": FAST_JVM,
        "spark.executor.extraJavaOptions": FAST_JVM,
    }
    cmd = [str(_spark_home() / "bin" / "spark-submit"), "--master", master]
    cmd += ["--py-files", str(artifact)]
    for key, value in conf.items():
        cmd += ["--conf", f"{key}={value}"]
    return [*cmd, str(ROOT / "jobs" / script), *args]


@dataclass(frozen=True)
class Runs:
    cluster: Cluster
    inputs: Inputs
    roots: dict[str, tuple[Path, Path]]  # command -> (cluster output root, local root)
    failures: dict[str, str]  # command -> why it failed


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    from mxnorm_spark import Moments, MXNormState
    from mxnorm_spark.store import write_state

    d = tmp_path_factory.mktemp("inputs")
    tables = _write_files(d / "events", n_files=4, rows=300, seed=11)
    stream_tables = _write_files(d / "incoming", n_files=3, rows=200, seed=23)
    x = _as_matrix(pa.concat_tables(tables))
    state = MXNormState.create(FEATURES, alpha=0.2).update(Moments.from_array(x[:500]))
    state = state.update(Moments.from_array(x[500:]))
    write_state(state, d / "state.json")
    return Inputs(d / "events", tables, d / "incoming", stream_tables, d / "state.json", state)


@pytest.fixture(scope="module")
def runs(
    spark: Any,
    cluster: ClusterBoot,
    *,
    artifact: Path,
    bare_python: Path,
    inputs: Inputs,
    tmp_path_factory: pytest.TempPathFactory,
) -> Runs:
    """Every job on local[2] and on the cluster, with the same arguments.

    local[2] is the same command in this process, on the shared ``spark`` fixture (2 cores,
    :data:`PINNED_CONF`), run while the cluster starts. Then the three spark-submits go to
    the cluster at once; each gets its own two executors.
    """
    from mxnorm_spark.cli.commands import main as cli_main

    work = tmp_path_factory.mktemp("runs")
    roots: dict[str, tuple[Path, Path]] = {}
    failures: dict[str, str] = {}
    saved = {key: spark.conf.get(key, None) for key in PINNED_CONF}
    for key, value in PINNED_CONF.items():
        spark.conf.set(key, value)
    try:
        for command, (_, args_for) in JOBS.items():
            on_cluster, local = work / command / "cluster", work / command / "local"
            on_cluster.mkdir(parents=True)
            local.mkdir()
            roots[command] = (on_cluster, local)
            rc = cli_main([command, *args_for(inputs, local)])
            if rc != 0:
                failures[command] = f"{command} on local[2] exited {rc} (see the captured output)"
    finally:
        for key, old in saved.items():
            if old is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, old)

    ready = cluster.ready()
    env = {**_base_env(), "PYSPARK_PYTHON": str(bare_python)}
    env["PYSPARK_DRIVER_PYTHON"] = str(bare_python)
    procs = {}
    for command, (script, args_for) in JOBS.items():
        on_cluster = roots[command][0]
        cmd = _submit_cmd(ready.url, script, args_for(inputs, on_cluster), artifact, bare_python)
        with (on_cluster / "submit.log").open("w") as log:
            # cwd is a scratch dir: the repository (with its mxnorm_spark/) is not on the path.
            procs[command] = subprocess.Popen(
                cmd, cwd=on_cluster, env=env, stdout=log, stderr=subprocess.STDOUT
            )
    try:
        for command, proc in procs.items():
            rc = proc.wait(timeout=SUBMIT_TIMEOUT)
            if rc != 0:
                log_text = (roots[command][0] / "submit.log").read_text()[-4000:]
                failures[command] = f"{JOBS[command][0]} on {ready.url} exited {rc}:\n{log_text}"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return Runs(ready, inputs, roots, failures)


def _roots(runs: Runs, command: str) -> tuple[Path, Path]:
    assert command not in runs.failures, runs.failures[command]
    return runs.roots[command]


# ---- the end-to-end tests ----------------------------------------------------------------
def test_cluster_ran_each_job_on_two_executors(runs: Runs) -> None:
    import urllib.request

    with urllib.request.urlopen(runs.cluster.ui + "/json/", timeout=10) as r:
        info = json.load(r)
    assert info["url"] == runs.cluster.url
    alive = [w for w in info["workers"] if w["state"] == "ALIVE"]
    assert len(alive) == 2 and all(w["host"] == "127.0.0.1" for w in alive)
    apps = info["completedapps"] + info["activeapps"]
    finished = [a for a in apps if a["state"] == "FINISHED"]
    assert len(finished) == len(JOBS) - len(runs.failures), apps
    assert all(a["cores"] == 2 for a in finished)  # 1-core executors: two processes each
    status = subprocess.run(
        [str(CLUSTER_SH), "status"],
        env=_cluster_env(runs.cluster.state_dir),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert status.returncode == 0 and runs.cluster.url in status.stdout


def test_fit_on_cluster_equals_local(runs: Runs) -> None:
    on_cluster, local = _roots(runs, "fit")
    payload = assert_state_files_equal(on_cluster / "state.json", local / "state.json")

    # Equal is not enough: both must be right. Days in ascending order, the reference loop.
    everything = pa.concat_tables(runs.inputs.tables)
    day = everything["day"].to_numpy()
    x = _as_matrix(everything)
    mean, var = reference_ema([x[day == d] for d in sorted(set(day.tolist()))], alpha=0.3)
    assert_state_close(payload["mean"], payload["var"], mean, var, tol=1e-12)
    assert payload["batches_seen"] == 3


def test_transform_on_cluster_equals_local(runs: Runs) -> None:
    on_cluster, local = _roots(runs, "transform")
    got = _read_parquet_dir(on_cluster / "norm")
    assert_bit_equal(got, _read_parquet_dir(local / "norm"))

    # And it is the numpy serving path's answer, bit for bit.
    everything = pa.concat_tables(runs.inputs.tables).sort_by("id")
    expected = runs.inputs.numpy_state.normalize(_as_matrix(everything))
    for j, f in enumerate(FEATURES):
        col = got[f].to_numpy(zero_copy_only=False).astype(np.float64)
        want = expected[:, j]
        assert np.array_equal(np.isnan(col), np.isnan(want)), f
        ok = ~np.isnan(want)
        assert np.array_equal(col[ok].view(np.int64), want[ok].view(np.int64)), f
    assert got["id"].to_pylist() == everything["id"].to_pylist()


def test_stream_on_cluster_equals_local(runs: Runs) -> None:
    on_cluster, local = _roots(runs, "stream")
    versions = sorted(p.name for p in (on_cluster / "state").glob("v-*.json"))
    assert versions == sorted(p.name for p in (local / "state").glob("v-*.json"))
    assert len(versions) == 3  # one file per micro-batch
    for name in versions:
        payload = assert_state_files_equal(on_cluster / "state" / name, local / "state" / name)
    batch_dirs = sorted(p.name for p in (on_cluster / "out").glob("batch_id=*"))
    assert batch_dirs == sorted(p.name for p in (local / "out").glob("batch_id=*"))
    assert len(batch_dirs) == 3
    for name in batch_dirs:
        assert_bit_equal(
            _read_parquet_dir(on_cluster / "out" / name), _read_parquet_dir(local / "out" / name)
        )

    # The final state is the reference loop over the files in order.
    mean, var = reference_ema([_as_matrix(t) for t in runs.inputs.stream_tables], alpha=0.25)
    assert_state_close(payload["mean"], payload["var"], mean, var, tol=1e-12)


# ---- what the driver holds ---------------------------------------------------------------
def _numbers_in(value: Any) -> int:
    if isinstance(value, (list, tuple)):
        return sum(_numbers_in(v) for v in value)
    if hasattr(value, "asDict"):
        return sum(_numbers_in(v) for v in value.asDict().values())
    return int(isinstance(value, (int, float)) and not isinstance(value, bool))


def test_driver_receives_partitions_times_features_numbers(
    spark: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1,000 features x 200 partitions: the driver gets one partial per partition, never rows.

    Every partial is 4 arrays of 1,000 float64 (count, pivot, shifted mean, M2), so the
    driver receives 200 x 4 x 1,000 numbers (6.4 MB) however many rows the partitions hold.
    """
    from pyspark.sql import functions as F

    from mxnorm_spark import Moments
    from mxnorm_spark.batch.aggregate import batch_moments

    k, partitions, rows_per_partition = 1000, 200, 2
    n = partitions * rows_per_partition
    # Exactly representable values, so the JVM and numpy build the very same matrix.
    df = spark.range(0, n, numPartitions=partitions).select(
        F.transform(
            F.sequence(F.lit(0), F.lit(k - 1)),
            lambda j: F.pmod(F.col("id") * 7919 + j * 104729, F.lit(1000)) / 8.0 + j * 1e3,
        ).alias("v")
    )
    assert df.rdd.getNumPartitions() == partitions

    collected: list[list[Any]] = []
    real_collect = type(df).collect

    def spy_collect(self: Any) -> list[Any]:
        rows = real_collect(self)
        collected.append(rows)
        return rows

    merged: list[list[Moments]] = []
    real_merge_all = Moments.merge_all

    def spy_merge_all(parts: Any, n_features: int) -> Moments:
        parts = list(parts)
        merged.append(parts)
        return real_merge_all(parts, n_features)

    monkeypatch.setattr(type(df), "collect", spy_collect)
    monkeypatch.setattr(Moments, "merge_all", staticmethod(spy_merge_all))
    moments = batch_moments(df, input_col="v", engine="arrow")

    partial_rows = [r for rows in collected for r in rows if "m2" in r.asDict()]
    assert len(partial_rows) == partitions
    assert {len(r["count"]) for r in partial_rows} == {k}
    partial_numbers = sum(
        len(r[a]) for r in partial_rows for a in ("count", "shift", "delta", "m2")
    )
    assert partial_numbers == partitions * 4 * k  # 800,000 numbers, 6.4 MB of float64
    other = sum(_numbers_in(r) for rows in collected for r in rows) - partial_numbers
    assert other <= 4 * partitions + 8  # a partition id, row count and lengths per partial
    assert sum(len(rows) for rows in collected) <= partitions + 1  # never a data row
    # One fold of the 200 partials (a later call may merge the result with nothing).
    assert len(merged[0]) == partitions and all(len(p) == 1 for p in merged[1:])
    assert {p.n_features for p in merged[0]} == {k}

    ids = np.arange(n)[:, None]
    j = np.arange(k)[None, :]
    x = ((ids * 7919 + j * 104729) % 1000) / 8.0 + j * 1e3
    mean, var = two_pass(x)
    assert_state_close(moments.mean, moments.var, mean, var, tol=1e-12)
    assert np.array_equal(moments.count, np.full(k, float(n)))


# ---- a packed environment via spark.archives (opt-in: builds a ~110 MB venv) -------------
@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("MXNORM_TEST_PACKED_ENV") != "1",
    reason="set MXNORM_TEST_PACKED_ENV=1: builds a venv with numpy/pandas/pyarrow from PyPI",
)
def test_fit_with_packed_env_via_spark_archives(
    runs: Runs, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    dist = tmp_path_factory.mktemp("dist-env")
    built = subprocess.run(
        [str(PACKAGE_SH), "--venv"],
        env={**_base_env(), "DIST": str(dist), "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    )
    env_archive = Path(built.stdout.strip().splitlines()[-1])
    assert env_archive.name.endswith(".tar.gz")
    out = tmp_path / "cluster"
    out.mkdir()
    # No --py-files: the executors' only source of mxnorm_spark (and numpy...) is the archive.
    cmd = [
        str(_spark_home() / "bin" / "spark-submit"), "--master", runs.cluster.url,
        "--archives", f"{env_archive}#environment",
        "--conf", "spark.pyspark.python=./environment/bin/python",
        "--conf", f"spark.pyspark.driver.python={sys.executable}",
        "--conf", "spark.driver.host=127.0.0.1", "--conf", "spark.ui.enabled=false",
        *[a for k, v in PINNED_CONF.items() for a in ("--conf", f"{k}={v}")],
        "--conf", "spark.cores.max=2",
        "--conf", "spark.executor.cores=1", "--conf", "spark.executor.memory=512m",
        str(ROOT / "jobs" / "fit_state.py"), *_fit_args(runs.inputs, out),
    ]  # fmt: skip
    res = subprocess.run(
        cmd,
        cwd=out,
        env=_base_env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=SUBMIT_TIMEOUT,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    local = _roots(runs, "fit")[1]
    assert_state_files_equal(out / "state.json", local / "state.json")
