"""The names of the Feast objects and fields for one model, defined once.

For a feature ``x`` the state feature view holds ``x__mean`` and ``x__scale``, the per-key
view ``x__key_mean`` and ``x__key_scale``; a view set named ``N`` is the entities (one per
key column), ``N_state``, ``N_key_state``, ``N_rows`` (the normalized rows), the request
source ``N_request`` and the on-demand view ``N``.

>>> state_mean("temperature"), key_scale("temperature")
('temperature__mean', 'temperature__key_scale')
"""

from __future__ import annotations

import re

from mxnorm_spark.core.errors import InvalidParameterError

__all__ = [
    "EVENT_TIMESTAMP",
    "check_name",
    "key_mean",
    "key_scale",
    "state_mean",
    "state_scale",
]

EVENT_TIMESTAMP = "event_timestamp"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_name(kind: str, name: str) -> str:
    """``name`` if Feast and Python both take it as a field or view name."""
    if not isinstance(name, str) or not _NAME.match(name) or "__" in name.strip("_"):
        raise InvalidParameterError(
            f"{kind} {name!r} cannot name a Feast field: use letters, digits and single "
            "underscores (vector features name[i] are not supported; use scalar columns)"
        )
    return name


def state_mean(feature: str) -> str:
    return f"{feature}__mean"


def state_scale(feature: str) -> str:
    return f"{feature}__scale"


def key_mean(feature: str) -> str:
    return f"{feature}__key_mean"


def key_scale(feature: str) -> str:
    return f"{feature}__key_scale"
