"""The fitted states written in the project's formats, which :func:`mxnorm_spark.serving.load`,
the ``mxnorm-spark`` command and the Spark side read:

* ``WriteState``: one state file (:func:`~mxnorm_spark.store.write_state`);
* ``WriteKeyedExport``: per-key states as the serving export of ``KeyedModel.export``
  (``keys.parquet``, ``global.json``, then the marker ``keyed.json``), which
  ``serving.load`` turns into a :class:`~mxnorm_spark.serving.KeyedNormalizer`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.transforms import combiners

from mxnorm_spark.beam.fit import BatchStates
from mxnorm_spark.beam.rows import check_names
from mxnorm_spark.core.choices import HANDLE_INVALID, KEYED_EXPORT_TYPE, check_choice
from mxnorm_spark.core.errors import InvalidParameterError
from mxnorm_spark.core.state import MXNormState, scale_of
from mxnorm_spark.store import LocalFileSystem, filesystem, local_path, write_state

__all__ = ["WriteKeyedExport", "WriteState"]


def _write(fitted: MXNormState | BatchStates, path: str) -> str:
    state = fitted.final if isinstance(fitted, BatchStates) else fitted
    if not isinstance(state, MXNormState):
        raise InvalidParameterError(
            f"WriteState writes one MXNormState (or a FitHistory's final one), got a "
            f"{type(fitted).__name__}; write per-key states one file per key"
        )
    return write_state(state, path)


class WriteState(beam.PTransform):  # type: ignore[misc]
    """Writes the one state of a PCollection to ``path`` (local or ``s3://``, ``gs://``,
    ``abfs://``) atomically, and yields where it went."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = str(path)

    def expand(self, states: beam.pvalue.PCollection) -> beam.pvalue.PCollection:
        return states | "WriteStateFile" >> beam.Map(_write, self.path)


# One key's row of the export, made on the workers: key values, then mean, var, scale and
# count per feature (so only small tuples travel to the one writer).
KeyRow = tuple[tuple[Any, ...], list[float], list[float], list[float], list[float]]


def _key_row(pair: tuple[tuple[Any, ...], MXNormState]) -> KeyRow:
    key, state = pair
    scale = np.asarray(scale_of(state.var, state.options), dtype=np.float64)
    return (
        tuple(key),
        state.mean.tolist(),
        state.var.tolist(),
        scale.tolist(),
        state.count.tolist(),
    )


def _write_export(
    key_rows: Iterable[KeyRow],
    fitted: MXNormState | BatchStates,
    path: str,
    key_cols: tuple[str, ...],
    meta: dict[str, Any],
) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    glob = fitted.final if isinstance(fitted, BatchStates) else fitted
    rows = sorted(key_rows, key=lambda r: repr(r[0]))
    k = glob.n_features
    for key, *_ in rows:
        if len(key) != len(key_cols):
            raise InvalidParameterError(
                f"key {key!r} has {len(key)} values for the {len(key_cols)} key columns "
                f"{list(key_cols)}"
            )
    columns: dict[str, Any] = {
        c: [r[0][i] for r in rows for _ in range(k)] for i, c in enumerate(key_cols)
    }
    columns["feature"] = pa.array(list(glob.features) * len(rows), pa.string())
    columns["feature_index"] = pa.array(list(range(k)) * len(rows), pa.int32())
    for j, name in enumerate(("mean", "var", "scale", "count"), start=1):
        columns[name] = pa.array([v for r in rows for v in r[j]], pa.float64())
    columns["last_batch"] = pa.nulls(len(rows) * k, pa.string())
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), sink)
    fs = filesystem(path)
    root = local_path(path) if isinstance(fs, LocalFileSystem) else path
    fs.mkdirs(root)
    fs.write_atomic(fs.join(root, "keys.parquet"), sink.getvalue().to_pybytes())
    write_state(glob, fs.join(root, "global.json"))
    doc = {
        **meta,
        "type": KEYED_EXPORT_TYPE,
        "schema_version": 1,
        "features": list(glob.features),
        "options": glob.options.to_dict(),
    }
    # The marker last: a reader sees a complete export or none.
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    fs.write_atomic(fs.join(root, "keyed.json"), text.encode("utf-8"))
    return fs.qualified(root)


class WriteKeyedExport(beam.PTransform):  # type: ignore[misc]
    """Writes ``(key tuple, MXNormState)`` pairs and their global fallback state (a
    PCollection of one state) as a serving export directory, and yields where it went.

    The pairs are reduced to small rows on the workers and written by one worker, as one
    ``keys.parquet`` (one row per key and feature), so the keys must fit in its memory.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        global_state: beam.pvalue.PCollection,
        *,
        key_cols: Sequence[str],
        min_key_rows: int = 1,
        output_cols: Sequence[str] | None = None,
        handle_invalid: str = "keep",
    ) -> None:
        super().__init__()
        self.path = str(path)
        self.global_state = global_state
        names = check_names(key_cols, "key_cols")
        assert names is not None
        self.key_cols = names
        if isinstance(min_key_rows, bool) or not isinstance(min_key_rows, int) or min_key_rows < 0:
            raise InvalidParameterError(f"min_key_rows must be an int >= 0, got {min_key_rows!r}")
        outs = check_names(output_cols, "output_cols", allow_none=True)
        self.meta = {
            "key_cols": list(names),
            "batch_col": None,
            "min_key_rows": min_key_rows,
            "apply_at": "after",
            "handle_invalid": check_choice("handle_invalid", handle_invalid, HANDLE_INVALID),
            "output_cols": None if outs is None else list(outs),
        }

    def expand(self, pairs: beam.pvalue.PCollection) -> beam.pvalue.PCollection:
        return (
            pairs
            | "KeyRows" >> beam.Map(_key_row)
            | "AllKeys" >> combiners.ToList()
            | "WriteExport"
            >> beam.Map(
                _write_export,
                beam.pvalue.AsSingleton(self.global_state),
                self.path,
                self.key_cols,
                self.meta,
            )
        )
