"""Job configuration: TOML tables and flags into validated frozen dataclasses (no Spark)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from mxnorm_spark.cli import commands as cli
from mxnorm_spark.cli.config import (
    FitConfig,
    SparkSettings,
    StreamConfig,
    TransformConfig,
    config_from_args,
    load_config,
    parse_config_text,
    read_properties,
    resolve,
)
from mxnorm_spark.cli.session import LOCAL_DEFAULTS, session_conf
from mxnorm_spark.core.errors import ConfigError, InvalidParameterError

ROOT = Path(__file__).resolve().parents[2]

FIT_MIN = '[fit]\ninput = "in"\nstate = "s.json"\ncols = ["a", "b"]\n'


def parse(argv: list[str]) -> argparse.Namespace:
    return cli.build_parser().parse_args(argv)


def test_example_config_parses_every_table() -> None:
    cfg = load_config(ROOT / "conf" / "example.toml")
    assert set(cfg.sections) == {"spark", "fit", "transform", "stream"}
    fit = resolve(FitConfig, cfg.section("fit"))
    transform = resolve(TransformConfig, cfg.section("transform"))
    stream = resolve(StreamConfig, cfg.section("stream"))
    # The example chains: transform reads the state that fit writes.
    assert transform.state == fit.state
    assert fit.batch_col is not None and stream.cols == fit.cols
    resolve(SparkSettings, cfg.section("spark"))


def test_keyed_example_config_chains_fit_and_transform() -> None:
    cfg = load_config(ROOT / "conf" / "keyed.toml")
    fit = resolve(FitConfig, cfg.section("fit"))
    transform = resolve(TransformConfig, cfg.section("transform"))
    assert fit.key_cols == ("sensor",) and fit.min_key_rows == 20 and fit.output is None
    assert fit.apply_at == "before"  # kept in a keyed model, so allowed without output
    assert transform.state == fit.state and transform.key_cols == fit.key_cols
    resolve(SparkSettings, cfg.section("spark"))


def test_local_defaults_match_conf_file() -> None:
    assert read_properties(ROOT / "conf" / "spark-local.conf") == dict(LOCAL_DEFAULTS)
    cluster = read_properties(ROOT / "conf" / "spark-cluster.conf.example")
    assert cluster["spark.master"].startswith("spark://")
    # Explicit settings win over the file, which wins over the built-in local defaults.
    props = session_conf("local[2]", {"spark.ui.showConsoleProgress": "false"})
    assert props["spark.ui.showConsoleProgress"] == "false"
    assert props["spark.driver.host"] == "127.0.0.1"
    assert "spark.driver.host" not in session_conf("yarn")


def test_values_are_typed_and_defaults_filled() -> None:
    text = FIT_MIN + 'alpha = "cumulative"\nformat = "CSV"\n[fit.read_options]\nsep = ";"\n'
    fit = resolve(FitConfig, parse_config_text(text).section("fit"))
    assert fit.alpha is None and fit.format == "csv" and dict(fit.read_options) == {"sep": ";"}
    assert (fit.eps, fit.var_update, fit.decay, fit.engine) == (1e-8, "ema", "batch", "auto")
    with pytest.raises(dataclasses.FrozenInstanceError):
        fit.alpha = 0.5  # type: ignore[misc]
    stream = resolve(
        StreamConfig,
        {"input": "i", "output": "o", "state": "s", "checkpoint": "c", "cols": "a, b"},
        {"trigger_interval": "500ms", "max_files_per_trigger": "3"},
    )
    assert stream.cols == ("a", "b")
    assert stream.trigger_interval == "500 milliseconds" and stream.max_files_per_trigger == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[fit]\nalpah = 0.1\n", "unknown key 'alpah' in [fit]; valid keys: alpha, apply_at"),
        ("[fitt]\n", "unknown table [fitt]; valid tables: [spark], [fit], [transform], [stream]"),
        ("[transform]\nmode = 'replace'\n", "[transform] mode: expected one of"),
        ("[fit]\nalpha = '0.1'\n", '[fit] alpha: expected a number in (0, 1] or "cumulative"'),
        ("[fit]\nalpha = 1.5\n", "[fit] alpha: alpha must be in (0, 1], got 1.5"),
        ("[fit]\neps = -1\n", "eps must be a positive finite number"),
        ("[fit]\ncols = [1, 2]\n", "[fit] cols: expected one or more non-empty column names"),
        ("[fit]\ncols = ['a', 'a']\n", "repeated: ['a']"),
        ("[stream]\navailable_now = 'yes'\n", "[stream] available_now: expected true or false"),
        ("[stream]\nretention = 1\n", "[stream] retention: expected a whole number >= 2"),
        ("[stream]\ntrigger_interval = 'soon'\n", 'an interval such as "10s"'),
        ("[spark.conf]\n'spark.x' = [1]\n", "[spark] conf.spark.x: expected a string"),
        ("[fit\n", "not valid TOML"),
        ("[fit]\nkey_cols = []\n", "[fit] key_cols: expected one or more non-empty column names"),
        ("[fit]\nkey_cols = [1]\n", "[fit] key_cols: expected one or more non-empty column names"),
        ("[fit]\nkey_cols = ['k', 'k']\n", "[fit] key_cols: column names must be unique"),
        ("[fit]\nmin_key_rows = -1\n", "[fit] min_key_rows: expected a whole number >= 0, got -1"),
        ("[fit]\nmin_key_rows = '2'\n", "min_key_rows: expected a whole number >= 0, got the str"),
        ("[transform]\nmin_key_rows = 1.5\n", "[transform] min_key_rows: expected a whole number"),
        ("[transform]\nkey_cols = 3\n", '[transform] key_cols: expected column names, as ["a"'),
    ],
)
def test_bad_config_is_rejected_with_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config_text(text, source="job.toml")
    assert message in str(info.value)
    assert str(info.value).startswith("job.toml: ")
    assert isinstance(info.value, InvalidParameterError)  # and so a ValueError


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("input_col = 'v'\n", "either cols (scalar columns) or input_col"),
        ("var_update = 'mixture'\nalpha = 'cumulative'\n", "takes no var_update or decay"),
        ("apply_at = 'before'\n", "apply_at only apply to the normalized output: add output"),
        ("output = 'o'\noutput_cols = ['x']\n", "output_cols has 1 names but cols has 2"),
        ("key_cols = ['k', 'a']\n", "key_cols and cols/batch_col share ['a']"),
        ("key_cols = ['k']\nbatch_col = 'k'\n", "key_cols and cols/batch_col share ['k']"),
        ("min_key_rows = 5\n", "min_key_rows only applies with key_cols"),
        ("key_cols = ['k']\nhandle_invalid = 'skip'\n", "handle_invalid only apply to the"),
    ],
)
def test_inconsistent_settings_are_rejected(extra: str, message: str) -> None:
    section = parse_config_text(FIT_MIN + extra).section("fit")
    with pytest.raises(ConfigError) as info:
        resolve(FitConfig, section)
    assert message in str(info.value)


def test_key_cols_from_the_file_or_the_flags() -> None:
    text = FIT_MIN + "key_cols = 'k, site'\nmin_key_rows = 0\napply_at = 'before'\n"
    fit = resolve(FitConfig, parse_config_text(text).section("fit"))
    assert (fit.key_cols, fit.min_key_rows, fit.apply_at) == (("k", "site"), 0, "before")
    flags = resolve(FitConfig, parse_config_text(text).section("fit"), {"key_cols": "user"})
    assert flags.key_cols == ("user",) and flags.min_key_rows == 0
    with pytest.raises(ConfigError, match="--min-key-rows: expected a whole number >= 0, got -1"):
        resolve(FitConfig, parse_config_text(text).section("fit"), {"min_key_rows": "-1"})
    section = {"input": "i", "state": "s", "output": "o", "input_col": "v", "key_cols": ["k"]}
    with pytest.raises(ConfigError, match="per-key states of a vector column"):
        resolve(TransformConfig, section)


def test_flags_win_over_the_file_and_missing_ones_are_named(tmp_path: Path) -> None:
    path = tmp_path / "job.toml"
    path.write_text(FIT_MIN + "alpha = 0.3\nbatch_col = 'day'\n[spark]\nmaster = 'local[1]'\n")
    args = parse(["fit", "--config", str(path), "--alpha", "0.7", "--cols", "x", "--conf", "a=b"])
    config = load_config(path)
    fit = config_from_args(FitConfig, args, config, "fit")
    assert (fit.alpha, fit.cols, fit.batch_col, fit.input) == (0.7, ("x",), "day", "in")
    spark = config_from_args(SparkSettings, args, config, "spark")
    assert spark.master == "local[1]" and dict(spark.conf) == {"a": "b"}

    with pytest.raises(ConfigError) as info:
        config_from_args(TransformConfig, parse(["transform", "--input", "x"]), None, "transform")
    assert str(info.value) == (
        "missing --state, --output (or set state, output in [transform] of a --config file)"
    )
    with pytest.raises(ConfigError, match="--alpha: alpha must be in"):
        config_from_args(FitConfig, parse(["fit", "--alpha", "0"]), None, "fit")


def test_every_config_key_is_a_flag() -> None:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command, cls in (("fit", FitConfig), ("transform", TransformConfig)):
        dests = {a.dest for a in sub.choices[command]._actions}
        assert {f.name for f in dataclasses.fields(cls)} <= dests
        assert {f.name for f in dataclasses.fields(SparkSettings)} <= dests


def test_stream_key_settings() -> None:
    base = {"input": "i", "output": "o", "state": "s", "checkpoint": "c", "cols": "a, b"}
    stream = resolve(
        StreamConfig, {**base, "key_cols": "k"}, {"evict_after": "10", "min_key_rows": "0"}
    )
    assert (stream.key_cols, stream.min_key_rows, stream.evict_after) == (("k",), 0, 10)
    with pytest.raises(ConfigError, match="evict_after only apply with key_cols"):
        resolve(StreamConfig, {**base, "evict_after": 3})
    with pytest.raises(ConfigError, match="evict_after: expected a whole number >= 1"):
        resolve(StreamConfig, {**base, "key_cols": "k", "evict_after": 0})
    with pytest.raises(ConfigError, match="key_cols and cols/batch_col share"):
        resolve(StreamConfig, {**base, "key_cols": "a"})
