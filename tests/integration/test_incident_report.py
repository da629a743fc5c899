"""An incident's execution log and report from the journal and real PostgreSQL databases: the
data window lists exactly the kept rows the restored database lacks, by primary key; the
Markdown has every section and states the JSON's facts; the execution log has every attempt;
the report is made again only when the journal has more, and a data window once computed is
kept."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from daemon.config import Config, load_config
from daemon.journal import Journal, RestoreOutcome
from daemon.runbooks.reports import (
    ReportError,
    ReportPaths,
    current_report,
    gather_facts,
    render_markdown,
    write_incident_report,
)
from tests.harness.config import config_file
from tests.harness.data import run
from tests.harness.incidents import (
    EXPECTED_WINDOW,
    T0,
    decision,
    journal_an_incident,
    live_and_kept,
)
from tests.harness.servers import PgCluster


def config_for(tmp_path: Path, cluster: PgCluster, live: str) -> Config:
    return load_config(config_file(tmp_path, app={"name": "visionforge"},
                                   database={"dsn": cluster.dsn(live)},
                                   backups={"dir": tmp_path / "backups"}))


@pytest.fixture
def incident(tmp_path: Path, pg_cluster: PgCluster) -> tuple[Config, Journal, str]:
    """Incident 1 journaled, its restore's kept copy a real database; and its name."""
    live, kept = live_and_kept(pg_cluster)
    config = config_for(tmp_path, pg_cluster, live)
    journal = Journal.in_state_dir(config.daemon.state_dir)
    journal_an_incident(journal, live, kept)
    return config, journal, kept


SECTIONS = ["## Summary", "## Impact", "## Timeline", "## Root cause", "## Resolution",
            "## Prevention", "## Data window"]


def test_the_report_has_every_section_and_states_the_json_facts(
        incident: tuple[Config, Journal, str]) -> None:
    config, journal, kept = incident
    paths = write_incident_report(config, journal, 1)
    assert paths == ReportPaths.of(config.daemon.state_dir, 1)
    assert stat.S_IMODE(paths.directory.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600
               for p in (paths.execution_log, paths.markdown, paths.json))
    md = paths.markdown.read_text()
    data = json.loads(paths.json.read_text())
    assert [line for line in md.splitlines() if line.startswith("## ")] == SECTIONS
    assert md == render_markdown(data)

    [window] = data["data_window"]
    assert window["kept"] == kept and window["compared"] and window["error"] is None
    assert {t["table"]: (t["missing"], t["examples"], t["key"])
            for t in window["tables"]} == EXPECTED_WINDOW
    assert window["rows_missing"] == 9
    for table in window["tables"]:  # each table's row of the Markdown says the same
        row = next(line for line in md.splitlines()
                   if line.startswith(f"| {table['table'].replace('|', chr(92) + '|')} |"))
        assert f"| {'' if table['missing'] is None else table['missing']} |" in row
        assert ", ".join(table["examples"]).replace("|", "\\|") in row
    assert f"database {kept}" in md

    # Every fact of the JSON's sections is in the Markdown.
    s = data["summary"]
    assert (s["state"], s["scenario"], s["severity"], s["action"]) == (
        "resolved", "migration_failed", "critical", "immediate_rollback")
    assert s["deploy"]["version"] == "v42" and s["deploy"]["status"] == "rolled_back"
    for fact in [s["outcome"], *s["runs"], *s["restores"],
                 *data["impact"]["statements"], *data["resolution"]["statements"],
                 *data["prevention"]]:
        assert fact.replace("<", "&lt;") in md, fact
    assert [e["kind"] for e in data["timeline"]].count("step") == 7
    assert [e["t"] for e in data["timeline"]] == sorted(e["t"] for e in data["timeline"])
    for entry in data["timeline"]:
        assert entry["text"] in md, entry
    assert "2027-01-15 08:00:00 UTC — decision open: migration_failed (critical) -> " \
           "immediate_rollback [auto]: migration.failed == 1 held for 0s" in md

    root = data["root_cause"]
    assert [sc["scenario"] for sc in root["scenarios"]] == ["migration_failed",
                                                            "app_compromised"]
    assert {(v["signal"], v["value"]) for v in root["signals"]} == {
        ("http.error_ratio", "0.42"), ("db.validation_failures", "0")}
    assert "Job for visionforge.service timed out." in md  # the failed step's output
    assert "HEAD is now at abc123" not in md  # not evidence: a step that went well
    assert any("Test every migration against a copy of production data" in item
               for item in data["prevention"])
    assert any("Reconcile the 9 row(s)" in item for item in data["prevention"])
    assert any("stop_app failed" in item for item in data["prevention"])
    assert any("stopped from" in line for line in data["impact"]["statements"])

    log = [json.loads(line) for line in paths.execution_log.read_text().splitlines()]
    events = [line["event"] for line in log]
    assert events[:2] == ["incident", "run_start"]
    assert events[-1] == "resolved"
    start = log[1]
    assert (start["rollback_type"], start["restore_point"], start["steps_planned"]) == (
        "immediate_rollback", "rp-1", ["page", "stop_app", "restore_database", "validate",
                                       "rollback_code", "start_app"])
    assert start["scope"] == {"database": True, "code": True, "config": False, "app": True}
    steps = [line for line in log if line["event"] == "step"]
    assert [(s["kind"], s["attempt"], s["outcome"]) for s in steps][:3] == [
        ("page", 1, "ok"), ("stop_app", 1, "failed"), ("stop_app", 2, "ok")]
    assert all(s["begun"] < s["ended"] for s in steps)
    [validation] = [line for line in log if line["event"] == "validation"]
    assert validation["details"]["checks"] == [{"name": "expected_tables", "ok": True}]
    issues = [(i["issue"], i.get("kind")) for i in log if i["event"] == "issue"]
    assert issues == [("page", None), ("failed", "stop_app")]
    [restore] = [line for line in log if line["event"] == "restore"]
    assert (restore["kept"], restore["rows_missing"]) == (kept, 9)
    [end] = [line for line in log if line["event"] == "run_end"]
    assert end["status"] == "succeeded"
    [resolution] = [line for line in log if line["event"] == "resolution"]
    assert [s["kind"] for s in resolution["steps"]] == [
        "page", "stop_app", "restore_database", "validate", "rollback_code", "start_app"]
    assert [line["t"] for line in log] == sorted(line["t"] for line in log)


def test_the_report_is_made_again_only_when_the_journal_has_more_and_keeps_its_data_window(
        incident: tuple[Config, Journal, str], pg_cluster: PgCluster) -> None:
    config, journal, kept = incident
    facts = gather_facts(journal, 1)
    assert facts is not None
    first = current_report(config, facts)
    assert first.written and first.write_error is None
    again = current_report(config, facts)
    assert not again.written and again.report.data == first.report.data

    # The kept copy is dropped (its rows reconciled) and the journal gets a page: the report
    # is made again, with the data window computed before.
    pg_cluster.execute(f'DROP DATABASE "{kept}"')
    journal.add_page("visionforge", t=T0 + 4000, incident=1, run=None, level=2,
                     template="status", summary="watch period ended", details={},
                     dedup_key="visionforge:1:2:status")
    more = gather_facts(journal, 1)
    assert more is not None and more.fingerprint != facts.fingerprint
    third = current_report(config, more)
    assert third.written
    assert third.report.data["data_window"] == first.report.data["data_window"]
    assert "watch period ended" in third.paths.markdown.read_text()


def test_an_unreachable_kept_copy_is_said_in_the_report_not_raised(
        tmp_path: Path, pg_cluster: PgCluster) -> None:
    live, kept = live_and_kept(pg_cluster)
    pg_cluster.execute(f'DROP DATABASE "{kept}"')
    config = config_for(tmp_path, pg_cluster, live)
    journal = Journal.in_state_dir(config.daemon.state_dir)
    journal_an_incident(journal, live, kept)
    paths = write_incident_report(config, journal, 1)
    [window] = json.loads(paths.json.read_text())["data_window"]
    assert not window["compared"] and kept in window["error"]
    assert "- Error: cannot compare the kept copy" in paths.markdown.read_text()


def test_an_incident_the_journal_does_not_have_has_no_report(tmp_path: Path) -> None:
    config = load_config(config_file(tmp_path))
    journal = Journal.in_state_dir(config.daemon.state_dir)
    with pytest.raises(ReportError, match="no incident 4"):
        write_incident_report(config, journal, 4)
    assert gather_facts(journal, 4) is None




def test_a_table_restores_kept_copies_are_compared_in_the_report(
        tmp_path: Path, pg_cluster: PgCluster) -> None:
    live, _ = live_and_kept(pg_cluster)
    copies = ["rollbackd_kept.public_users_20270115080000_ab12",
              "rollbackd_kept.public_memberships_20270115080000_ab12"]
    run(pg_cluster.dsn(live), "CREATE SCHEMA rollbackd_kept",
        f"CREATE TABLE {copies[0]} AS TABLE users", f"INSERT INTO {copies[0]} VALUES (40, 'x')",
        f"CREATE TABLE {copies[1]} AS TABLE memberships")
    config = config_for(tmp_path, pg_cluster, live)
    journal = Journal.in_state_dir(config.daemon.state_dir)
    journal.add_decision(decision(T0, "open", "data_validation_failed",
                                  "db.validation_failures > 0 held for 1m"))
    restore = journal.begin_restore("visionforge", source="rp-1", strategy="tables",
                                    database=live, tables=["users", "memberships"],
                                    by="alice", t=T0 + 10, incident=1)
    journal.finish_restore(restore.id, RestoreOutcome(
        status="restored", finished_at=T0 + 20, kept=", ".join(copies), kept_kind="tables",
        safety_backup="20270115T080010Z-tables-ab12", data_window_start=T0 - 600,
        data_window_end=T0 + 10), close_incident=False)
    data = json.loads(write_incident_report(config, journal, 1).json.read_text())
    [window] = data["data_window"]
    assert [(t["table"], t["kept_as"], t["missing"], t["examples"]) for t in window["tables"]] \
        == [("public.users", copies[0], 1, ["40"]), ("public.memberships", copies[1], 0, [])]
    assert window["location"] == f"tables {', '.join(copies)} (in database {live})"


def test_a_run_that_was_the_fleets_is_named_so_in_the_report_made_again_for_it(
        incident: tuple[Config, Journal, str]) -> None:
    config, journal, _ = incident
    facts = gather_facts(journal, 1)
    assert facts is not None
    assert current_report(config, facts).written
    [run] = facts.runs

    journal.note_run_fleet(run.id, "fleet vf incident 7 (migration_failed -> "
                                   "immediate_rollback, opened by a): database restored by a")

    noted = gather_facts(journal, 1)
    assert noted is not None and noted.fingerprint != facts.fingerprint
    again = current_report(config, noted)
    assert again.written
    assert "part of fleet vf incident 7" in again.paths.markdown.read_text()
