"""Properties of the config's errors, over random mistakes in a full, valid config: a
misspelt key anywhere is named by its whole path; a value of the wrong kind anywhere is an
error at that key (or inside it); the message is one line and never shows a header's value.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.config import Config, ConfigError, parse_config
from policies.schema import SchemaError, convert, where

SECRET = "s3cr3t-session-value"

VALID: dict[str, Any] = {
    "daemon": {"interval": "2s", "listen": "127.0.0.1:9797", "mode": "approve"},
    "app": {"name": "visionforge",
            "control": {"adapter": "process", "pidfile": "/run/app.pid",
                        "start": ["/usr/bin/node", "server.js"], "stop_timeout": "10s"},
            "code": {"adapter": "symlink", "current": "/srv/app/current",
                     "releases": "/srv/app/releases"},
            "config_files": ["/etc/app/app.env"]},
    "database": {"dsn": "host=127.0.0.1 dbname=visionforge", "expected_tables": ["users"],
                 "checks": [{"name": "orphans", "sql": "SELECT 1 WHERE false"}],
                 "migrations": {"failed": "SELECT 0"}, "connect_timeout": "5s"},
    "backups": {"dir": "/var/backups/rollbackd", "jobs": 2, "min_free": "1GB", "keep": 5},
    "probes": {"http": [{"name": "health", "url": "http://127.0.0.1:3000/health",
                         "headers": {"Cookie": SECRET}, "expect_status": ["2xx"],
                         "timeout": "1s"}],
               "postgres": {"timeout": "2s"},
               "prometheus": [{"name": "errors", "url": "http://127.0.0.1:9090",
                               "query": "sum(rate(x[1m]))", "signal": "fleet.errors"}]},
    "api": {"max_body": "1MiB"},
    "paging": {"attempts": 3, "alertmanager": {"urls": ["http://127.0.0.1:9093"]},
               "order": ["alertmanager"]},
    "fleet": {"name": "visionforge", "id": "host0", "heartbeat": "5s"},
}

Key = str | int


def tables(data: Any, keys: tuple[Key, ...] = ()) -> Iterator[tuple[Key, ...]]:
    """The path of every table in ``data``, the top one included."""
    if isinstance(data, dict):
        yield keys
        for key, value in data.items():
            yield from tables(value, (*keys, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from tables(value, (*keys, index))


def leaves(data: Any, keys: tuple[Key, ...] = ()) -> Iterator[tuple[Key, ...]]:
    """The path of every value that is not a table (a list counts as one value)."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from leaves(value, (*keys, key))
    elif keys:
        yield keys


# Every table of fixed keys: a header's name is the user's to choose.
TABLES = [keys for keys in tables(VALID) if keys[-1:] != ("headers",)]
LEAVES = list(leaves(VALID))


def at(data: Any, keys: tuple[Key, ...]) -> Any:
    for key in keys:
        data = data[key]
    return data


def refused(data: dict[str, Any]) -> SchemaError:
    try:
        convert(data, Config)
    except SchemaError as exc:
        return exc
    raise AssertionError("the config was accepted")


def test_the_config_the_properties_start_from_is_valid() -> None:
    config = convert(VALID, Config)
    assert config.probes.http[0].header_values() == {"Cookie": SECRET}
    assert config.fleet is not None and config.fleet.id == "host0"
    # Written as a file, it reads the same: the file test below relies on it.
    assert parse_config(_toml(VALID), Path("/etc/rollbackd/rollbackd.toml")) == config


@settings(max_examples=150, deadline=None)
@given(table=st.sampled_from(TABLES), name=st.sampled_from(["intervall", "tmeout", "x"]))
def test_a_misspelt_key_anywhere_is_named_by_its_whole_path(
        table: tuple[Key, ...], name: str) -> None:
    data = copy.deepcopy(VALID)
    at(data, table)[name] = 1
    error = refused(data)
    assert error.keys == (*table, name)
    assert str(error) == f"{where((*table, name))}: unknown key"


WRONG_KINDS = [True, 12345, 1.5, "text", [1, 2], {"nested": {"deeper": 1}}]


@settings(max_examples=300, deadline=None)
@given(leaf=st.sampled_from(LEAVES), wrong=st.sampled_from(WRONG_KINDS))
def test_a_value_of_the_wrong_kind_is_an_error_at_its_key(
        leaf: tuple[Key, ...], wrong: Any) -> None:
    data = copy.deepcopy(VALID)
    parent, key = at(data, leaf[:-1]), leaf[-1]
    if type(parent[key]) is type(wrong):
        return  # not a mistake of kind
    parent[key] = wrong
    try:
        convert(data, Config)
    except SchemaError as error:
        # At the key, or inside the value given there (a table read as a header file, a
        # list's member), never elsewhere.
        assert error.keys[:len(leaf)] == leaf, (leaf, str(error))
        assert "\n" not in str(error)
        assert SECRET not in str(error)
    # Some values of another kind are still good ones: a number of seconds for a duration,
    # a number of bytes for a size, a table of header-file settings for a header.


@settings(max_examples=100, deadline=None)
@given(leaf=st.sampled_from(LEAVES))
def test_a_config_error_read_from_a_file_is_one_line_naming_file_and_key(
        leaf: tuple[Key, ...]) -> None:
    path = Path("/etc/rollbackd/rollbackd.toml")
    data = copy.deepcopy(VALID)
    at(data, leaf[:-1])[leaf[-1]] = {"nested": {"deeper": 1}}
    try:
        convert(data, Config)
    except SchemaError as error:
        try:
            parse_config(_toml(data), path)
        except ConfigError as refused_file:
            assert str(refused_file) == f"{path}: {error}"
            return
        raise AssertionError("the file was accepted") from None


def _toml(data: dict[str, Any]) -> str:
    """``data`` as TOML, every table inline under its top-level key."""
    return "\n".join(f"{key} = {_value(value)}" for key, value in data.items())


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{ " + ", ".join(f'"{k}" = {_value(v)}' for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)
