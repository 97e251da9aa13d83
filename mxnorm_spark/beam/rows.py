"""How a dict row gives its feature values, its key and its batch value, checked once per
transform: the columns exist, feature values are numbers (as Spark casts them to double),
a batch value is never null."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np

from mxnorm_spark.core.errors import InvalidParameterError, InvalidValueError, MissingColumnError
from mxnorm_spark.core.moments import FloatArray
from mxnorm_spark.serving.values import row_float

__all__ = ["KeySpec", "RowSpec", "as_matrix", "check_names"]

# Python values numpy converts to float64 exactly as float() does (None to NaN): a chunk
# holding only these is converted in one call.
_FAST_TYPES = frozenset(
    {float, int, type(None), Decimal, np.float64, np.float32, np.int64, np.int32}
)


def check_names(value: Any, what: str, *, allow_none: bool = False) -> tuple[str, ...] | None:
    """``value`` as a tuple of column names, or a named error."""
    if value is None and allow_none:
        return None
    if isinstance(value, str) or value is None:
        raise InvalidParameterError(
            f"{what} must be a list of column names, got {value!r}"
            + (f"; use [{value!r}] for one column" if isinstance(value, str) else "")
        )
    names = tuple(value)
    if not names or any(not isinstance(c, str) or not c for c in names):
        raise InvalidParameterError(f"{what} must list non-empty column names, got {value!r}")
    if len(set(names)) != len(names):
        raise InvalidParameterError(f"{what} must not repeat a column, got {list(names)}")
    return names


@dataclass(frozen=True)
class RowSpec:
    """The feature columns, the batch column (or None) and the key columns (or None)."""

    cols: tuple[str, ...]
    batch_col: str | None = None
    key_cols: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        cols = check_names(self.cols, "cols")
        keys = check_names(self.key_cols, "key_cols", allow_none=True)
        if self.batch_col is not None and (
            not isinstance(self.batch_col, str) or not self.batch_col
        ):
            raise InvalidParameterError(f"batch_col must be a column name, got {self.batch_col!r}")
        clash = set(cols or ()) & ({self.batch_col} | set(keys or ()))
        if clash:
            raise InvalidParameterError(
                f"column(s) {sorted(c for c in clash if c)} are both features and the batch "
                "or key columns; a feature cannot be its own batch or key"
            )
        object.__setattr__(self, "cols", cols)
        object.__setattr__(self, "key_cols", keys)

    def _missing(self, row: Mapping[str, Any]) -> MissingColumnError:
        wanted = [*self.cols, *([self.batch_col] if self.batch_col else []), *(self.key_cols or ())]
        return MissingColumnError([c for c in wanted if c not in row], list(row))

    def values(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        """The feature values of ``row`` as they are (converted per chunk by :func:`as_matrix`)."""
        try:
            return tuple(row[c] for c in self.cols)
        except (KeyError, TypeError):
            raise self._missing_or_type(row) from None

    def batch(self, row: Mapping[str, Any]) -> Any:
        """The batch value of ``row`` (None without a batch column); a null one raises."""
        if self.batch_col is None:
            return None
        try:
            value = row[self.batch_col]
        except (KeyError, TypeError):
            raise self._missing_or_type(row) from None
        if value is None:
            raise InvalidValueError(
                f"batch column {self.batch_col!r} is null in a row; every row needs a batch "
                "value (fill or filter the nulls first)"
            )
        return value

    def key(self, row: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """The key of ``row`` as a tuple; None when a key value is null (no entity)."""
        assert self.key_cols is not None
        try:
            key = tuple(row[c] for c in self.key_cols)
        except (KeyError, TypeError):
            raise self._missing_or_type(row) from None
        return None if any(v is None for v in key) else key

    def _missing_or_type(self, row: Any) -> Exception:
        if not isinstance(row, Mapping):
            return InvalidParameterError(
                f"rows must be dicts of column name to value, got a {type(row).__name__}; "
                "map each element to a dict first (e.g. beam.Map(lambda r: r._asdict()))"
            )
        return self._missing(row)


@dataclass(frozen=True)
class KeySpec:
    """The key columns of rows whose features are the state's (normalization)."""

    key_cols: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_cols", check_names(self.key_cols, "key_cols"))

    def key(self, row: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """The key of ``row`` as a tuple; None when a key value is null (no entity)."""
        try:
            key = tuple(row[c] for c in self.key_cols)
        except KeyError:
            raise MissingColumnError(
                [c for c in self.key_cols if c not in row], list(row)
            ) from None
        return None if any(v is None for v in key) else key


def as_matrix(rows: Sequence[Sequence[Any]], cols: Sequence[str]) -> FloatArray:
    """Rows of feature values as a (rows x features) float64 array, None as NaN, each value
    cast as Spark casts it to double; bools and text raise :class:`NonNumericError`."""
    if set(map(type, itertools.chain.from_iterable(rows))) <= _FAST_TYPES:
        return np.array(rows, dtype=np.float64).reshape(len(rows), len(cols))
    return np.array(
        [
            [np.nan if v is None else row_float(v, c) for v, c in zip(row, cols, strict=True)]
            for row in rows
        ],
        dtype=np.float64,
    ).reshape(len(rows), len(cols))
