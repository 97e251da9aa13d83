"""Typed settings: dataclass fields that carry their own checker, flag and help text.

Knows nothing of MXNorm: :mod:`mxnorm_spark.cli.config` declares the job configs with
:func:`opt` / :func:`required`; one checker per value kind serves both a TOML value and
the text of a command-line flag, so the file and the flags accept exactly the same values.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import field
from types import MappingProxyType
from typing import Any

from mxnorm_spark.core.errors import ConfigError

INTERVAL = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*"
    r"(ms|milliseconds?|s|secs?|seconds?|m|mins?|minutes?|h|hours?)\s*$",
    re.IGNORECASE,
)


# ---- value kinds: one checker per kind, shared by TOML values and CLI flags ------------
# A checker takes the raw value (a TOML value, or the string a flag received) and the
# key, and returns the typed value or raises ConfigError naming the key.
Checker = Callable[[Any, str], Any]
# Flags arrive as text: for number kinds, the function that turns it into the TOML type
# the checker expects (a config file itself must use TOML numbers).
FROM_TEXT: dict[Checker, Callable[[str, str], Any]] = {}


def fail(key: str, expected: str, value: Any) -> ConfigError:
    shown = f"the string {value!r}" if isinstance(value, str) else f"{value!r}"
    return ConfigError(f"{key}: expected {expected}, got {shown}")


def text(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise fail(key, "a non-empty string", value)
    return value


def names(value: Any, key: str) -> tuple[str, ...]:
    # A flag gives "a,b,c"; a file may give the same string or an array of strings.
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise fail(key, 'column names, as ["a", "b"] or "a,b"', value)
    if not items or any(not isinstance(v, str) or not v for v in items):
        raise fail(key, "one or more non-empty column names", value)
    dup = sorted({v for v in items if items.count(v) > 1})
    if dup:
        raise ConfigError(f"{key}: column names must be unique; repeated: {dup}")
    return tuple(items)


def number_text(value: Any, key: str, expected: str) -> Any:
    """A flag's text as a number (flags only: a config file must use TOML numbers)."""
    try:
        return int(value) if value.strip().lstrip("+-").isdigit() else float(value)
    except ValueError:
        raise fail(key, expected, value) from None


def int_at_least(low: int) -> Checker:
    def check(value: Any, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise fail(key, f"a whole number >= {low}", value)
        return value

    FROM_TEXT[check] = lambda v, k: number_text(v, k, f"a whole number >= {low}")
    return check


def boolean(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise fail(key, "true or false", value)
    return value


def interval(value: Any, key: str) -> str:
    """A trigger interval, normalized to Spark's ``"<n> <unit>"`` form."""
    match = INTERVAL.match(value) if isinstance(value, str) else None
    if match is None:
        raise fail(key, 'an interval such as "10s", "500ms", "2 minutes"', value)
    number, unit = match.group(1), match.group(2).lower()
    if float(number) <= 0:
        raise fail(key, "an interval greater than 0", value)
    if unit == "ms" or unit.startswith("milli"):
        name = "milliseconds"
    elif unit.startswith("s"):
        name = "seconds"
    elif unit.startswith("m"):
        name = "minutes"
    else:
        name = "hours"
    return f"{number} {name}"


def one_of(valid: tuple[str, ...], *, fold: Callable[[str], str] = str) -> Checker:
    def check(value: Any, key: str) -> str:
        if not isinstance(value, str) or fold(value) not in valid:
            raise fail(key, f"one of {list(valid)}", value)
        return fold(value)

    check.valid = valid  # type: ignore[attr-defined]  # shown as the flag's metavar
    return check


def options(value: Any, key: str) -> Mapping[str, str]:
    """A table of string options (TOML), or a list of ``KEY=VALUE`` strings (flags)."""
    pairs: dict[str, str] = {}
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, (list, tuple)):
        items = []
        for item in value:
            if not isinstance(item, str) or "=" not in item:
                raise fail(key, "KEY=VALUE", item)
            k, _, v = item.partition("=")
            items.append((k.strip(), v.strip()))
    else:
        raise fail(key, "a table of options", value)
    for k, raw in items:
        if not isinstance(k, str) or not k:
            raise fail(key, "non-empty option names", k)
        # Spark options are strings; TOML booleans and numbers are spelled as Spark reads them.
        v = ("true" if raw else "false") if isinstance(raw, bool) else raw
        if isinstance(v, (int, float)):
            v = repr(v)
        if not isinstance(v, str):
            raise fail(f"{key}.{k}", "a string, number or boolean", raw)
        pairs[k] = v
    return MappingProxyType(pairs)


# ---- field declaration -------------------------------------------------------------------
def field_metadata(
    check: Checker,
    help: str,
    *,
    metavar: str | None = None,
    repeat: bool = False,
    switch: bool = False,
    flag: str | None = None,
) -> dict[str, Any]:
    return {
        "check": check,
        "help": help,
        "metavar": metavar,
        "repeat": repeat,
        "switch": switch,
        "flag": flag,
    }


def opt(
    check: Checker,
    help: str,
    *,
    default: Any = None,
    metavar: str | None = None,
    repeat: bool = False,
    switch: bool = False,
    flag: str | None = None,
) -> Any:
    """An optional config field: its checker and flag help travel in the field metadata.

    ``repeat`` fields take their flag several times (``--conf A=1 --conf B=2``); ``flag``
    overrides the flag name derived from the key (repeatable ones read best singular).
    """
    metadata = field_metadata(check, help, metavar=metavar, repeat=repeat, switch=switch, flag=flag)
    if isinstance(default, Mapping):
        frozen = MappingProxyType(dict(default))
        return field(default_factory=lambda: frozen, metadata=metadata)
    return field(default=default, metadata=metadata)


def required(check: Checker, help: str, *, metavar: str | None = None) -> Any:
    return field(metadata=field_metadata(check, help, metavar=metavar))


def fields(cls: type[Any]) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls)}


def check_section(cls: type[Any], values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Type-check one table: unknown keys are rejected with the list of valid ones."""
    known = fields(cls)
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(
                f"unknown key {key!r} in {where}; valid keys: {', '.join(sorted(known))}"
            )
        out[key] = known[key].metadata["check"](value, f"{where} {key}")
    return out


def add_arguments(parser: argparse._ActionsContainer, cls: type[Any]) -> None:
    """Add one flag per field of ``cls`` (``batch_col`` -> ``--batch-col``).

    Every flag defaults to ``None`` so :func:`flag_values` can tell given from absent;
    values are checked by the same checkers as the config file.
    """
    for f in dataclasses.fields(cls):
        meta = f.metadata
        flag = flag_name(f)
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:
            default = None
        suffix = "" if default in (None, False) else f" (default: {show(default)})"
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        help_text = meta["help"] + suffix + (" [required]" if required else "")
        if meta["switch"]:
            parser.add_argument(
                flag, dest=f.name, action="store_true", default=None, help=help_text
            )
        elif meta["repeat"]:
            parser.add_argument(
                flag,
                dest=f.name,
                action="append",
                default=None,
                metavar=meta["metavar"],
                help=help_text,
            )
        else:
            valid = getattr(meta["check"], "valid", None)
            metavar = meta["metavar"] or ("{" + ",".join(valid) + "}" if valid else None)
            parser.add_argument(
                flag,
                dest=f.name,
                default=None,
                metavar=metavar or f.name.upper(),
                help=help_text,
            )


def flag_name(f: dataclasses.Field[Any]) -> str:
    """The command-line flag of a config field: ``batch_col`` -> ``--batch-col``."""
    return str(f.metadata.get("flag") or "--" + f.name.replace("_", "-"))


def flag_table(*classes: type[Any]) -> dict[str, str]:
    """Each config field name of ``classes`` with its flag: ``{"batch_col": "--batch-col"}``."""
    return {name: flag_name(f) for cls in classes for name, f in fields(cls).items()}


# Plain words that also name fields; only their "name=value" form is a parameter.
_PROSE = re.compile(r"^[a-z]+$")


def with_flags(message: str, flags: Mapping[str, str]) -> str:
    """``message`` (written for Python callers) with its parameter names as command-line
    flags: ``handle_invalid='error'`` -> ``--handle-invalid error``, ``input_col`` ->
    ``--input-col``. Names that are plain words (``output``, ``mode``) are replaced only in
    their ``name=value`` form, and ``mode`` never (``--read-option mode=FAILFAST``).

    >>> with_flags("got handle_invalid='error'; use input_col or cols=[...]",
    ...            {"handle_invalid": "--handle-invalid", "input_col": "--input-col",
    ...             "cols": "--cols"})
    'got --handle-invalid error; use --input-col or --cols [...]'
    """
    names = sorted(flags, key=len, reverse=True)
    assigned = [n for n in names if n != "mode"]
    if assigned:
        value = r"""(?:'([^']*)'|"([^"]*)"|(\[[^\]]*\]|[^\s,;)]+))"""
        pattern = re.compile(rf"(?<![\w.=-])({'|'.join(map(re.escape, assigned))})={value}")
        message = pattern.sub(
            lambda m: (
                f"{flags[m.group(1)]} {m.group(2) or m.group(3) or m.group(4) or ''}".rstrip()
            ),
            message,
        )
    bare = [n for n in names if not _PROSE.match(n) or n == "cols"]
    if bare:
        pattern = re.compile(rf"(?<![\w.=-])({'|'.join(map(re.escape, bare))})(?![\w=-])")
        message = pattern.sub(lambda m: flags[m.group(1)], message)
    return message


def show(value: Any) -> str:
    return "cumulative" if value is None else str(value)


def flag_values(args: argparse.Namespace, cls: type[Any]) -> dict[str, Any]:
    """The flags of ``cls`` that were given on the command line (raw; see :func:`resolve`)."""
    names = [f.name for f in dataclasses.fields(cls)]
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def check_flags(cls: type[Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """Type-check flag values: text for number kinds is parsed first."""
    known = fields(cls)
    out: dict[str, Any] = {}
    for name, raw in values.items():
        if name not in known:
            raise ConfigError(f"unknown setting {name!r}; valid: {', '.join(sorted(known))}")
        check, flag = known[name].metadata["check"], flag_name(known[name])
        text_to_value = FROM_TEXT.get(check) if isinstance(raw, str) else None
        out[name] = check(raw if text_to_value is None else text_to_value(raw, flag), flag)
    return out


# ---- small text files -------------------------------------------------------------------
def read_text(path: str | os.PathLike[str], what: str) -> str:
    """A small text file (local or any URI the store reaches), or a ConfigError naming it."""
    from mxnorm_spark.store import filesystem

    try:
        data = filesystem(str(path)).read_bytes(str(path))
        if data is None:
            raise ConfigError(f"{what} {path} does not exist")
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc}") from None


def read_properties(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read a ``spark-defaults.conf``-style file: ``key value`` (or ``key=value``) lines.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "spark.conf"
    >>> _ = p.write_text("# comment\\nspark.ui.enabled  false\\nspark.a=b c\\n")
    >>> read_properties(p)
    {'spark.ui.enabled': 'false', 'spark.a': 'b c'}
    """
    p = path
    lines = read_text(path, "Spark properties file").splitlines()
    props: dict[str, str] = {}
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith(("#", "!")):
            continue
        match = re.match(r"^([^\s=:]+)\s*[\s=:]\s*(.*)$", line)
        if match is None:
            raise ConfigError(f"{p}:{number}: expected 'key value', got {raw!r}")
        props[match.group(1)] = match.group(2).strip()
    return props
