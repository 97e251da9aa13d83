"""The Feast repo of a :class:`ViewSpec`: ``feature_store.yaml`` and a definitions module.

The definitions module is plain Feast code, generated so it can be read, reviewed and
edited like any feature repo file (``feast apply`` imports it):

* one ``Entity`` per key column (Int64 or String);
* ``<name>_state``: the global state history, no entity, ``x__mean`` / ``x__scale``;
* ``<name>_key_state`` (per-key models): ``x__key_mean`` / ``x__key_scale`` per key;
* ``<name>_rows``: the point-in-time normalized rows, by entity (when published);
* ``<name>_request``: the raw values a request (or an entity row) brings;
* ``<name>``: the on-demand view (``mode="python"``), ``(x - mean) / scale`` per row with
  the key's constants where present, else the global ones (:mod:`mxnorm_spark.feast.udf`).

Every feature view has ``ttl=0`` (no expiry): a state applies until the next one.
Sources are Parquet: ``FileSource`` for the file offline store, ``SparkSource`` for
Feast's Spark offline store.
"""

from __future__ import annotations

from mxnorm_spark.feast.names import EVENT_TIMESTAMP, key_mean, key_scale, state_mean, state_scale
from mxnorm_spark.feast.spec import ViewSpec
from mxnorm_spark.feast.udf import udf_source

__all__ = ["DEFINITIONS_FILE", "feature_store_yaml", "render_definitions"]

DEFINITIONS_FILE = "mxnorm_features.py"
_TYPES = {"int64": "Int64", "string": "String"}
_VALUE_TYPES = {"int64": "INT64", "string": "STRING"}


def feature_store_yaml(project: str, offline: str = "file") -> str:
    """A local repo: registry and SQLite online store under ``data/``, no network.

    ``offline="spark"`` uses Feast's Spark offline store on a local session; it joins the
    session already running in the process (``getOrCreate``), or starts ``local[2]``.
    """
    if offline == "spark":
        store = (
            "offline_store:\n"
            "  type: spark\n"
            "  spark_conf:\n"
            "    spark.master: local[2]\n"
            "    spark.ui.enabled: 'false'\n"
            "    spark.sql.session.timeZone: UTC\n"
        )
    else:
        store = "offline_store:\n  type: file\n"
    return (
        f"project: {project}\n"
        "provider: local\n"
        "registry: data/registry.db\n"
        "online_store:\n"
        "  type: sqlite\n"
        "  path: data/online_store.db\n"
        f"{store}"
        "entity_key_serialization_version: 3\n"
    )


def _source(spec: ViewSpec, name: str, path: str) -> str:
    if spec.offline == "spark":
        return (
            f"SparkSource(name={name!r}, path={path!r}, file_format='parquet', "
            f"timestamp_field={EVENT_TIMESTAMP!r})"
        )
    return f"FileSource(name={name!r}, path={path!r}, timestamp_field={EVENT_TIMESTAMP!r})"


def _fields(names: list[str], types: list[str]) -> str:
    return ", ".join(f"Field(name={n!r}, dtype={t})" for n, t in zip(names, types, strict=True))


def _view(
    spec: ViewSpec, view: str, entities: tuple[str, ...], fields: list[str], path: str
) -> str:
    names = [*entities, *fields]
    types = [_TYPES[spec.entity_types[e]] for e in entities] + ["Float64"] * len(fields)
    return (
        f"{view} = FeatureView(\n"
        f"    name={view!r},\n"
        f"    entities=[{', '.join(entities)}],\n"
        "    ttl=timedelta(0),\n"
        f"    schema=[{_fields(names, types)}],\n"
        f"    source={_source(spec, view + '_source', path)},\n"
        ")\n"
    )


def render_definitions(spec: ViewSpec) -> str:
    """The text of the definitions module for ``spec`` (see the module doc)."""
    name, feats = spec.name, list(spec.features)
    imports = "from feast import Entity, FeatureView, Field, RequestSource, ValueType\n"
    if spec.offline == "spark":
        imports += (
            "from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import "
            "SparkSource\n"
        )
    else:
        imports += "from feast import FileSource\n"
    parts = [
        f'"""Feast definitions of the MXNorm model {name!r} (made by mxnorm_spark.feast)."""\n',
        "from datetime import timedelta\n\n" + imports,
        "from feast.on_demand_feature_view import on_demand_feature_view\n"
        "from feast.types import Float64, Int64, String  # noqa: F401\n",
    ]
    for col in dict.fromkeys((*spec.key_cols, *spec.entity_cols)):
        parts.append(
            f"{col} = Entity(name={col!r}, join_keys=[{col!r}], "
            f"value_type=ValueType.{_VALUE_TYPES[spec.entity_types[col]]})\n"
        )
    state_fields = [n for f in feats for n in (state_mean(f), state_scale(f))]
    parts.append(_view(spec, f"{name}_state", (), state_fields, spec.state_path))
    sources = [f"{name}_request", f"{name}_state"]
    if spec.keyed:
        assert spec.key_state_path is not None
        key_fields = [n for f in feats for n in (key_mean(f), key_scale(f))]
        parts.append(
            _view(spec, f"{name}_key_state", spec.key_cols, key_fields, spec.key_state_path)
        )
        sources.append(f"{name}_key_state")
    if spec.rows_path is not None:
        parts.append(
            _view(spec, f"{name}_rows", spec.entity_cols, list(spec.outputs), spec.rows_path)
        )
    parts.append(
        f"{name}_request = RequestSource(name={name + '_request'!r}, "
        f"schema=[{_fields(feats, ['Float64'] * len(feats))}])\n"
    )
    outs = list(spec.outputs)
    parts.append(
        "\n@on_demand_feature_view(\n"
        f"    sources=[{', '.join(sources)}],\n"
        f"    schema=[{_fields(outs, ['Float64'] * len(outs))}],\n"
        '    mode="python",\n'
        ")\n" + udf_source(name, spec.pairs, spec.keyed)
    )
    return "\n\n".join(p.rstrip("\n") + "\n" for p in parts)
