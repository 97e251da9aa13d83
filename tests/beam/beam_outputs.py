"""Functions the Beam test pipelines map their outputs with: a module the SDK worker
processes import (the tests put this directory on their PYTHONPATH), so nothing is pickled
by value."""

from __future__ import annotations

import json
from typing import Any

from mxnorm_spark.core.state import MXNormState


def key_state_line(pair: tuple[tuple[Any, ...], MXNormState]) -> str:
    key, state = pair
    return json.dumps({"key": list(key), "state": state.to_json()})


def row_line(row: dict[str, Any]) -> str:
    # json writes floats with repr (exact) and NaN/Infinity as literals it reads back.
    return json.dumps(row, sort_keys=True)


def read_lines(prefix: str) -> list[Any]:
    import glob

    out = []
    for path in sorted(glob.glob(prefix + "*")):
        with open(path, encoding="utf-8") as f:
            out.extend(json.loads(line) for line in f if line.strip())
    return out
