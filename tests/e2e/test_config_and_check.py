"""`rollbackd check` and configuration errors: one line naming file and key, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.config import load_config
from tests.harness.cli import rollbackd
from tests.harness.config import config_file as write
from tests.harness.paths import ROOT

pytestmark = pytest.mark.e2e

EXAMPLE = ROOT / "systemd" / "rollbackd.toml"


def test_the_commented_example_config_passes_check() -> None:
    result = rollbackd("check", "--config", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout
    assert "visionforge.toml" in result.stdout


def test_a_misspelt_key_exits_2_naming_the_key_and_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[daemon]\nintervall = "5s"\n')
    result = rollbackd("check", "--config", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0] and "daemon.intervall" in lines[0] and "unknown key" in lines[0]


def test_config_is_accepted_before_the_verb_and_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, '[daemon]\ninterval = "2s"\n')
    assert rollbackd("--config", str(path), "check").returncode == 0
    env = {**os.environ, "ROLLBACKD_CONFIG": str(path)}
    result = rollbackd("check", env=env)
    assert result.returncode == 0 and str(path) in result.stdout


def test_an_unreadable_config_exits_2_with_one_line(tmp_path: Path) -> None:
    result = rollbackd("check", "--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 2
    assert "missing.toml: cannot read config" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_policy_file_that_does_not_exist_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, f'[daemon]\npolicy = "{tmp_path / "nope.toml"}"\n')
    result = rollbackd("check", "--config", str(path))
    assert result.returncode == 2 and "daemon.policy" in result.stderr


def test_a_dsn_libpq_cannot_parse_is_a_config_error_that_does_not_echo_it(
        tmp_path: Path) -> None:
    path = write(tmp_path, '[database]\ndsn = "host=db password=hunter2 dbname"\n')
    result = rollbackd("check", "--config", str(path))
    assert result.returncode == 2
    assert "database.dsn: not a libpq connection string" in result.stderr
    assert "hunter2" not in result.stderr


def test_relative_paths_in_the_config_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    policy = (ROOT / "policies" / "visionforge.toml").read_text()
    (tmp_path / "policies" / "mine.toml").write_text(policy)
    path = write(tmp_path, '[daemon]\npolicy = "policies/mine.toml"\nstate_dir = "state"\n'
                 '[backups]\ndir = "backups"\n')
    # Run from elsewhere, as systemd does (its working directory is /).
    result = subprocess.run([sys.executable, "-m", "daemon", "check", "--config", str(path)],
                            capture_output=True, text=True, timeout=30, cwd="/",
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    assert result.returncode == 0, result.stderr
    assert f"{tmp_path}/policies/mine.toml" in result.stdout
    config = load_config(path)
    assert config.daemon.state_dir == tmp_path / "state"
    assert config.backups.dir == tmp_path / "backups"


def test_check_does_not_print_credentials_in_urls(tmp_path: Path) -> None:
    path = write(tmp_path, '[[probes.http]]\nname = "api"\n'
                 'url = "http://admin:hunter2@127.0.0.1:3000/health"\n')
    result = rollbackd("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout and "***@127.0.0.1:3000/health" in result.stdout


def test_a_journal_that_is_not_a_database_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "journal.sqlite3").write_text("not a database")
    path = write(tmp_path, f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n')
    for command in (["status"], ["incidents"], ["pause"]):
        result = rollbackd(*command, "--config", str(path))
        assert result.returncode == 1, command
        assert result.stderr.count("\n") == 1 and "cannot open the journal" in result.stderr


ALERT_POLICY = """\
[[rule]]
scenario = "latency_alert"
when = "alert.HighLatency > 0"
severity = "medium"
action = "evaluate"
timeline = "60m"
"""


def test_check_warns_when_a_rule_reads_alerts_but_the_api_that_receives_them_is_off(
        tmp_path: Path) -> None:
    (tmp_path / "policy.toml").write_text(ALERT_POLICY)
    config = write(tmp_path, f'[daemon]\npolicy = "{tmp_path / "policy.toml"}"\n'
                             f'state_dir = "{tmp_path}"\n')
    result = rollbackd("check", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert ("warning   rule latency_alert reads alert.HighLatency, but the API is disabled "
            "(no api.token_files): Alertmanager cannot deliver alerts") in result.stdout

    token = tmp_path / "token"
    token.write_text("a-long-enough-secret-token\n")
    with config.open("a") as handle:
        handle.write(f'\n[api]\ntoken_files = ["{token}"]\n')
    enabled = rollbackd("check", "--config", str(config))
    assert enabled.returncode == 0, enabled.stderr
    assert "API is disabled" not in enabled.stdout
