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

from bench import backfill_scaling, report, targets, worker  # noqa: E402
from bench import run as bench_run  # noqa: E402
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

    results = synthetic_results(r)
    md, png = report.write_report(json.loads(json.dumps(results)), tmp_path / "report")
    text = md.read_text()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Paired ratios: MLlib's rep i over ours' rep i is 3.0 in every pair.
    assert "| mxnorm-auto | noop | 4.00 | 2.00-6.00 |" in text
    assert "3.00x (3.00-3.00)" in text
    assert "failed: Boom: broken" in text
    assert "10-row (2 micro-batches) stream" in text
    assert "| wide256 | 12 | 1.00 / 0.50 / 0.25 | 3.50 / 2.00 / 1.00 |" in text
    assert "at most 3.50 between sections, on 2 cores. **Other work shared" in text
    assert "| 20,000 | 8.00 (6.00-10.00) | 1.20 (1.20-1.20) | 20000 |" in text
    readme = report.readme_table(results)
    assert any("mxnorm_spark, engine=auto" in line for line in readme)
    assert "| case (3,000 rows x 4 doubles) |" in "\n".join(readme)
    assert any(line.startswith("| backfill") for line in readme)


META: dict[str, Any] = {
    "date": "2000-01-01 00:00 UTC",
    "command": "make bench",
    "mode": "quick",
    "reps": 3,
    "wall_s": 1.0,
    "load_start": 0.1,
    "load_end": 0.2,
    "machine": {"cpu": "cpu", "cores": 2, "memory_gib": 1.0, "os": "os"},
    "versions": {"python": "3", "commit": "abc1234"},
    "spark_conf": {"spark.master": "local[2]"},
    "method": ["- how"],
}


def _fake(case: str, dataset: str, noop: list[float], parquet: list[float]) -> dict[str, Any]:
    sinks = {"noop": {"times": noop, "peak_mib": {}}, "parquet": {"times": parquet, "peak_mib": {}}}
    return {"case": case, "dataset": dataset, "sinks": sinks, "check": "ok"}


def synthetic_results(numpy_run: dict[str, Any] | None = None) -> dict[str, Any]:
    """A run's results, made up so that some targets are met and others missed."""
    wide256 = Dataset("wide256", 1_000, 256, vector=False, files=2)
    batch = [
        _fake("mllib", "wide16", [6.0, 12.0, 18.0], [6.0, 12.0, 18.0]),
        _fake("sql", "wide16", [2.0, 4.0, 6.0], [2.0, 4.0, 6.0]),
        _fake("mxnorm-auto", "wide16", [2.0, 4.0, 6.0], [2.0, 4.0, 6.0]),
        {"case": "mxnorm-sql", "dataset": "wide16", "error": "Boom: broken"},
        _fake("mllib", "wide256", [2.0, 2.0, 2.0], [3.0, 3.0, 3.0]),
        _fake("mxnorm-auto", "wide256", [1.0, 1.0, 1.0], [3.0, 3.0, 3.0]),
        _fake("mllib", "vec64", [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]),
        {"case": "mxnorm-auto", "dataset": "vec64", "error": "Boom: vector"},
    ]
    if numpy_run is not None:
        batch.append(numpy_run)

    def stream(impl: str, ms: dict[str, list[int]], wall: float) -> dict[str, Any]:
        return {
            "impl": impl,
            "latency": {size: {"timed_ms": v} for size, v in ms.items()},
            "throughput": {"rows": 10, "batches": 2, "wall_s": wall},
            "peak_mib": {},
        }

    return {
        "meta": dict(META),
        "datasets": [asdict(SCALAR), asdict(wide256), asdict(VECTOR)],
        "batch": batch,
        "streaming": [
            stream("plain", {"1000": [100, 120, 110], "100000": [1000], "1000000": [1000]}, 1.0),
            stream("mxnorm", {"1000": [400, 420, 410], "100000": [1200], "1000000": [1500]}, 2.0),
        ],
        "backfill": {
            "rows": 2_000_000,
            "partitions": 16,
            "values": {
                "100": {"fit_s": [4.0, 4.0, 4.0], "fit_cpu_s": [1.0, 1.0, 1.0], "batches": 100},
                "20000": {
                    "fit_s": [8.0, 6.0, 10.0],
                    "fit_cpu_s": [1.2, 1.2, 1.2],
                    "batches": 20000,
                },
            },
            "peak_driver_mib": 150.0,
            "peak_jvm_mib": 1000.0,
        },
        "core": {
            "seed": {
                "rows": [
                    {
                        "shape": [64, 64],
                        "ours_us": [3.0, 3.0],
                        "seed_us": [2.0, 2.0],
                        "ours_cpu_us": [2.6, 2.6],
                        "seed_cpu_us": [2.0, 2.0],
                        "cpu_ratio": 1.3,
                    },
                    {
                        "shape": [4096, 64],
                        "ours_us": [8.0],
                        "seed_us": [5.0],
                        "ours_cpu_us": [8.0],
                        "seed_cpu_us": [5.0],
                        "cpu_ratio": 1.6,
                    },
                ]
            },
            "keyed_serving": {
                "keys": 1_000_000,
                "features": 16,
                "build_s": 3.0,
                "build_cpu_s": 1.5,
                "rss_after_mib": 600.0,
                "p99_us": 20.0,
            },
        },
        "udt": {
            "dataset": {"rows": 400_000, "features": 64},
            "times": {
                "mllib|noop": [3.0] * 3,
                "ours|noop": [2.0] * 3,
                "mllib|parquet": [3.0] * 3,
                "ours|parquet": [3.0] * 3,
            },
        },
        # The first micro-batch (it creates every key) is left out: 2.5x and 3.0x.
        "keyed_stream": {
            "keys": 1_000_000,
            "rows": 1_000_000,
            "mxnorm": [30.0, 5.0, 6.0],
            "plain": [3.0, 2.0, 2.0],
        },
        "sections": [
            {
                "name": "wide256",
                "wall_s": 12.0,
                "load_before": [1, 0.5, 0.25],
                "load_after": [3.5, 2, 1],
            }
        ],
    }


def test_targets_give_a_verdict_that_can_fail() -> None:
    got = {v.target: (v.measured, v.verdict) for v in targets.verdicts(synthetic_results())}
    wide16 = "wide16 (3,000 x 4 columns)"
    wide256 = "wide256 (1,000 x 256 columns)"
    core = "float64 batches: ours <= 1.3x the seed loop's time (CPU, pair by pair)"
    keyed = "keyed serving: building the lookup for 1,000,000 keys x 16, <= 2 s (CPU time"
    assert got == {
        f"numpy core, 64x64 {core}": ("1.30x (ours 2.6 µs/batch; wall medians 1.50x)", "met"),
        f"numpy core, 4096x64 {core}": (
            "1.60x (ours 8.0 µs/batch; wall medians 1.60x)",
            "missed by 1.23x",
        ),
        f"{keyed}: one thread, no I/O, so a quiet machine's wall time)": (
            "1.50 s (wall 3.00 s)",
            "met",
        ),
        "keyed serving: resident memory after building, <= 500 MiB": (
            "600 MiB",
            "missed by 1.20x",
        ),
        "keyed serving: `transform_row` p99 < 100 µs": ("20.0 µs", "met"),
        f"{wide16}, noop: ours >= 2.5x MLlib throughput": ("3.00x", "met"),
        f"{wide16}, noop: ours time <= 1.1x hand-written SQL": ("1.00x", "met"),
        f"{wide256}, noop: ours >= 1.5x MLlib throughput": ("2.00x", "met"),
        f"{wide256}, parquet: ours >= 1.5x MLlib throughput": ("1.00x", "missed by 1.50x"),
        # Ours failed on vec64: no figure, and never "met".
        "vec64 (2,000 x 3 array), noop: ours >= 1.5x MLlib throughput": ("-", "not measured"),
        "vec64 (2,000 x 3 array), parquet: ours >= 1.5x MLlib throughput": ("-", "not measured"),
        "vec64 as a VectorUDT (400,000 x 64), noop: ours >= 1.3x MLlib throughput": (
            "1.50x",
            "met",
        ),
        "vec64 as a VectorUDT (400,000 x 64), parquet: ours >= 1.3x MLlib throughput": (
            "1.00x",
            "missed by 1.30x",
        ),
        "keyed stream, later 1,000,000-row micro-batches over 1,000,000 keys: ours <= 2.0x a "
        "plain join-and-write": ("2.75x", "missed by 1.38x"),
        "streaming, 1,000-row micro-batch: overhead <= 100 ms": ("300 ms", "missed by 200 ms"),
        "streaming, 100,000-row micro-batch: overhead <= 30% of plain": ("20%", "met"),
        "streaming, 1,000,000-row micro-batch: overhead <= 30% of plain": (
            "50%",
            "missed by 20 percentage points",
        ),
        # Pair by pair 2.0, 1.5 and 2.5: the median 2.0.
        "backfill (2,000,000 x 8): fit(20,000 batch values) <= 1.5x fit(100)": (
            "2.00x (CPU 1.20x)",
            "missed by 1.33x",
        ),
    }
    results = synthetic_results()
    results["backfill"]["values"]["20000"]["fit_s"] = [5.0, 5.0, 5.0]
    (verdict,) = targets.backfill_verdicts(results)
    assert (verdict.measured, verdict.verdict) == ("1.25x (CPU 1.20x)", "met")
    # A section prints its own table and its verdicts as it finishes.
    printed = "\n".join(report.section_markdown(results, "backfill"))
    assert "| 100 | 4.00 (4.00-4.00) | 1.00 (1.00-1.00) | 100 |" in printed
    assert "fit(100) | 1.25x (CPU 1.20x) | met |" in printed
    assert "| missed by 1.50x |" in "\n".join(report.section_markdown(results, "wide256"))
    printed = "\n".join(report.section_markdown(results, "core"))
    assert printed.startswith("## No Spark") and "| 600 MiB | missed by 1.20x |" in printed
    # A section that did not run gives no verdicts; one whose worker failed, "not measured".
    results["core"] = {"seed": {"error": "worker exited"}, "keyed_serving": {"error": "x"}}
    assert {v.verdict for v in targets.core_verdicts(results)} == {"not measured"}
    results["core"] = results["udt"] = results["keyed_stream"] = None
    assert targets.core_verdicts(results) + targets.udt_verdicts(results) == []
    assert targets.keyed_stream_verdicts(results) == []
    # Nothing streamed: no streaming verdicts; streamed but a size missing: not measured.
    results["streaming"] = []
    assert targets.stream_verdicts(results) == []
    results["streaming"] = synthetic_results()["streaming"][:1]
    assert {v.verdict for v in targets.stream_verdicts(results)} == {"not measured"}


def test_the_plan_fits_make_bench() -> None:
    args = bench_run.parse_args([])
    assert args.mode == "bench" and args.datasets.split(",") == ["wide16", "wide256", "vec64"]
    sizes = bench_run.datasets_for("bench")
    assert (sizes["wide16"].rows, sizes["wide16"].features) == (5_000_000, 16)
    assert (sizes["wide256"].rows, sizes["wide256"].features) == (100_000, 256)
    assert (sizes["vec64"].rows, sizes["vec64"].vector) == (400_000, True)
    assert bench_run.datasets_for("full")["wide256"].rows == 500_000
    # Every target's inputs run by default; --full runs every case.
    for name in ("wide16", "wide256", "vec64"):
        assert {"mllib", "mxnorm-auto"} <= set(bench_run.cases_for("bench", name))
    assert "sql" in bench_run.cases_for("bench", "wide16")
    assert bench_run.cases_for("full", "vec64") == bench_run.ALL_CASES
    assert bench_run.cases_for("bench", "vec64", "sql,numpy") == ["sql", "numpy"]
    assert bench_run.parse_args(["--quick"]).mode == "quick"
    with pytest.raises(SystemExit):
        bench_run.parse_args(["--quick", "--full"])


@pytest.mark.spark
def test_backfill_pair_fits_every_input(spark: Any, tmp_path: Path) -> None:
    paths = {str(b): str(backfill_scaling.ensure_data(160, b, tmp_path)) for b in (4, 40)}
    seen: list[int] = []
    r = backfill_scaling.run_pair(
        spark, paths, reps=1, progress=lambda _: seen.append(1), warmup=False
    )
    assert len(seen) == 2  # after every fit: a stopped run keeps what it measured
    for b in (4, 40):
        v = r["values"][str(b)]
        assert len(v["fit_s"]) == len(v["fit_cpu_s"]) == 1
        assert v["batches"] == b
