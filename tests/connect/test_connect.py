"""Every public path on Spark Connect gives the states and rows classic Spark gives, bit for bit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from cases import CASES


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
