"""Configuration errors name the file, the key and the reason; durations and sizes as written."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import ConfigError, load_config, parse_config
from policies.units import format_duration, parse_duration, parse_size
from tests.harness.paths import ROOT

EXAMPLE = ROOT / "systemd" / "rollbackd.toml"


@pytest.mark.parametrize(
    ("text", "where", "why"),
    [
        ('[daemon]\ninterval = "5 minutes"\n', "daemon.interval", "invalid duration"),
        ('[daemon]\nlisten = "9797"\n', "daemon.listen", "HOST:PORT"),
        ('[[probes.http]]\nname = "api"\nurl = "http://x/"\ntimout = "1s"\n',
         "probes.http[0].timout", "unknown key"),
        ('[[probes.http]]\nname = "api"\n', "probes.http[0].url", "missing"),
        ('[app]\nname = "vf"\ncontrol = { adapter = "systemd", unit = "x.service", usr = 1 }\n',
         "app.control.usr", "unknown key"),
        ('[database]\ndsn = "dbname=x"\nmigrations = "knexx"\n', "database.migrations", "knex"),
        ('[database]\ndsn = "dbname=x"\nmigrations = { failed_q = "SELECT 1" }\n',
         "database.migrations.failed_q", "unknown key"),
        ('[probes.process]\nname = "app"\n', "probes.process", "exactly one"),
        ('[backups]\nmin_free = "5 gigs"\n', "backups.min_free", "invalid size"),
        ('[[probes.http]]\nname = "a"\nurl = "http://x/"\n[[probes.http]]\nname = "a"\n'
         'url = "http://y/"\n', "probes", "duplicate"),
        ("[daemon\n", "", "not valid TOML"),
    ],
)
def test_bad_config_values_name_the_key_and_the_reason(text: str, where: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, Path("/etc/rollbackd/rollbackd.toml"))
    message = str(caught.value)
    assert message.startswith("/etc/rollbackd/rollbackd.toml: ")
    assert where in message and why in message
    assert "\n" not in message


def test_durations_and_sizes_read_as_operators_write_them() -> None:
    assert parse_duration("5s") == 5
    assert parse_duration("1h30m") == 5400
    assert parse_duration("250ms") == 0.25
    assert parse_duration("2") == 2
    assert parse_size("5GB") == 5 * 1000**3
    assert parse_size("512MiB") == 512 * 1024**2
    assert format_duration(5400) == "1h30m"
    assert format_duration(0.5) == "500ms"
    for bad in ("", "5x", "m5", "5s5", "-1s"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_the_example_config_loads_every_section() -> None:
    config = load_config(EXAMPLE)
    assert config.database is not None and config.app is not None
    assert config.probes.http and config.probes.prometheus
