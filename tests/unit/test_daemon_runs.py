"""The daemon starts runbooks: an incident opened to a rollback in auto mode at once, in the
background; in approve mode only on a person's ``decide N rollback``; never while paused."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.config import load_config, load_policy
from daemon.journal import Journal
from daemon.ops.operator import DecisionError, record_decision
from daemon.service.loop import Daemon
from daemon.service.sd_notify import Notifier
from policies.events import EventError, parse_event
from tests.harness.config import MIGRATION_FAILED_RULE, config_file

POLICY = MIGRATION_FAILED_RULE + """
[[rule]]
scenario = "performance_degraded"
when = "http.latency_p95 > 1"
severity = "medium"
action = "evaluate"
timeline = "60m"
"""


def daemon(tmp_path: Path, mode: str, *, fleet: bool = False) -> Daemon:
    """A daemon in ``mode``; with ``fleet``, a host of fleet ``vf`` (on a database it does not
    reach: nothing here looks at it)."""
    (tmp_path / "policy.toml").write_text(POLICY)
    path = config_file(tmp_path, daemon={"mode": mode, "policy": tmp_path / "policy.toml"},
                       app={"name": "app"},
                       database={"dsn": "host=127.0.0.1 port=9 dbname=app"} if fleet else None,
                       extra='[fleet]\nname = "vf"\nid = "h1"\n' if fleet else "")
    config = load_config(path)
    return Daemon(path, config, load_policy(config, path),
                  Journal.in_state_dir(config.daemon.state_dir), notifier=Notifier(None))


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal.in_state_dir(tmp_path / "state")
    yield j
    j.close()


def fail_a_migration(journal: Journal, now: float) -> None:
    journal.begin_deploy("app", "v2", now - 60, restore_point="rp", verified=True)
    journal.add_event(now - 30, {"type": "migration", "status": "failed", "version": "v2"})


async def test_auto_mode_starts_the_runbook_in_the_background(
        tmp_path: Path, journal: Journal) -> None:
    now = time.time()
    fail_a_migration(journal, now)
    d = daemon(tmp_path, "auto")
    d._decide(now, {})
    task = d._run_task
    assert task is not None  # started, not awaited: the cycle returned at once
    await task
    [run] = journal.runs()
    assert (run.runbook, run.incident, run.requested_by) == ("immediate_rollback", 1,
                                                              "rollbackd")
    # No [app].control here: the run stops at stop_app and pages, nothing left unsaid.
    assert run.status == "failed" and "stop_app" in (run.summary or "")
    assert any("FAILED at step 2 (stop_app)" in p.summary for p in journal.pages(incident=1))


async def test_approve_mode_waits_for_a_person_then_runs(tmp_path: Path,
                                                         journal: Journal) -> None:
    now = time.time()
    fail_a_migration(journal, now)
    d = daemon(tmp_path, "approve")
    d._decide(now, {})
    assert d._run_task is None and journal.runs() == []
    [opened] = journal.decisions()
    assert opened.mode == "approve" and opened.action == "immediate_rollback"

    record_decision(journal, 1, "rollback", "go", "alice")
    d._decide(now + 1, {})
    assert d._run_task is not None
    await d._run_task
    [run] = journal.runs()
    assert (run.runbook, run.incident, run.requested_by) == ("immediate_rollback", 1, "alice")
    assert d.engine.incident == (1, "critical")  # approving is not closing


async def test_an_approval_while_paused_is_refused_with_a_page(tmp_path: Path,
                                                               journal: Journal) -> None:
    now = time.time()
    fail_a_migration(journal, now)
    d = daemon(tmp_path, "approve")
    d._decide(now, {})
    journal.add_event(now, {"type": "pause", "by": "ops", "reason": ""})
    record_decision(journal, 1, "rollback", "", "alice", runbook="code_only")
    d._decide(now + 1, {})
    assert d._run_task is None and journal.runs() == []
    asked, refused = journal.pages(incident=1)
    assert asked.template == "decision" and "rollbackd decide 1 rollback" in asked.summary
    assert "NOT started" in refused.summary and "paused" in refused.summary


def test_decide_rollback_is_an_approve_event(journal: Journal) -> None:
    now = time.time()
    fail_a_migration(journal, now)
    with pytest.raises(DecisionError, match="no incident 1"):
        record_decision(journal, 1, "rollback", "", "alice")
    from policies.engine import Decision

    journal.add_decision(Decision(now, "open", 1, "performance_degraded", "medium", "evaluate",
                                  "evaluate", 3600, "auto", "latency"))
    with pytest.raises(DecisionError, match="runs no runbook: name one"):
        record_decision(journal, 1, "rollback", "", "alice")
    with pytest.raises(DecisionError, match="no runbook 'nope'"):
        record_decision(journal, 1, "rollback", "", "alice", runbook="nope")
    with pytest.raises(DecisionError, match="only with the decision rollback"):
        record_decision(journal, 1, "dismiss", "", "alice", runbook="code_only")
    record_decision(journal, 1, "rollback", "slow release", "alice", runbook="code_only")
    event = journal.latest_event(("approve",))
    assert event is not None and event.payload == {
        "type": "approve", "incident": 1, "by": "alice", "decision": "rollback (slow release)",
        "runbook": "code_only"}
    assert parse_event(event.payload) == event.payload
    with pytest.raises(EventError, match="approve event: incident must be"):
        parse_event({"type": "approve", "incident": 0})


async def test_at_start_the_daemon_recovers_a_run_a_crash_cut_short(
        tmp_path: Path, journal: Journal) -> None:
    now = time.time()
    plan = ["page", "stop_app", "restore_database", "validate", "rollback_code",
            "rollback_config", "start_app", "validate", "notify"]
    run = journal.begin_run("app", incident=3, runbook="immediate_rollback",
                            action="immediate_rollback", scenario="migration_failed",
                            by="rollbackd", t=now - 60, deadline=now + 900, deploy=None,
                            restore_point=None, plan=plan)
    for idx, kind in enumerate(plan[:2], 1):
        journal.end_step(journal.begin_step(run.id, idx, kind, 1, now - 50), "ok", "done", "",
                         {}, now - 49)
    journal.begin_step(run.id, 3, "restore_database", 1, now - 30)  # killed here
    d = daemon(tmp_path, "auto")
    await d.recover_runs()
    # No restore had begun: the step ran again, and failed (no deploy to restore to here).
    stored = journal.run(run.id)
    assert stored is not None and stored.status == "failed"
    attempts = [(s.attempt, s.outcome) for s in journal.steps(run.id) if s.idx == 3]
    assert attempts == [(1, "failed"), (2, "failed")]
    [page] = journal.pages(incident=3)
    assert "FAILED at step 3 (restore_database)" in page.summary
    assert "state left behind: app stopped, database not restored" in page.summary


@pytest.mark.parametrize("mode", ["approve", "dry-run"])
def test_in_a_fleet_a_rollback_waiting_for_a_person_holds_its_page_until_it_joins_the_fleet(
        tmp_path: Path, journal: Journal, mode: str) -> None:
    """The decision page waits for the fleet incident it belongs to, so that it goes out
    under the fleet's identity, from one host."""
    now = time.time()
    fail_a_migration(journal, now)
    d = daemon(tmp_path, mode, fleet=True)
    assert d.fleet is not None
    d._decide(now, {})
    [page] = journal.pages(incident=1)
    assert page.template == "decision" and "(on h1, a host of fleet vf" in page.summary, page
    assert d.fleet.sending(page) == ("hold", "joining the fleet incident it belongs to")
