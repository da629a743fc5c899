"""``rollbackd run --record``: the daemon stepped by hand (as test_daemon_restart does), with
events journaled between its cycles, before the first and a moment after one; ``simulate`` on
what it recorded takes exactly the decisions it journaled."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from daemon.config import load_config, load_policy
from daemon.journal import Journal
from daemon.service.loop import Daemon
from daemon.service.recorder import Recorder
from daemon.service.sd_notify import Notifier
from policies.replay import ReplayError, parse_line
from tests.harness.cli import rollbackd
from tests.harness.config import config_file
from tests.harness.recordings import differences, replayed

POLICY = """\
[baseline]
window = "20s"
gap = "2s"
min_points = 5

[guards]
blind_after = "5s"
watch_for = "10s"

[[rule]]
scenario = "migration_failed"
when = "migration.failed == 1"
clear_for = "5s"
severity = "critical"
action = "immediate_rollback"
timeline = "15m"

[[rule]]
scenario = "app_compromised"
when = "http.up == 0 or http.error_ratio > 0.25"
for = "3s"
clear_for = "5s"
severity = "high"
action = "planned_rollback"
timeline = "30m"

[[rule]]
scenario = "performance_degraded"
when = "http.latency_p95 > 1.5 * baseline(http.latency_p95)"
for = "3s"
clear_for = "5s"
severity = "medium"
action = "evaluate"
timeline = "60m"

[[rule]]
scenario = "minor_issue"
when = "alert.severity_warning > 0"
for = "2s"
clear_for = "2s"
severity = "low"
action = "fix_forward"
timeline = "next release"
"""

HEALTHY = {"http.up": 1.0, "http.error_ratio": 0.0, "http.latency_p95": 0.1, "db.up": 1.0,
           "migration.failed": 0.0}


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    (tmp_path / "policy.toml").write_text(POLICY)
    return config_file(tmp_path, daemon={"mode": "auto", "policy": tmp_path / "policy.toml"})


def start(config_path: Path, recording: Path) -> Daemon:
    """A daemon as `rollbackd run --record RECORDING` builds it, stepped by hand."""
    config = load_config(config_path)
    policy = load_policy(config, config_path)
    return Daemon(config_path, config, policy, Journal.in_state_dir(config.daemon.state_dir),
                  notifier=Notifier(None), recorder=Recorder.open(recording, policy))


def taken(journal: Journal) -> list[dict[str, Any]]:
    return [d.as_json() for d in journal.decisions(limit=10_000)]


def lines(recording: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in recording.read_text().splitlines()]


def test_a_daemon_fed_events_between_before_and_after_its_cycles_replays_to_its_decisions(
    config_path: Path, tmp_path: Path
) -> None:
    recording = tmp_path / "daemon.jsonl"
    base = time.time() - 1000
    journal = Journal.in_state_dir(tmp_path / "state")
    # Before the start: the last deploy and a pause that was lifted, read at start.
    journal.begin_deploy("app", "v1", base - 50, restore_point="rp1", verified=True)
    journal.add_event(base - 40, {"type": "pause", "by": "alice"})
    journal.add_event(base - 30, {"type": "resume", "by": "alice"})
    daemon = start(config_path, recording)
    step = 0

    def cycle(**values: float | None) -> None:
        nonlocal step
        daemon._decide(base + step, {**HEALTHY, "http.latency_p95": 0.1 + step % 3 / 100,
                                     **values})
        step += 1

    for _ in range(25):
        cycle()
    journal.begin_deploy("app", "v2", base + step - 0.5, restore_point="rp2", verified=True)
    # Journaled a moment after the cycle's clock was read: fed in that cycle all the same.
    journal.add_event(base + step + 0.2, {"type": "migration", "status": "failed"})
    cycle()  # the tool's table says nothing of the failure: the daemon holds it at 1
    journal.add_event(base + step - 0.5, {"type": "runbook", "phase": "begin", "incident": 1,
                                          "runbook": "immediate_rollback"})
    cycle()
    journal.add_event(base + step - 0.5, {"type": "runbook", "phase": "end", "incident": 1,
                                          "runbook": "immediate_rollback",
                                          "status": "succeeded", "restored": True})
    for _ in range(7):  # the migrations probe cannot read: blind inside the watch period
        cycle(**{"migration.failed": None})
    for _ in range(5):  # slower, as the incident pages: evidence of it
        cycle(**{"http.latency_p95": 0.5})
    for _ in range(12):
        cycle()
    # An alert journaled with a time before the last cycle is fed at the last cycle's time.
    journal.add_event(base + step - 4, {"type": "alert", "status": "firing",
                                        "labels": {"alertname": "DiskFilling",
                                                   "severity": "warning"}})
    for _ in range(4):
        cycle()
    journal.add_event(base + step - 0.5, {"type": "close", "incident": 2, "by": "bob",
                                          "decision": "dismiss"})
    for _ in range(3):
        cycle()
    assert daemon.recorder is not None
    daemon.recorder.close()

    decisions = taken(journal)
    assert [(d["kind"], d["scenario"]) for d in decisions] == [
        ("open", "migration_failed"), ("escalate", "monitoring_blind"),
        ("attach", "performance_degraded"), ("resolve", "migration_failed"),
        ("open", "minor_issue"), ("resolve", "minor_issue")], json.dumps(decisions, indent=1)
    assert differences(decisions, replayed(recording, tmp_path / "policy.toml")) == []
    recorded = lines(recording)
    # The subtle parts were there: events at their own time inside a cycle's step, and the
    # value the daemon went back to (the probe's null) where a replay's event would say 0.
    assert any("event" in line and "at" in line for line in recorded)
    assert any(line.get("signals") == {"migration.failed": None} and "at" in line
               for line in recorded), "no correction of migration.failed was needed"


def test_the_events_read_from_the_journal_at_start_are_recorded_before_the_first_cycle(
    config_path: Path, tmp_path: Path
) -> None:
    recording = tmp_path / "daemon.jsonl"
    now = time.time()
    journal = Journal.in_state_dir(tmp_path / "state")
    journal.begin_deploy("app", "v2", now - 20, restore_point="rp", verified=True)
    journal.add_event(now - 10, {"type": "migration", "status": "failed"})
    daemon = start(config_path, recording)
    daemon._decide(now, HEALTHY)
    daemon._decide(now + 1, HEALTHY)

    recorded = lines(recording)
    assert [(line["t"], line.get("at"), "event" in line) for line in recorded[:3]] == [
        (now, now - 20, True), (now, now - 10, True), (now, None, False)]
    decisions = taken(journal)
    assert [(d["kind"], d["t"]) for d in decisions] == [("open", now)]
    assert differences(decisions, replayed(recording, tmp_path / "policy.toml")) == []


def test_a_recording_that_cannot_be_written_stops_once_and_the_daemon_goes_on_deciding(
    config_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_config(config_path)
    policy = load_policy(config, config_path)
    journal = Journal.in_state_dir(config.daemon.state_dir)
    daemon = Daemon(config_path, config, policy, journal, notifier=Notifier(None),
                    recorder=Recorder.open(Path("/dev/full"), policy))
    now = time.time()
    daemon._decide(now, HEALTHY)
    journal.add_event(now + 0.5, {"type": "migration", "status": "failed"})
    daemon._decide(now + 1, HEALTHY)
    daemon._decide(now + 2, HEALTHY)

    assert daemon.recorder is not None and not daemon.recorder.recording
    assert [d.kind for d in journal.decisions()] == ["open"]
    out = capsys.readouterr().out
    assert out.count("recording stopped") == 1, out
    assert "/dev/full" in out


def test_a_reload_that_changes_the_policy_stops_the_recording(
    config_path: Path, tmp_path: Path
) -> None:
    recording = tmp_path / "daemon.jsonl"
    daemon = start(config_path, recording)
    daemon._decide(time.time(), HEALTHY)
    (tmp_path / "policy.toml").write_text(POLICY.replace('for = "3s"', 'for = "4s"'))

    assert asyncio.run(daemon.reload())
    assert daemon.recorder is not None and not daemon.recorder.recording
    assert len(lines(recording)) == 1


def test_rollbackd_run_refuses_a_recording_it_cannot_open_in_one_line(
    config_path: Path, tmp_path: Path
) -> None:
    result = rollbackd("run", "--record", str(tmp_path / "missing" / "x.jsonl"),
                       config=config_path, timeout=30)

    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (f"rollbackd: --record: cannot record to "
                                     f"{tmp_path / 'missing' / 'x.jsonl'}: "
                                     "No such file or directory")


@pytest.mark.parametrize(("text", "error"), [
    ('{"t": 5, "at": "soon", "event": {"type": "pause"}}',
     'line 3: "at" must be a number of seconds >= 0'),
    ('{"t": 5, "at": -1, "signals": {}}', 'line 3: "at" must be a number of seconds >= 0'),
])
def test_a_replay_line_with_a_bad_at_is_refused_naming_its_line(text: str, error: str) -> None:
    with pytest.raises(ReplayError) as raised:
        parse_line(text, 3)
    assert str(raised.value) == error
