"""Restores in the journal: linked to their deploy and incident when they begin; what their end
does to the deploy (rolled back) and to the incident (closed by a person's restore)."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.journal import (
    Journal,
    JournalError,
    RestoreOutcome,
    RestoreStatus,
    RestoreStrategy,
)
from policies.engine import Decision


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    j = Journal(tmp_path / "journal.sqlite3")
    j.begin_deploy("app", "v1", 100.0, restore_point="rp-1", verified=True)
    j.end_deploy(1, "succeeded", 110.0)
    j.begin_deploy("app", "v2", 200.0, restore_point="rp-2", verified=True)
    j.end_deploy(2, "succeeded", 210.0)
    j.begin_deploy("other", "v9", 300.0, restore_point="rp-9", verified=True)
    return j


def open_incident(journal: Journal, number: int, kind: str = "open") -> None:
    journal.add_decision(Decision(t=250.0, kind=kind, incident=number, scenario="x",
                                  severity="high", action="page", requested_action="page",
                                  timeline_s=None, mode="auto", reason=""))


def closes(journal: Journal) -> list[dict[str, object]]:
    return [e.payload for e in journal.events_after(0) if e.payload["type"] == "close"]


def begin(journal: Journal, source: str, strategy: RestoreStrategy = "swap",
          tables: tuple[str, ...] = ()) -> int:
    return journal.begin_restore("app", source=source, strategy=strategy, database="vf",
                                 tables=tables, by="alice", t=400.0).id


def done(status: RestoreStatus = "restored") -> RestoreOutcome:
    return RestoreOutcome(status=status, finished_at=401.0, kept="vf_rolledback_1",
                          kept_kind="database", data_window_start=200.0, data_window_end=400.0)


def deploy_status(journal: Journal, deploy: int) -> str:
    found = journal.deploy(deploy)
    assert found is not None
    return found.status


def test_a_restore_links_the_deploy_whose_restore_point_it_restored(journal: Journal) -> None:
    open_incident(journal, 1)
    restore = journal.finish_restore(begin(journal, "rp-1"), done())
    assert (restore.deploy, restore.incident, restore.status) == (1, 1, "restored")
    statuses = {d.id: d.status for d in journal.deploys()}
    assert statuses == {1: "rolled_back", 2: "succeeded", 3: "running"}
    assert closes(journal) == [{"type": "close", "incident": 1, "by": "alice",
                                "decision": "rolled back by hand (restore 1 restored: swap of "
                                            "rp-1 by alice)"}]
    assert journal.restores(incident=1) == journal.restores(deploy=1) == [restore]


def test_a_restore_of_another_backup_links_the_apps_latest_deploy(journal: Journal) -> None:
    restore = journal.finish_restore(begin(journal, "manual-7"), done())
    assert (restore.deploy, restore.incident) == (2, None)
    assert deploy_status(journal, 2) == "rolled_back"
    assert closes(journal) == []


def test_an_unvalidated_restore_rolls_back_but_leaves_the_incident_open(
        journal: Journal) -> None:
    open_incident(journal, 1)
    restore = journal.finish_restore(begin(journal, "rp-2"), done("validation_failed"))
    assert not restore.as_json()["ok"] and restore.completed
    assert deploy_status(journal, 2) == "rolled_back"
    assert closes(journal) == []


def test_a_failed_or_tables_restore_leaves_the_deploy(journal: Journal) -> None:
    open_incident(journal, 1)
    failed = journal.finish_restore(begin(journal, "rp-2"), RestoreOutcome(
        status="failed", finished_at=401.0, error="backup rp-2 is refused"))
    assert failed.error == "backup rp-2 is refused" and failed.kept is None
    tables = journal.finish_restore(begin(journal, "rp-2", "tables", ("users",)), done())
    assert tables.tables == ("users",) and tables.deploy == 2
    assert deploy_status(journal, 2) == "succeeded"
    # The tables restore was validated: it still closes the incident.
    assert [c["incident"] for c in closes(journal)] == [1]


def test_the_executor_restore_does_not_close_the_incident(journal: Journal) -> None:
    open_incident(journal, 1)
    journal.finish_restore(begin(journal, "rp-2"), done(), close_incident=False)
    assert closes(journal) == []


def test_a_resolved_incident_is_not_linked(journal: Journal) -> None:
    open_incident(journal, 1)
    open_incident(journal, 1, "resolve")
    restore = journal.restore(begin(journal, "rp-2"))
    assert restore is not None and restore.incident is None


def test_an_unfinished_restore_stays_running(journal: Journal) -> None:
    restore = journal.restore(begin(journal, "rp-2"))
    assert restore is not None and (restore.status, restore.finished_at) == ("running", None)
    assert deploy_status(journal, 2) == "succeeded"


def test_a_deploy_is_never_ended_as_rolled_back(journal: Journal) -> None:
    with pytest.raises(JournalError, match="succeeded or failed"):
        journal.end_deploy(3, "rolled_back", 500.0)


def test_a_fleet_hosts_deploy_rolled_back_by_another_hosts_restore_is_rolled_back_here(
        journal: Journal) -> None:
    """Its code and config by its follower run, its database by the fleet's one restore."""
    rolled = journal.deploy_rolled_back(3, 500.0)
    assert (rolled.status, rolled.ended_at) == ("rolled_back", 500.0)
    assert deploy_status(journal, 2) == "succeeded"
    with pytest.raises(JournalError, match="no deploy 9"):
        journal.deploy_rolled_back(9, 500.0)
    with pytest.raises(JournalError, match="already ended"):
        journal.end_deploy(3, "succeeded", 600.0)  # a deploy run's end after the rollback


def test_a_whole_restore_by_hand_tells_the_engine_the_deploy_was_rolled_back(
        journal: Journal, tmp_path: Path) -> None:
    from policies.engine import Engine
    from policies.policy import parse_policy

    journal.finish_restore(begin(journal, "rp-2"), done())
    [event] = [e.payload for e in journal.events_after(0) if e.payload["type"] == "runbook"]
    assert event == {"type": "runbook", "phase": "end", "incident": None,
                     "runbook": "restore_by_hand", "status": "succeeded", "restored": True,
                     "restore": 1}
    engine = Engine(parse_policy((Path(__file__).parents[2] / "policies" / "visionforge.toml")
                                 .read_text(), "visionforge.toml"))
    engine.record(300.0, {"type": "migration", "status": "failed", "version": "v2"})
    assert engine.value("migration.failed") == 1
    engine.record(401.0, event)
    assert engine.value("migration.failed") == 0


def test_a_table_restore_or_the_executors_restore_journals_no_runbook_end(
        journal: Journal) -> None:
    journal.finish_restore(begin(journal, "rp-2", "tables", ("users",)), done())
    journal.finish_restore(begin(journal, "rp-2"), done(), close_incident=False)
    assert [e for e in journal.events_after(0) if e.payload["type"] == "runbook"] == []
