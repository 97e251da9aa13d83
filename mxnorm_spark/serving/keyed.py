"""Per-key normalization with no Spark: the export of :meth:`KeyedModel.export`.

An export directory holds ``keys.parquet`` (one row per key and feature: the key columns,
``feature_index``, ``mean``, ``var``, ``scale``, ``count``, ``last_batch``), ``global.json``
(the final global state) and ``keyed.json`` (key columns, features, ``min_key_rows``,
output columns, ``handle_invalid``). :class:`KeyedNormalizer` applies the rules of the
Spark side to each row, feature by feature: the key's constants when the key has at
least ``max(min_key_rows, 1)`` valid values of the feature, else the global state's.
Rows with a null key value, and keys not in the export, use the global state. The
arithmetic is ``(x - mean) / scale`` in IEEE float64 with the exported constants, so the
output equals Spark's ``KeyedModel.transform`` of rows with no fitted batch bit for bit.

Reading the export needs pyarrow (the ``[arrow]`` extra).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mxnorm_spark.core.choices import HANDLE_INVALID, check_choice
from mxnorm_spark.core.errors import (
    CorruptStateError,
    InvalidParameterError,
    MissingColumnError,
)
from mxnorm_spark.core.state import MXNormState
from mxnorm_spark.serving.values import (
    arrow_scalar,
    normalize_row,
    pandas_result,
    pandas_scalar,
    rows_to_keep,
    set_columns,
)
from mxnorm_spark.store import FileSystem, read_state

__all__ = ["EXPORT_MARKER", "KeyedNormalizer", "is_keyed_export", "load_keyed"]

EXPORT_MARKER = "keyed.json"
EXPORT_TYPE = "mxnorm_spark.KeyedExport"
_FLOAT64_MAX = float(np.finfo(np.float64).max)
# NaN equals nothing, not even itself; Spark joins NaN keys to NaN keys.
_NAN_KEY = ("__mx_nan__",)


def _key_part(v: Any) -> Any:
    return _NAN_KEY if isinstance(v, float) and math.isnan(v) else v


class KeyedNormalizer:
    """Normalizes rows, pandas DataFrames and Arrow tables with one state per key.

    ``keys`` lists the key tuples; ``mean``, ``scale`` and ``count`` are keys x features.
    Build it with :func:`load_keyed` (or :func:`mxnorm_spark.serving.load`).
    """

    def __init__(
        self,
        global_state: MXNormState,
        key_cols: Sequence[str],
        keys: Sequence[tuple[Any, ...]],
        *,
        mean: np.ndarray,
        scale: np.ndarray,
        count: np.ndarray,
        min_key_rows: int = 1,
        output_cols: Sequence[str] | None = None,
        handle_invalid: str = "keep",
        source: str = "export",
    ) -> None:
        self.global_state = global_state
        self.key_cols = tuple(key_cols)
        self.features = global_state.features
        self.handle_invalid = check_choice("handle_invalid", handle_invalid, HANDLE_INVALID)
        self.outputs = tuple(self.features if output_cols is None else output_cols)
        if len(self.outputs) != len(self.features):
            raise InvalidParameterError(
                f"output_cols must list one name per feature {list(self.features)}"
            )
        self.source = source
        self.min_key_rows = int(min_key_rows)
        gm, gs = global_state.normalization_constants()
        use = np.asarray(count) >= max(self.min_key_rows, 1)
        # The fallback is decided per feature once: the export holds each key's final state.
        eff_m = np.where(use, mean, gm) if len(keys) else np.empty((0, gm.shape[0]))
        eff_s = np.where(use, scale, gs) if len(keys) else np.empty((0, gs.shape[0]))
        # Row -1 (a key not found) is the global state.
        self._mean = np.vstack([eff_m, gm[None, :]])
        self._scale = np.vstack([eff_s, gs[None, :]])
        self._index = {tuple(_key_part(v) for v in k): i for i, k in enumerate(keys)}
        self._row_constants = [
            list(zip(m, s, strict=True))
            for m, s in zip(self._mean.tolist(), self._scale.tolist(), strict=True)
        ]

    def __repr__(self) -> str:
        return (
            f"KeyedNormalizer({self.source!r}, keys={len(self._index)}, "
            f"key_cols={list(self.key_cols)}, features={list(self.features)})"
        )

    @property
    def n_keys(self) -> int:
        return len(self._index)

    def constants(self, key: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, scale)`` per feature that a row of this key is normalized with."""
        i = self._lookup(tuple(key))
        return self._mean[i].copy(), self._scale[i].copy()

    def _lookup(self, key: tuple[Any, ...]) -> int:
        return self._index.get(tuple(_key_part(v) for v in key), -1)

    # ---- one row ------------------------------------------------------------------------
    def transform_row(self, row: Mapping[str, Any]) -> dict[str, Any] | None:
        """A new dict: ``row`` with the outputs; None when ``skip`` drops it."""
        try:
            key = tuple(row[c] for c in self.key_cols)
        except KeyError:
            raise MissingColumnError(
                [c for c in self.key_cols if c not in row], list(row)
            ) from None
        constants = self._row_constants[self._lookup(key)]
        items = zip(self.features, self.outputs, *zip(*constants, strict=True), strict=True)
        return normalize_row(row, items, self.handle_invalid, self.features)

    # ---- frames -------------------------------------------------------------------------
    def transform(self, data: Any) -> Any:
        """``data`` (a pandas DataFrame or a pyarrow Table) with the output columns."""
        module = type(data).__module__.split(".")[0]
        if module == "pandas":
            return self._transform_pandas(data)
        if module == "pyarrow":
            return self._transform_arrow(data)
        raise InvalidParameterError(
            f"transform takes a pandas DataFrame or a pyarrow Table, got {type(data).__name__}"
        )

    def _row_index(self, key_lists: list[list[Any]]) -> np.ndarray:
        index, part = self._index, _key_part
        return np.array(
            [index.get(tuple(part(v) for v in k), -1) for k in zip(*key_lists, strict=True)],
            dtype=np.int64,
        )

    def _check(self, names: Sequence[str]) -> None:
        missing = [c for c in (*self.key_cols, *self.features) if c not in names]
        if missing:
            raise MissingColumnError(missing, list(names))

    def _keep(self, columns: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray | None:
        """The rows ``skip`` keeps (None: all); ``error`` raises on an invalid value."""
        named = [(c, v, n) for c, (v, n) in zip(self.features, columns, strict=True)]
        return rows_to_keep(named, self.handle_invalid)

    def _transform_arrow(self, table: Any) -> Any:
        import pyarrow as pa

        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        self._check(table.column_names)
        columns = [arrow_scalar(table.column(c), c) for c in self.features]
        keep = self._keep(columns)
        if keep is not None:
            table = table.filter(pa.array(keep))
            columns = [(v[keep], n[keep]) for v, n in columns]
        idx = self._row_index([table.column(c).to_pylist() for c in self.key_cols])
        m, s = self._mean[idx], self._scale[idx]
        results = [
            pa.array((v - m[:, j]) / s[:, j], type=pa.float64(), mask=n if n.any() else None)
            for j, (v, n) in enumerate(columns)
        ]
        return set_columns(table, list(self.outputs), results)

    def _transform_pandas(self, df: Any) -> Any:
        self._check(list(df.columns))
        columns = [pandas_scalar(df[c], c) for c in self.features]
        keep = self._keep([(v, n) for v, n, _ in columns])
        if keep is not None:
            df = df[keep]
            columns = [(v[keep], n[keep], nullable) for v, n, nullable in columns]
        idx = self._row_index([df[c].tolist() for c in self.key_cols])
        m, s = self._mean[idx], self._scale[idx]
        out = df.copy()
        for j, ((v, n, nullable), o) in enumerate(zip(columns, self.outputs, strict=True)):
            out[o] = pandas_result((v - m[:, j]) / s[:, j], n, nullable)
        return out


# ---- loading -----------------------------------------------------------------------------
def is_keyed_export(fs: FileSystem, where: str) -> bool:
    return fs.is_dir(where) and EXPORT_MARKER in fs.list_names(where)


def load_keyed(
    fs: FileSystem,
    where: str,
    *,
    output_cols: Sequence[str] | None = None,
    handle_invalid: str | None = None,
) -> KeyedNormalizer:
    """The :class:`KeyedNormalizer` of an export directory (``fs`` reaches ``where``)."""
    import pyarrow.parquet as pq

    marker = fs.join(where, EXPORT_MARKER)
    try:
        meta = json.loads(fs.read_bytes(marker) or b"null")
    except ValueError as exc:
        raise CorruptStateError(f"{marker} is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("type") != EXPORT_TYPE:
        raise CorruptStateError(f"{marker} is not an MXNorm keyed export marker")
    state = read_state(fs.join(where, "global.json"))
    keys_path = fs.join(where, "keys.parquet")
    key_cols = list(meta["key_cols"])
    table = pq.read_table(keys_path)
    order = [(c, "ascending") for c in [*key_cols, "feature_index"]]
    table = table.sort_by(order)
    k = state.n_features
    if table.num_rows % k:
        raise CorruptStateError(f"{keys_path} does not hold {k} features for every key")

    def matrix(name: str) -> np.ndarray:
        return np.asarray(table.column(name).to_numpy(), dtype=np.float64).reshape(-1, k)

    keys = list(zip(*(table.column(c).to_pylist()[::k] for c in key_cols), strict=True))
    return KeyedNormalizer(
        state,
        key_cols,
        keys,
        mean=matrix("mean"),
        scale=matrix("scale"),
        count=matrix("count"),
        min_key_rows=int(meta["min_key_rows"]),
        output_cols=output_cols or meta.get("output_cols"),
        handle_invalid=handle_invalid or meta.get("handle_invalid", "keep"),
        source=where,
    )
