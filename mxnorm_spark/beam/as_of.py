"""``KeyAsOf``: each row's per-key constants as of its batch, with the rules of the Spark
keyed backfill (:mod:`mxnorm_spark.keyed.backfill`):

* a row takes its key's state as of its batch value: after that batch (``apply_at="after"``)
  or before it (``"before"``) when the key has rows in it; otherwise the state after the
  key's latest earlier batch; none before the key's first batch or for a null batch value;
* the fallback is the global state of the row's batch (before or after it, as the global
  model), or the final global state for a batch value not fitted;
* feature by feature, the key's constants are used when the key has at least
  ``max(min_key_rows, 1)`` valid values of the feature by then, the fallback's otherwise.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mxnorm_spark.beam.fit import BatchStates
from mxnorm_spark.core.errors import InvalidParameterError
from mxnorm_spark.core.moments import FloatArray
from mxnorm_spark.core.state import scale_of
from mxnorm_spark.serving.values import normalize_row

__all__ = ["KeyAsOf"]


class KeyAsOf:
    """One key's rows normalized as of their batch (``key`` None: the global state only)."""

    def __init__(
        self,
        glob: BatchStates,
        key: BatchStates | None,
        *,
        outputs: Sequence[str] | None,
        handle_invalid: str,
        before: bool,
        min_key_rows: int,
    ) -> None:
        final = glob.final
        self.features = final.features
        self.outputs = tuple(outputs or self.features)
        self.handle_invalid = handle_invalid
        self.before = before
        self.batch_col = glob.batch_col
        self.final = final.normalization_constants()
        self.per_batch = glob.constants(before)
        self.threshold = max(min_key_rows, 1)
        self.values: list[Any] | None = None
        if key is not None:
            h = key.history
            if h.start.features != self.features:
                raise InvalidParameterError(
                    f"a key's states have features {list(h.start.features)}, the global state "
                    f"{list(self.features)}; fit both on the same columns"
                )
            self.values = list(key.batch_values)
            self.mean, self.count = h.mean, h.totals[0]
            self.scale = np.asarray(scale_of(h.var, h.start.options))
        self._items: dict[Any, list[tuple[str, str, float, float]]] = {}

    def constants(self, value: Any) -> tuple[FloatArray, FloatArray]:
        """``(mean, scale)`` per feature for a row of batch value ``value``."""
        gm, gs = self.final if value is None else self.per_batch.get(value, self.final)
        i = -1
        if self.values is not None and value is not None:
            i = bisect.bisect_right(self.values, value) - 1
            if i >= 0 and self.before and self.values[i] == value:
                i -= 1
        if i < 0:
            return gm, gs
        use = self.count[i] >= self.threshold
        return np.where(use, self.mean[i], gm), np.where(use, self.scale[i], gs)

    def transform_row(self, row: Mapping[str, Any]) -> dict[str, Any] | None:
        value = row.get(self.batch_col)  # type: ignore[arg-type]
        items = self._items.get(value)
        if items is None:
            mean, scale = self.constants(value)
            items = list(
                zip(self.features, self.outputs, mean.tolist(), scale.tolist(), strict=True)
            )
            self._items[value] = items
        return normalize_row(row, items, self.handle_invalid, self.features)
