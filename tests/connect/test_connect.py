"""Every public path on Spark Connect gives the states and rows classic Spark gives, bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from cases import CASES

ROOT = Path(__file__).resolve().parents[2]


def _assert_bit_identical(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns)
    assert len(got) == len(want)
    for col in want.columns:
        g, w = got[col].to_numpy(), want[col].to_numpy()
        if w.dtype.kind == "f":
            assert g.dtype == w.dtype and g.tobytes() == w.tobytes(), col
        else:
            assert list(g) == list(w), col


@pytest.mark.parametrize("name", list(CASES))
def test_case_matches_classic(name: str, spark: Any, inputs: Path, classic: Path) -> None:
    state, rows = CASES[name](spark, inputs)
    assert state == (classic / f"{name}.json").read_text()
    _assert_bit_identical(rows, pd.read_parquet(classic / f"{name}.parquet"))
    # The comparison is not vacuous: there are normalized values, and they are finite.
    z = [c for c in rows.columns if c.startswith("z") or c in ("a", "b", "c")]
    assert z and len(rows) > 0
    first = rows[z[0]].iloc[0]
    assert isinstance(first, bytes) or np.isfinite(first)


def test_is_really_connect(spark: Any) -> None:
    from mxnorm_spark.store import is_classic

    assert type(spark).__module__.startswith("pyspark.sql.connect")
    assert not is_classic(spark)


def _run(args: list[str], *, connect: bool) -> subprocess.CompletedProcess[str]:
    drop = () if connect else ("SPARK_CONNECT_MODE_ENABLED", "SPARK_REMOTE", "SPARK_LOCAL_REMOTE")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable)
    done = subprocess.run(
        [sys.executable, *args], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def test_cli_and_jobs_through_connect(connect_url: str, inputs: Path, tmp_path: Path) -> None:
    fit = ["--input", str(inputs / "scalars"), "--cols", "a,b,c", "--batch-col", "day"]
    quiet = ["--log-level", "ERROR"]
    _run(["-m", "mxnorm_spark", "fit", *fit, "--state", str(tmp_path / "classic.json"),
          "--master", "local[2]", *quiet], connect=False)  # fmt: skip
    # The command line with --remote, and the spark-submit job script as plain Python.
    _run(["-m", "mxnorm_spark", "fit", *fit, "--state", str(tmp_path / "remote.json"),
          "--remote", connect_url, *quiet], connect=True)  # fmt: skip
    _run([str(ROOT / "jobs" / "fit_state.py"), *fit, "--state", str(tmp_path / "job.json"),
          "--remote", connect_url, *quiet], connect=True)  # fmt: skip
    want = (tmp_path / "classic.json").read_text()
    assert (tmp_path / "remote.json").read_text() == want
    assert (tmp_path / "job.json").read_text() == want
    for name, connect in (("classic", False), ("remote", True)):
        where = ["--remote", connect_url] if connect else ["--master", "local[2]"]
        _run(["-m", "mxnorm_spark", "transform", "--input", str(inputs / "scalars"),
              "--state", str(tmp_path / "classic.json"), "--output", str(tmp_path / name),
              *where, *quiet], connect=connect)  # fmt: skip
    got = pd.read_parquet(tmp_path / "remote").sort_values("id").reset_index(drop=True)
    want_rows = pd.read_parquet(tmp_path / "classic").sort_values("id").reset_index(drop=True)
    _assert_bit_identical(got, want_rows)
