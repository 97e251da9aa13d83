"""Publish a fitted backfill to a Feast repo: its state history and normalized rows.

:func:`publish_model` takes an ``MXNorm(batchCol=...)`` model (global) or an
``MXNorm(keyCols=..., batchCol=...)`` model (per key) and writes, under the repo's
``data/sources/``, Parquet sources with event timestamps (:class:`BatchClock` gives each
batch value its start):

* ``<name>_state``: one row at the start of each batch with the constants its rows use
  with ``applyAt="before"`` (``MXNormModel.batch_constants``: the state before the batch;
  the first batch, and a feature with no state yet, take the batch's own), and one row
  at the end of the last batch with the final state, which every later row uses;
* ``<name>_key_state`` (per key): for each (key, batch) of the fit, the key's state after
  the batch, from the start of the next batch on (the end of the last one for the last):
  ``x__key_mean`` / ``x__key_scale``, or nulls where the key has fewer than
  ``max(minKeyRows, 1)`` valid values of ``x`` so far (the global state applies);
* ``<name>_rows`` (with ``rows=``): ``model.transform(rows)`` with ``applyAt="before"``,
  by ``entity_cols``, at each row's ``timestamp_col`` (default: its batch's start).

Feast's point-in-time join (the latest row at or before each entity row's timestamp) then
returns, for a row at instant ``t`` of batch ``b`` (the latest batch starting at or before
``t``), exactly the constants the model uses for batch ``b``. :func:`publish_stream`
publishes a stream's state directory the same way, timed by each batch's commit.
"""

from __future__ import annotations

import datetime as dt
import io
import os
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from mxnorm_spark.core.errors import InvalidParameterError, MissingColumnError
from mxnorm_spark.core.state import scale_of
from mxnorm_spark.feast.clock import BatchClock
from mxnorm_spark.feast.names import (
    EVENT_TIMESTAMP,
    check_name,
    key_mean,
    key_scale,
    state_mean,
    state_scale,
)
from mxnorm_spark.feast.repo import write_repo
from mxnorm_spark.feast.spec import OFFLINE_STORES, ViewSpec
from mxnorm_spark.store import filesystem, local_path, read_state

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

__all__ = ["EPOCH", "publish_model", "publish_stream", "state_table"]

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def state_table(
    features: Sequence[str], times: Sequence[dt.datetime], mean: np.ndarray, scale: np.ndarray
) -> Any:
    """The global state source as a ``pyarrow.Table``: ``event_timestamp`` and per
    feature ``x__mean``, ``x__scale`` (rows: ``times``)."""
    import pyarrow as pa

    cols: dict[str, Any] = {EVENT_TIMESTAMP: pa.array(list(times), pa.timestamp("us", tz="UTC"))}
    for j, f in enumerate(features):
        cols[state_mean(f)] = pa.array(np.asarray(mean)[:, j], pa.float64())
        cols[state_scale(f)] = pa.array(np.asarray(scale)[:, j], pa.float64())
    return pa.table(cols)


def _write_table(table: Any, path: str) -> str:
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    fs = filesystem(path)
    fs.mkdirs(path.rsplit("/", 1)[0])
    fs.write_atomic(path, buffer.getvalue())
    return path


def _sources_dir(repo_dir: str) -> str:
    # Absolute: Feast reads a relative source path against the repo, not the caller's cwd.
    return os.path.abspath(local_path(repo_dir)).rstrip("/") + "/data/sources"


def _entity_type(df: DataFrame, col: str) -> tuple[Any, str]:
    """The column cast for a Feast entity key (long or string) and its spec type name."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    if col not in df.columns:
        raise MissingColumnError([col], df.columns)
    kind = df.schema[col].dataType
    if isinstance(kind, (T.ByteType, T.ShortType, T.IntegerType, T.LongType)):
        return F.col(col).cast("long").alias(col), "int64"
    if isinstance(kind, T.StringType):
        return F.col(col), "string"
    raise InvalidParameterError(
        f"entity column {col!r} is {kind.simpleString()}; Feast entities here are integers "
        "or strings: cast it first"
    )


def _outputs(features: Sequence[str], outputs: Sequence[str] | None) -> tuple[str, ...]:
    if outputs is None or tuple(outputs) == tuple(features):
        raise InvalidParameterError(
            "the model normalizes in place; set outputCols (e.g. ['x_z', ...]) so the "
            "on-demand view can serve the raw values and their normalized outputs apart"
        )
    return tuple(outputs)


def _batch_starts(
    spark: Any, batch_type: Any, values: Sequence[Any], nexts: list[dt.datetime]
) -> Any:
    from pyspark.sql import types as T

    schema = T.StructType(
        [
            T.StructField("__mx_b", batch_type, True),
            T.StructField("__mx_t", T.TimestampType(), False),
        ]
    )
    return spark.createDataFrame(list(zip(values, nexts, strict=True)), schema)


def publish_model(
    model: Any,
    repo_dir: str,
    *,
    clock: BatchClock,
    name: str = "mxnorm",
    rows: DataFrame | None = None,
    entity_cols: Sequence[str] | None = None,
    timestamp_col: str | None = None,
    offline: str = "file",
    project: str = "mxnorm",
) -> ViewSpec:
    """Write the sources and the Feast definitions of ``model`` under ``repo_dir`` (see the
    module doc) and return their :class:`ViewSpec`; then ``feast apply`` the repo."""
    from mxnorm_spark.ml.estimator import MXNormModel
    from mxnorm_spark.ml.keyed import KeyedMXNormModel

    # Before any Spark job: a bad name or store fails here, not after the writes.
    check_name("view set name", name)
    if offline not in OFFLINE_STORES:
        raise InvalidParameterError(
            f"offline must be one of {list(OFFLINE_STORES)}, got {offline!r}"
        )
    if isinstance(model, KeyedMXNormModel):
        return _publish_keyed(
            model,
            repo_dir,
            clock=clock,
            name=name,
            rows=rows,
            timestamp_col=timestamp_col,
            offline=offline,
            project=project,
        )
    if not isinstance(model, MXNormModel):
        raise InvalidParameterError(
            f"publish_model takes a fitted MXNormModel or KeyedMXNormModel, got "
            f"{type(model).__name__}"
        )
    batch_col = model.getBatchCol()
    values = model.batch_values()
    if batch_col is None or not values:
        raise InvalidParameterError(
            "publish_model needs a backfill model (MXNorm(batchCol=...)): its history gives "
            "the state of each point in time"
        )
    state = model.state
    features = state.features
    outputs = _outputs(features, model.getOutputCols() if model.isSet("outputCols") else None)
    table = model.batch_constants("before")
    starts = clock.starts_of([v for v, _, _ in table])
    final_m, final_s = state.normalization_constants()
    mean = np.vstack([*(m for _, m, _ in table), final_m])
    scale = np.vstack([*(s for _, _, s in table), final_s])
    times = [*starts, clock.final_at(values)]
    root = _sources_dir(repo_dir)
    state_path = _write_table(
        state_table(features, times, mean, scale), f"{root}/{name}_state.parquet"
    )
    spec_rows: dict[str, Any] = {}
    if rows is not None:
        before = model.copy().setApplyAt("before")
        spec_rows = _publish_rows(
            before.transform(rows),
            batch_col,
            values=values,
            starts=starts,
            entity_cols=entity_cols or (),
            timestamp_col=timestamp_col,
            outputs=outputs,
            path=f"{root}/{name}_rows",
        )
    spec = ViewSpec(
        name=name,
        features=features,
        outputs=outputs,
        state_path=state_path,
        offline=offline,
        **spec_rows,
    )
    write_repo(repo_dir, spec, project=project)
    return spec


def _publish_rows(
    out: DataFrame,
    batch_col: str,
    *,
    values: Sequence[Any],
    starts: list[dt.datetime],
    entity_cols: Sequence[str],
    timestamp_col: str | None,
    outputs: Sequence[str],
    path: str,
) -> dict[str, Any]:
    from pyspark.sql import functions as F

    if not entity_cols:
        raise InvalidParameterError("rows= needs entity_cols: the columns Feast looks rows up by")
    keys = [_entity_type(out, c) for c in entity_cols]
    if timestamp_col is not None:
        if timestamp_col not in out.columns:
            raise MissingColumnError([timestamp_col], out.columns)
        when = F.col(timestamp_col).cast("timestamp")
    else:
        small = _batch_starts(out.sparkSession, out.schema[batch_col].dataType, values, starts)
        out = out.join(F.broadcast(small), F.col(batch_col) == F.col("__mx_b"), "left")
        when = F.col("__mx_t")
    table = out.select(*(k for k, _ in keys), when.alias(EVENT_TIMESTAMP), *outputs)
    table.write.mode("overwrite").parquet(path)
    return {
        "rows_path": path,
        "entity_cols": tuple(entity_cols),
        "entity_types": {c: t for c, (_, t) in zip(entity_cols, keys, strict=True)},
    }


def _publish_keyed(
    model: Any,
    repo_dir: str,
    *,
    clock: BatchClock,
    name: str,
    rows: DataFrame | None,
    timestamp_col: str | None,
    offline: str,
    project: str,
) -> ViewSpec:
    from pyspark.sql import functions as F

    keyed = replace(model.keyed, apply_at="before")
    if keyed.batch_col is None or not keyed.global_history:
        raise InvalidParameterError(
            "publish_model needs a backfill model (MXNorm(keyCols=..., batchCol=...))"
        )
    assert keyed.global_state is not None and keyed.states is not None
    features = keyed.features
    outputs = _outputs(features, keyed.output_cols)
    table = keyed.global_constants_by_batch()
    values = [v for v, _, _ in table]
    starts = clock.starts_of(values)
    final_at = clock.final_at(values)
    final_m, final_s = keyed.global_state.normalization_constants()
    mean = np.vstack([*(m for _, m, _ in table), final_m])
    scale = np.vstack([*(s for _, _, s in table), final_s])
    root = _sources_dir(repo_dir)
    state_path = _write_table(
        state_table(features, [*starts, final_at], mean, scale), f"{root}/{name}_state.parquet"
    )
    # A key's state after batch b applies from the start of the batch after b.
    states = keyed.states
    batch_type = states.schema[keyed.batch_col].dataType
    small = _batch_starts(states.sparkSession, batch_type, values, [*starts[1:], final_at])
    joined = states.join(F.broadcast(small), F.col(keyed.batch_col) == F.col("__mx_b"))
    thr = max(keyed.min_key_rows, 1)
    keys = [_entity_type(states, c) for c in keyed.key_cols]
    per_feature = []
    for j, f in enumerate(features):
        use = F.col(f"f{j}_count") >= F.lit(thr)
        per_feature.append(F.when(use, F.col(f"f{j}_mean")).alias(key_mean(f)))
        per_feature.append(F.when(use, F.col(f"f{j}_scale")).alias(key_scale(f)))
    # A row with a null key belongs to no entity: it takes the global state.
    key_table = joined.where(F.expr(" AND ".join(f"`{c}` IS NOT NULL" for c in keyed.key_cols)))
    key_path = f"{root}/{name}_key_state"
    key_rows = key_table.select(
        *(k for k, _ in keys), F.col("__mx_t").alias(EVENT_TIMESTAMP), *per_feature
    )
    # Feast's file offline store drops an entity row whose key has feature rows, all later
    # than the row (its merge keeps no null match then): each key gets a row of nulls at
    # the epoch, so such a row finds "no key state yet" and takes the global state.
    nulls = [F.lit(None).cast("double").alias(c) for c in key_rows.columns[len(keys) + 1 :]]
    first = (
        key_rows.select(*keyed.key_cols)
        .distinct()
        .select(*keyed.key_cols, F.lit(EPOCH).cast("timestamp").alias(EVENT_TIMESTAMP), *nulls)
    )
    key_rows.unionByName(first).write.mode("overwrite").parquet(key_path)
    types = {c: t for c, (_, t) in zip(keyed.key_cols, keys, strict=True)}
    spec_rows: dict[str, Any] = {}
    if rows is not None:
        before = model.copy().setApplyAt("before")
        spec_rows = _publish_rows(
            before.transform(rows),
            keyed.batch_col,
            values=values,
            starts=starts,
            entity_cols=keyed.key_cols,
            timestamp_col=timestamp_col,
            outputs=outputs,
            path=f"{root}/{name}_rows",
        )
        spec_rows.pop("entity_types")
    spec = ViewSpec(
        name=name,
        features=features,
        outputs=outputs,
        state_path=state_path,
        key_cols=keyed.key_cols,
        entity_types=types,
        key_state_path=key_path,
        offline=offline,
        min_key_rows=keyed.min_key_rows,
        **spec_rows,
    )
    write_repo(repo_dir, spec, project=project)
    return spec


def publish_stream(
    state_dir: str,
    repo_dir: str,
    *,
    outputs: Sequence[str],
    name: str = "mxnorm",
    project: str = "mxnorm",
) -> ViewSpec:
    """Publish a stream's state directory: the state after each committed batch, from
    that batch's commit time (its history record) on. No Spark needed."""
    import pyarrow.compute as pc

    from mxnorm_spark.store.history import read_history

    latest = read_state(state_dir)
    history = read_history(state_dir)
    if history.num_rows == 0:
        raise InvalidParameterError(f"{state_dir} has no committed batch with a history record")
    features = latest.features
    outs = _outputs(features, outputs)
    ids = sorted(set(history.column("batch_id").to_pylist()))
    mean = np.empty((len(ids), len(features)))
    var = np.empty_like(mean)
    times = []
    for i, batch in enumerate(ids):
        rec = history.filter(pc.equal(history.column("batch_id"), batch))
        order = {f: r for r, f in enumerate(rec.column("feature").to_pylist())}
        pick = [order[f] for f in features]
        mean[i] = np.asarray(rec.column("state_mean").to_pylist(), dtype=np.float64)[pick]
        var[i] = np.asarray(rec.column("state_var").to_pylist(), dtype=np.float64)[pick]
        times.append(rec.column("committed_at")[0].as_py())
    scale = np.vstack([scale_of(v, latest.options) for v in var])
    path = _write_table(
        state_table(features, times, mean, scale), f"{_sources_dir(repo_dir)}/{name}_state.parquet"
    )
    spec = ViewSpec(name=name, features=features, outputs=outs, state_path=path)
    write_repo(repo_dir, spec, project=project)
    return spec
