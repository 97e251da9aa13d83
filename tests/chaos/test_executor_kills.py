"""Executors SIGKILLed mid-job on a standalone cluster: the query goes on (the lost task is
run again elsewhere) or fails and a restart goes on; every row is written once and the
states are bit-identical to an undisturbed run.

One master and two workers on 127.0.0.1 (scripts/cluster.sh, started here and stopped by
PID). Each run is a driver process of its own (cluster_driver.py) whose input passes
through chaosgate.gated: partition 0 of the chosen micro-batch pauses on its executor at
the chosen computation (the moments job, or the output write) and names its PID; the test
finds that executor's JVM among the task's parent processes, SIGKILLs it, opens the gate.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mxnorm_spark.store import StateStore

pytestmark = [pytest.mark.cluster, pytest.mark.chaos, pytest.mark.slow]
HERE = Path(__file__).resolve().parent
RUN_TIMEOUT = 600
# Generous for a loaded machine: a wait that runs out fails the test, it never hangs it.
REGISTER_TIMEOUT = "240"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    sys.path.insert(0, str(HERE.parent / "cluster"))
    from test_cluster import ClusterBoot

    with pytest.MonkeyPatch.context() as mp:  # cluster.sh's wait for the workers
        mp.setenv("MXNORM_CLUSTER_TIMEOUT", REGISTER_TIMEOUT)
        boot = ClusterBoot(tmp_path_factory.mktemp("cluster"))
    try:
        yield boot.ready().url
    finally:
        boot.stop()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("in")
    rng = np.random.default_rng(31)
    first = 0
    for day, rows in enumerate([300, 200, 250]):
        t = pa.table(
            {
                "id": np.arange(first, first + rows, dtype=np.int64),
                "k": rng.integers(0, 5, rows).astype(np.int64),
                "day": np.full(rows, day, dtype=np.int64),
                "a": rng.normal(3.0 * day, 1.0 + day, rows),
                "b": 1e9 + rng.normal(0.0, 1.0, rows),
                "c": rng.exponential(2.0, rows),
            }
        )
        first += rows
        path = d / f"f{day}.parquet"
        pq.write_table(t, path)
        os.utime(path, (1_000_000_000 + 10 * day, 1_000_000_000 + 10 * day))
    return d


def driver(master: str, kind: str, out: Path, inp: Path, **gate: str) -> subprocess.Popen[str]:
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
    env.update({f"MXCHAOS_{k.upper()}": v for k, v in gate.items()})
    return subprocess.Popen(
        [sys.executable, str(HERE / "cluster_driver.py"), master, kind, str(out), str(inp)],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=RUN_TIMEOUT)
    return proc.returncode, out


def stop(proc: subprocess.Popen[str]) -> None:
    """Kill a driver still running (a failed or timed-out wait); its app ends with it."""
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


@pytest.fixture(scope="module")
def references(
    cluster: str, inputs: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """The undisturbed runs, all three at once."""
    root = tmp_path_factory.mktemp("ref")
    kinds = ("stream", "keyed", "fit")
    procs = {kind: driver(cluster, kind, root / kind, inputs) for kind in kinds}
    try:
        for kind, proc in procs.items():
            rc, out = finish(proc)
            assert rc == 0, f"reference {kind} run failed:\n{out[-3000:]}"
    finally:
        for proc in procs.values():
            stop(proc)
    return {kind: root / kind for kind in procs}


def executor_jvm(pid: int) -> tuple[int, str]:
    """The executor JVM among the parents of process ``pid`` (a Python worker)."""
    while pid > 1:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        if "CoarseGrainedExecutorBackend" in cmdline:
            return pid, cmdline
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # field 4: the parent's PID
    raise AssertionError("no executor JVM above the paused task")


def wait_paused(gate: Path, proc: subprocess.Popen[str]) -> int:
    deadline = time.monotonic() + RUN_TIMEOUT
    while not (gate / "paused").exists():
        if proc.poll() is not None:
            log = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"the run ended before its task paused:\n{log[-3000:]}")
        assert time.monotonic() < deadline, "the task never paused"
        time.sleep(0.1)
    return int((gate / "paused").read_text())


def read_dir(path: Path) -> pa.Table:
    files = sorted(path.glob("batch_id=*/*.parquet"))
    tables = [pq.read_table(f) for f in files]
    return pa.concat_tables(tables).sort_by("id")


def assert_same_run(kind: str, got: Path, want: Path) -> None:
    if kind == "fit":
        assert (got / "state.json").read_bytes() == (want / "state.json").read_bytes()
        return
    g, w = StateStore(str(got / "state")), StateStore(str(want / "state"))
    assert g.batch_ids() == w.batch_ids() == [0, 1, 2]
    for b in g.batch_ids():
        assert (got / "state" / f"v-{b:012d}.json").read_bytes() == (
            want / "state" / f"v-{b:012d}.json"
        ).read_bytes()
    out, ref = read_dir(got / "out"), read_dir(want / "out")
    assert out.column("id").to_pylist() == list(range(750))  # every row exactly once
    assert out.equals(ref)  # and the same bits


CASES = [
    ("stream", "1", "0", "moments job"),
    ("stream", "1", "1", "output write"),
    ("keyed", "1", "0", "keyed micro-batch job"),
    ("fit", "any", "0", "backfill moments job"),
]


@pytest.mark.parametrize(("kind", "batch", "nth", "moment"), CASES, ids=[c[3] for c in CASES])
def test_executor_killed_mid_job(  # noqa: PLR0917
    cluster: str, inputs: Path, references: dict[str, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str], kind: str, batch: str, nth: str, moment: str,
) -> None:  # fmt: skip
    gate = tmp_path / "gate"
    gate.mkdir()
    out = tmp_path / "run"
    proc = driver(cluster, kind, out, inputs, gate=str(gate), batch=batch, nth=nth)
    try:
        task_pid = wait_paused(gate, proc)
        jvm, cmdline = executor_jvm(task_pid)
        assert "--app-id" in cmdline
        if kind == "stream":  # the gate is where the case says: before or after the commit
            committed = StateStore(str(out / "state")).batch_ids()
            assert committed == ([0] if moment == "moments job" else [0, 1])
        os.kill(jvm, signal.SIGKILL)
        (gate / "go").touch()
        rc, log = finish(proc)
    finally:
        (gate / "go").touch()  # never leave a task paused, whatever failed above
        stop(proc)
    with capsys.disabled():  # what happened, in the stage's log even when the case passes
        print(f"\n[chaos] {moment}: " + ("the job went on" if rc == 0 else "failed; restarting"))
    if rc != 0:  # the query failed: a restart from its checkpoint must go on
        again = driver(cluster, kind, out, inputs)
        try:
            rc, log = finish(again)
        finally:
            stop(again)
        assert rc == 0, log[-3000:]
    assert_same_run(kind, out, references[kind])
