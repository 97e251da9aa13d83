"""Benchmark inputs, generated once as Parquet under ``bench/data/`` (gitignored).

Three shapes, each a directory of equally sized Parquet files so Spark reads them as one
partition per file (local[2] then runs several tasks per core, as a real job would):

- ``wide16``:  5M rows x 16 double columns  (the shape of the performance targets)
- ``wide256``: 500k rows x 256 double columns
- ``vec64``:   1M rows, one ``array<double>`` column of dimension 64

Columns have distinct means and spreads (``mean = 10 * j``, ``sd = 1 + j / 4``), so a
normalizer that mixes up features or uses the wrong variance shows in the smoke test.
Data are generated from a fixed seed: the same files on every machine.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DATA_DIR = Path(__file__).resolve().parent / "data"
# Bumped whenever the generator changes, so stale inputs are regenerated, not reused.
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class Dataset:
    """One benchmark input: ``rows`` x ``features`` doubles as scalar columns or one array."""

    name: str
    rows: int
    features: int
    vector: bool  # True: one array<double> column "v"; False: scalar columns c00, c01, ...
    files: int
    # With ``vector``: "v" is a pyspark.ml vector (VectorUDT), written by Spark from the
    # array<double> files of the same shape (bench/shapes.py); pyarrow cannot write the UDT.
    udt: bool = False

    @property
    def columns(self) -> list[str]:
        return ["v"] if self.vector else [f"c{j:03d}" for j in range(self.features)]

    @property
    def values(self) -> int:
        return self.rows * self.features


FULL = {
    "wide16": Dataset("wide16", 5_000_000, 16, vector=False, files=8),
    "wide256": Dataset("wide256", 500_000, 256, vector=False, files=12),
    "vec64": Dataset("vec64", 1_000_000, 64, vector=True, files=8),
}

# --quick: the same shapes, small enough for development and the smoke test.
QUICK = {
    "wide16": Dataset("wide16", 200_000, 16, vector=False, files=4),
    "wide256": Dataset("wide256", 20_000, 256, vector=False, files=4),
    "vec64": Dataset("vec64", 40_000, 64, vector=True, files=4),
}


# bench/shapes.py: vector, array and wide inputs against MLlib.
SHAPES = {
    "arr64": Dataset("arr64", 600_000, 64, vector=True, files=8),
    "vec64": Dataset("vec64", 600_000, 64, vector=True, files=8, udt=True),
    "arr1000": Dataset("arr1000", 40_000, 1000, vector=True, files=8),
    "vec1000": Dataset("vec1000", 40_000, 1000, vector=True, files=8, udt=True),
    "wide256": Dataset("wide256", 200_000, 256, vector=False, files=8),
    "wide16": Dataset("wide16", 5_000_000, 16, vector=False, files=8),
}
SHAPES_QUICK = {
    "arr64": Dataset("arr64", 60_000, 64, vector=True, files=4),
    "vec64": Dataset("vec64", 60_000, 64, vector=True, files=4, udt=True),
    "arr1000": Dataset("arr1000", 4_000, 1000, vector=True, files=4),
    "vec1000": Dataset("vec1000", 4_000, 1000, vector=True, files=4, udt=True),
    "wide256": Dataset("wide256", 20_000, 256, vector=False, files=4),
    "wide16": Dataset("wide16", 500_000, 16, vector=False, files=4),
}


def feature_params(features: int) -> tuple[np.ndarray, np.ndarray]:
    j = np.arange(features, dtype=np.float64)
    return 10.0 * j, 1.0 + j / 4.0


def _file_table(ds: Dataset, index: int, rows: int) -> pa.Table:
    rng = np.random.default_rng([20240607, ds.features, ds.rows, index])
    mean, sd = feature_params(ds.features)
    # rows x features, C order: one row's features are adjacent, which is exactly the
    # flat layout of an Arrow list<double> column.
    x = rng.standard_normal((rows, ds.features)) * sd + mean
    if ds.vector:
        offsets = pa.array(np.arange(0, rows * ds.features + 1, ds.features, dtype=np.int32))
        arr = pa.ListArray.from_arrays(offsets, pa.array(x.reshape(-1)))
        return pa.table({"v": arr})
    return pa.table(
        {name: pa.array(np.ascontiguousarray(x[:, j])) for j, name in enumerate(ds.columns)}
    )


def dataset_dir(ds: Dataset, root: Path = DATA_DIR) -> Path:
    return root / f"{ds.name}-{ds.rows}{'-udt' if ds.udt else ''}"


def ensure_dataset(ds: Dataset, root: Path = DATA_DIR) -> Path:
    """Write ``ds`` under ``root`` unless an identical, complete copy is already there."""
    path = dataset_dir(ds, root)
    marker = path / "_bench_dataset.json"
    spec = {**asdict(ds), "generator": GENERATOR_VERSION}
    if not ds.udt:  # the marker of inputs written before the field existed stays valid
        del spec["udt"]
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return path
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    base, extra = divmod(ds.rows, ds.files)
    for i in range(ds.files):
        rows = base + (1 if i < extra else 0)
        # One row group per file: Spark then plans exactly one task per file.
        pq.write_table(
            _file_table(ds, i, rows), path / f"part-{i:03d}.parquet", row_group_size=rows
        )
    # Written last: a run interrupted mid-generation leaves no marker and is redone.
    marker.write_text(json.dumps(spec))
    return path


def parquet_files(path: Path) -> list[Path]:
    return sorted(path.glob("part-*.parquet"))
