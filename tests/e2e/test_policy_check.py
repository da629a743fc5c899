"""`rollbackd check` shows the decision matrix; policies name only signals that exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.cli import rollbackd
from tests.harness.config import config_file as write

pytestmark = pytest.mark.e2e


def test_check_prints_the_effective_decision_matrix(tmp_path: Path) -> None:
    path = write(tmp_path, '[daemon]\nmode = "approve"\n')
    result = rollbackd("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for header in ("scenario", "condition", "for", "severity", "action", "timeline", "mode"):
        assert header in out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 7}
    assert "migration.failed == 1" in rows["migration_failed"]
    assert "immediate_rollback" in rows["migration_failed"]
    assert "approve" in rows["migration_failed"]
    assert "next release" in rows["minor_issue"]
    assert "monitoring_blind" in rows


def test_check_reports_rules_that_nothing_configured_can_feed(tmp_path: Path) -> None:
    path = write(tmp_path, '[[probes.http]]\nname = "api"\nurl = "http://127.0.0.1:1/"\n')
    result = rollbackd("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "rule data_validation_failed cannot fire" in result.stdout
    assert "rule app_compromised cannot fire" not in result.stdout


def test_check_rejects_a_broken_policy_naming_file_rule_and_column(tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text('[[rule]]\nscenario = "errors"\nwhen = "http.eror_ratio > 0.25"\n'
                      'severity = "high"\naction = "planned_rollback"\ntimeline = "30m"\n')
    path = write(tmp_path, f'[daemon]\npolicy = "{policy}"\n')
    result = rollbackd("check", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"rollbackd: {policy}: rule 'errors' (when, column 1): unknown signal 'http.eror_ratio'"
    )


def test_a_prometheus_signal_declared_in_the_config_may_be_used_by_a_rule(tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text('[[rule]]\nscenario = "fleet"\nwhen = "fleet.error_ratio > 0.1"\n'
                      'severity = "high"\naction = "page"\ntimeline = "30m"\n')
    path = write(tmp_path, f'[daemon]\npolicy = "{policy}"\n[[probes.prometheus]]\nname = "f"\n'
                 'url = "http://127.0.0.1:9090"\nquery = "vector(0)"\n'
                 'signal = "fleet.error_ratio"\n')
    result = rollbackd("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
