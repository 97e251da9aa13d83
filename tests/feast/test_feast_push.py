"""A stream's states in Feast: publish_stream (history, by commit time) and the on_commit
hook FeastStatePush (online store), exactly once under replays; no Spark needed."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("FEAST_USAGE", "False")


def committed_stream(path: str, batches: int) -> list[Any]:
    """A state directory as MXNormStream leaves it: history record, then version, per batch."""
    from mxnorm_spark.core.moments import Moments
    from mxnorm_spark.core.state import MXNormState
    from mxnorm_spark.store import StateStore

    store = StateStore(path)
    rng = np.random.default_rng(3)
    state = MXNormState.create(["a", "b"])
    states = []
    for batch in range(batches):
        x = rng.normal([10.0 + batch, -3.0], [1.0, 2.0 + batch], size=(50, 2))
        moments = Moments.from_array(x)
        state = state.update(moments, batch)
        store.record_batch(batch, rows=50, moments=moments, state=state)
        store.commit(batch, state)
        states.append(state)
    return states


@pytest.fixture(scope="module")
def stream_repo(tmp_path_factory: Any) -> dict[str, Any]:
    from mxnorm_spark.feast import apply_repo, publish_stream

    root = tmp_path_factory.mktemp("feast_stream")
    state_dir, repo = str(root / "state"), str(root / "repo")
    states = committed_stream(state_dir, 3)
    publish_stream(state_dir, repo, outputs=["a_z", "b_z"])
    return {"states": states, "state_dir": state_dir, "repo": repo, "store": apply_repo(repo)}


def served(store: Any, rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    got = store.get_online_features(features=["mxnorm:a_z", "mxnorm:b_z"], entity_rows=rows)
    return dict(got.to_dict())


ROWS = [{"a": 11.5, "b": -2.0}, {"a": 9, "b": 0.25}, {"a": None, "b": -7.5}]


def expected(state: Any) -> list[dict[str, Any]]:
    from mxnorm_spark.serving.normalizer import Normalizer

    norm = Normalizer(state, input_cols=["a", "b"], output_cols=["a_z", "b_z"])
    return [norm.transform_row(r) for r in ROWS]


def same(got: dict[str, list[Any]], want: list[dict[str, Any]]) -> bool:
    return all(
        got[c][i] == want[i][c] if want[i][c] is not None else got[c][i] is None
        for i in range(len(want))
        for c in ("a_z", "b_z")
    )


def test_each_pushed_batch_serves_its_state_and_a_replay_changes_nothing(
    stream_repo: dict[str, Any],
) -> None:
    from mxnorm_spark.feast import FeastStatePush

    p = stream_repo
    push = FeastStatePush(p["repo"], p["state_dir"])
    for batch, state in enumerate(p["states"]):
        push(batch, state)
        assert same(served(p["store"], ROWS), expected(state)), batch
    last = len(p["states"]) - 1
    push(last, p["states"][last])  # Spark replays the last micro-batch after a restart
    assert same(served(p["store"], ROWS), expected(p["states"][last]))
    # The row pushed for a batch carries its commit time: the same on every replay.
    again = push.rows(last, p["states"][last])
    assert again.equals(push.rows(last, p["states"][last]))


def test_historical_state_follows_the_commit_times(stream_repo: dict[str, Any]) -> None:
    import datetime as dt

    import pandas as pd

    from mxnorm_spark.feast.push import commit_time

    p = stream_repo
    times = [commit_time(p["state_dir"], b) for b in range(len(p["states"]))]
    entity = pd.DataFrame(
        {
            "event_timestamp": [t + dt.timedelta(microseconds=1) for t in times],
            "a": [11.5] * len(times),
            "b": [-2.0] * len(times),
        }
    )
    got = (
        p["store"]
        .get_historical_features(entity_df=entity, features=["mxnorm:a_z", "mxnorm:b_z"])
        .to_df()
        .sort_values("event_timestamp")
    )
    for i, state in enumerate(p["states"]):
        want = expected(state)[0]
        assert got["a_z"].iloc[i] == want["a_z"]
        assert got["b_z"].iloc[i] == want["b_z"]


@pytest.mark.spark
def test_stream_on_commit_pushes_each_batch_and_a_replay_writes_the_same(
    spark: Any, tmp_path: Any
) -> None:
    import pandas as pd

    from mxnorm_spark.feast import FeastStatePush, apply_repo, publish_stream
    from mxnorm_spark.store import StateStore
    from mxnorm_spark.streaming import MXNormStream

    rng = np.random.default_rng(9)

    def frame(n: int, shift: float) -> Any:
        data = {"a": rng.normal(shift, 1.0, n), "b": rng.normal(-shift, 2.0, n)}
        return spark.createDataFrame(pd.DataFrame(data))

    state_dir, repo = str(tmp_path / "state"), str(tmp_path / "repo")
    stream = MXNormStream(spark, state_dir, cols=["a", "b"], output=str(tmp_path / "out"))
    stream.foreach_batch(frame(30, 0.0), 0)
    publish_stream(state_dir, repo, outputs=["a_z", "b_z"])
    feast_store = apply_repo(repo)
    stream.on_commit = FeastStatePush(repo, state_dir)
    stream.foreach_batch(frame(25, 3.0), 1)
    latest = StateStore(state_dir).latest()
    assert same(served(feast_store, ROWS), expected(latest))
    before = served(feast_store, ROWS)
    stream.foreach_batch(frame(40, 9.0), 1)  # a replay with other rows: the committed state
    assert served(feast_store, ROWS) == before


@pytest.mark.spark
def test_event_time_stream_pushes_the_state_of_its_newest_fold(spark: Any, tmp_path: Any) -> None:
    import pandas as pd
    from reference import Reference, assert_state_close

    from mxnorm_spark.core.event_time import EventTime
    from mxnorm_spark.feast import FeastStatePush, apply_repo, publish_stream
    from mxnorm_spark.store import StateStore
    from mxnorm_spark.streaming import MXNormStream

    rng = np.random.default_rng(5)
    rows = []

    def frame(days: list[int]) -> Any:
        n = 8 * len(days)
        data = {"day": np.resize(days, n), "a": rng.normal(2.0, 1.0, n), "b": rng.normal(0, 3, n)}
        rows.append(pd.DataFrame(data))
        return spark.createDataFrame(rows[-1])

    state_dir, repo = str(tmp_path / "state"), str(tmp_path / "repo")
    stream = MXNormStream(
        spark, state_dir, cols=["a", "b"], output=str(tmp_path / "out"), apply_at="before",
        progress=None, event_time=EventTime(batch_col="day"),
    )  # fmt: skip
    stream.foreach_batch(frame([0, 1]), 0)  # day 0 folds (day 1 is the watermark)
    publish_stream(state_dir, repo, outputs=["a_z", "b_z"])
    feast_store = apply_repo(repo)
    stream.on_commit = FeastStatePush(repo, state_dir)
    stream.foreach_batch(frame([1, 3, 2]), 1)  # days 1 and 2 fold: one push, after day 2
    latest = StateStore(state_dir).latest()
    assert latest is not None and latest.batches_seen == 3
    ref = Reference(alpha=latest.alpha)
    for _, group in pd.concat(rows).query("day <= 2").groupby("day", sort=True):
        ref.adapt(group[["a", "b"]].to_numpy())
    assert ref.mean is not None and ref.var is not None
    assert_state_close(latest.mean, latest.var, ref.mean, ref.var, 1e-12)
    assert same(served(feast_store, ROWS), expected(latest))


def test_feast_views_command_for_a_state_directory(
    stream_repo: dict[str, Any], tmp_path: Any
) -> None:
    from mxnorm_spark.cli.commands import main
    from mxnorm_spark.feast import load_definitions, read_spec

    repo = str(tmp_path / "cli_repo")
    args = ["feast-views", "--state-dir", stream_repo["state_dir"], "--repo", repo]
    assert main(args) == 2  # --outputs is required for a state directory
    assert main([*args, "--outputs", "a_z,b_z", "--name", "sensors"]) == 0
    spec = read_spec(repo)
    assert (spec.name, spec.features, spec.outputs) == ("sensors", ("a", "b"), ("a_z", "b_z"))
    names = {getattr(v, "name", None) for v in load_definitions(repo)}
    assert {"sensors", "sensors_state"} <= names
