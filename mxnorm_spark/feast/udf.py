"""What a Feast on-demand feature view (``mode="python"``) runs: ``(x - mean) / scale``.

Feast rebuilds an on-demand view's function from its source text alone (feast-dev/feast
#6815: the text is ``exec``-ed in a fresh namespace, so module globals, closures and
imports outside the body are gone). The views this package generates therefore have a
body of two lines: an import of :func:`normalize_inputs` and a call with literal
arguments (:func:`udf_source`). The arithmetic lives here, in the installed package.

The inputs follow the names of :mod:`mxnorm_spark.feast.names`: the raw value ``x``, the
state's ``x__mean`` / ``x__scale`` and, for a per-key model, the key's ``x__key_mean`` /
``x__key_scale`` (missing, or NaN in a historical retrieval, where the key has too few
values and the global state applies). The result is :meth:`Normalizer.transform_row
<mxnorm_spark.serving.Normalizer.transform_row>`'s with ``handle_invalid="keep"``, bit
for bit: the value cast as Spark casts it, one IEEE subtraction and one division.

>>> normalize_inputs({"x": [3.0, None], "x__mean": [1.0, 1.0], "x__scale": [2.0, 2.0]},
...                  (("x", "x_z"),), False)
{'x_z': [1.0, None]}
>>> normalize_inputs({"x": [3.0], "x__mean": [1.0], "x__scale": [2.0],
...                   "x__key_mean": [None], "x__key_scale": [None]}, (("x", "z"),), True)
{'z': [1.0]}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from mxnorm_spark.feast.names import key_mean, key_scale, state_mean, state_scale
from mxnorm_spark.serving.values import row_float

__all__ = ["normalize_inputs", "normalize_with_state_file", "udf_source"]

_CACHE: dict[str, Any] = {}


def _missing(v: Any) -> bool:
    # Online a missing feature is None; a historical retrieval gives NaN (pandas).
    return v is None or (isinstance(v, float) and math.isnan(v))


def normalize_inputs(
    inputs: Mapping[str, Sequence[Any]], pairs: Sequence[tuple[str, str]], keyed: bool
) -> dict[str, list[Any]]:
    """``{output: [z, ...]}`` for each ``(feature, output)`` of ``pairs``.

    A row whose value is null gives null; a row with no state (before the first batch)
    gives null; a per-key row uses the key's constants where they are present.
    """
    out: dict[str, list[Any]] = {}
    for col, output in pairs:
        values, means, scales = inputs[col], inputs[state_mean(col)], inputs[state_scale(col)]
        key_means = inputs[key_mean(col)] if keyed else None
        key_scales = inputs[key_scale(col)] if keyed else None
        result: list[Any] = []
        for i, v in enumerate(values):
            m, s = means[i], scales[i]
            if key_means is not None and key_scales is not None and not _missing(key_means[i]):
                m, s = key_means[i], key_scales[i]
            if v is None or _missing(m):
                result.append(None)
                continue
            x = v if type(v) is float else row_float(v, col)
            result.append((x - float(m)) / float(s))
        out[output] = result
    return out


def normalize_with_state_file(
    inputs: Mapping[str, Sequence[Any]], path: str, pairs: Sequence[tuple[str, str]]
) -> dict[str, list[Any]]:
    """The other way to take the state: read it from ``path`` once per process (cached),
    with :func:`mxnorm_spark.serving.load`; every row uses that one (latest) state.

    No point in time: a historical retrieval normalizes every row with the same state,
    so only serving can use it (see ``bench/FEAST.md`` for what it costs and saves).
    """
    from mxnorm_spark.serving.normalizer import Normalizer

    norm = _CACHE.get(path)
    if norm is None:
        from mxnorm_spark.serving.loading import load

        norm = _CACHE[path] = load(path)
    if not isinstance(norm, Normalizer):
        raise ValueError(f"{path} is a per-key export; this path takes one (global) state")
    means, scales = norm.mean.tolist(), norm.scale.tolist()
    index = {f: j for j, f in enumerate(norm.features)}
    out: dict[str, list[Any]] = {}
    for col, output in pairs:
        m, s = means[index[col]], scales[index[col]]
        out[output] = [
            None if v is None else ((v if type(v) is float else row_float(v, col)) - m) / s
            for v in inputs[col]
        ]
    return out


def udf_source(name: str, pairs: Sequence[tuple[str, str]], keyed: bool) -> str:
    """The source text of an on-demand view's function: imports inside, literals only."""
    if not name.isidentifier():
        raise ValueError(f"{name!r} is not a Python identifier")
    literal = tuple((str(c), str(o)) for c, o in pairs)
    return (
        f"def {name}(inputs):\n"
        "    from mxnorm_spark.feast.udf import normalize_inputs\n"
        "\n"
        f"    return normalize_inputs(inputs, {literal!r}, {bool(keyed)!r})\n"
    )
