"""MomentsCombineFn, the row conversion and the fold without a runner (bits where the
merge order is fixed), and the named errors of the transforms on the in-process
FnApiRunner."""

from __future__ import annotations

from decimal import Decimal

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from mxnorm_spark import Moments, MXNormState
from mxnorm_spark.beam import FitHistory, FitMXNorm, MomentsCombineFn, Normalize
from mxnorm_spark.beam.combine import CHUNK_ROWS
from mxnorm_spark.beam.fit import fold_batches
from mxnorm_spark.beam.rows import as_matrix
from mxnorm_spark.core.errors import InvalidParameterError, NonNumericError
from mxnorm_spark.core.state import StateOptions


def _bits(m: Moments) -> list[bytes]:
    return [f.tobytes() for f in m.fields()]


def test_combine_gives_the_bits_of_the_numpy_core_in_a_fixed_order() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(1e9, 1.0, size=(CHUNK_ROWS + 500, 3))
    x[::7, 1] = np.nan
    x[::11, 2] = np.inf
    fn = MomentsCombineFn(["a", "b", "c"])
    rows = [tuple(None if np.isnan(v) else v for v in r) for r in x.tolist()]
    one = fn.extract_output(fn.add_inputs(fn.create_accumulator(), rows))
    # Chunks of CHUNK_ROWS rows, merged left to right.
    core = Moments.from_array(x[:CHUNK_ROWS]).merge(Moments.from_array(x[CHUNK_ROWS:]))
    assert _bits(one) == _bits(core)
    a = fn.add_inputs(fn.create_accumulator(), rows[:100])
    b = fn.add_inputs(fn.create_accumulator(), rows[100:300])
    merged = fn.extract_output(fn.merge_accumulators([a, b]))
    assert _bits(merged) == _bits(Moments.from_array(x[:100]).merge(Moments.from_array(x[100:300])))
    coder = fn.get_accumulator_coder()
    c = fn.add_inputs(fn.create_accumulator(), rows[:50])
    back = coder.decode(coder.encode(c))
    assert back.rows == 50 and _bits(back.moments) == _bits(Moments.from_array(x[:50]))
    empty = fn.extract_output(fn.merge_accumulators([]))
    assert empty.count.tolist() == [0.0, 0.0, 0.0]


def test_values_are_cast_as_spark_casts_them_and_text_is_rejected() -> None:
    got = as_matrix([(1, None, Decimal("0.1")), (2**60 + 1, 2.5, None)], ["a", "b", "c"])
    assert got[0, 2] == float(Decimal("0.1")) and got[1, 0] == float(2**60 + 1)
    assert np.isnan(got[0, 1]) and np.isnan(got[1, 2])
    with pytest.raises(NonNumericError, match=r"column 'b' holds '2\.5'"):
        as_matrix([(1.0, "2.5")], ["a", "b"])
    with pytest.raises(NonNumericError, match="column 'a' holds True"):
        as_matrix([(True, 1.0)], ["a", "b"])


def test_fold_is_the_update_loop_bit_for_bit_in_ascending_batch_order() -> None:
    rng = np.random.default_rng(4)
    parts = {d: Moments.from_array(rng.normal(d, 1 + d, size=(20, 2))) for d in (5, 1, 3)}
    opts = StateOptions(alpha=0.2, var_update="mixture", decay="rows")
    start = MXNormState.create(["a", "b"], options=opts)
    folded = fold_batches(start, parts.items(), "day")
    assert folded is not None and folded.batch_values == (1, 3, 5)
    loop = start
    for d in (1, 3, 5):
        loop = loop.update(parts[d])
    assert folded.final.to_json() == loop.to_json()
    with pytest.raises(InvalidParameterError, match="cannot be ordered"):
        fold_batches(start, [(1, parts[1]), ("x", parts[3])], "day")


def _run(build: object) -> None:
    with beam.Pipeline(runner=FnApiRunner()) as p:
        build(p)  # type: ignore[operator]


def test_named_errors_on_the_runner() -> None:
    rows = [{"day": 1, "x": 1.0}, {"day": None, "x": 2.0}]
    with pytest.raises(Exception, match="batch column 'day' is null in a row"):
        _run(lambda p: p | beam.Create(rows) | FitMXNorm(["x"], batch_col="day"))
    only_invalid = [{"x": None}, {"x": float("nan")}]
    with pytest.raises(Exception, match=r"feature\(s\) \['x'\] have no valid value"):
        _run(lambda p: p | beam.Create(only_invalid) | FitMXNorm(["x"]))
    with pytest.raises(Exception, match=r"\['x'\]"):
        _run(lambda p: p | beam.Create([{"y": 1.0}]) | FitMXNorm(["x"]))

    def invalid(p: beam.Pipeline) -> None:
        state = p | "S" >> beam.Create(
            [MXNormState.create(["x"]).update(Moments.from_array(np.array([[1.0], [3.0]])))]
        )
        _ = p | beam.Create([{"x": np.inf}]) | Normalize(state, handle_invalid="error")

    with pytest.raises(Exception, match="column 'x' holds an infinite value"):
        _run(invalid)

    def keyed_history(p: beam.Pipeline) -> None:
        rows = p | beam.Create([{"k": "a", "day": 1, "x": 1.0}, {"k": "a", "day": 2, "x": 3.0}])
        history = rows | "H" >> FitHistory(["x"], batch_col="day")
        keys = rows | "K" >> FitMXNorm(["x"], key_cols=["k"])
        _ = rows | Normalize(history, key_states=keys, key_cols=["k"])

    with pytest.raises(Exception, match="the key states must be histories too"):
        _run(keyed_history)
    with pytest.raises(InvalidParameterError, match="apply_at must be one of"):
        Normalize(None, apply_at="later")  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="key_states and key_cols go together"):
        Normalize(None, key_cols=["k"])  # type: ignore[arg-type]
