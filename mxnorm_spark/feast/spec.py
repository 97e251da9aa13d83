"""What one published model offers Feast: :class:`ViewSpec`, saved as JSON in the repo.

The spec names the features and outputs, the entity (key) columns with their types, and
where each offline source lies. :mod:`mxnorm_spark.feast.definitions` renders the Feast
objects from it; ``mxnorm-spark feast-views`` writes it beside them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from mxnorm_spark.core.errors import CorruptStateError, InvalidParameterError
from mxnorm_spark.feast.names import check_name

__all__ = ["ENTITY_TYPES", "OFFLINE_STORES", "SPEC_TYPE", "ViewSpec"]

SPEC_TYPE = "mxnorm_spark.FeastViews"
# Entity key columns are published as Feast Int64 or String: an int key of any width is
# cast to a long, so an online lookup with a Python int finds it.
ENTITY_TYPES = ("int64", "string")
OFFLINE_STORES = ("file", "spark")


@dataclass(frozen=True)
class ViewSpec:
    """The feature views of one model (see :mod:`mxnorm_spark.feast.names`).

    ``state_path``: the global state history (one row per batch start, and the final
    state); ``key_state_path``: the per-key history (keyed models); ``rows_path``: the
    point-in-time normalized rows, by ``entity_cols``. ``min_key_rows`` is informational:
    the key views already hold no constants where a key had fewer valid values.
    """

    name: str
    features: tuple[str, ...]
    outputs: tuple[str, ...]
    state_path: str
    key_cols: tuple[str, ...] = ()
    entity_types: Mapping[str, str] = field(default_factory=dict)
    key_state_path: str | None = None
    rows_path: str | None = None
    entity_cols: tuple[str, ...] = ()
    offline: str = "file"
    min_key_rows: int = 1

    def __post_init__(self) -> None:
        check_name("view set name", self.name)
        for f in (*self.features, *self.outputs, *self.key_cols, *self.entity_cols):
            check_name("column", f)
        if len(self.outputs) != len(self.features):
            raise InvalidParameterError(
                f"outputs {list(self.outputs)} must name one column per feature "
                f"{list(self.features)}"
            )
        clash = set(self.outputs) & set(self.features)
        if clash:
            raise InvalidParameterError(
                f"outputs {sorted(clash)} are also input features: an on-demand view needs "
                "new names for its outputs (e.g. outputCols=['x_z', ...])"
            )
        if self.offline not in OFFLINE_STORES:
            raise InvalidParameterError(
                f"offline must be one of {list(OFFLINE_STORES)}, got {self.offline!r}"
            )
        for col in (*self.key_cols, *self.entity_cols):
            if self.entity_types.get(col) not in ENTITY_TYPES:
                raise InvalidParameterError(
                    f"entity column {col!r} needs a type in {list(ENTITY_TYPES)}, "
                    f"got {self.entity_types.get(col)!r}"
                )
        if bool(self.key_cols) != (self.key_state_path is not None):
            raise InvalidParameterError("key_cols and key_state_path go together")
        if (self.rows_path is not None) and not self.entity_cols:
            raise InvalidParameterError("rows_path needs entity_cols to look the rows up by")

    @property
    def keyed(self) -> bool:
        return bool(self.key_cols)

    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        return tuple(zip(self.features, self.outputs, strict=True))

    def to_json(self) -> str:
        doc = {"type": SPEC_TYPE, **asdict(self)}
        doc["entity_types"] = dict(self.entity_types)
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "spec") -> ViewSpec:
        try:
            doc: dict[str, Any] = json.loads(text)
        except ValueError as exc:
            raise CorruptStateError(f"{source} is not JSON ({exc})") from exc
        if not isinstance(doc, dict) or doc.pop("type", None) != SPEC_TYPE:
            raise CorruptStateError(f"{source} is not a {SPEC_TYPE} document")
        for name in ("features", "outputs", "key_cols", "entity_cols"):
            doc[name] = tuple(doc.get(name) or ())
        return cls(**doc)
