"""Smoke test of the benchmark harness on tiny data, so bench/ cannot rot unnoticed.

No timing is asserted: only that the cases produce a correct z-score, that a worker round
trip yields well-formed results, and that the report writer turns them into Markdown and a
PNG. The figures themselves come from ``make bench``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import report, worker  # noqa: E402
from bench.cases import CASES, Context, check_output  # noqa: E402
from bench.data import Dataset, ensure_dataset, feature_params, parquet_files  # noqa: E402

SCALAR = Dataset("wide16", 3_000, 4, vector=False, files=2)
VECTOR = Dataset("vec64", 2_000, 3, vector=True, files=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bench-data")
    return {ds.name: ensure_dataset(ds, root) for ds in (SCALAR, VECTOR)}


def test_generated_data_has_the_promised_shape(data: dict[str, Path]) -> None:
    files = parquet_files(data["wide16"])
    assert len(files) == 2
    table = pq.read_table(data["wide16"])
    assert table.num_rows == SCALAR.rows
    assert table.column_names == SCALAR.columns
    mean, sd = feature_params(SCALAR.features)
    x = np.column_stack([c.to_numpy() for c in table.columns])
    np.testing.assert_allclose(x.mean(axis=0), mean, atol=0.2 * sd.max())
    vec = pq.read_table(data["vec64"])
    assert pa.types.is_list(vec.schema.field("v").type)
    assert vec.num_rows == VECTOR.rows
    # A complete dataset is reused, not regenerated.
    before = files[0].stat().st_mtime_ns
    ensure_dataset(SCALAR, data["wide16"].parent)
    assert files[0].stat().st_mtime_ns == before


def test_check_output_rejects_a_wrong_normalization(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 2)) * 3 + 5
    z = (x - x.mean(0)) / x.std(0)
    ds = Dataset("t", 500, 2, vector=False, files=1)
    pq.write_table(pa.table({"a": z[:, 0], "b": z[:, 1]}), tmp_path / "good.parquet")
    assert check_output(str(tmp_path / "good.parquet"), ds, 500) == "ok"
    pq.write_table(pa.table({"a": z[:, 0], "b": x[:, 1]}), tmp_path / "bad.parquet")
    assert "not a z-score" in check_output(str(tmp_path / "bad.parquet"), ds, 500)
    assert "rows written" in check_output(str(tmp_path / "good.parquet"), ds, 400)


@pytest.mark.parametrize("ds", [SCALAR, VECTOR], ids=lambda d: d.name)
def test_single_process_case_normalizes(ds: Dataset, data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    CASES["numpy"](Context(None), ds, [str(data[ds.name])], "parquet", str(out))
    assert check_output(str(out), ds, ds.rows) == "ok"


@pytest.mark.spark
@pytest.mark.parametrize(
    ("case", "ds"),
    [("sql", VECTOR), ("mllib", SCALAR), ("mxnorm-auto", SCALAR), ("mxnorm-arrow", VECTOR)],
    ids=lambda x: x if isinstance(x, str) else x.name,
)
def test_spark_cases_normalize(
    spark: Any, case: str, ds: Dataset, data: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    CASES[case](Context(spark), ds, [str(data[ds.name])], "parquet", str(out))
    assert check_output(str(out), ds, ds.rows) == "ok"


def test_worker_and_report_round_trip(data: dict[str, Path], tmp_path: Path) -> None:
    spec = {
        "case": "numpy",
        "dataset": asdict(SCALAR),
        "data_path": str(data["wide16"]),
        "work_dir": str(tmp_path / "work"),
        "sinks": ["noop", "parquet"],
        "reps": 3,
    }
    r = worker.run(spec)
    assert r["check"] == "ok"
    assert {len(v["times"]) for v in r["sinks"].values()} == {3}
    assert r["sinks"]["parquet"]["peak_mib"]["driver"] > 0

    def fake(case: str, scale: float) -> dict[str, Any]:
        sinks = {
            s: {"times": [scale, 2 * scale, 3 * scale], "peak_mib": {}} for s in ("noop", "parquet")
        }
        return {"case": case, "dataset": "wide16", "sinks": sinks, "check": "ok"}

    results = {
        "meta": {
            "date": "2000-01-01 00:00 UTC",
            "command": "make bench",
            "mode": "quick",
            "reps": 3,
            "wall_s": 1.0,
            "load_start": 0.1,
            "load_end": 0.2,
            "machine": {"cpu": "cpu", "cores": 2, "memory_gib": 1.0, "os": "os"},
            "versions": {"python": "3"},
            "spark_conf": {"spark.master": "local[2]"},
            "method": ["- how"],
        },
        "datasets": [asdict(SCALAR)],
        "batch": [
            r,
            fake("mllib", 6.0),
            fake("sql", 2.0),
            fake("mxnorm-auto", 2.0),
            fake("mxnorm-arrow", 4.0),
            {"case": "mxnorm-sql", "dataset": "wide16", "error": "Boom: broken"},
        ],
        "streaming": [
            {
                "impl": "plain",
                "latency": {"1000": {"timed_ms": [100, 120, 110]}},
                "throughput": {"rows": 10, "batches": 2, "wall_s": 1.0},
                "peak_mib": {},
            },
            {
                "impl": "mxnorm",
                "latency": {"1000": {"timed_ms": [400, 420, 410]}},
                "throughput": {"rows": 10, "batches": 2, "wall_s": 2.0},
                "peak_mib": {},
            },
        ],
    }
    md, png = report.write_report(json.loads(json.dumps(results)), tmp_path / "report")
    text = md.read_text()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Paired ratios: MLlib's rep i over auto's rep i is 3.0 in every pair.
    assert "| mxnorm-auto | noop | 4.00 | 2.00-6.00 |" in text
    assert "3.00x (3.00-3.00)" in text
    assert "| default engine >= 2.5x MLlib throughput | 3.00x | met |" in text
    assert "| arrow engine >= 1.3x MLlib throughput | 1.50x | met |" in text
    assert "| default engine time <= 1.15x hand-written SQL | 1.00x | met |" in text
    assert "streaming overhead per 1k-row micro-batch < 0.5 s median | 0.300 s | met" in text
    assert "failed: Boom: broken" in text
    assert "10-row (2 micro-batches) stream" in text
    assert "| mxnorm-auto | noop | 4.00" in text
    assert any("mxnorm_spark, engine=auto" in line for line in report.readme_table(results))
