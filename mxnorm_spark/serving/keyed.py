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
import operator
from collections.abc import Mapping, Sequence
from itertools import chain
from operator import itemgetter
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
        n, k = len(keys), gm.shape[0]
        use = np.asarray(count) >= max(self.min_key_rows, 1)
        # The fallback is decided per feature once (the export holds each key's final
        # state), into one preallocated table each; row n (-1, a key not found) is the
        # global state.
        self._mean = np.empty((n + 1, k))
        self._scale = np.empty((n + 1, k))
        for table, own, fallback in ((self._mean, mean, gm), (self._scale, scale, gs)):
            table[:] = fallback
            if n:
                np.copyto(table[:n], own, where=use)
            table.setflags(write=False)
        self._index = _key_index(keys, len(self.key_cols))
        self._single = len(self.key_cols) == 1

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
        if self._single:
            return self._index.get(_key_part(key[0]), -1)
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
        i = self._lookup(key)
        items = zip(
            self.features,
            self.outputs,
            self._mean[i].tolist(),
            self._scale[i].tolist(),
            strict=True,
        )
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
        get, part = self._index.get, _key_part
        if self._single:
            found = [get(part(v), -1) for v in key_lists[0]]
        else:
            found = [get(tuple(part(v) for v in k), -1) for k in zip(*key_lists, strict=True)]
        return np.array(found, dtype=np.int64)

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


_TABLES = ("mean", "scale", "count")


def _grouped(
    table: Any, key_col: str, k: int, where: str
) -> tuple[list[tuple[Any, ...]], dict[str, np.ndarray]]:
    """One key column: each row goes straight to its (key, feature) cell, keys numbered in
    order of first appearance (a hash pass, no sort of the keys x features rows)."""
    import pyarrow.compute as pc

    enc = pc.dictionary_encode(table.column(key_col).combine_chunks(), null_encoding="encode")
    n = len(enc.dictionary)
    if n * k != table.num_rows:
        raise CorruptStateError(f"{where} does not hold {k} features for every key")
    feature = table.column("feature_index").to_numpy().astype(np.int64)
    if feature.min(initial=0) < 0 or feature.max(initial=0) >= k:
        raise CorruptStateError(f"{where} has a feature_index outside 0..{k - 1}")
    cell = enc.indices.to_numpy().astype(np.int64) * k + feature
    if np.array_equal(cell, np.arange(n * k)):
        # The export's own layout (each key's features in order, key after key): the
        # rows already are the tables.
        tables = {
            name: np.asarray(table.column(name).to_numpy(), dtype=np.float64).reshape(n, k)
            for name in _TABLES
        }
        return [(v,) for v in enc.dictionary.to_pylist()], tables
    seen = np.zeros(n * k, dtype=bool)
    seen[cell] = True
    if not seen.all():  # n * k rows fill n * k cells only if none is written twice
        raise CorruptStateError(f"{where} does not hold {k} features for every key")
    tables = {}
    for name in _TABLES:
        out = np.empty(n * k)
        out[cell] = np.asarray(table.column(name).to_numpy(), dtype=np.float64)
        tables[name] = out.reshape(n, k)
    return [(v,) for v in enc.dictionary.to_pylist()], tables


def _sorted(
    table: Any, key_cols: list[str], k: int
) -> tuple[list[tuple[Any, ...]], dict[str, np.ndarray]]:
    """Several key columns: the rows sorted by the key, then the feature."""
    table = table.sort_by([(c, "ascending") for c in [*key_cols, "feature_index"]])
    tables = {
        name: np.asarray(table.column(name).to_numpy(), dtype=np.float64).reshape(-1, k)
        for name in _TABLES
    }
    firsts = table.take(np.arange(0, table.num_rows, k)) if k > 1 else table
    keys = list(zip(*(firsts.column(c).to_pylist() for c in key_cols), strict=True))
    return keys, tables


def _key_index(keys: Sequence[tuple[Any, ...]], width: int) -> dict[Any, int]:
    """Key -> row of the constant tables; a one-column key is its value, not a 1-tuple
    (no tuple per key to keep, and no tuple to build per lookup)."""
    values: list[Any] = list(map(itemgetter(0), keys)) if width == 1 else list(map(tuple, keys))
    # NaN keys need their stand-in (NaN equals nothing, itself included); most key sets
    # hold none. Checked value by value (a tuple equals itself whatever it holds), with
    # map and all, in C.
    flat = (lambda: values) if width == 1 else (lambda: chain.from_iterable(values))
    if not all(map(operator.eq, flat(), flat())):
        if width == 1:
            values = [_key_part(v) for v in values]
        else:
            values = [tuple(_key_part(v) for v in k) for k in values]
    return dict(zip(values, range(len(values)), strict=True))


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
    k = state.n_features
    table = pq.read_table(keys_path, columns=[*key_cols, "feature_index", *_TABLES])
    if table.num_rows % k:
        raise CorruptStateError(f"{keys_path} does not hold {k} features for every key")
    if len(key_cols) == 1:
        keys, tables = _grouped(table, key_cols[0], k, keys_path)
    else:
        keys, tables = _sorted(table, key_cols, k)
    return KeyedNormalizer(
        state,
        key_cols,
        keys,
        mean=tables["mean"],
        scale=tables["scale"],
        count=tables["count"],
        min_key_rows=int(meta["min_key_rows"]),
        output_cols=output_cols or meta.get("output_cols"),
        handle_invalid=handle_invalid or meta.get("handle_invalid", "keep"),
        source=where,
    )
