"""Policy errors name the rule; every signal a probe produces is in the catalogue."""

from __future__ import annotations

from pathlib import Path

import pytest

from policies import catalogue
from policies.policy import PolicyError, parse_policy
from probes.http import HTTP_AGGREGATE_SIGNALS, HttpProbe
from probes.migrations import MigrationsProbe
from probes.postgres import PostgresProbe
from probes.process import ProcessProbe
from probes.settings import (
    HttpProbeSettings,
    MigrationsProbeSettings,
    PostgresProbeSettings,
    ProcessProbeSettings,
    SystemProbeSettings,
)
from probes.system import SystemProbe


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ('when = "http.up == 0"\nfor = "2 min"', "for: invalid duration"),
        ('when = "http.up == 0"\nfor = "2m"\nseverity_ = "x"', "unknown key"),
        ('when = "http.up"', "column 1"),
        ('when = "avg(http.up) > 1"', "avg"),
    ],
)
def test_policy_errors_name_the_rule(rule: str, message: str) -> None:
    text = (f'[[rule]]\nscenario = "r"\n{rule}\nseverity = "high"\naction = "page"\n'
            'timeline = "30m"\n')
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p.toml")
    assert str(caught.value).startswith("p.toml: rule 'r'")
    assert message in str(caught.value)


def test_every_signal_a_probe_produces_is_in_the_catalogue() -> None:
    probes = [
        HttpProbe(HttpProbeSettings(name="api", url="http://127.0.0.1:1/")),  # type: ignore[arg-type]
        PostgresProbe("dbname=x", PostgresProbeSettings()),
        MigrationsProbe("dbname=x", "knex", MigrationsProbeSettings()),
        ProcessProbe(ProcessProbeSettings(pidfile=Path("/nonexistent"))),
        SystemProbe(SystemProbeSettings()),
    ]
    produced = {s for p in probes for s in p.signals()} | set(HTTP_AGGREGATE_SIGNALS)
    unknown = sorted(s for s in produced if not catalogue.is_known(s))
    assert unknown == []
    assert set(catalogue.FIXED) <= produced
