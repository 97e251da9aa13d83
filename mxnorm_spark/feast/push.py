"""Push a stream's committed states to a Feast online store, exactly once.

:class:`FeastStatePush` is an ``on_commit`` hook of
:class:`~mxnorm_spark.streaming.MXNormStream`: after each micro-batch commits, it writes
the new state's constants as one row of the ``<name>_state`` feature view to the online
store (``FeatureStore.write_to_online_store``). The row's event timestamp is the batch's
commit time as its history record holds it (written once, before the version), so a
replayed batch writes the same row again: the online store ends the same as if the batch
had run once.

The store is opened on first use (and not pickled), so the hook travels with the stream.
"""

from __future__ import annotations

from typing import Any

from mxnorm_spark.core.errors import CorruptStateError
from mxnorm_spark.core.state import MXNormState, scale_of
from mxnorm_spark.feast.names import EVENT_TIMESTAMP
from mxnorm_spark.feast.publish import state_table
from mxnorm_spark.store import filesystem
from mxnorm_spark.store.history import history_dir, read_record

__all__ = ["FeastStatePush", "commit_time"]


def commit_time(state_dir: str, batch_id: int) -> Any:
    """The ``committed_at`` of batch ``batch_id``'s history record (aware, UTC)."""
    table = read_record(filesystem(state_dir), state_dir, batch_id)
    if table is None or table.num_rows == 0:
        raise CorruptStateError(
            f"batch {batch_id} has no history record in {history_dir(state_dir)}"
        )
    return table.column("committed_at")[0].as_py()


class FeastStatePush:
    """``on_commit`` hook: the committed state -> ``<name>_state`` in the online store.

    ``repo_dir``: a Feast repo where the view is applied (see
    :func:`mxnorm_spark.feast.publish_stream`); ``state_dir``: the stream's state directory.
    """

    def __init__(self, repo_dir: str, state_dir: str, *, name: str = "mxnorm") -> None:
        self.repo_dir = repo_dir
        self.state_dir = state_dir
        self.view = f"{name}_state"
        self._store: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_store": None}

    def rows(self, batch_id: int, state: MXNormState) -> Any:
        """The pandas frame written for ``batch_id``: its commit time and constants."""
        import numpy as np

        # A feature with no value yet has NaN constants: the view then gives null for it.
        scale = scale_of(state.var, state.options)
        mean = state.mean
        when = commit_time(self.state_dir, batch_id)
        table = state_table(state.features, [when], mean[None, :], np.asarray(scale)[None, :])
        df = table.to_pandas()
        df[EVENT_TIMESTAMP] = df[EVENT_TIMESTAMP].dt.tz_convert("UTC")
        return df

    def __call__(self, batch_id: int, state: MXNormState) -> None:
        if self._store is None:
            from mxnorm_spark.feast.repo import open_store

            self._store = open_store(self.repo_dir)
        _write_entityless(self._store, self.view, self.rows(batch_id, state))


def _write_entityless(store: Any, view_name: str, df: Any) -> None:
    """Write ``df``'s rows to the online store of a view with no entity, under the key
    ``materialize`` uses (Feast's dummy entity). ``FeatureStore.write_to_online_store``
    keys such rows by an empty entity key, which online reads never find (Feast 0.67)."""
    from feast.feature_view import DUMMY_ENTITY_ID, DUMMY_ENTITY_VAL
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    view = store.get_feature_view(view_name)
    key = EntityKey(join_keys=[DUMMY_ENTITY_ID], entity_values=[Value(string_val=DUMMY_ENTITY_VAL)])
    names = [f.name for f in view.features]
    rows = []
    for record in df.to_dict("records"):
        values = {
            n: Value() if record[n] != record[n] else Value(double_val=float(record[n]))
            for n in names
        }
        rows.append((key, values, record[EVENT_TIMESTAMP].to_pydatetime(), None))
    store._get_provider().online_write_batch(store.config, view, rows, progress=None)
