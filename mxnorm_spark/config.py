"""The former path of :mod:`mxnorm_spark.cli.config`, kept so that code written against it
goes on importing; new code imports :mod:`mxnorm_spark.cli.config`."""

from mxnorm_spark.cli.config import (
    DEFAULT_READ_OPTIONS,
    DEFAULT_WRITE_OPTIONS,
    LOG_LEVELS,
    SECTIONS,
    STATE_OPTION_KEYS,
    WRITE_MODES,
    ConfigFile,
    FitConfig,
    SparkSettings,
    StreamConfig,
    T,
    TransformConfig,
    config_from_args,
    load_config,
    parse_config_text,
    resolve,
)

__all__ = [
    "DEFAULT_READ_OPTIONS",
    "DEFAULT_WRITE_OPTIONS",
    "LOG_LEVELS",
    "SECTIONS",
    "STATE_OPTION_KEYS",
    "WRITE_MODES",
    "ConfigFile",
    "FitConfig",
    "SparkSettings",
    "StreamConfig",
    "T",
    "TransformConfig",
    "config_from_args",
    "load_config",
    "parse_config_text",
    "resolve",
]
