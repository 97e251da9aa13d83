"""A local Feast feature repo on disk: write it, load its definitions, open its store.

Feast runs here with no network: a file (or local Spark) offline store, SQLite online
store, and usage telemetry off (``FEAST_USAGE=False``, set before Feast is imported).
:func:`apply_repo` does what ``feast apply`` does for the generated definitions module.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import TYPE_CHECKING, Any

from mxnorm_spark.core.errors import CorruptStateError
from mxnorm_spark.feast.definitions import DEFINITIONS_FILE, feature_store_yaml, render_definitions
from mxnorm_spark.feast.spec import ViewSpec
from mxnorm_spark.store import filesystem, local_path

if TYPE_CHECKING:
    from feast import FeatureStore

__all__ = ["SPEC_FILE", "apply_repo", "load_definitions", "open_store", "read_spec", "write_repo"]

SPEC_FILE = "mxnorm_feast.json"


def _quiet_feast() -> None:
    os.environ.setdefault("FEAST_USAGE", "False")


def write_repo(repo_dir: str, spec: ViewSpec, *, project: str = "mxnorm") -> str:
    """Write ``feature_store.yaml`` (unless there is one), the definitions module and the
    spec under ``repo_dir``; returns the repo's local path."""
    root = local_path(repo_dir)
    fs = filesystem(root)
    fs.mkdirs(fs.join(root, "data"))
    yaml = fs.join(root, "feature_store.yaml")
    if not fs.exists(yaml):
        fs.write_atomic(yaml, feature_store_yaml(project, spec.offline).encode())
    fs.write_atomic(fs.join(root, DEFINITIONS_FILE), render_definitions(spec).encode())
    fs.write_atomic(fs.join(root, SPEC_FILE), spec.to_json().encode())
    return root


def read_spec(repo_dir: str) -> ViewSpec:
    """The :class:`ViewSpec` a repo was written with."""
    root = local_path(repo_dir)
    fs = filesystem(root)
    where = fs.join(root, SPEC_FILE)
    data = fs.read_bytes(where)
    if data is None:
        raise CorruptStateError(f"{where} does not exist: not a repo written by write_repo")
    return ViewSpec.from_json(data.decode(), source=where)


def load_definitions(repo_dir: str) -> list[Any]:
    """The Feast objects (entities, feature views, on-demand views) the definitions module
    defines, imported from its file as ``feast apply`` imports it."""
    _quiet_feast()
    from feast import Entity, FeatureView
    from feast.on_demand_feature_view import OnDemandFeatureView

    path = os.path.join(local_path(repo_dir), DEFINITIONS_FILE)
    name = f"_mxnorm_feast_defs_{abs(hash(os.path.abspath(path)))}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise CorruptStateError(f"{path} is not an importable definitions module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    kinds = (Entity, FeatureView, OnDemandFeatureView)
    return [v for v in vars(module).values() if isinstance(v, kinds)]


def open_store(repo_dir: str) -> FeatureStore:
    """The ``FeatureStore`` of a repo (its ``feature_store.yaml``)."""
    _quiet_feast()
    from feast import FeatureStore

    return FeatureStore(repo_path=local_path(repo_dir))


def apply_repo(repo_dir: str) -> FeatureStore:
    """Register the repo's definitions (``feast apply``) and return its store."""
    store = open_store(repo_dir)
    store.apply(load_definitions(repo_dir))
    return store
