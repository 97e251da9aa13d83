"""The per-batch history of fit and the history / drift report.

Drift events are checked against the reference loop of docs/design.md run per feature in plain
numpy; the backfill's history table against the reference loop and two-pass moments.
"""

from __future__ import annotations

import math
import re
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from reference import Reference, assert_state_close, two_pass

from mxnorm_spark import Moments, MXNormState, cli
from mxnorm_spark.core.errors import EmptyInputError, InvalidParameterError
from mxnorm_spark.report.drift import MissingExtraError, drift_events, load_history, write_report
from mxnorm_spark.store import read_history, record_batch, write_state

FEATURES = ["a", "b", "c"]
ALPHA = 0.1
STEP_AT = 7  # feature b jumps by +10 (10 sd) at this batch
NO_C_AT = 3  # feature c has no valid value in this batch


def batches(n: int = 14, rows: int = 50) -> list[np.ndarray]:
    rng = np.random.default_rng(13)
    out = []
    for i in range(n):
        x = rng.normal([0.0, 5.0, -2.0], [1.0, 1.0, 0.5], size=(rows, 3))
        if i >= STEP_AT:
            x[:, 1] += 10.0
        if i == NO_C_AT:
            x[:, 2] = np.nan
        out.append(x)
    return out


def record(state_dir: Path, data: list[np.ndarray]) -> None:
    state = MXNormState.create(FEATURES, alpha=ALPHA)
    for i, x in enumerate(data):
        m = Moments.from_array(x)
        state = state.update(m, batch_id=i)
        assert record_batch(str(state_dir), i, rows=len(x), moments=m, state=state)


def expected_events(data: list[np.ndarray], k: float) -> list[tuple[int, str, float]]:
    """(batch id, feature, z) from the reference loop, one feature at a time."""
    found = []
    for j, name in enumerate(FEATURES):
        ref = Reference(alpha=ALPHA)
        for i, x in enumerate(data):
            col = x[:, [j]][np.isfinite(x[:, j])]
            if col.size == 0:
                continue
            if ref.mean is not None and ref.var is not None:
                z = abs(col.mean() - ref.mean[0]) / math.sqrt(ref.var[0])
                if z > k:
                    found.append((i, name, z))
            ref.adapt(col)
    return sorted(found, key=lambda e: (e[0], FEATURES.index(e[1])))


@pytest.mark.parametrize("k", [3.0, 6.0, 50.0])
def test_drift_events_match_the_reference_loop(tmp_path: Path, k: float) -> None:
    data = batches()
    record(tmp_path / "state", data)
    events = drift_events(load_history(str(tmp_path / "state")), k=k)
    want = expected_events(data, k)
    assert [(e.batch_id, e.feature) for e in events] == [(b, f) for b, f, _ in want]
    np.testing.assert_allclose([e.z for e in events], [z for *_, z in want], rtol=1e-12)
    if k == 3.0:
        # The step in b is flagged where it happens and while the EMA catches up; a and c
        # never drift, and c's empty batch is skipped.
        assert {e.feature for e in events} == {"b"}
        assert events[0].batch_id == STEP_AT and events[0].z > 9
    if k == 50.0:
        assert events == []


def test_drift_event_fields(tmp_path: Path) -> None:
    data = batches()
    record(tmp_path / "state", data)
    first = drift_events(load_history(str(tmp_path / "state")))[0]
    before = MXNormState.create(FEATURES, alpha=ALPHA)
    for x in data[:STEP_AT]:
        before = before.update(Moments.from_array(x))
    assert first.batch_value is None  # a stream has no batch values
    assert first.mean_before == before.mean[1]
    assert first.sd_before == math.sqrt(before.var[1])
    assert first.batch_mean == pytest.approx(data[STEP_AT][:, 1].mean(), rel=1e-14)
    assert first.describe().startswith(f"batch {STEP_AT} b: batch mean ")


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_html_report_is_self_contained(tmp_path: Path) -> None:
    record(tmp_path / "state", batches())
    out = tmp_path / "sub" / "report.html"
    events = write_report(str(tmp_path / "state"), str(out))
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    # Nothing is fetched: no URL of any kind, every image inline.
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", text, re.IGNORECASE)
    assert "http://" not in text and "https://" not in text
    images = re.findall(r"<img [^>]*>", text)
    assert len(images) == len(FEATURES)
    assert all('src="data:image/png;base64,' in img for img in images)
    assert text.count("<h3>") == len(FEATURES)
    table = re.search(r'<table class="events">(.*?)</table>', text, re.DOTALL)
    assert table is not None
    assert table.group(1).count("<tr>") == len(events) + 1  # the header row
    assert f"<h2>Drift events ({len(events)})</h2>" in text
    assert "batch ids 0 .. 13" in text


def test_png_report_is_one_chart_per_feature(tmp_path: Path) -> None:
    record(tmp_path / "state", batches())
    out = tmp_path / "report.png"
    write_report(str(tmp_path / "state"), str(out), k=4)
    data = out.read_bytes()
    width, height = png_size(data)
    assert width == 900 and height > 2.5 * len(FEATURES) * 100
    assert 20_000 < len(data) < 2_000_000


def test_report_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record(tmp_path / "state", batches(3))
    with pytest.raises(InvalidParameterError, match=r"report\.pdf: unknown type '\.pdf'"):
        write_report(str(tmp_path / "state"), str(tmp_path / "report.pdf"))
    with pytest.raises(InvalidParameterError, match=r"k .* must be > 0"):
        write_report(str(tmp_path / "state"), str(tmp_path / "r.png"), k=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyInputError, match=r"empty has no history \(nothing in .*_history\)"):
        load_history(str(tmp_path / "empty"))
    with pytest.raises(EmptyInputError, match="no such state file or state directory"):
        load_history(str(tmp_path / "nowhere.json"))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingExtraError, match=r"mxnorm-spark with its \[report\] extra"):
        write_report(str(tmp_path / "state"), str(tmp_path / "r.png"))
    assert not (tmp_path / "r.png").exists()


# ---- the backfill's history (Spark) -------------------------------------------------------
DAYS = [5, 1, 3, 2]


def backfill_data() -> tuple[list[tuple[int, float, float]], dict[int, np.ndarray]]:
    rng = np.random.default_rng(5)
    by_day = {d: rng.normal([1e9, -3.0], [1.0, 2.0], size=(4 + d, 2)) for d in DAYS}
    by_day[3][:, 0] += 40.0  # a step on day 3
    rows = [(d, float(a), float(b)) for d in DAYS for a, b in by_day[d]]
    return rows, by_day


@pytest.mark.spark
def test_backfill_history_table(spark: Any) -> None:
    from mxnorm_spark.ml.estimator import MXNorm

    rows, by_day = backfill_data()
    df = spark.createDataFrame(rows, ["day", "a", "b"]).repartition(3)
    model = MXNorm(inputCols=["a", "b"], batchCol="day", alpha=0.3).fit(df)
    table = model.history_table()
    assert table.schema == read_history(str(Path("/nonexistent"))).schema
    got = table.to_pydict()
    days = sorted(DAYS)
    assert got["batch_id"] == [i for i in range(len(days)) for _ in range(2)]
    assert got["batch_value"] == [str(d) for d in days for _ in range(2)]
    assert got["feature"] == ["a", "b"] * len(days)
    assert len(model.batch_moments) == len(model.history) == len(days)
    ref = Reference(alpha=0.3)
    for i, day in enumerate(days):
        x = by_day[day]
        ref.adapt(x)
        assert ref.mean is not None and ref.var is not None
        sl = slice(2 * i, 2 * i + 2)
        assert got["rows"][sl] == got["valid"][sl] == [len(x), len(x)]
        mean, var = two_pass(x)
        assert_state_close(got["batch_mean"][sl], got["batch_var"][sl], mean, var)
        assert_state_close(got["state_mean"][sl], got["state_var"][sl], ref.mean, ref.var)
    assert len(set(got["committed_at"])) == 1

    whole = MXNorm(inputCols=["a", "b"]).fit(df).history_table().to_pydict()
    assert whole["batch_id"] == [0, 0] and whole["batch_value"] == [None, None]
    assert whole["rows"] == [len(rows)] * 2
    with pytest.raises(InvalidParameterError, match="holds no batch moments: fit keeps them"):
        type(model)(model.state).history_table()


@pytest.mark.spark
def test_cli_fit_writes_history_and_report_reads_it(
    spark: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pandas as pd

    rows, _ = backfill_data()
    data = str(tmp_path / "in.parquet")
    spark.createDataFrame(rows, ["day", "a", "b"]).write.parquet(data)
    state = str(tmp_path / "s.json")
    fit = ["fit", "--input", data, "--cols", "a,b", "--alpha", "0.3", "--state", state]

    assert cli.main([*fit, "--batch-col", "day"]) == 0
    history = tmp_path / "s.history"
    assert pd.read_parquet(history).shape == (len(DAYS) * 2, 10)
    assert spark.read.parquet(str(history)).count() == len(DAYS) * 2
    assert load_history(state).column("batch_value").to_pylist()[::2] == ["1", "2", "3", "5"]

    # A rerun replaces the history: no batch of the old fit is left.
    assert cli.main(fit) == 0
    assert pd.read_parquet(history)["batch_id"].tolist() == [0, 0]
    assert cli.main([*fit, "--batch-col", "day"]) == 0
    capsys.readouterr()

    assert cli.main(["report", state, "--out", str(tmp_path / "r.html"), "--k", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith(f"report written to {tmp_path / 'r.html'} (")
    assert [line for line in out if line.startswith("drift: batch 2 (3) a: ")]
    assert (tmp_path / "r.html").read_text().count("<img ") == 2
    assert cli.main(["report", state, "--out", str(tmp_path / "r.png")]) == 0
    assert png_size((tmp_path / "r.png").read_bytes())[0] == 900

    bare = str(tmp_path / "bare.json")
    write_state(MXNormState.create(["a"]).update(Moments.from_array([[1.0]])), bare)
    capsys.readouterr()
    assert cli.main(["report", bare, "--out", str(tmp_path / "b.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bare} has no history") and err.count("\n") == 1
    assert cli.main(["report", state, "--out", str(tmp_path / "r.svg")]) == 2
    assert cli.main(["report", state, "--out", str(tmp_path / "r.png"), "--k", "-1"]) == 2


def test_report_command_needs_no_pyspark(tmp_path: Path) -> None:
    import subprocess

    record(tmp_path / "state", batches(9))
    code = f"""
import sys
class NoSpark:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("pyspark", "py4j"):
            raise ImportError(name)
sys.meta_path.insert(0, NoSpark())
from mxnorm_spark.cli import commands as cli
code = cli.main(["report", {str(tmp_path / "state")!r}, "--out", {str(tmp_path / "r.html")!r}])
assert not [m for m in sys.modules if m.startswith("pyspark")]
sys.exit(code)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("drift: batch 7 b: ")
    assert (tmp_path / "r.html").exists()
