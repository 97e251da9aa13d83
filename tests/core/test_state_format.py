"""docs/guides/state-format.md tells the truth: its example loads, and its checksum rules,
implemented here from the text alone, give the checksum the package writes."""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mxnorm_spark import Moments, MXNormState, UnsupportedSchemaVersionError

DOC = Path(__file__).resolve().parents[2] / "docs" / "guides" / "state-format.md"


def _doc_example() -> str:
    match = re.search(r"```json\n(.*?)```", DOC.read_text(), re.S)
    assert match is not None, "the example block is gone from docs/guides/state-format.md"
    return match.group(1)


def _float_text(x: float) -> str:
    """A float spelled by the document's rules, without Python's repr."""
    digits = np.format_float_scientific(x, unique=True, trim="-")  # shortest digits
    mantissa, exp_text = digits.split("e")
    exponent = int(exp_text)
    if -4 <= exponent <= 15:
        text = np.format_float_positional(x, unique=True, trim="0")
        return text if "." in text else text + ".0"
    sign = "-" if exponent < 0 else "+"
    return f"{mantissa}e{sign}{abs(exponent):02d}"


def _canonical(value: Any) -> str:
    if isinstance(value, dict):
        items = sorted(value.items())
        return "{" + ",".join(f"{json.dumps(k)}:{_canonical(v)}" for k, v in items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_canonical(v) for v in value) + "]"
    if isinstance(value, float):
        return _float_text(value)
    return json.dumps(value)


def test_the_documented_example_loads_and_verifies() -> None:
    state = MXNormState.from_json(_doc_example())
    assert state.features == ("temperature", "pressure")
    assert state.count.tolist() == [3.0, 2.0]  # the NaN did not count


def test_the_checksum_follows_the_documented_rules() -> None:
    doc = json.loads(_doc_example())
    digest = hashlib.sha256(_canonical(doc["payload"]).encode()).hexdigest()
    assert doc["checksum"] == f"sha256:{digest}"


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_the_documented_float_spelling_is_pythons(x: float) -> None:
    assert _float_text(x) == repr(x)


def test_random_states_checksum_by_the_rules() -> None:
    rng = np.random.default_rng(1)
    s = MXNormState.create(["a", "b", "c"], alpha=0.3, var_update="mixture")
    for b in range(5):
        x = rng.normal(1e9, 1e-3, (7, 3)) * rng.choice([1e-200, 1.0, 1e100], 3)
        x[:, 2] = np.nan  # a feature without data keeps null mean/var
        s = s.update(Moments.from_array(x), batch_id=b)
    doc = json.loads(s.to_json())
    assert doc["payload"]["mean"][2] is None
    digest = hashlib.sha256(_canonical(doc["payload"]).encode()).hexdigest()
    assert doc["checksum"] == f"sha256:{digest}"
    assert all(math.isfinite(v) for v in doc["payload"]["mean"][:2])


def test_an_unknown_newer_version_is_refused_by_name() -> None:
    doc = json.loads(_doc_example())
    doc["schema_version"] = 2
    with pytest.raises(UnsupportedSchemaVersionError, match=r"schema_version 2.*only version 1"):
        MXNormState.from_json(json.dumps(doc), source="state file x.json")
