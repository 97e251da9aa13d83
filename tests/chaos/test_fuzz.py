"""Fuzzed inputs: every one gives a named error (an ``MXNormError``) or a documented result,
never a traceback of another kind, and a refused input commits nothing.

The parsers and validators are fuzzed directly (hypothesis, modest example counts); Spark
runs only for a few drawn cases at the end.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import string
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mxnorm_spark import Moments, MXNormState
from mxnorm_spark.cli.commands import build_parser
from mxnorm_spark.cli.config import SECTIONS, config_from_args, parse_config_text
from mxnorm_spark.cli.config_fields import fields
from mxnorm_spark.core.errors import (
    CorruptStateError,
    MXNormError,
    SchemaMismatchError,
    ValueRangeError,
)
from mxnorm_spark.core.state import StateOptions, _checksum
from mxnorm_spark.store import StateStore

pytestmark = pytest.mark.chaos
FAST = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


def valid_doc() -> dict[str, Any]:
    s = MXNormState.create(["a", "b"], alpha=0.2)
    s = s.update(Moments.from_array(np.array([[1.0, 2.0], [3.0, 5.0]])), batch_id=0)
    return dict(json.loads(s.to_json()))


# ---- state JSON -----------------------------------------------------------------------------
@FAST
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_state_bytes(data: bytes) -> None:
    with pytest.raises(CorruptStateError):  # nothing random passes the type tag and checksum
        MXNormState.from_json(data)


@FAST
@given(st.sampled_from(sorted(valid_doc()["payload"])), json_values, st.booleans())
def test_state_payload_with_a_valid_checksum(key: str, value: Any, drop: bool) -> None:
    # The worst case: a tampered payload whose checksum was recomputed to match.
    doc = valid_doc()
    if drop:
        del doc["payload"][key]
    else:
        doc["payload"][key] = value
    try:
        doc["checksum"] = _checksum(doc["payload"])
    except ValueError:  # inf or NaN: no checksum covers them (the writer refuses them too)
        return
    text = json.dumps(doc)
    try:
        state = MXNormState.from_json(text)
    except MXNormError:
        return
    # Accepted: then it is a consistent state that round-trips and normalizes or says why.
    assert MXNormState.from_json(state.to_json()).to_json() == state.to_json()
    try:
        mean, scale = state.normalization_constants()
    except MXNormError:
        return
    assert mean.shape == scale.shape == (state.n_features,)


# ---- config TOML ----------------------------------------------------------------------------
def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return {math.inf: "inf", -math.inf: "-inf"}.get(v, repr(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(v)  # a TOML basic string is a JSON string (for these characters)


KNOWN_KEYS = sorted({k for c in SECTIONS.values() for k in fields(c)})
toml_scalars = (
    st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.text(alphabet=string.printable.strip() + "é☃", max_size=12)
)
toml_tables = st.dictionaries(
    st.sampled_from([*SECTIONS, "fitt", "stream"]),
    st.dictionaries(
        st.sampled_from([*KNOWN_KEYS, "alpah", "colls"]),
        toml_scalars | st.lists(st.text(string.ascii_letters, max_size=4), max_size=3),
        max_size=5,
    ),
    max_size=3,
)


@FAST
@given(toml_tables)
def test_config_tables(doc: dict[str, dict[str, Any]]) -> None:
    text = "\n".join(
        f"[{name}]\n" + "\n".join(f"{k} = {toml_value(v)}" for k, v in table.items())
        for name, table in doc.items()
    )
    try:
        cfg = parse_config_text(text, "fuzz.toml")
    except MXNormError:
        return
    for name in cfg.sections:
        assert name in SECTIONS


@FAST
@given(st.text(max_size=200))
def test_config_text(text: str) -> None:
    with contextlib.suppress(MXNormError):
        parse_config_text(text, "fuzz.toml")


# ---- CLI flags ------------------------------------------------------------------------------
FLAGS = {
    "fit": ["--input", "--state", "--cols", "--batch-col", "--alpha", "--eps", "--decay",
            "--var-update", "--zero-variance", "--engine", "--apply-at", "--key-cols",
            "--min-key-rows", "--format", "--read-option"],
    "stream": ["--input", "--output", "--state", "--checkpoint", "--cols", "--alpha",
               "--retention", "--max-files-per-trigger", "--trigger-interval", "--schema",
               "--evict-after", "--key-cols", "--format"],
}  # fmt: skip


@FAST
@given(
    st.sampled_from(sorted(FLAGS)),
    st.data(),
)
def test_cli_flags(command: str, data: st.DataObject) -> None:
    from mxnorm_spark.cli.config import FitConfig, StreamConfig

    chosen = data.draw(st.lists(st.sampled_from(FLAGS[command]), max_size=8, unique=True))
    argv = [command]
    for flag in chosen:
        value = data.draw(
            st.sampled_from(["0", "-1", "1e309", "nan", "a,b", "", " ", "x=y", "10 seconds", "é"])
            | st.text(max_size=6)
        )
        assume(not value.startswith("-") or value == "-1")
        argv += [flag, value]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse's usage error: documented, exit status 2
        assert exc.code == 2
        return
    cls = FitConfig if command == "fit" else StreamConfig
    with contextlib.suppress(MXNormError):
        config_from_args(cls, args, None, command)


# ---- stream files: csv headers, json records, parquet schema drift -----------------------------
def expected_schema() -> Any:
    from pyspark.sql import types as T

    return T.StructType(
        [T.StructField("id", T.LongType()), T.StructField("a", T.DoubleType()),
         T.StructField("b", T.DoubleType())]
    )  # fmt: skip


odd_names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00"),
    min_size=1,
    max_size=8,
)


@FAST
@given(
    st.lists(st.sampled_from(["id", "a", "b"]) | odd_names, max_size=5),
    st.sampled_from([",", ";"]),
)
def test_csv_header(tmp_path_factory: pytest.TempPathFactory, header: list[str], sep: str) -> None:
    from mxnorm_spark.streaming.sources import FileSource

    d = tmp_path_factory.mktemp("csv")
    path = d / "f.csv"
    path.write_text(sep.join(header) + "\n1" + sep + "2\n", encoding="utf-8")
    source = FileSource(str(d), "csv", options={"sep": sep})
    cleaned = [h.strip() for h in header]
    try:
        source.check_file(None, str(path), expected_schema(), ["a", "b"])  # type: ignore[arg-type]
    except SchemaMismatchError as exc:
        assert str(path) in str(exc)
        assert cleaned != ["id", "a", "b"]
        return
    # Accepted only when the header is the stream's columns in order (a lone header of
    # separators or quotes reads as those names too; csv decides).
    import csv
    import io

    parsed = next(csv.reader(io.StringIO(sep.join(header)), delimiter=sep), [])
    assert [h.strip() for h in parsed] == ["id", "a", "b"]


@FAST
@given(
    st.dictionaries(st.sampled_from(["id", "a", "b"]) | odd_names, json_values, max_size=4)
    | json_values
)
def test_json_first_record(tmp_path_factory: pytest.TempPathFactory, record: Any) -> None:
    from mxnorm_spark.streaming.sources import FileSource

    d = tmp_path_factory.mktemp("json")
    path = d / "f.json"
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    source = FileSource(str(d), "json")
    try:
        source.check_file(None, str(path), expected_schema(), ["a", "b"])  # type: ignore[arg-type]
    except SchemaMismatchError as exc:
        assert isinstance(record, dict) and not {"a", "b"} <= set(record)
        assert str(path) in str(exc)
        return
    # Passed the first-record check: a dict with both features, or not an object at all
    # (then Spark's PERMISSIVE read reports the record as corrupt, see the drawn cases).
    assert not isinstance(record, dict) or {"a", "b"} <= set(record)


arrow_types = st.sampled_from(
    [pa.int64(), pa.int32(), pa.float64(), pa.float32(), pa.string(), pa.bool_(), pa.uint64(),
     pa.decimal128(10, 2), pa.timestamp("us")]
)  # fmt: skip


@FAST
@given(
    st.dictionaries(st.sampled_from(["a", "b", "id"]), arrow_types, max_size=3),
    st.lists(st.tuples(odd_names, arrow_types), max_size=2),
    st.sets(st.sampled_from(["a", "b", "id"]), max_size=2),
)
def test_parquet_schema_drift(
    tmp_path_factory: pytest.TempPathFactory,
    changed: dict[str, Any],
    added: list[tuple[str, Any]],
    dropped: set[str],
) -> None:
    from mxnorm_spark.streaming.sources import FileSource

    base = {"id": pa.int64(), "a": pa.float64(), "b": pa.float64()}
    schema = {k: changed.get(k, t) for k, t in base.items() if k not in dropped}
    for name, t in added:
        schema.setdefault(name, t)
    table = pa.table({k: pa.array([None], type=t) for k, t in schema.items()})
    d = tmp_path_factory.mktemp("pq")
    path = d / "f.parquet"
    pq.write_table(table, path)
    source = FileSource(str(d), "parquet")
    compatible = all(k in schema and schema[k] == t for k, t in base.items())
    try:
        source.check_file(None, str(path), expected_schema(), ["a", "b"])  # type: ignore[arg-type]
    except SchemaMismatchError as exc:
        assert not compatible and str(path) in str(exc)
        return
    assert compatible  # a new column is read past (documented); a change or a loss is not


# ---- denormal and huge values, odd feature names ----------------------------------------------
finite_or_not = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [5e-324, -5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, -1.7976931348623157e308]
)


@FAST
@given(st.lists(st.lists(finite_or_not, min_size=2, max_size=2), min_size=1, max_size=6))
def test_extreme_values(rows: list[list[float]]) -> None:
    x = np.array(rows, dtype=np.float64)
    state = MXNormState.create(["a", "b"])
    with np.errstate(all="ignore"):
        try:
            new = state.update(Moments.from_array(x), batch_id=0)
        except ValueRangeError as exc:
            assert "overflow float64" in str(exc)
            return
    valid = np.isfinite(x)
    for j in range(2):
        v = x[valid[:, j], j]
        if v.size:  # a feature with valid values has a finite state: the two-pass truth
            assert np.isfinite(new.mean[j]) and np.isfinite(new.var[j])
            ref_mean = math.fsum(v.tolist()) / v.size if np.all(np.abs(v) < 1e300) else new.mean[j]
            assert abs(new.mean[j] - ref_mean) <= 1e-12 * max(abs(ref_mean), 1e-300) + 1e-300
            assert new.var[j] >= 0
        else:  # no valid value: no state yet (NaN), as documented
            assert math.isnan(new.mean[j])


@FAST
@given(
    st.lists(st.lists(finite_or_not, min_size=2, max_size=2), min_size=1, max_size=4),
    st.lists(st.lists(finite_or_not, min_size=2, max_size=2), min_size=1, max_size=4),
)
def test_extreme_values_in_a_backfill(first: list[list[float]], second: list[list[float]]) -> None:
    # The backfill's columnar fold refuses exactly what the stream's update refuses.
    from mxnorm_spark.core.history import fold_history

    state = MXNormState.create(["a", "b"], alpha=0.3)
    with np.errstate(all="ignore"):
        parts = [Moments.from_array(np.array(x, dtype=np.float64)) for x in (first, second)]
        stacked = tuple(np.stack(f) for f in zip(*(p.fields() for p in parts), strict=True))
        try:
            want = state.update(parts[0], batch_id=0).update(parts[1], batch_id=1)
        except ValueRangeError:
            with pytest.raises(ValueRangeError, match="overflow float64"):
                fold_history(state, stacked)
            return
        got = fold_history(state, stacked).state(-1)
    np.testing.assert_array_equal(got.mean, want.mean)
    np.testing.assert_array_equal(got.var, want.var)


# The keyed kernels fold many keys at once on lanes; each key must refuse exactly what a
# state of its own refuses (MXNormState.update), with the same message naming the key.
KEYED_OPTIONS = [
    StateOptions(alpha=0.3),
    StateOptions(alpha=None),
    StateOptions(alpha=0.5, var_update="mixture", decay="rows"),
]
keyed_rows = st.lists(
    st.tuples(st.integers(0, 2), st.lists(finite_or_not, min_size=2, max_size=2)),
    min_size=1,
    max_size=8,
)


def per_key_reference(
    states: dict[int, MXNormState], rows: list[tuple[int, list[float]]], batch: int,
    options: StateOptions,
) -> str | None:  # fmt: skip
    """Fold one batch into each key's own state (keys ascending); the message of the first
    key refused, as the keyed kernels word it, or None."""
    for key in sorted({k for k, _ in rows}):
        x = np.array([v for k, v in rows if k == key], dtype=np.float64)
        s = states.get(key, MXNormState.create(["a", "b"], options=options))
        try:
            states[key] = s.update(Moments.from_array(x), batch_id=batch)
        except ValueRangeError as exc:
            return str(exc).replace(f"of batch {batch} ", f"of key {key} in batch {batch} ")
    return None


def assert_finite_where_seen(count: Any, mean: Any, var: Any) -> None:
    seen = np.asarray(count) > 0
    assert np.isfinite(np.asarray(mean)[seen]).all() and np.isfinite(np.asarray(var)[seen]).all()


@FAST
@given(st.sampled_from(KEYED_OPTIONS), keyed_rows, keyed_rows)
def test_extreme_values_in_a_keyed_backfill(
    options: StateOptions, first: list[tuple[int, list[float]]],
    second: list[tuple[int, list[float]]],
) -> None:  # fmt: skip
    from mxnorm_spark.keyed.kernel import fold_kernel

    rows = sorted([(k, 0, v) for k, v in first] + [(k, 1, v) for k, v in second],
                  key=lambda r: r[:2])  # fmt: skip
    table = pa.table({"k": [r[0] for r in rows], "day": [r[1] for r in rows],
                      "a": [r[2][0] for r in rows], "b": [r[2][1] for r in rows]})  # fmt: skip
    kernel = fold_kernel(1, True, options, ("a", "b"))
    states: dict[int, MXNormState] = {}
    with np.errstate(all="ignore"):
        # The kernel names the first (key, batch) refused in key order, then batch order.
        want = None
        for key in sorted({r[0] for r in rows}):
            for day in (0, 1):
                part = [(key, r[2]) for r in rows if r[:2] == (key, day)]
                if part and want is None:
                    want = per_key_reference(states, part, day, options)
        if want is not None:
            with pytest.raises(ValueRangeError) as info:
                list(kernel(iter(table.to_batches())))
            assert str(info.value) == want
            return
        out = pa.Table.from_batches(list(kernel(iter(table.to_batches())))).to_pydict()
    for j in range(2):
        assert_finite_where_seen(out[f"f{j}_count"], out[f"f{j}_mean"], out[f"f{j}_var"])
    last = {k: i for i, k in enumerate(out["k"])}  # each key's row after its last batch
    for key, i in last.items():
        s = states[key]
        assert [out["f0_count"][i], out["f1_count"][i]] == s.count.tolist()
        for j in range(2):
            got = np.array([out[f"f{j}_mean"][i], out[f"f{j}_var"][i]])
            np.testing.assert_allclose(got, [s.mean[j], s.var[j]], rtol=1e-9, equal_nan=True)


def stream_input(
    layout: Any, rows: list[tuple[int, list[float]]], snapshot: pa.Table | None
) -> pa.Table:
    """stream_fold's input: a micro-batch's data rows and the previous snapshot's rows,
    sorted by (key, source)."""
    from mxnorm_spark.keyed.stream_kernel import SNAPSHOT_SCALARS, SOURCE_COLUMN

    rows = sorted(rows, key=lambda r: r[0])
    n, values = len(rows), layout.state_columns
    types = layout.schema([pa.field("k", pa.int64())])
    data: dict[str, Any] = {"k": pa.array([r[0] for r in rows], pa.int64()),
                            SOURCE_COLUMN: pa.array(np.ones(n, np.int32))}  # fmt: skip
    data |= {f: pa.nulls(n, types.field(f).type) for f in SNAPSHOT_SCALARS}
    data |= {v: pa.array([r[1][i] for r in rows], pa.float64()) if i < 2
             else pa.nulls(n, pa.float64()) for i, v in enumerate(values)}  # fmt: skip
    table = pa.table(data)
    if snapshot is None:
        return table
    old = {"k": snapshot["k"], SOURCE_COLUMN: pa.array(np.zeros(snapshot.num_rows, np.int32))}
    old |= {f: snapshot[f] for f in (*SNAPSHOT_SCALARS, *values)}
    return pa.concat_tables([pa.table(old).cast(table.schema), table]).sort_by(
        [("k", "ascending"), (SOURCE_COLUMN, "ascending")]
    )


@FAST
@given(st.sampled_from(KEYED_OPTIONS), keyed_rows, keyed_rows)
def test_extreme_values_in_a_keyed_stream(
    options: StateOptions, first: list[tuple[int, list[float]]],
    second: list[tuple[int, list[float]]],
) -> None:  # fmt: skip
    from mxnorm_spark.keyed.stream_kernel import SnapshotLayout, stream_fold

    layout = SnapshotLayout(2, options, "after", ("a", "b"))
    states: dict[int, MXNormState] = {}
    snapshot = None
    with np.errstate(all="ignore"):
        for batch, rows in enumerate((first, second)):
            want = per_key_reference(states, rows, batch, options)
            table = stream_input(layout, rows, snapshot)
            if want is not None:
                with pytest.raises(ValueRangeError) as info:
                    stream_fold(table, 1, layout, batch_id=batch, evict_after=None)
                assert str(info.value) == want
                return
            snapshot = stream_fold(table, 1, layout, batch_id=batch, evict_after=None)
    out = snapshot.to_pydict()
    for i, key in enumerate(out["k"]):
        s = states[key]
        assert [out["f0_count"][i], out["f1_count"][i]] == s.count.tolist()
        if options.alpha is not None:  # an EMA snapshot holds the mean and variance
            for j in range(2):
                got = [out[f"f{j}_mean"][i], out[f"f{j}_var"][i]]
                assert_finite_where_seen(s.count[j], got[0], got[1])
                np.testing.assert_allclose(got, [s.mean[j], s.var[j]], rtol=1e-9, equal_nan=True)


@FAST
@given(st.lists(odd_names, min_size=1, max_size=4))
def test_feature_names_round_trip(
    tmp_path_factory: pytest.TempPathFactory, names: list[str]
) -> None:
    try:
        state = MXNormState.create(names)
    except MXNormError:
        assert len(set(names)) < len(names) or any(not n.strip() for n in names)
        return
    state = state.update(Moments.from_array(np.ones((2, len(names)))), batch_id=0)
    store = StateStore(tmp_path_factory.mktemp("st"))
    store.commit(0, state)
    got = store.get(0)
    assert got is not None and got.features == tuple(names) and got.to_json() == state.to_json()


# ---- a few drawn cases through Spark: nothing committed for a refused file -----------------------
BAD_FILES = [
    ("csv", "id,a,b\n1,2.5,3\n2,1e999,4\n3,,5\n", None),  # 1e999 reads as inf: invalid, kept
    ("csv", "id,a,b\n1,2.5,3\n2,\"x,y\",4\n", SchemaMismatchError),
    ("csv", "id,a,b\n1,2.5\n", SchemaMismatchError),  # a short row: a record that does not fit
    ("csv", "id,b,a\n1,2.5,3\n", SchemaMismatchError),  # columns swapped
    ("json", '{"id": 1, "a": 2.5, "b": 3}\n[1, 2]\n', SchemaMismatchError),
    ("json", '{"id": 1, "a": 2.5, "b": 3, "é x": 4}\n', None),  # a new key: read past
    ("json", '{"id": 1, "a": "2.5", "b": 3}\n', SchemaMismatchError),  # a type change
]


@pytest.mark.spark
@pytest.mark.parametrize(("fmt", "text", "error"), BAD_FILES)
def test_drawn_files_through_a_stream(
    spark: Any, tmp_path: Path, fmt: str, text: str, error: type[Exception] | None
) -> None:
    from mxnorm_spark.streaming.sources import CORRUPT_COLUMN, FILE_COLUMN, FileSource
    from mxnorm_spark.streaming.updater import MXNormStream

    inp = tmp_path / "in"
    inp.mkdir()
    good = inp / f"good.{fmt}"
    good.write_text("id,a,b\n0,1.0,2.0\n" if fmt == "csv" else '{"id": 0, "a": 1.0, "b": 2.0}\n')
    os.utime(good, (1_000_000_000, 1_000_000_000))
    schema = FileSource(str(inp), fmt).resolve_schema(spark, ["a", "b"])
    (inp / f"bad.{fmt}").write_text(text)
    source = FileSource(str(inp), fmt, schema=schema)
    stream = MXNormStream(spark, str(tmp_path / "state"), cols=["a", "b"],
                          output=str(tmp_path / "out"), progress=None)  # fmt: skip
    stream.source = source
    from pyspark.sql import functions as F

    df = (
        spark.read.format(fmt).schema(schema.add(CORRUPT_COLUMN, "string"))
        .options(**source._reader_options()).load(str(inp / f"bad.{fmt}"))
        .withColumn(FILE_COLUMN, F.input_file_name())
    )  # fmt: skip
    if error is not None:
        with pytest.raises(error):
            stream.foreach_batch(df, 0)
        assert StateStore(tmp_path / "state").batch_ids() == []
        assert not list((tmp_path / "out").glob("batch_id=*"))
    else:
        stream.foreach_batch(df, 0)
        assert StateStore(tmp_path / "state").batch_ids() == [0]
        out = spark.read.parquet(str(tmp_path / "out")).toPandas()
        rows = text.count("\n") - (fmt == "csv")  # a csv file's header is no row
        assert len(out) == rows  # every row once, invalid values kept (handle_invalid="keep")
