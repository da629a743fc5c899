"""The journal's schema versions: a journal as the previous release wrote it is upgraded in
place and keeps everything; an upgraded one is opened without a write; a newer one is refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from daemon.journal import MIGRATIONS, SCHEMA_VERSION, Journal, JournalError, RestoreOutcome
from tests.harness.journal import DECISIONS, EVENTS, digest, previous_release_journal, user_version


def test_migrations_are_numbered_in_order() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert MIGRATIONS[-1].version == SCHEMA_VERSION


def test_a_previous_release_journal_is_upgraded_in_place_and_keeps_everything(
        tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    previous_release_journal(path)

    journal = Journal(path)
    try:
        deploys = journal.deploys()
        assert [(d.id, d.version, d.status, d.restore_point, d.restore_point_verified)
                for d in deploys] == [(2, "v2", "running", "rp-2", True),
                                      (1, "v1", "succeeded", "rp-1", True)]
        assert deploys[1].ended_at == 950.0 and deploys[1].code_version == "abc123"
        assert [(e.t, e.payload) for e in journal.events_after(0)] == EVENTS
        assert [d.as_json() for d in journal.decisions()] == DECISIONS
        assert [s.as_json() for s in journal.incidents()] == [
            {"incident": 2, "opened_at": 2000.0, "opened_by": "performance_degraded",
             "scenario": "performance_degraded", "severity": "medium", "action": "evaluate",
             "mode": "auto", "state": "open", "updated_at": 2000.0,
             "reason": DECISIONS[3]["reason"]},
            {"incident": 1, "opened_at": 1000.0, "opened_by": "migration_failed",
             "scenario": "migration_failed", "severity": "critical",
             "action": "immediate_rollback", "mode": "auto", "state": "resolved",
             "updated_at": 1200.0, "reason": "alice decided: dismiss"}]
        assert journal.last_incident() == 2
        drill = journal.latest_drill()
        good = journal.latest_drill(ok=True)
        assert drill is not None and (drill.backup, drill.ok) == ("rp-2", False)
        assert good is not None and (good.backup, good.duration, good.details) == (
            "rp-1", 12.5, {"checks": []})
        # The upgraded journal takes new rows after the old ones, restores included.
        assert journal.add_event(3000.0, {"type": "resume", "by": "bob"}) == len(EVENTS) + 1
        journal.end_deploy(2, "failed", 3001.0)
        restore = journal.begin_restore("visionforge", source="rp-2", strategy="swap",
                                        database="vf", tables=(), by="alice", t=3002.0)
        journal.finish_restore(restore.id, RestoreOutcome(status="restored", finished_at=3003.0))
        rolled_back = journal.deploy(2)
        assert rolled_back is not None and rolled_back.status == "rolled_back"
        assert (restore.deploy, restore.incident) == (2, 2)
    finally:
        journal.close()
    assert user_version(path) == SCHEMA_VERSION


def test_a_second_open_of_an_upgraded_journal_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    previous_release_journal(path)
    Journal(path).close()
    upgraded = digest(path)
    assert user_version(path) == SCHEMA_VERSION

    journal = Journal(path)
    try:
        assert len(journal.decisions()) == len(DECISIONS)
    finally:
        journal.close()
    assert digest(path) == upgraded
    assert user_version(path) == SCHEMA_VERSION


def test_a_fresh_journal_is_created_at_the_current_version(tmp_path: Path) -> None:
    path = tmp_path / "state" / "journal.sqlite3"
    Journal(path).close()
    assert user_version(path) == SCHEMA_VERSION


def test_a_journal_of_a_newer_rollbackd_is_refused_with_one_line_naming_it(
        tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    Journal(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    before = digest(path)

    with pytest.raises(JournalError) as refused:
        Journal(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert f"schema version {SCHEMA_VERSION + 1}" in message and "newer rollbackd" in message
    assert digest(path) == before and user_version(path) == SCHEMA_VERSION + 1
