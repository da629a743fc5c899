"""Incident reports without databases: what the report says of an incident with no restore,
of a safety backup, of a failed restore, of an interrupted step and an app left stopped; the
Markdown keeps its structure whatever the journal's texts hold."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from daemon.config import Config, load_config
from daemon.journal import Journal, RestoreOutcome
from daemon.runbooks.reports import (
    GENERIC_PREVENTION,
    build_report,
    gather_facts,
    render_markdown,
    run_scope,
    signal_values,
)
from policies.engine import Decision
from tests.harness.config import config_file

T0 = 1_800_000_000.0


def setup(tmp_path: Path, scenario: str = "database_unreachable",
          action: str = "page") -> tuple[Config, Journal]:
    config = load_config(config_file(tmp_path, app={"name": "visionforge"},
                                     backups={"dir": tmp_path / "backups"}))
    journal = Journal.in_state_dir(config.daemon.state_dir)
    journal.add_decision(Decision(T0, "open", 1, scenario, "critical", action, action, 900,
                                  "auto", "db.up == 0 held for 1m"))
    return config, journal


def report_of(config: Config, journal: Journal) -> dict[str, Any]:
    facts = gather_facts(journal, 1)
    assert facts is not None
    report = build_report(config, facts, now=T0 + 120)
    # What is written is JSON: the report survives the round trip unchanged.
    assert json.loads(json.dumps(report.data)) == report.data
    return report.data


def test_a_paged_incident_without_a_run_says_nothing_was_done_or_undone(
        tmp_path: Path) -> None:
    config, journal = setup(tmp_path)
    data = report_of(config, journal)
    md = render_markdown(data)
    assert "no runbook ran: nothing was stopped, restored or rolled back by rollbackd" in md
    assert "No database restore in this incident: no data was undone." in md
    assert "and is still open (2m so far)" in md
    assert "Consider a standby with failover" in md


def test_an_unknown_scenario_gets_the_generic_checklist(tmp_path: Path) -> None:
    config, journal = setup(tmp_path, scenario="disk_full")
    data = report_of(config, journal)
    assert data["prevention"] == list(GENERIC_PREVENTION)


def test_a_safety_backup_and_a_failed_restore_are_named_not_compared(tmp_path: Path) -> None:
    config, journal = setup(tmp_path, "data_validation_failed", "planned_rollback")
    kept = journal.begin_restore("visionforge", source="rp-1", strategy="in_place",
                                 database="vf", tables=[], by="alice", t=T0 + 10, incident=1)
    journal.finish_restore(kept.id, RestoreOutcome(
        status="restored", finished_at=T0 + 20, kept="20270115T080010Z-safety-ab12",
        kept_kind="backup", safety_backup="20270115T080010Z-safety-ab12",
        data_window_start=T0 - 600, data_window_end=T0 + 10), close_incident=False)
    failed = journal.begin_restore("visionforge", source="rp-1", strategy="swap",
                                   database="vf", tables=[], by="alice", t=T0 + 30, incident=1)
    journal.finish_restore(failed.id, RestoreOutcome(status="failed", finished_at=T0 + 31,
                                                     error="pg_restore failed\nexit 1"))
    data = report_of(config, journal)
    backup, refused = data["data_window"]
    assert not backup["compared"] and backup["undone"]
    assert str(tmp_path / "backups" / "20270115T080010Z-safety-ab12") in backup["note"]
    assert "needs it restored into a scratch database" in backup["note"]
    assert not refused["undone"] and "nothing was replaced" in refused["note"]
    md = render_markdown(data)
    assert "restore 2 failed: pg_restore failed exit 1" in md
    assert "rows not compared" in md


def test_an_interrupted_step_and_an_app_left_stopped_are_issues(tmp_path: Path) -> None:
    config, journal = setup(tmp_path, "migration_failed", "immediate_rollback")
    run = journal.begin_run("visionforge", incident=1, runbook="immediate_rollback",
                            action="immediate_rollback", scenario="migration_failed",
                            by="rollbackd", t=T0 + 1, deadline=T0 + 900, deploy=None,
                            restore_point="rp-1", plan=["stop_app", "restore_database",
                                                        "start_app"])
    stop = journal.begin_step(run.id, 1, "stop_app", 1, T0 + 2)
    journal.end_step(stop, "ok", "stopped", "", {}, T0 + 3)
    journal.begin_step(run.id, 2, "restore_database", 1, T0 + 4)
    journal.finish_run(run.id, "abandoned", "the restore was interrupted; paged", T0 + 60)
    facts = gather_facts(journal, 1)
    assert facts is not None
    report = build_report(config, facts, now=T0 + 120)
    md = report.markdown()
    assert "step 2 restore_database: began, never ended (interrupted)" in md
    assert "the app was stopped at 2027-01-15 08:00:03 UTC and not started again" in md
    assert "not reached: start_app" in md
    issues = [line for line in report.execution if line["event"] == "issue"]
    assert [(i["kind"], i["issue"]) for i in issues] == [("restore_database", "interrupted")]


def test_journal_texts_cannot_break_the_markdown() -> None:
    data = {
        "incident": 1, "app": "vf", "generated_at": T0, "summary": {
            "outcome": "done", "state": "open", "scenario": "x", "severity": "low",
            "action": "page", "mode": "auto", "opened_by": "x", "opened_at": T0,
            "resolved_at": None, "duration_s": 5, "deploy": None, "runs": [],
            "restores": []},
        "impact": {"statements": ["line one\n## not a heading <script>"]},
        "timeline": [{"t": T0, "kind": "step", "text": "a\nb"}],
        "root_cause": {"deploy": None, "scenarios": [], "signals": [], "evidence": [
            {"run": 1, "step": 1, "kind": "exec", "attempt": 1, "outcome": "failed",
             "message": "boom", "output": "```\ninjected\n```"}]},
        "resolution": {"statements": [], "runs": []}, "prevention": [],
        "data_window": [{"restore": 1, "strategy": "tables", "source": "rp", "status":
                         "restored", "undone": True, "start": None, "end": T0,
                         "location": "tables k", "compared": True, "rows_missing": 1,
                         "computed_at": T0, "key_cap": 10, "note": None, "error": None,
                         "tables": [{"table": "public.a|b", "kept_as": "k.x", "key": ["id"],
                                     "missing": 1, "compared": 1, "capped": False,
                                     "examples": ["1|2"], "note": None}]}],
    }
    md = render_markdown(data)
    assert [line for line in md.splitlines() if line.startswith("## ")] == [
        "## Summary", "## Impact", "## Timeline", "## Root cause", "## Resolution",
        "## Prevention", "## Data window"]
    assert "- line one ## not a heading &lt;script>" in md
    assert "````\n```\ninjected\n```\n````" in md
    assert "| public.a\\|b | k.x | id | 1 | 1 | 1\\|2 |  |" in md
    assert "from an unknown time to" in md


def test_signal_values_are_names_with_a_value_not_conditions() -> None:
    assert signal_values("http.error_ratio=0.42, http.up = 0; migration.failed == 1 and "
                         "db.up >= 1") == [("http.error_ratio", "0.42"), ("http.up", "0")]


def test_a_runs_scope_is_what_its_plan_touches() -> None:
    assert run_scope(["notify", "rollback_code", "rollback_config"]) == {
        "database": False, "code": True, "config": True, "app": False}
    assert run_scope(["safety_backup", "stop_app"])["database"]
