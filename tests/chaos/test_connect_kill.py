"""A Spark Connect server SIGKILLed under a running stream: the client stops with
ServerLostError within about a minute (not a hang); a restarted server and the same
command replay the batch in flight exactly once, to the same bits as an undisturbed run.

Everything Connect runs in processes of its own (the server, the `mxnorm-spark stream
--remote` client), so this file runs in a classic pytest process (`make test-chaos`); the
undisturbed reference is the same command on that process's local[2] session. The
server's foreachBatch worker pauses just after committing batch 1
(``MXNORM_FAULT=after_commit:1:pause``): the kill lands between the commit and the output
write, the hardest place for exactly once.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mxnorm_spark.cli.commands import main as cli_main
from mxnorm_spark.store import StateStore

pytestmark = [pytest.mark.chaos, pytest.mark.slow]
START_TIMEOUT = 300
# The client's bounded Connect retries (about 64 s) plus its own shutdown.
LOST_WITHIN = 240
PORT_TRIES = 3  # a free port can be taken by another process before the server binds it
# The server gives a new Python worker (the stream's foreachBatch) 10 s to connect back, a
# limit Spark does not let us raise; on a loaded machine a start can miss it before any
# fault is injected. Then nothing ran, and the same command is started again.
WORKER_START_FAILED = "Python worker failed to connect back"
CLIENT_TRIES = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Server:
    """A Spark Connect server on a loopback port, in a process group of its own."""

    def __init__(self, port: int, log: Path, env: dict[str, str]) -> None:
        import pyspark

        self.port = port
        submit = Path(pyspark.__file__).parent / "bin" / "spark-submit"
        cmd = [
            str(submit), "--class", "org.apache.spark.sql.connect.service.SparkConnectServer",
            "--master", "local[2]",
            "--conf", "spark.connect.grpc.binding.address=127.0.0.1",
            "--conf", f"spark.connect.grpc.binding.port={port}",
            "--conf", "spark.sql.shuffle.partitions=4",
            "--conf", "spark.ui.enabled=false",
            "--conf", "spark.driver.host=127.0.0.1",
            "--conf", "spark.driver.extraJavaOptions=-XX:TieredStopAtLevel=1",
            "spark-internal",
        ]  # fmt: skip
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while not _listening(port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"Spark Connect server did not start; see {log}")
            time.sleep(0.5)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def start_server(ports: list[int], log: Path, env: dict[str, str]) -> Server:
    """A server on the first of ``ports`` it can bind, else on a fresh free port."""
    for port in [*ports, *(_free_port() for _ in range(PORT_TRIES))][:PORT_TRIES]:
        try:
            return Server(port, log, env)
        except RuntimeError:
            if _listening(port):  # someone else's: try another port
                continue
            raise
    raise RuntimeError(f"no free port for the Spark Connect server after {PORT_TRIES} tries")


def wait_for_pid(path: Path, proc: subprocess.Popen[str], timeout: float) -> int | None:
    """The PID the fault hook writes to ``path`` once paused (written, then read whole);
    None if ``proc`` ends first."""
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        if text.strip().isdigit():
            return int(text)
        if proc.poll() is not None:
            return None
        assert time.monotonic() < deadline, f"never paused: no {path.name}"
        time.sleep(0.1)


def _env() -> dict[str, str]:
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable}  # fmt: skip
    for name in ("SPARK_CONNECT_MODE_ENABLED", "SPARK_REMOTE", "MXNORM_FAULT"):
        env.pop(name, None)
    return env


def _inputs(directory: Path) -> None:
    directory.mkdir()
    rng = np.random.default_rng(17)
    first = 0
    for i, rows in enumerate([40, 30, 50]):
        t = pa.table({"id": np.arange(first, first + rows, dtype=np.int64),
                      "a": rng.normal(2.0 * i, 1.0 + i, rows),
                      "b": 1e9 + rng.normal(0.0, 1.0, rows)})  # fmt: skip
        first += rows
        pq.write_table(t, directory / f"f{i}.parquet")
        os.utime(directory / f"f{i}.parquet", (1_000_000_000 + i, 1_000_000_000 + i))


def _args(root: Path, inp: Path) -> list[str]:
    return ["stream", "--input", str(inp), "--format", "parquet", "--cols", "a,b",
            "--output", str(root / "out"), "--state", str(root / "state"),
            "--checkpoint", str(root / "chk"), "--max-files-per-trigger", "1",
            "--available-now", "--alpha", "0.3", "--log-level", "ERROR"]  # fmt: skip


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    started: list[Server] = []
    try:
        yield started
    finally:
        for server in started:
            server.kill()


def test_server_killed_mid_stream(
    spark: Any, tmp_path: Path, servers: list[Server]
) -> None:
    inp = tmp_path / "in"
    _inputs(inp)
    gate = tmp_path / "gate"
    gate.mkdir()
    faulty = {**_env(), "MXNORM_FAULT": "after_commit:1:pause", "MXNORM_FAULT_GATE": str(gate)}
    servers.append(start_server([_free_port()], tmp_path / "server.log", faulty))
    port = servers[0].port

    run = tmp_path / "run"

    def client_cmd(port: int) -> list[str]:
        return [sys.executable, "-m", "mxnorm_spark", *_args(run, inp),
                "--remote", f"sc://127.0.0.1:{port}"]  # fmt: skip

    def start_client() -> subprocess.Popen[str]:
        return subprocess.Popen(
            client_cmd(port), env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    client = start_client()
    try:
        # The undisturbed run meanwhile, the same command on the shared classic session.
        assert cli_main(_args(tmp_path / "ref", inp)) == 0
        for attempt in range(1, CLIENT_TRIES + 1):
            worker = wait_for_pid(gate / "after_commit-1.paused", client, START_TIMEOUT)
            if worker is not None:
                break
            _, err = client.communicate()
            assert attempt < CLIENT_TRIES and WORKER_START_FAILED in err, (
                f"the client ended before batch 1:\n{err[-3000:]}"
            )
            assert not (gate / "after_commit-1.paused").exists()
            client = start_client()
        assert worker is not None
        assert StateStore(str(run / "state")).batch_ids() == [0, 1]
        servers[0].kill()
        os.kill(worker, signal.SIGKILL)  # the paused foreachBatch worker, orphaned now
        killed_at = time.monotonic()
        _, err = client.communicate(timeout=LOST_WITHIN)
        waited = time.monotonic() - killed_at
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 2, err[-3000:]
    assert "the Spark Connect server stopped answering" in err, err[-3000:]
    assert "Restart the server, then run the same command again" in err
    assert waited < LOST_WITHIN

    # The same port again (a new one only if another process took it meanwhile).
    servers.append(start_server([port], tmp_path / "server.log", _env()))
    again = subprocess.run(client_cmd(servers[-1].port), env=_env(), stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=START_TIMEOUT,
                           check=False)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    got, want = StateStore(str(run / "state")), StateStore(str(tmp_path / "ref" / "state"))
    assert got.batch_ids() == want.batch_ids() == [0, 1, 2]
    for b in range(3):
        g, w = got.get(b), want.get(b)
        assert g is not None and w is not None and g.to_json() == w.to_json()
    out = pq.read_table(run / "out").sort_by("id")
    ref = pq.read_table(tmp_path / "ref" / "out").sort_by("id")
    assert out.column("id").to_pylist() == list(range(120))  # every row exactly once
    assert out.equals(ref)
    assert got.history().column("batch_id").to_pylist() == [0, 0, 1, 1, 2, 2]
