"""The one writer of rollbackd config files for tests."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

Section = Mapping[str, object]


MIGRATION_FAILED_RULE = """\
[[rule]]
scenario = "migration_failed"
when = "migration.failed == 1"
severity = "critical"
action = "immediate_rollback"
timeline = "15m"
"""
"""The decision matrix's first row, as a policy's rule: a failed migration is an immediate
rollback."""


def toml_value(value: object) -> str:
    """``value`` as TOML: strings and paths quoted, lists, inline tables, numbers, booleans."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")


def config_file(directory: Path, text: str | None = None, *, daemon: Section | None = None,
                app: Section | None = None, database: Section | None = None,
                backups: Section | None = None, extra: str = "") -> Path:
    """Write ``directory/rollbackd.toml`` and return its path.

    With ``text``, the file holds exactly that (for tests of what rollbackd makes of a config).
    Otherwise it is built: ``[daemon]`` with ``state_dir = directory/state`` unless ``daemon``
    names another, then ``[app]``, ``[database]`` and ``[backups]`` when given, then ``extra``
    verbatim (``[[probes.http]]``, ``[api]``, ``[[database.checks]]``, ...).
    """
    path = directory / "rollbackd.toml"
    if text is None:
        sections = {"daemon": {"state_dir": directory / "state", **(daemon or {})},
                    "app": app, "database": database, "backups": backups}
        text = "".join(
            f"[{name}]\n" + "".join(f"{key} = {toml_value(value)}\n" for key, value in body.items())
            + "\n"
            for name, body in sections.items() if body is not None) + extra
    elif daemon or app or database or backups or extra:
        raise TypeError("config_file takes either the text or the sections, not both")
    path.write_text(text)
    return path
