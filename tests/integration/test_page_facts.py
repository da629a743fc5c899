"""The facts pages are rendered from, read from a journal holding an incident as the executor
journals it (a run with a retried step, a restore by swap whose replaced database is kept, a
page, the resolution) and the drills: expected downtime from the last passing drill, the data
window and where it is kept, the resolution time, the run's progress, and the reminders that
go on until a person writes the root cause and the prevention."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.fmt import when
from daemon.journal import Journal
from daemon.ops.operator import record_annotation
from daemon.paging.facts import incident_facts, needs_annotation
from daemon.paging.templates import render
from policies.engine import Engine
from policies.events import parse_event
from policies.policy import parse_policy, resolve_ref
from tests.harness.incidents import T0, journal_an_incident

LIVE, KEPT = "vf_live", "vf_live_rolledback_20270115080000"


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    journal = Journal.in_state_dir(tmp_path / "state")
    journal_an_incident(journal, LIVE, KEPT)
    return journal


def test_a_planned_rollback_notice_states_the_last_passing_drills_recovery_time(
        journal: Journal) -> None:
    assert incident_facts(journal, "visionforge", 1, now=T0)["expected_downtime"] == (
        "unknown: no drill has run")
    journal.add_drill(T0 - 7200, "rp-0", True, 95.0, {})
    journal.add_drill(T0 - 3600, "rp-1", True, 42.0, {})
    journal.add_drill(T0 - 60, "rp-1", False, 3.0, {"error": "restore failed"})
    facts = incident_facts(journal, "visionforge", 1, now=T0)
    assert facts["expected_downtime"] == (
        f"about 42s (the recovery time of the last drill, {when(T0 - 3600)})")
    assert "Expected downtime: about 42s" in render("planned", facts).text


def test_a_completion_notice_states_resolution_time_services_and_the_data_window(
        journal: Journal, tmp_path: Path) -> None:
    [restore] = journal.restores(incident=1)
    facts = incident_facts(journal, "visionforge", 1, now=T0 + 7200,
                           state_dir=tmp_path / "state")
    assert facts["resolved_at"] == when(T0 + 3600)
    assert facts["resolution_time"] == "1h"
    assert facts["services_affected"] == (
        "visionforge (rules migration_failed, app_compromised; signals migration.failed, "
        "http.error_ratio)")
    assert facts["data_loss"] == (
        f"- restore {restore.id} (swap of rp-1, restored): the data written from "
        f"{when(T0 - 600)} to {when(restore.data_window_end)} is not in the restored "
        f"database; it is kept in database {KEPT}")
    page = render("completion", facts)
    assert page.title == "RESOLVED — visionforge: incident 1, migration_failed, resolved after 1h"
    assert f"Data loss:\n{facts['data_loss']}\n" in page.text
    assert str(tmp_path / "state" / "incidents" / "1" / "report.md") in page.text


def test_a_status_update_states_the_runs_step_elapsed_time_and_steps_done(
        journal: Journal) -> None:
    facts = incident_facts(journal, "visionforge", 1, now=T0 + 7200)
    assert (facts["runbook"], facts["run_status"]) == ("immediate_rollback", "succeeded")
    assert (facts["step_index"], facts["step_count"], facts["step_kind"]) == ("6", "6",
                                                                             "start_app")
    assert facts["run_elapsed"] == "28s"
    assert facts["steps_done"].splitlines()[1:3] == [
        "- step 2 stop_app: failed in 3s", "- step 2 stop_app (attempt 2): ok in 3s"]
    assert render("status", facts).title == (
        "STATUS UPDATE — visionforge: incident 1, immediate_rollback step 6 of 6 (start_app)")


def test_a_decision_request_lists_the_evidence_the_options_and_the_deadline(
        journal: Journal) -> None:
    facts = incident_facts(journal, "visionforge", 1, now=T0 + 60)
    text = render("decision", facts).text
    assert "attach app_compromised (high) -> immediate_rollback: 'attached to incident 1" in text
    for option in ("immediate_rollback", "planned_rollback", "selective_rollback --tables T",
                   "fix_forward", "dismiss"):
        assert f"- rollbackd decide 1 {option} --reason '...'" in text
    assert "POST /api/v1/incidents/1/decision" in text
    assert f"Decide by: {when(T0 + 900)}" in text


def test_reminders_go_on_until_a_person_writes_root_cause_and_prevention(
        journal: Journal) -> None:
    assert needs_annotation(journal, 1)
    assert not needs_annotation(journal, 2)  # no such incident
    record_annotation(journal, 1, "the v42 migration locked users", None, "alice")
    assert needs_annotation(journal, 1)
    reminder = render("reminder", incident_facts(journal, "visionforge", 1, now=T0 + 7200))
    assert "Root cause (now: 'the v42 migration locked users' (by 'alice'" in reminder.text
    assert "Prevention (now: not written yet)" in reminder.text
    record_annotation(journal, 1, None, "test migrations on a restored copy", "bob")
    assert not needs_annotation(journal, 1)
    annotation = journal.annotation(1)
    assert annotation.root_cause is not None and annotation.root_cause.by == "alice"
    assert annotation.prevention is not None and annotation.prevention.by == "bob"


def test_the_decision_engine_ignores_an_annotation_in_the_journal(journal: Journal) -> None:
    record_annotation(journal, 1, "a lock", "a test", "alice")
    [event] = [e for e in journal.events_since(0) if e.payload["type"] == "annotate"]
    assert parse_event(event.payload) == event.payload
    policy = parse_policy(resolve_ref("builtin:visionforge").read_text(encoding="utf-8"),
                          "builtin:visionforge")
    engine = Engine(policy)
    engine.record(event.t - 1, {"type": "migration", "status": "failed"})
    engine.record(event.t, event.payload)  # refused as malformed before `annotate` was known
    assert engine.value("migration.failed") == 1.0
