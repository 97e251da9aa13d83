"""Normalization with no Spark and no JVM: pandas, Arrow tables and single rows.

A feature store fits statistics offline and applies the same normalization online.
:func:`load` reads what the Spark side wrote and returns a :class:`Normalizer`:

* a state file (``mxnorm-spark fit``, :func:`~mxnorm_spark.store.write_state`);
* a stream's state directory: its newest committed version, or ``batch_id=`` to pin one
  (with no version yet, its ``init.json``; the one fallback rule of
  :func:`~mxnorm_spark.store.read_state`);
* a saved ``MXNormModel`` directory (``model.write().save(path)``): the params of its
  ``metadata`` (input and output columns, ``handleInvalid``) and its ``state``.

Paths may be local or any URI the store reaches without a JVM (``s3://``, ``gs://``,
``abfs://``). The source kinds are tried in the order of ``_SOURCES``, each recognised by
what the directory holds. A per-key export (``KeyedModel.export``: one state per entity,
with the global fallback of the Spark side), recognised by its marker ``keyed.json``, is
checked first and gives a :class:`KeyedNormalizer` (:mod:`mxnorm_spark.serving.keyed`),
which looks up each row's key first.

The output is the Spark output bit for bit: the same float64 constants
(:meth:`MXNormState.normalization_constants`), the same ``(x - mean) / scale`` in IEEE
float64, inputs cast to float64 first (ints round to nearest, decimals correctly rounded,
as Spark's casts do), and the same ``handle_invalid`` rules:

* ``keep``: null stays null, NaN stays NaN, +/-inf gives +/-inf;
* ``error``: :class:`~mxnorm_spark.core.errors.InvalidValueError` naming the column and the
  value kind (null, NaN or infinite);
* ``skip``: rows with any invalid input value are dropped (:meth:`Normalizer.transform_row`
  returns None for such a row).

A vector or array row whose length is not the state's feature count always raises
:class:`~mxnorm_spark.core.errors.FeatureMismatchError`; a null row stays null (``keep``).

Only numpy is needed at import time; pandas and pyarrow are imported by the functions
that take them. A backfill model's per-batch history is not applied: rows are normalized
with the final state, as Spark does for a row whose batch value was not seen in fit.

>>> import tempfile, os
>>> import numpy as np
>>> from mxnorm_spark import Moments, MXNormState
>>> from mxnorm_spark.store import write_state
>>> state = MXNormState.create(["a", "b"]).update(
...     Moments.from_array(np.array([[1.0, 10.0], [3.0, 30.0]])))
>>> path = write_state(state, os.path.join(tempfile.mkdtemp(), "state.json"))
>>> norm = load(path, output_cols=["za", "zb"])
>>> norm.transform_row({"id": 7, "a": 3.0, "b": None})
{'id': 7, 'a': 3.0, 'b': None, 'za': 0.999999995, 'zb': None}
>>> load(path, handle_invalid="skip").transform_row({"a": 1.0, "b": float("nan")}) is None
True
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mxnorm_spark.core.errors import CorruptStateError, InvalidParameterError
from mxnorm_spark.core.state import MXNormState
from mxnorm_spark.serving.keyed import KeyedNormalizer, is_keyed_export, load_keyed
from mxnorm_spark.serving.normalizer import Normalizer
from mxnorm_spark.store import (
    INITIAL_FILE,
    VERSION_FILE,
    FileSystem,
    LocalFileSystem,
    filesystem,
    local_path,
    read_state,
)
from mxnorm_spark.store.folds import read_state_as_of

__all__ = ["KeyedNormalizer", "Normalizer", "load"]

MODEL_CLASS = "mxnorm_spark.ml.MXNormModel"


# ---- loading -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Params:
    """The column params of a model (as the Spark ``MXNormModel`` resolves them)."""

    input_cols: tuple[str, ...] | None = None
    output_cols: tuple[str, ...] | None = None
    input_col: str | None = None
    output_col: str | None = None
    handle_invalid: str = "keep"


def load(
    path_or_uri: str | os.PathLike[str],
    *,
    batch_id: int | None = None,
    as_of: Any = None,
    input_cols: Sequence[str] | None = None,
    output_cols: Sequence[str] | None = None,
    input_col: str | None = None,
    output_col: str | None = None,
    handle_invalid: str | None = None,
) -> Normalizer | KeyedNormalizer:
    """A :class:`Normalizer` for a state file, a state directory or a saved model directory;
    a :class:`KeyedNormalizer` for a per-key export (``KeyedModel.export``: its marker
    ``keyed.json``; ``output_cols`` and ``handle_invalid`` apply, input columns do not).

    ``batch_id`` pins a version of a state directory; ``as_of`` (an event-time stream's
    state directory) the state that applied at a batch value: every batch up to it folded,
    the state a row with lineage value ``as_of`` was normalized with. For a bare state the
    inputs are the state's features, normalized in place (what ``mxnorm-spark transform`` does) with
    ``handle_invalid="keep"``; a model directory brings its own params. Any argument given
    here overrides them.
    """
    where = str(path_or_uri)
    fs = filesystem(where)
    if isinstance(fs, LocalFileSystem):
        where = local_path(where)
    if is_keyed_export(fs, where):
        if batch_id is not None or input_cols is not None or input_col is not None:
            raise InvalidParameterError(
                f"{where} is a per-key export: it takes output_cols and handle_invalid only"
            )
        return load_keyed(fs, where, output_cols=output_cols, handle_invalid=handle_invalid)
    for recognise, read in _SOURCES:
        if as_of is not None:
            if batch_id is not None:
                raise InvalidParameterError("give batch_id or as_of, not both")
            state, params = read_state_as_of(where, as_of), _Params()
            break
        if recognise(fs, where):
            state, params = read(fs, where, batch_id)
            break
    else:
        raise CorruptStateError(
            f"{where} is not a state file, a state directory (v-<batch id>.json or "
            f"{INITIAL_FILE}) or a saved MXNormModel directory (metadata/ and state/)"
        )
    if input_cols is not None or input_col is not None:
        params = _Params(handle_invalid=params.handle_invalid)
    overrides = {
        "input_cols": None if input_cols is None else tuple(input_cols),
        "output_cols": None if output_cols is None else tuple(output_cols),
        "input_col": input_col,
        "output_col": output_col,
        "handle_invalid": handle_invalid,
    }
    merged = {**params.__dict__, **{k: v for k, v in overrides.items() if v is not None}}
    return Normalizer(state, **merged, source=where)


def _is_model_dir(fs: FileSystem, where: str) -> bool:
    return fs.is_dir(where) and {"metadata", "state"} <= set(fs.list_names(where))


def _is_state_dir(fs: FileSystem, where: str) -> bool:
    if not fs.is_dir(where):
        return False
    names = fs.list_names(where)
    return INITIAL_FILE in names or any(VERSION_FILE.match(n) for n in names)


def _is_file(fs: FileSystem, where: str) -> bool:
    return not fs.is_dir(where)


def _read_state_path(
    fs: FileSystem, where: str, batch_id: int | None
) -> tuple[MXNormState, _Params]:
    return read_state(where, batch_id=batch_id), _Params()


def _read_model_dir(
    fs: FileSystem, where: str, batch_id: int | None
) -> tuple[MXNormState, _Params]:
    if batch_id is not None:
        raise InvalidParameterError(
            f"{where} is a saved MXNormModel; a batch id selects a version of a state directory"
        )
    meta_path = fs.join(where, "metadata")
    try:
        meta = json.loads(_read_text_parts(fs, meta_path))
    except ValueError as exc:
        raise CorruptStateError(f"{meta_path} is not Spark ML metadata JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("class") != MODEL_CLASS:
        found = meta.get("class") if isinstance(meta, dict) else None
        raise CorruptStateError(f"{where} holds a {found!r}, not a saved {MODEL_CLASS}")
    state_path = fs.join(where, "state")
    state = MXNormState.from_json(_read_text_parts(fs, state_path), source=state_path)
    return state, _model_params(meta)


def _read_text_parts(fs: FileSystem, directory: str) -> str:
    """The text of a directory Spark's text writer wrote (its ``part-*`` files, in order)."""
    parts = sorted(n for n in fs.list_names(directory) if n.startswith("part-"))
    texts = [fs.read_bytes(fs.join(directory, n)) or b"" for n in parts]
    text = b"".join(texts).decode("utf-8")
    if not text.strip():
        raise CorruptStateError(f"{directory} holds no part-* file with text")
    return text


def _model_params(meta: Mapping[str, Any]) -> _Params:
    """The model's columns as ``MXNormModel._columns`` resolves them from its params."""
    set_params: dict[str, Any] = dict(meta.get("paramMap") or {})
    defaults: dict[str, Any] = dict(meta.get("defaultParamMap") or {})

    def get(name: str) -> Any:
        return set_params.get(name, defaults.get(name))

    handle = str(get("handleInvalid") or "keep")
    outs = set_params.get("outputCols")
    if "inputCols" in set_params:
        return _Params(tuple(set_params["inputCols"]), _tuple(outs), handle_invalid=handle)
    if "inputCol" in set_params:
        # An unset outputCol has a default (<uid>__output), which Spark then uses.
        return _Params(None, None, set_params["inputCol"], get("outputCol"), handle)
    return _Params(None, _tuple(outs), None, set_params.get("outputCol"), handle)


def _tuple(names: Sequence[str] | None) -> tuple[str, ...] | None:
    return None if names is None else tuple(names)


# Tried in order, after the per-key export (see the module doc).
_SOURCES: list[
    tuple[
        Callable[[FileSystem, str], bool],
        Callable[[FileSystem, str, int | None], tuple[MXNormState, _Params]],
    ]
] = [
    (_is_model_dir, _read_model_dir),
    (_is_state_dir, _read_state_path),
    (_is_file, _read_state_path),
]
