"""The :class:`Normalizer`: which columns go into which outputs, ``handle_invalid``, and
the arithmetic ``(x - mean) / scale`` on rows, pandas DataFrames and Arrow tables."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from mxnorm_spark.core.choices import HANDLE_INVALID, check_choice
from mxnorm_spark.core.errors import (
    FeatureMismatchError,
    InvalidParameterError,
    InvalidValueError,
    MissingColumnError,
)
from mxnorm_spark.core.state import MXNormState
from mxnorm_spark.serving.values import (
    Vectors,
    arrow_scalar,
    arrow_vectors,
    cell_like,
    cell_values,
    invalid_kind,
    invalid_message,
    normalize_row,
    pandas_result,
    pandas_scalar,
    pandas_vectors,
    rows_to_keep,
    set_columns,
)

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

__all__ = ["Normalizer"]

_FLOAT64_MAX = float(np.finfo(np.float64).max)
# Features of a vector/array column are named ``name[i]`` (see columns.vector_names).
_VECTOR_FEATURE = re.compile(r"^(.*)\[(\d+)\]$")


# ---- the plan: which columns, into which outputs -----------------------------------------
@dataclass(frozen=True)
class _ColumnMapping:
    """Which input columns a normalizer reads and the output columns it writes."""

    kind: Literal["scalar", "vector"]
    cols: tuple[str, ...]
    outputs: tuple[str, ...]


def _length_message(column: str, dim: int) -> str:
    return (
        f"column {column!r} holds a vector whose length is not {dim}, "
        f"the number of features of the MXNorm state"
    )


class Normalizer:
    """Normalizes rows, pandas DataFrames and Arrow tables with one MXNorm state.

    Build it with :func:`load`. ``mean`` and ``scale`` are the float64 constants every
    Spark engine uses; ``handle_invalid`` is ``keep``, ``error`` or ``skip``.
    """

    def __init__(
        self,
        state: MXNormState,
        *,
        input_cols: Sequence[str] | None = None,
        output_cols: Sequence[str] | None = None,
        input_col: str | None = None,
        output_col: str | None = None,
        handle_invalid: str = "keep",
        source: str = "state",
    ) -> None:
        if not isinstance(state, MXNormState):
            raise InvalidParameterError(f"state must be an MXNormState, got {type(state)}")
        if input_cols is not None and input_col is not None:
            raise InvalidParameterError(
                "give either input_cols (scalar columns) or input_col (one vector or array "
                "column), not both"
            )
        self.state = state
        self.source = source
        self.handle_invalid = check_choice("handle_invalid", handle_invalid, HANDLE_INVALID)
        mean, scale = state.normalization_constants()
        self.mean, self.scale = mean, scale
        self._scalar, self._vector = self._plans(input_cols, output_cols, input_col, output_col)
        # Python floats: a row is scored with float arithmetic, no numpy call per value.
        self._row_constants = tuple(zip(mean.tolist(), scale.tolist(), strict=True))
        if self._scalar is not None:
            self._row_items = tuple(
                zip(
                    self._scalar.cols,
                    self._scalar.outputs,
                    mean.tolist(),
                    scale.tolist(),
                    strict=True,
                )
            )

    def __repr__(self) -> str:
        return (
            f"Normalizer({self.source!r}, features={list(self.state.features)}, "
            f"handle_invalid={self.handle_invalid!r})"
        )

    @property
    def features(self) -> tuple[str, ...]:
        return self.state.features

    def _plans(
        self,
        input_cols: Sequence[str] | None,
        output_cols: Sequence[str] | None,
        input_col: str | None,
        output_col: str | None,
    ) -> tuple[_ColumnMapping | None, _ColumnMapping | None]:
        """The scalar and the vector reading of the inputs (either may be impossible)."""
        features = self.state.features
        if input_col is not None:
            if output_cols is not None:
                raise InvalidParameterError("output_cols goes with input_cols; use output_col")
            return None, _vector_plan(input_col, output_col)
        if input_cols is not None or output_col is None:
            cols = tuple(features if input_cols is None else input_cols)
            scalar: _ColumnMapping | None = _scalar_plan(cols, output_cols, len(features))
        else:
            scalar = None
        vector = None
        if input_cols is None and output_cols is None:
            base = _vector_base(features)
            if base is not None:
                vector = _vector_plan(base, output_col)
        if scalar is None and vector is None:
            raise InvalidParameterError(
                f"output_col goes with input_col; the state's features {list(features)} are "
                "scalar columns: give output_cols=[...]"
            )
        return scalar, vector

    def _plan_for(self, names: Collection[str]) -> _ColumnMapping:
        """The plan for a frame or row with these column names (``apply._default_input``)."""
        scalar, vector = self._scalar, self._vector
        if scalar is not None and (vector is None or all(c in names for c in scalar.cols)):
            missing = [c for c in scalar.cols if c not in names]
            if missing:
                raise MissingColumnError(missing, list(names))
            return scalar
        assert vector is not None
        if vector.cols[0] not in names:
            raise MissingColumnError([vector.cols[0]], list(names))
        return vector

    # ---- one row ------------------------------------------------------------------------
    def transform_row(self, row: Mapping[str, Any]) -> dict[str, Any] | None:
        """A new dict: ``row`` with the outputs added (or replaced in place).

        None when ``handle_invalid="skip"`` drops the row. The values equal
        :meth:`transform` (and Spark) bit for bit.

        >>> import numpy as np
        >>> from mxnorm_spark import Moments, MXNormState
        >>> s = MXNormState.create(["v[0]", "v[1]"]).update(
        ...     Moments.from_array(np.array([[0.0, 1.0], [2.0, 3.0]])))
        >>> Normalizer(s).transform_row({"v": [2.0, float("inf")]})
        {'v': [0.999999995, inf]}
        """
        plan = self._scalar
        if plan is None or (self._vector is not None and self._plan_for(row).kind == "vector"):
            return self._vector_row(row)
        return normalize_row(row, self._row_items, self.handle_invalid, plan.cols)

    def _vector_row(self, row: Mapping[str, Any]) -> dict[str, Any] | None:
        plan = self._plan_for(row.keys())
        col, output = plan.cols[0], plan.outputs[0]
        cell = row[col]
        out = dict(row)
        if cell is None:
            if self.handle_invalid == "skip":
                return None
            if self.handle_invalid == "error":
                raise InvalidValueError(invalid_message(col, "a null"))
            out[output] = None
            return out
        values, nulls = cell_values(cell, col)
        dim = len(self._row_constants)
        if values.shape[0] != dim:
            raise FeatureMismatchError(_length_message(col, dim))
        if self.handle_invalid != "keep":
            kind = _first_invalid(values, nulls)
            if kind is not None:
                if self.handle_invalid == "skip":
                    return None
                raise InvalidValueError(invalid_message(col, kind))
        z = (values - self.mean) / self.scale
        out[output] = cell_like(cell, z, nulls)
        return out

    # ---- frames -------------------------------------------------------------------------
    def transform(self, data: pd.DataFrame | pa.Table) -> pd.DataFrame | pa.Table:
        """``data`` with the output columns, as the Spark model's ``transform`` adds them.

        Takes a pandas DataFrame or a pyarrow Table (or RecordBatch) and returns the same
        kind. Outputs that exist are replaced in place, new ones are appended in order.
        """
        module = type(data).__module__.split(".")[0]
        if module == "pandas":
            return self._transform_pandas(data)
        if module == "pyarrow":
            return self._transform_arrow(data)
        raise InvalidParameterError(
            f"transform takes a pandas DataFrame or a pyarrow Table, got {type(data).__name__}; "
            "score one row with transform_row(dict)"
        )

    def _transform_arrow(self, table: Any) -> Any:
        import pyarrow as pa

        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        plan = self._plan_for(table.column_names)
        if plan.kind == "scalar":
            columns = [arrow_scalar(table.column(c), c) for c in plan.cols]
            keep = self._rows_to_keep(
                [(c, v, n) for c, (v, n) in zip(plan.cols, columns, strict=True)]
            )
            if keep is not None:
                table = table.filter(pa.array(keep))
                columns = [(v[keep], n[keep]) for v, n in columns]
            results = [
                pa.array((v - m) / s, type=pa.float64(), mask=n if n.any() else None)
                for (v, n), m, s in zip(columns, self.mean, self.scale, strict=True)
            ]
            return set_columns(table, list(plan.outputs), results)
        col = plan.cols[0]
        vec = arrow_vectors(table.column(col), col)
        keep = self._vector_rows_to_keep(col, vec)
        if keep is not None:
            table = table.filter(pa.array(keep))
            vec = vec.take(keep)
        z = (vec.values - self.mean) / self.scale
        return set_columns(table, [plan.outputs[0]], [vec.to_arrow(z)])

    def _transform_pandas(self, df: Any) -> Any:
        plan = self._plan_for(list(df.columns))
        if plan.kind == "scalar":
            columns = [pandas_scalar(df[c], c) for c in plan.cols]
            keep = self._rows_to_keep(
                [(c, v, n) for c, (v, n, _) in zip(plan.cols, columns, strict=True)]
            )
            if keep is not None:
                df = df[keep]
                columns = [(v[keep], n[keep], nullable) for v, n, nullable in columns]
            out = df.copy()
            for (v, n, nullable), o, m, s in zip(
                columns, plan.outputs, self.mean, self.scale, strict=True
            ):
                out[o] = pandas_result((v - m) / s, n, nullable)
            return out
        col = plan.cols[0]
        vec = pandas_vectors(df[col], col)
        keep = self._vector_rows_to_keep(col, vec)
        if keep is not None:
            df = df[keep]
            vec = vec.take(keep)
        out = df.copy()
        z = (vec.values - self.mean) / self.scale
        out[plan.outputs[0]] = vec.to_cells(z)
        return out

    def _rows_to_keep(self, columns: list[tuple[str, np.ndarray, np.ndarray]]) -> np.ndarray | None:
        """Scalar columns ``(name, values, null mask)``: the rows ``skip`` keeps (None: all);
        ``error`` raises on the first invalid value."""
        return rows_to_keep(columns, self.handle_invalid)

    def _vector_rows_to_keep(self, col: str, vec: Vectors) -> np.ndarray | None:
        dim = self.mean.shape[0]
        if self.handle_invalid == "error" and vec.row_nulls.any():
            raise InvalidValueError(invalid_message(col, "a null"))
        if np.any(vec.lengths[~vec.row_nulls] != dim):
            raise FeatureMismatchError(_length_message(col, dim))
        if self.handle_invalid == "keep":
            return None
        finite = np.isfinite(vec.values) & ~vec.nulls
        if self.handle_invalid == "error":
            if not finite.all():
                raise InvalidValueError(invalid_message(col, invalid_kind(vec.values, vec.nulls)))
            return None
        # Spark drops null rows and rows with an invalid element (vector rows have dim values).
        keep: np.ndarray = ~vec.row_nulls & finite.all(axis=1)
        return keep


def _scalar_plan(
    cols: tuple[str, ...], output_cols: Sequence[str] | None, n_features: int
) -> _ColumnMapping:
    if isinstance(output_cols, str) or any(not isinstance(c, str) for c in cols):
        raise InvalidParameterError(
            f"input_cols and output_cols must be lists of names, got {cols!r}, {output_cols!r}"
        )
    if len(cols) != n_features:
        raise FeatureMismatchError(
            f"{len(cols)} column(s) {list(cols)} given but the state has {n_features} features"
        )
    outputs = cols if output_cols is None else tuple(output_cols)
    if len(outputs) != len(cols):
        raise InvalidParameterError(
            f"output_cols must list one name per input column: {len(cols)} input(s) "
            f"{list(cols)} but output_cols={list(outputs)}"
        )
    if len(set(outputs)) != len(outputs):
        raise InvalidParameterError(f"output_cols must be unique, got {list(outputs)}")
    return _ColumnMapping("scalar", cols, outputs)


def _vector_plan(input_col: str, output_col: str | None) -> _ColumnMapping:
    output = input_col if output_col is None else output_col
    if not isinstance(input_col, str) or not isinstance(output, str) or not output:
        raise InvalidParameterError(f"input_col/output_col must be names, got {input_col!r}")
    return _ColumnMapping("vector", (input_col,), (output,))


def _vector_base(features: Sequence[str]) -> str | None:
    """``name`` when the features are ``name[0]``, ``name[1]``, ... (a vector's elements)."""
    parsed = [_VECTOR_FEATURE.match(f) for f in features]
    if not all(parsed):
        return None
    bases = {m.group(1) for m in parsed if m}
    idx = [int(m.group(2)) for m in parsed if m]
    return bases.pop() if len(bases) == 1 and idx == list(range(len(idx))) else None


def _first_invalid(values: np.ndarray, nulls: np.ndarray | None) -> str | None:
    if nulls is not None and nulls.any():
        return "a null"
    if np.isfinite(values).all():
        return None
    return "a NaN" if np.isnan(values).any() else "an infinite"
