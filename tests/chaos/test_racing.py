"""Racing writers: two jobs pointed at one state by mistake. One wins, the other stops with
a named error before writing anything, and nothing is lost or mixed.

The first writer is paused by the fault hook (``MXNORM_FAULT=<point>:<batch>:pause``) at
the moment its files are in flight, the rival starts then, and the first is released once
the rival has failed: the interleaving is forced, not hoped for.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mxnorm_spark.cli.commands import main as cli_main
from mxnorm_spark.core.errors import StateConflictError
from mxnorm_spark.core.state import StateOptions
from mxnorm_spark.store import StateStore, read_state
from mxnorm_spark.store.history import read_history
from mxnorm_spark.streaming.keyed import KeyOptions
from mxnorm_spark.streaming.sources import FileSource
from mxnorm_spark.streaming.updater import MXNormStream

pytestmark = [pytest.mark.chaos, pytest.mark.spark]
COLS = ["a", "b"]
WAIT_SECONDS = 300  # for a paused writer to reach its gate, or a query to end, when busy


@pytest.fixture(autouse=True)
def no_query_left(spark: Any) -> Iterator[None]:
    """A failed case must not leave a query running (paused at its gate) into the next."""
    yield
    for query in spark.streams.active:
        query.stop()


def write_files(directory: Path, sizes: list[int], seed: int) -> pd.DataFrame:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    frames, first = [], 0
    for k, n in enumerate(sizes):
        df = pd.DataFrame(
            {
                "id": np.arange(first, first + n, dtype=np.int64),
                "k": rng.integers(0, 4, n).astype(np.int64),
                "a": rng.normal(3.0 * k, 1.0 + k, n),
                "b": 1e9 + rng.normal(0.0, 1.0, n),
            }
        )
        first += n
        path = directory / f"f{k}.parquet"
        df.to_parquet(path, index=False)
        os.utime(path, (1_000_000_000 + 10 * k, 1_000_000_000 + 10 * k))
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


class Gate:
    """The directory the fault hook pauses in (MXNORM_FAULT_GATE)."""

    def __init__(self, path: Path, monkeypatch: pytest.MonkeyPatch, spec: str) -> None:
        path.mkdir()
        self.path = path
        self.name = spec.rsplit(":", 1)[0].replace(":", "-")
        monkeypatch.setenv("MXNORM_FAULT_GATE", str(path))
        monkeypatch.setenv("MXNORM_FAULT", spec)

    def wait_paused(self, alive: Any = lambda: True) -> None:
        deadline = time.monotonic() + WAIT_SECONDS
        while not (self.path / f"{self.name}.paused").exists():
            assert alive(), "the first writer ended before it reached its pause point"
            assert time.monotonic() < deadline, f"never paused at {self.name}"
            time.sleep(0.05)

    def release(self) -> None:
        (self.path / f"{self.name}.go").touch()


def finished(stream: MXNormStream, query: Any) -> None:
    """Wait for ``query`` (re-raising its error); a query still running after
    WAIT_SECONDS fails the test rather than hanging it."""
    assert stream.await_termination(query, WAIT_SECONDS), "the query did not end in time"


def stream(spark: Any, state: str, out: Path, keyed: bool) -> MXNormStream:
    return MXNormStream(
        spark,
        StateStore(state, retention=None),
        cols=COLS,
        output=str(out),
        options=StateOptions(alpha=0.3),
        progress=None,
        keys=KeyOptions(("k",)) if keyed else None,
    )


def versions(state: str) -> dict[int, str]:
    store = StateStore(state)
    out = {}
    for b in store.batch_ids():
        s = store.get(b)
        assert s is not None
        out[b] = s.to_json()
    return out


@pytest.mark.parametrize("case", ["local", "s3", "keyed"])
def test_two_streams_on_one_state_directory(
    spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str,
    request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    rows = write_files(tmp_path / "in", [30, 20, 25], seed=4)
    source = FileSource(str(tmp_path / "in"), "parquet", max_files_per_trigger=1)
    keyed = case == "keyed"
    ref_state = str(tmp_path / "ref_state")
    stream(spark, ref_state, tmp_path / "ref_out", keyed).run(
        source.read(spark, ["id", "k", *COLS]), str(tmp_path / "ref_chk"), source=source
    )

    state = (
        f"{request.getfixturevalue('s3_bucket')}/state" if case == "s3" else str(tmp_path / "s")
    )
    out = tmp_path / "out"  # the same output directory too: the worst mistake
    gate = Gate(tmp_path / "gate", monkeypatch, "during_write:0:pause")
    first = stream(spark, state, out, keyed)
    q1 = first.start(source.read(spark, ["id", "k", *COLS]), str(tmp_path / "chk1"),
                     available_now=True, source=source)  # fmt: skip
    try:
        gate.wait_paused(lambda: q1.isActive)
        in_flight = sorted((out / "_attempts").iterdir())
        assert in_flight  # batch 0 written aside, not yet renamed into place

        # The rival: a different query (checkpoint) on the same state and output directories.
        rival = stream(spark, state, out, keyed)
        q2 = rival.start(source.read(spark, ["id", "k", *COLS]), str(tmp_path / "chk2"),
                         available_now=True, source=source)  # fmt: skip
        with pytest.raises(StateConflictError, match=r"belongs to streaming query"):
            finished(rival, q2)
        assert sorted((out / "_attempts").iterdir()) == in_flight  # the rival touched nothing
    finally:
        gate.release()
    finished(first, q1)

    # The winner's run is the undisturbed one, to the last bit; each row once.
    assert versions(state) == versions(ref_state)
    assert StateStore(state).owner() == str(q1.id)
    got = spark.read.parquet(str(out)).toPandas().sort_values("id").reset_index(drop=True)
    want = (
        spark.read.parquet(str(tmp_path / "ref_out"))
        .toPandas()
        .sort_values("id")
        .reset_index(drop=True)
    )
    np.testing.assert_array_equal(got["id"].to_numpy(), np.sort(rows["id"].to_numpy()))
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    history = StateStore(state).history()
    assert history.column("batch_id").to_pylist() == [b for b in range(3) for _ in COLS]


def test_two_fits_on_one_s3_state_file(
    spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_bucket: str,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    write_files(tmp_path / "in_a", [30, 20, 25], seed=5)
    write_files(tmp_path / "in_b", [10, 40], seed=6)
    for d, n in (("in_a", 3), ("in_b", 2)):  # one batch value per file: the backfill's batches
        for k in range(n):
            path = tmp_path / d / f"f{k}.parquet"
            df = pd.read_parquet(path).assign(day=k)
            df.to_parquet(path, index=False)
    target = f"{s3_bucket}/models/state.json"

    def fit(inp: str) -> list[str]:
        return ["fit", "--input", str(tmp_path / inp), "--format", "parquet", "--cols", "a,b",
                "--batch-col", "day", "--alpha", "0.3", "--state", target]  # fmt: skip

    gate = Gate(tmp_path / "gate", monkeypatch, "fit_write:0:pause")
    codes: list[int] = []
    # A daemon thread: should the first run hang, the test fails at the join, and pytest
    # still exits.
    first = threading.Thread(target=lambda: codes.append(cli_main(fit("in_a"))), daemon=True)
    first.start()
    try:
        gate.wait_paused(first.is_alive)
        assert cli_main(fit("in_b")) == 2  # the rival stops, naming the run holding the state
        err = capsys.readouterr().err
        assert "is being written by another run" in err and "state.json.writer" in err
    finally:
        gate.release()
    first.join(WAIT_SECONDS)
    assert codes == [0]
    # The winner's state and its history, not a mix.
    state_a = read_state(target)
    assert state_a.batches_seen == 3
    history = read_history(target, state_file=True)
    assert sorted(set(history.column("batch_id").to_pylist())) == [0, 1, 2]
    assert history.column("rows").to_pylist()[:: len(COLS)] == [30, 20, 25]
    # Once the first is done, the second runs and replaces state and history whole.
    monkeypatch.delenv("MXNORM_FAULT")
    assert cli_main(fit("in_b")) == 0
    assert read_state(target).batches_seen == 2
    history = read_history(target, state_file=True)
    assert history.column("rows").to_pylist()[:: len(COLS)] == [10, 40]
