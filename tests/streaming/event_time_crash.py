"""The crash test of the event-time streams (global and keyed): ``mxnorm-spark stream`` is
killed with SIGKILL at fault points over ``ROOT/in``, then restarted; every committed
version and every output row must be the bits of an uninterrupted run."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

REPO = Path(__file__).resolve().parents[2]


def stream_cli(root: Path, fault: str, options: list[str]) -> subprocess.CompletedProcess[str]:
    """``mxnorm-spark stream`` over ``root/in`` (one file per micro-batch, available-now)
    with the stream ``options``, killed where ``fault`` (``MXNORM_FAULT``) says."""
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable, "MXNORM_FAULT": fault}  # fmt: skip
    args = [
        sys.executable, "-m", "mxnorm_spark", "stream", "--input", str(root / "in"),
        "--format", "parquet", "--output", str(root / "out"), "--state", str(root / "state"),
        "--checkpoint", str(root / "chk"), "--max-files-per-trigger", "1", "--available-now",
        *options, "--master", "local[1]", "--log-level", "ERROR",
        "--conf", "spark.ui.enabled=false", "--conf", "spark.sql.shuffle.partitions=2",
        "--conf", "spark.driver.extraJavaOptions=-XX:TieredStopAtLevel=1",
    ]  # fmt: skip
    return subprocess.run(
        args, env=env, cwd=REPO, capture_output=True, text=True, timeout=600, check=False
    )


def kill_at_each_fault_point(root: Path, options: list[str]) -> None:
    """One process dies at each fault point: before the commit of batch 1, after the commit
    of batch 2, while batch 3's output is written; the versions committed are checked."""
    from mxnorm_spark.store import StateStore

    store = StateStore(root / "state")
    r = stream_cli(root, "before_commit:1,after_commit:2", options)
    assert r.returncode == -9, r.stdout + r.stderr
    assert store.batch_ids() == [0]
    r = stream_cli(root, "after_commit:2", options)
    assert r.returncode == -9, r.stdout + r.stderr
    assert store.batch_ids() == [0, 1, 2]
    r = stream_cli(root, "during_write:3", options)
    assert r.returncode == -9, r.stdout + r.stderr


def assert_same_bits(
    spark: Any, root: Path, reference: Path, read_out: Callable[[Any, Path], pd.DataFrame]
) -> None:
    """Every version (open batches included) and every output row of ``root`` are those of
    the uninterrupted run in ``reference``."""
    from mxnorm_spark.store import StateStore

    store, ref = StateStore(root / "state"), StateStore(reference / "state")
    assert store.batch_ids() == ref.batch_ids()
    for b in ref.batch_ids():
        assert store.fs.read_bytes(store.version_path(b)) == ref.fs.read_bytes(ref.version_path(b))
    got = read_out(spark, root / "out")
    want = read_out(spark, reference / "out")
    pd.testing.assert_frame_equal(got, want, check_exact=True)
