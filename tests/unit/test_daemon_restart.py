"""A daemon restarted (by systemd, a crash, an upgrade) remembers what it decided before."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.config import load_config, load_policy
from daemon.journal import Journal
from daemon.service.loop import Daemon
from daemon.service.sd_notify import Notifier
from tests.harness.config import MIGRATION_FAILED_RULE, config_file

POLICY = """\
[guards]
blind_after = "10m"

""" + MIGRATION_FAILED_RULE + """
[[rule]]
scenario = "app_compromised"
when = "http.error_ratio > 0.25"
severity = "high"
action = "planned_rollback"
timeline = "30m"

[[rule]]
scenario = "performance_degraded"
when = "http.latency_p95 > 1.5 * baseline(http.latency_p95)"
severity = "medium"
action = "evaluate"
timeline = "60m"
"""


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    (tmp_path / "policy.toml").write_text(POLICY)
    return config_file(tmp_path, daemon={"mode": "auto", "policy": tmp_path / "policy.toml"})


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    journal = Journal.in_state_dir(tmp_path / "state")
    yield journal
    journal.close()


def start(config_path: Path) -> Daemon:
    """A daemon as `rollbackd run` builds it, stepped by hand instead of by its clock."""
    config = load_config(config_path)
    journal = Journal.in_state_dir(config.daemon.state_dir)
    return Daemon(config_path, config, load_policy(config, config_path), journal,
                  notifier=Notifier(None))


def test_a_restart_keeps_the_open_incident_and_the_rate_limit(
    config_path: Path, journal: Journal
) -> None:
    now = time.time()
    journal.begin_deploy("app", "v2", now - 60, restore_point="rp", verified=True)
    first = start(config_path)
    first._decide(now - 50, {"http.error_ratio": 0.0})
    journal.add_event(now - 45, {"type": "migration", "status": "failed"})
    first._decide(now - 40, {"http.error_ratio": 0.0})
    [opened] = journal.decisions()
    assert (opened.kind, opened.action, opened.mode) == (
        "open", "immediate_rollback", "auto")

    second = start(config_path)  # the same journal, a new process
    assert second.engine.incident == (1, "critical")
    second._decide(now - 30, {"http.error_ratio": 0.0})
    assert len(journal.decisions()) == 1  # the incident was resumed, not opened again

    journal.add_event(now - 25, {"type": "close", "incident": 1, "by": "alice",
                                 "decision": "dismiss"})
    second._decide(now - 20, {"http.error_ratio": 0.9})
    *_, resolved, reopened = journal.decisions()
    assert (resolved.kind, resolved.incident) == ("resolve", 1)
    # The rollback the first run decided still counts: the second within the hour pages.
    assert (reopened.kind, reopened.incident, reopened.action) == ("open", 2, "page")
    assert "rate limit" in reopened.reason


def test_a_restart_keeps_the_baseline_frozen_at_the_deploy(
    config_path: Path, journal: Journal
) -> None:
    now = time.time()
    first = start(config_path)
    for minute in range(25, 0, -1):
        first._decide(now - 120 - minute * 60, {"http.latency_p95": 0.2})
    journal.begin_deploy("app", "v2", now - 100, restore_point="rp", verified=True)
    first._decide(now - 90, {"http.latency_p95": 0.2})
    assert first.engine.baseline("http.latency_p95") == pytest.approx(0.2)

    second = start(config_path)  # no samples from before the deploy in this process
    assert second.engine.baseline("http.latency_p95") == pytest.approx(0.2)
    second._decide(now - 10, {"http.latency_p95": 0.5})
    assert second.engine.firing()["performance_degraded"]


def test_a_malformed_event_in_the_journal_is_skipped_and_cycles_go_on(
    config_path: Path, journal: Journal, tmp_path: Path
) -> None:
    daemon = start(config_path)
    with sqlite3.connect(tmp_path / "state" / Journal.FILE) as raw:
        raw.execute("INSERT INTO events (t, type, payload) VALUES (?, 'deploy', ?)",
                    (time.time(), '{"type": "deploy", "phase": "sideways"}'))
    daemon._decide(time.time(), {"http.error_ratio": 0.0})
    journal.add_event(time.time(), {"type": "migration", "status": "failed"})
    daemon._decide(time.time() + 1, {"http.error_ratio": 0.0})
    assert [d.scenario for d in journal.decisions()] == ["migration_failed"]
    # A restart reads the bad event again during its catch-up, and still starts.
    assert start(config_path).engine.incident == (1, "critical")
