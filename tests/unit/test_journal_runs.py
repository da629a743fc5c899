"""The journal's record of runbook runs: every attempt at every step, begun before its side
effect and ended after it, so a restarted daemon can tell where a run stopped; pages once per
dedup key."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.journal import Journal, JournalError


def test_a_run_keeps_its_plan_and_each_step_begun_and_ended(tmp_path: Path) -> None:
    journal = Journal.in_state_dir(tmp_path)
    run = journal.begin_run("visionforge", incident=3, runbook="immediate_rollback",
                            action="immediate_rollback", scenario="migration_failed",
                            by="rollbackd", t=100.0, deadline=1000.0, deploy=None,
                            restore_point="rp-1", plan=["stop_app", "restore_database"])
    first = journal.begin_step(run.id, 1, "stop_app", 1, 101.0)
    journal.end_step(first, "ok", "stopped", "", {"pid": 42}, 102.0)
    journal.begin_step(run.id, 2, "restore_database", 1, 103.0)

    assert journal.runs(status="running") == [journal.run(run.id)]
    stop, restore = journal.steps(run.id)
    assert (stop.kind, stop.outcome, stop.details) == ("stop_app", "ok", {"pid": 42})
    assert restore.ended_at is None and restore.outcome is None  # where it was interrupted

    done = journal.finish_run(run.id, "failed", "restore failed", 110.0)
    assert (done.status, done.plan, done.ended_at) == ("failed", ("stop_app",
                                                                  "restore_database"), 110.0)
    assert journal.runs(status="running") == []
    assert journal.runs(incident=3) == [done]


def test_a_page_is_recorded_once_per_dedup_key(tmp_path: Path) -> None:
    journal = Journal.in_state_dir(tmp_path)
    first = journal.add_page("visionforge", t=1.0, incident=3, run=1, level=1,
                             template="emergency", summary="restore failed", details={},
                             dedup_key="visionforge:3:1:failed")
    again = journal.add_page("visionforge", t=2.0, incident=3, run=1, level=1,
                             template="emergency", summary="restore failed", details={},
                             dedup_key="visionforge:3:1:failed")
    assert again == first
    assert journal.pages(incident=3) == [first]


def test_a_run_tells_the_engine_it_began_and_how_it_ended(tmp_path: Path) -> None:
    journal = Journal.in_state_dir(tmp_path)
    run = journal.begin_run("visionforge", incident=3, runbook="immediate_rollback",
                            action="immediate_rollback", scenario="migration_failed",
                            by="rollbackd", t=100.0, deadline=1000.0, deploy=None,
                            restore_point="rp-1", plan=["restore_database"])
    step = journal.begin_step(run.id, 1, "restore_database", 1, 101.0)
    journal.end_step(step, "ok", "restored", "", {}, 102.0)
    journal.finish_run(run.id, "succeeded", "done", 103.0)
    events = [e.payload for e in journal.events_after(0)]
    assert events == [
        {"type": "runbook", "phase": "begin", "incident": 3, "runbook": "immediate_rollback",
         "run": run.id},
        {"type": "runbook", "phase": "end", "incident": 3, "runbook": "immediate_rollback",
         "run": run.id, "status": "succeeded", "restored": True}]
    from policies.events import parse_event

    for event in events:
        parse_event(event)


def test_a_run_that_was_a_hosts_part_of_a_fleet_incident_names_it(tmp_path: Path) -> None:
    journal = Journal.in_state_dir(tmp_path)
    run = journal.begin_run("visionforge", incident=None, runbook="immediate_rollback@fleet",
                            action="immediate_rollback", scenario="migration_failed",
                            by="rollbackd", t=100.0, deadline=1000.0, deploy=None,
                            restore_point=None, plan=["stop_app"])
    assert run.fleet is None
    noted = journal.note_run_fleet(run.id, "fleet vf incident 1 (...): database restored by a")
    assert noted.fleet == "fleet vf incident 1 (...): database restored by a"
    assert journal.runs()[0].as_json()["fleet"] == noted.fleet
    with pytest.raises(JournalError, match="no run 9"):
        journal.note_run_fleet(9, "fleet vf incident 1")
