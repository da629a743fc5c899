"""End to end: the decision engine inside `rollbackd run`, fed by real probes and the journal."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from daemon.journal import Journal
from tests.harness.cli import rollbackd
from tests.harness.config import MIGRATION_FAILED_RULE, config_file
from tests.harness.processes import (
    Proc,
    daemon_url,
    migrate,
    scrape,
    set_faults,
    start_app,
    start_daemon,
)
from tests.harness.servers import free_port, wait_for

pytestmark = pytest.mark.e2e

FAST_POLICY = """\
[guards]
blind_after = "30s"

""" + MIGRATION_FAILED_RULE + """
[[rule]]
scenario = "app_compromised"
when = "http.up == 0 or http.error_ratio > 0.25"
for = "2s"
clear_for = "2s"
severity = "high"
action = "planned_rollback"
timeline = "30m"
"""


@pytest.fixture
def app(pg_db: str) -> Iterator[tuple[str, str]]:
    result = migrate(pg_db)
    assert result.returncode == 0, result.stderr
    proc, url = start_app(pg_db)
    yield pg_db, url
    proc.close()


@pytest.fixture
def daemon_config(tmp_path: Path, app: tuple[str, str]) -> Path:
    dsn, app_url = app
    policy = tmp_path / "policy.toml"
    policy.write_text(FAST_POLICY)
    return config_file(
        tmp_path,
        daemon={"interval": "1s", "listen": f"127.0.0.1:{free_port()}", "mode": "dry-run",
                "policy": policy, "log_format": "json"},
        database={"dsn": dsn, "migrations": "knex"},
        extra=f"""\
[probes.postgres]
timeout = "800ms"

[probes.migrations]
timeout = "800ms"

[[probes.http]]
name = "health"
url = "{app_url}/health"
timeout = "300ms"
window = "2s"
""")


def metric(url: str, name: str, **labels: str) -> float | None:
    return scrape(url).get((name, tuple(sorted(labels.items()))))


def test_an_app_failing_after_a_recorded_deploy_fires_the_rule_and_decides_a_rollback(
    daemon_config: Path, app: tuple[str, str], tmp_path: Path
) -> None:
    _, app_url = app
    (tmp_path / "backups").mkdir()
    with daemon_config.open("a") as config:
        config.write(f'\n[backups]\ndir = "{tmp_path / "backups"}"\nmin_free = "1MB"\n')
    began = subprocess.run(
        [sys.executable, "-m", "daemon", "deploy", "begin", "--version", "v2", "--json",
         "--config", str(daemon_config)], capture_output=True, text=True, timeout=120, check=False,
    )
    assert began.returncode == 0, began.stderr
    assert json.loads(began.stdout)["restore_point"]
    journal = Journal.in_state_dir(tmp_path / "state")
    daemon: Proc = start_daemon(daemon_config)
    try:
        url = daemon_url(daemon_config)
        firing = {"scenario": "app_compromised", "severity": "high"}
        decided = {"scenario": "app_compromised", "action": "planned_rollback"}
        assert metric(url, "rollbackd_rule_firing", **firing) == 0
        assert metric(url, "rollbackd_decisions_total", **decided) == 0
        restore_point = metric(url, "rollbackd_backup_last_success_timestamp_seconds",
                               kind="restore_point")
        assert restore_point is not None and time.time() - 300 < restore_point <= time.time()
        assert metric(url, "rollbackd_backup_last_success_timestamp_seconds", kind="safety") == 0

        set_faults(app_url, error_ratio=1.0)
        wait_for(lambda: metric(url, "rollbackd_rule_firing", **firing) == 1, 15,
                 what="app_compromised firing")
        wait_for(lambda: metric(url, "rollbackd_decisions_total", **decided) == 1, 5,
                 what="a planned_rollback decision")
        assert metric(url, "rollbackd_incident_open", severity="high") == 1
        [opened] = [d for d in journal.decisions() if d.kind == "open"]
        assert opened.scenario == "app_compromised" and opened.mode == "dry-run"
        assert opened.requested_action == "planned_rollback"
        assert '"executed": false' in daemon.output()

        set_faults(app_url, error_ratio=0.0)
        wait_for(lambda: metric(url, "rollbackd_incident_open", severity="high") == 0, 15,
                 what="the incident to resolve")
        assert metric(url, "rollbackd_rule_firing", **firing) == 0
        assert [d.kind for d in journal.decisions()] == ["open", "resolve"]

        # A restarted daemon continues the incident numbering of the journal.
        assert daemon.stop() == 0
        daemon = start_daemon(daemon_config)
        set_faults(app_url, error_ratio=1.0)
        wait_for(lambda: [d.incident for d in journal.decisions() if d.kind == "open"]
                 == [1, 2], 15, what="a second incident numbered 2")
    finally:
        daemon.close()
        journal.close()


def test_without_a_recorded_deploy_the_same_failure_only_pages(
    daemon_config: Path, app: tuple[str, str]
) -> None:
    _, app_url = app
    daemon = start_daemon(daemon_config)
    try:
        url = daemon_url(daemon_config)
        set_faults(app_url, error_ratio=1.0)
        paged = {"scenario": "app_compromised", "action": "page"}
        wait_for(lambda: metric(url, "rollbackd_decisions_total", **paged) == 1, 15,
                 what="a page instead of a rollback")
        assert metric(url, "rollbackd_decisions_total", scenario="app_compromised",
                      action="planned_rollback") == 0
        assert "nothing to roll back to" in daemon.output()
    finally:
        daemon.close()


def test_a_failed_migration_journaled_by_the_deploy_wrapper_is_an_immediate_rollback(
    daemon_config: Path, tmp_path: Path
) -> None:
    daemon = start_daemon(daemon_config)
    journal = Journal.in_state_dir(tmp_path / "state")
    try:
        url = daemon_url(daemon_config)
        journal.begin_deploy("visionforge", "v2", time.time(), restore_point="rp", verified=True)
        journal.add_event(time.time(), {"type": "migration", "status": "failed", "version": "v2"})
        decided = {"scenario": "migration_failed", "action": "immediate_rollback"}
        wait_for(lambda: metric(url, "rollbackd_decisions_total", **decided) == 1, 10,
                 what="an immediate rollback decision")
        assert metric(url, "rollbackd_incident_open", severity="critical") == 1
        # knex's table records only successes: the probe reads 0, the engine holds the
        # journaled failure at 1, and what operators see is the engine's value.
        wait_for(lambda: metric(url, "rollbackd_signal", signal="migration.failed") == 1, 5,
                 what="migration.failed exported as the engine holds it")
        assert "migration FAILED" in httpx.get(f"{url}/", timeout=5).text
    finally:
        daemon.close()
        journal.close()


def test_sighup_with_a_broken_policy_keeps_the_policy_in_force(
    daemon_config: Path, tmp_path: Path
) -> None:
    import signal

    daemon = start_daemon(daemon_config)
    try:
        url = daemon_url(daemon_config)
        (tmp_path / "policy.toml").write_text(FAST_POLICY.replace("http.up ==", "http.upp =="))
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: "reload rejected" in daemon.output(), 5, what="the rejected reload")
        assert "unknown signal 'http.upp'" in daemon.output()
        assert metric(url, "rollbackd_config_reloads_total", outcome="failure") == 1
        assert metric(url, "rollbackd_rule_firing", scenario="app_compromised",
                      severity="high") == 0
        assert daemon.running()
    finally:
        daemon.close()


def rollbackd_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return rollbackd(*args, config=config)


def test_a_paused_daemon_pages_instead_of_rolling_back_and_says_so_until_resumed(
    daemon_config: Path, app: tuple[str, str], tmp_path: Path
) -> None:
    _, app_url = app
    journal = Journal.in_state_dir(tmp_path / "state")
    journal.begin_deploy("visionforge", "v2", time.time(), restore_point="rp", verified=True)
    daemon = start_daemon(daemon_config)
    try:
        url = daemon_url(daemon_config)
        assert metric(url, "rollbackd_paused") == 0
        paused = rollbackd_cli(daemon_config, "pause", "--reason", "database maintenance")
        assert paused.returncode == 0, paused.stderr
        wait_for(lambda: metric(url, "rollbackd_paused") == 1, 5, what="rollbackd_paused 1")
        assert "[PAUSED]" in rollbackd_cli(daemon_config, "status").stdout

        set_faults(app_url, error_ratio=1.0)
        wait_for(lambda: any(d.kind == "open" for d in journal.decisions()), 15,
                 what="an incident while paused")
        [opened] = journal.decisions()
        assert (opened.action, opened.requested_action, opened.mode) == (
            "page", "planned_rollback", "dry-run")
        assert opened.reason.startswith("paused")

        assert rollbackd_cli(daemon_config, "resume").returncode == 0
        wait_for(lambda: metric(url, "rollbackd_paused") == 0, 5, what="rollbackd_paused 0")
    finally:
        daemon.close()
        journal.close()


def test_a_pause_older_than_the_event_horizon_survives_a_restart(
    daemon_config: Path, tmp_path: Path
) -> None:
    journal = Journal.in_state_dir(tmp_path / "state")
    journal.add_event(time.time() - 3 * 86400, {"type": "pause", "by": "ops", "reason": ""})
    journal.close()
    daemon = start_daemon(daemon_config)
    try:
        assert metric(daemon_url(daemon_config), "rollbackd_paused") == 1
    finally:
        daemon.close()


def test_an_operator_sees_the_incident_and_dismisses_it(
    daemon_config: Path, app: tuple[str, str], tmp_path: Path
) -> None:
    _, app_url = app
    daemon = start_daemon(daemon_config)
    journal = Journal.in_state_dir(tmp_path / "state")
    try:
        url = daemon_url(daemon_config)
        set_faults(app_url, error_ratio=1.0)
        wait_for(lambda: metric(url, "rollbackd_incident_open", severity="high") == 1, 15,
                 what="an open incident")
        status = json.loads(rollbackd_cli(daemon_config, "status", "--json").stdout)
        assert status["incident"]["incident"] == 1 and status["incident"]["state"] == "open"
        listed = json.loads(rollbackd_cli(daemon_config, "incidents", "--json").stdout)
        assert [(i["incident"], i["scenario"], i["state"]) for i in listed] == [
            (1, "app_compromised", "open")]
        for argv in (("incidents", "list", "--json"), ("incidents", "--json", "list")):
            assert json.loads(rollbackd_cli(daemon_config, *argv).stdout) == listed

        decided = rollbackd_cli(daemon_config, "decide", "1", "dismiss", "--reason", "drill")
        assert decided.returncode == 0, decided.stderr
        wait_for(lambda: metric(url, "rollbackd_incident_open", severity="high") == 0, 5,
                 what="the dismissed incident to resolve")
        shown = rollbackd_cli(daemon_config, "incidents", "show", "1", "--json").stdout
        last = json.loads(shown.splitlines()[-1])
        assert last["kind"] == "resolve" and "decided: dismiss (drill)" in last["reason"]
        again = rollbackd_cli(daemon_config, "decide", "1", "dismiss")
        assert again.returncode == 1 and "already resolved" in again.stderr
        missing = rollbackd_cli(daemon_config, "incidents", "show", "9")
        assert missing.returncode == 1 and "no incident 9" in missing.stderr
    finally:
        daemon.close()
        journal.close()
