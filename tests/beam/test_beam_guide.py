"""The guide's example (docs/guides/beam.md) runs as written, on the FnApiRunner, and
prints what its comments say."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guides" / "beam.md"


def test_the_guide_example_runs_and_prints_its_comments() -> None:
    (code,) = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "[14.0, 1.3333333333333333] 3"
    # Day 1's row with amount 10 is normalized with the state after day 0 (mean 1.5,
    # var 1.25 of 0, 1, 2, 3): (10 - 1.5) / sqrt(1.25 + 1e-8).
    want = (10 - 1.5) / (1.25 + 1e-8) ** 0.5
    assert f"'z_amount': {want!r}" in lines[1]
