"""Input values as float64 arrays and null masks, and results back in the input's kind:
Python rows, Arrow arrays and pandas columns, cast to float64 as Spark casts them."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np

from mxnorm_spark.core.errors import InvalidValueError, MissingColumnError, NonNumericError

__all__ = [
    "Vectors",
    "arrow_scalar",
    "arrow_vectors",
    "cell_like",
    "cell_values",
    "invalid_kind",
    "invalid_message",
    "normalize_row",
    "pandas_result",
    "pandas_scalar",
    "pandas_vectors",
    "row_float",
    "rows_to_keep",
    "set_columns",
]


_FLOAT64_MAX = float(np.finfo(np.float64).max)


def invalid_message(column: str, kind: str) -> str:
    # The text the Spark engines raise (engines.invalid_value_message), without its prefix.
    return (
        f"column {column!r} holds {kind} value and handle_invalid='error'; "
        "clean the data, or use handle_invalid='keep' (pass it through) or 'skip' (drop the row)"
    )


def normalize_row(
    row: Mapping[str, Any],
    items: Any,
    handle_invalid: str,
    cols: Any,
) -> dict[str, Any] | None:
    """``row`` with ``(x - mean) / scale`` for each ``(col, out_col, mean, scale)`` of
    ``items``, per ``handle_invalid`` (None when ``skip`` drops the row); ``cols`` names
    the columns a missing one is reported among."""
    out = dict(row)
    skip, error = handle_invalid == "skip", handle_invalid == "error"
    for col, out_col, m, s in items:
        try:
            v = row[col]
        except KeyError:
            raise MissingColumnError([c for c in cols if c not in row], list(row)) from None
        if type(v) is not float:  # the common case skips the conversion
            if v is None:
                if skip:
                    return None
                if error:
                    raise InvalidValueError(invalid_message(col, "a null"))
                out[out_col] = None
                continue
            v = row_float(v, col)
        if (error or skip) and not -_FLOAT64_MAX <= v <= _FLOAT64_MAX:
            if skip:
                return None
            kind = "a NaN" if math.isnan(v) else "an infinite"
            raise InvalidValueError(invalid_message(col, kind))
        out[out_col] = (v - m) / s
    return out


def invalid_kind(values: np.ndarray, nulls: np.ndarray) -> str:
    """What a column with an invalid value holds, for the message: a null first."""
    if nulls.any():
        return "a null"
    return "a NaN" if np.isnan(values).any() else "an infinite"


def rows_to_keep(
    columns: Sequence[tuple[str, np.ndarray, np.ndarray]], handle_invalid: str
) -> np.ndarray | None:
    """Scalar columns ``(name, float64 values, null mask)``: the rows ``skip`` keeps (None:
    all); ``error`` raises on the first column with a null, NaN or infinite value."""
    if handle_invalid == "keep":
        return None
    keep = None
    for col, values, nulls in columns:
        finite = np.isfinite(values) & ~nulls
        if finite.all():
            continue
        if handle_invalid == "error":
            raise InvalidValueError(invalid_message(col, invalid_kind(values, nulls)))
        keep = finite if keep is None else keep & finite
    return keep


# ---- values: Python rows -----------------------------------------------------------------
def row_float(v: Any, col: str) -> float:
    """A scalar as Spark casts it to double (bool and text are not numeric)."""
    if isinstance(v, (bool, np.bool_, str, bytes)):
        raise NonNumericError(
            f"column {col!r} holds {v!r} ({type(v).__name__}); MXNorm reads numbers only"
        )
    try:
        # int -> float rounds to nearest, Decimal -> float is correctly rounded: both as
        # Spark's CAST(... AS DOUBLE).
        return float(v)
    except (TypeError, ValueError):
        raise NonNumericError(
            f"column {col!r} holds {v!r} ({type(v).__name__}); MXNorm reads numbers only"
        ) from None


def cell_values(cell: Any, col: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A vector/array cell as float64 values and a null mask (None: no null element)."""
    if isinstance(cell, np.ndarray) and cell.dtype.kind in "fiu":
        return cell.astype(np.float64, copy=False).reshape(-1), None
    if isinstance(cell, Mapping):  # Spark's vector struct: type, size, indices, values
        return struct_values(cell), None
    if hasattr(cell, "toArray"):  # a pyspark.ml.linalg vector
        return np.asarray(cell.toArray(), dtype=np.float64), None
    items = list(cell)
    nulls = [x is None for x in items]
    if any(nulls):
        filled = [0.0 if x is None else row_float(x, col) for x in items]
        return np.array(filled, dtype=np.float64), np.array(nulls)
    if any(isinstance(x, (bool, str, bytes)) for x in items):
        raise NonNumericError(f"column {col!r} holds {cell!r}; MXNorm reads numbers only")
    if any(isinstance(x, Decimal) for x in items):
        return np.array([float(x) for x in items], dtype=np.float64), None
    return np.array(items, dtype=np.float64), None


def struct_values(cell: Mapping[str, Any]) -> np.ndarray:
    values = np.asarray(cell["values"], dtype=np.float64)
    if cell.get("type") == 0:  # sparse
        dense = np.zeros(int(cell["size"]))
        dense[np.asarray(cell["indices"], dtype=np.int64)] = values
        return dense
    return values


def cell_like(cell: Any, z: np.ndarray, nulls: np.ndarray | None) -> Any:
    """The normalized values in the kind of the input cell (a vector stays a dense vector)."""
    if isinstance(cell, np.ndarray):
        return z
    if isinstance(cell, Mapping):
        return {"type": 1, "size": None, "indices": None, "values": z.tolist()}
    if hasattr(cell, "toArray"):
        # The cell's own module is loaded (it made the cell): no import of pyspark here.
        return sys.modules[type(cell).__module__].DenseVector(z)
    out = z.tolist()
    if nulls is not None:
        out = [None if n else v for v, n in zip(out, nulls.tolist(), strict=True)]
    return out


# ---- values: Arrow -----------------------------------------------------------------------
def arrow_scalar(column: Any, col: str) -> tuple[np.ndarray, np.ndarray]:
    """An Arrow numeric column as float64 values (0 where null) and its null mask."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    t = arr.type
    nulls = (
        np.zeros(len(arr), dtype=bool)
        if arr.null_count == 0
        else np.asarray(arr.is_null().to_numpy(zero_copy_only=False))
    )
    if pa.types.is_decimal(t):
        # Correctly rounded, as Spark's decimal -> double (Arrow's cast may be 1 ulp off).
        values = np.array([0.0 if v is None else float(v) for v in arr.to_pylist()])
    elif pa.types.is_integer(t) or pa.types.is_floating(t):
        filled = arr if arr.null_count == 0 else pc.fill_null(arr, pa.scalar(0, t))
        # numpy's int64 -> float64 rounds to nearest as Java's does; float32 widens exactly.
        values = np.asarray(filled.to_numpy(zero_copy_only=False)).astype(np.float64, copy=False)
    else:
        raise NonNumericError(
            f"column {col!r} has Arrow type {t}; MXNorm reads integer, floating point and "
            "decimal columns"
        )
    return values, nulls


@dataclass
class Vectors:
    """A vector/array column as a dense (rows x dim) float64 matrix and its masks.

    ``values`` has one row per input row (zeros for a null row), ``nulls`` marks null
    elements, ``row_nulls`` null rows and ``lengths`` each row's length (0 when null).
    ``kind`` is how the column was given and is kept on output.
    """

    values: np.ndarray
    nulls: np.ndarray
    row_nulls: np.ndarray
    lengths: np.ndarray
    kind: str
    cells: list[Any] | None = None
    # The Arrow struct type of a vector column, kept on output (Spark's non-null fields).
    struct_type: Any = None

    def take(self, keep: np.ndarray) -> Vectors:
        cells = (
            None if self.cells is None else [c for c, k in zip(self.cells, keep, strict=True) if k]
        )
        return Vectors(
            self.values[keep],
            self.nulls[keep],
            self.row_nulls[keep],
            self.lengths[keep],
            self.kind,
            cells,
            self.struct_type,
        )

    def to_arrow(self, z: np.ndarray) -> Any:
        import pyarrow as pa

        rows, dim = z.shape
        row_mask = pa.array(self.row_nulls) if self.row_nulls.any() else None
        flat = z.reshape(-1)
        mask = self.nulls.reshape(-1)
        items = pa.array(flat, type=pa.float64(), mask=mask if mask.any() else None)
        offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * dim)
        lists = pa.ListArray.from_arrays(offsets, items, mask=row_mask)
        if self.kind != "struct":
            return lists
        n = len(lists)
        fields = list(self.struct_type)
        types = {f.name: f.type for f in fields}
        children = {
            "type": pa.array(np.ones(n, dtype=np.int8), type=types["type"]),
            "size": pa.nulls(n, types["size"]),
            "indices": pa.nulls(n, types["indices"]),
            "values": lists.cast(types["values"]),
        }
        return pa.StructArray.from_arrays(
            [children[f.name] for f in fields], fields=fields, mask=row_mask
        )

    def to_cells(self, z: np.ndarray) -> list[Any]:
        assert self.cells is not None
        out: list[Any] = []
        for i, cell in enumerate(self.cells):
            if cell is None or self.row_nulls[i]:
                out.append(None)
            else:
                nulls = self.nulls[i] if self.nulls[i].any() else None
                out.append(cell_like(cell, z[i], nulls))
        return out


def arrow_vectors(column: Any, col: str) -> Vectors:
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    kind, struct_type = "list", None
    if pa.types.is_struct(arr.type) and arr.type.get_field_index("values") >= 0:
        if pc.any(pc.equal(arr.field("type"), 0)).as_py():
            return sparse_struct_vectors(arr, col)
        struct_type = arr.type
        kind, row_nulls = "struct", np.asarray(arr.is_null().to_numpy(zero_copy_only=False))
        arr = arr.field("values")
    elif not (
        pa.types.is_list(arr.type)
        or pa.types.is_large_list(arr.type)
        or pa.types.is_fixed_size_list(arr.type)
    ):
        raise NonNumericError(
            f"input_col {col!r} has Arrow type {arr.type}; expected a list of numbers or a "
            "Spark ML vector (struct of type, size, indices, values)"
        )
    else:
        row_nulls = np.asarray(arr.is_null().to_numpy(zero_copy_only=False))
    if row_nulls.shape[0] != len(arr):
        row_nulls = np.zeros(len(arr), dtype=bool)
    lengths = np.asarray(pc.fill_null(pc.list_value_length(arr), 0).to_numpy()).astype(np.int64)
    lengths[row_nulls] = 0
    flat_values, flat_nulls = arrow_scalar(arr.flatten(), col)
    vec = dense(flat_values, flat_nulls, row_nulls, lengths, kind)
    vec.struct_type = struct_type
    return vec


def sparse_struct_vectors(arr: Any, col: str) -> Vectors:
    cells = arr.to_pylist()
    row_nulls = np.array([c is None for c in cells])
    rows = [np.zeros(0) if c is None else struct_values(c) for c in cells]
    lengths = np.array([r.shape[0] for r in rows], dtype=np.int64)
    flat = np.concatenate(rows) if rows else np.zeros(0)
    vec = dense(flat, np.zeros(flat.shape[0], dtype=bool), row_nulls, lengths, "struct")
    vec.struct_type = arr.type
    return vec


def dense(
    flat: np.ndarray, flat_nulls: np.ndarray, row_nulls: np.ndarray, lengths: np.ndarray, kind: str
) -> Vectors:
    """Rows of ``lengths`` values from ``flat`` as a matrix (null rows as zero rows).

    A length that differs from the others is reported by the caller; the matrix then takes
    the most common length, padding nothing (its rows are never normalized).
    """
    valid_lengths = lengths[~row_nulls]
    dim = int(valid_lengths[0]) if valid_lengths.size else 0
    n = lengths.shape[0]
    if np.all(valid_lengths == dim):
        values = np.zeros((n, dim))
        nulls = np.zeros((n, dim), dtype=bool)
        if dim:
            values[~row_nulls] = flat.reshape(-1, dim)
            nulls[~row_nulls] = flat_nulls.reshape(-1, dim)
        return Vectors(values, nulls, row_nulls, lengths, kind)
    # Lengths differ: the caller raises FeatureMismatchError on them before any arithmetic.
    return Vectors(np.zeros((n, 0)), np.zeros((n, 0), dtype=bool), row_nulls, lengths, kind)


def set_columns(table: Any, names: list[str], arrays: list[Any]) -> Any:
    for name, array in zip(names, arrays, strict=True):
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, array) if i >= 0 else table.append_column(name, array)
    return table


# ---- values: pandas ----------------------------------------------------------------------
def pandas_scalar(series: Any, col: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """A pandas numeric column as float64 values (0 where null), the null mask, and whether
    the column is a nullable extension type (then the output is ``Float64`` too)."""
    import pandas as pd

    dtype = series.dtype
    n = len(series)
    if isinstance(dtype, np.dtype) and dtype.kind in "iuf":
        return series.to_numpy().astype(np.float64, copy=False), np.zeros(n, dtype=bool), False
    if isinstance(dtype, np.dtype) and dtype.kind == "O":
        cells = series.tolist()
        nulls = np.array([c is None or c is pd.NA for c in cells], dtype=bool)
        values = np.array(
            [0.0 if null else row_float(c, col) for c, null in zip(cells, nulls, strict=True)],
            dtype=np.float64,
        )
        return values, nulls, False
    if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
        nulls = np.asarray(series.isna().to_numpy(), dtype=bool)
        values = series.to_numpy(dtype=np.float64, na_value=0.0)
        return values, nulls, True
    raise NonNumericError(
        f"column {col!r} has dtype {dtype}; MXNorm reads integer, floating point and decimal "
        "columns"
    )


def pandas_result(z: np.ndarray, nulls: np.ndarray, nullable: bool) -> Any:
    """pandas represents a null double as NaN (as Spark's ``toPandas``), or as ``<NA>`` in a
    nullable ``Float64`` column when the input was nullable."""
    import pandas as pd

    if nullable:
        return pd.arrays.FloatingArray(z, nulls.copy())
    if nulls.any():
        z = z.copy()
        z[nulls] = np.nan
    return z


def pandas_vectors(series: Any, col: str) -> Vectors:
    import pandas as pd

    cells = series.tolist()
    row_nulls = np.array(
        [c is None or c is pd.NA or (isinstance(c, float) and math.isnan(c)) for c in cells],
        dtype=bool,
    )
    rows: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    for cell, null in zip(cells, row_nulls, strict=True):
        if null:
            rows.append(np.zeros(0))
            masks.append(np.zeros(0, dtype=bool))
            continue
        values, nulls = cell_values(cell, col)
        rows.append(values)
        masks.append(np.zeros(values.shape[0], dtype=bool) if nulls is None else nulls)
    lengths = np.array([r.shape[0] for r in rows], dtype=np.int64)
    flat = np.concatenate(rows) if rows else np.zeros(0)
    flat_nulls = np.concatenate(masks) if masks else np.zeros(0, dtype=bool)
    vec = dense(flat, flat_nulls, row_nulls, lengths, "cells")
    vec.cells = [None if null else c for c, null in zip(cells, row_nulls, strict=True)]
    return vec
