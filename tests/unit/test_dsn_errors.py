"""A DSN libpq cannot parse is refused at load without repeating any part of it: libpq's own
messages quote the text around the fault, which may be the password."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.config import ConfigError, parse_config

ROOT = Path(__file__).resolve().parent.parent.parent
CONFIG = Path("/etc/rollbackd/rollbackd.toml")
SECRET = "Secret-FRAG"
WITHOUT_EQUALS = "a word without '='"
BROKEN = {
    WITHOUT_EQUALS: f"host=db password=hunter2 {SECRET}",
    "an unterminated quote": f"host=db password='{SECRET}",
    "a bad percent escape": f"postgresql://app:{SECRET}%zz@db/app",
    "an unknown option": f"host=db {SECRET}=x",
    "a query parameter without '='": f"postgresql://db/app?sslmode=require&{SECRET}",
    "an unknown query parameter": f"postgresql://db/app?{SECRET}=1",
    "an unclosed IPv6 bracket": f"postgresql://app:{SECRET}@[db/app",
}


def rollbackd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon", *args], capture_output=True, text=True,
                          timeout=30, env=dict(os.environ), cwd=ROOT, check=False)


def fragments(dsn: str) -> list[str]:
    """Every piece of the DSN four characters or longer, e.g. 'Secr', 'FRAG', 'hunter2'."""
    return [dsn[i:i + 4] for i in range(len(dsn) - 3) if dsn[i:i + 4].strip()]


@pytest.mark.parametrize("dsn", BROKEN.values(), ids=BROKEN.keys())
def test_a_dsn_libpq_cannot_parse_is_refused_without_repeating_any_of_it(dsn: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"[database]\ndsn = \"{dsn}\"\n", CONFIG)
    message = str(caught.value)
    assert message.startswith(f"{CONFIG}: database.dsn: not a libpq connection string")
    repeated = [piece for piece in fragments(dsn) if piece in message.removeprefix(str(CONFIG))]
    assert repeated == [], message


@pytest.mark.parametrize("command", [["check"], ["status"], ["backup", "list"]])
def test_no_command_prints_any_part_of_an_unparsable_dsn(tmp_path: Path,
                                                          command: list[str]) -> None:
    config = tmp_path / "rollbackd.toml"
    config.write_text(f'[database]\ndsn = "{BROKEN[WITHOUT_EQUALS]}"\n', encoding="utf-8")
    result = rollbackd(*command, "-c", str(config))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "database.dsn" in result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert "hunter2" not in result.stdout + result.stderr
