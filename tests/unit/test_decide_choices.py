"""A person's decision names the rollback they choose (immediate_rollback, planned_rollback,
selective_rollback with its tables), fix_forward or dismiss; the daemon starts the chosen
runbook through the executor, and `decide` tells at once what the journal says of the
executor's checks."""

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
from policies.engine import Decision
from policies.events import EventError, parse_event
from policies.policy import Policy
from policies.runbooks import BUILTIN, RunbookError, table_names, with_tables
from tests.harness.cli import rollbackd
from tests.harness.config import config_file

POLICY = """\
[[rule]]
scenario = "migration_failed"
when = "migration.failed == 1"
severity = "critical"
action = "evaluate"
timeline = "15m"

[[rule]]
scenario = "app_compromised"
when = "http.error_ratio > 0.5"
severity = "high"
action = "planned_rollback"
timeline = "45m"

[[runbook]]
name = "users_only"
steps = [{ step = "restore_database", tables = ["users"] }]
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "policy.toml").write_text(POLICY)
    return config_file(tmp_path, daemon={"mode": "auto", "policy": tmp_path / "policy.toml"},
                       app={"name": "app"})


@pytest.fixture
def policy(config: Path) -> Policy:
    return load_policy(load_config(config), config)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal.in_state_dir(tmp_path / "state")
    yield j
    j.close()


def evaluate_incident(journal: Journal, t: float, kind: str = "open") -> None:
    journal.add_decision(Decision(t, kind, 1, "migration_failed", "critical", "evaluate",
                                  "evaluate", 900, "auto", "migration.failed == 1"))


def fail_a_migration(journal: Journal, now: float, *, verified: bool = True) -> None:
    journal.begin_deploy("app", "v2", now - 60, restore_point="rp-1", verified=verified)
    journal.add_event(now - 30, {"type": "migration", "status": "failed", "version": "v2"})


def approval(journal: Journal) -> dict[str, object]:
    event = journal.latest_event(("approve",))
    assert event is not None
    assert parse_event(event.payload) == event.payload
    return event.payload


# -- record_decision -----------------------------------------------------------------------


def test_a_decision_on_an_unknown_or_resolved_incident_is_refused(
        journal: Journal, policy: Policy) -> None:
    with pytest.raises(DecisionError, match="no incident 1 in the journal") as missing:
        record_decision(journal, 1, "planned_rollback", "", "alice", policy=policy)
    assert missing.value.missing and not missing.value.usage
    evaluate_incident(journal, time.time())
    evaluate_incident(journal, time.time() + 1, "resolve")
    with pytest.raises(DecisionError, match="incident 1 is already resolved") as resolved:
        record_decision(journal, 1, "dismiss", "", "alice")
    assert not resolved.value.missing and not resolved.value.usage
    assert journal.latest_event(("approve", "close")) is None


@pytest.mark.parametrize(("choice", "runbook", "tables", "error"), [
    ("selective_rollback", None, (), "selective_rollback restores the data of named tables"),
    ("selective_rollback", "code_only", (), "selective_rollback restores the data of named"),
    ("fix_forward", "code_only", (), "named only with the decision rollback or"),
    ("dismiss", None, ("users",), "named only with the decision rollback or"),
    ("planned_rollback", None, ("users",), "tables go with selective_rollback only"),
    ("selective_rollback", None, ("users; DROP TABLE users",), "is not a table name"),
    ("selective_rollback", None, (" , ",), "tables: no table named"),
    ("restore", None, (), "no decision 'restore'"),
])
def test_a_malformed_decision_is_a_usage_error_and_records_nothing(
        journal: Journal, policy: Policy, choice: str, runbook: str | None,
        tables: tuple[str, ...], error: str) -> None:
    evaluate_incident(journal, time.time())
    with pytest.raises(DecisionError, match=error) as refused:
        record_decision(journal, 1, choice, "", "alice", runbook, tables=tables, policy=policy)
    assert refused.value.usage and not refused.value.missing
    assert journal.latest_event(("approve", "close")) is None


def test_an_evaluate_incident_answered_planned_rollback_approves_that_action(
        journal: Journal, policy: Policy) -> None:
    now = time.time()
    fail_a_migration(journal, now)
    evaluate_incident(journal, now)
    recorded = record_decision(journal, 1, "planned_rollback", "bad data", "alice",
                               policy=policy, app="app")
    assert approval(journal) == {"type": "approve", "incident": 1, "by": "alice",
                                 "decision": "planned_rollback (bad data)",
                                 "action": "planned_rollback"}
    assert (recorded.action, recorded.runbook) == ("planned_rollback", "planned_rollback")
    assert recorded.warnings() == []
    assert recorded.describe() == [
        "incident 1: planned_rollback recorded; the daemon starts planned_rollback at its "
        "next cycle",
        "checked now: not paused, no run going on, restore point rp-1 verified (the executor "
        "checks again)"]


def test_a_selective_rollback_names_its_tables_or_a_runbook_that_has_them(
        journal: Journal, policy: Policy) -> None:
    evaluate_incident(journal, time.time())
    recorded = record_decision(journal, 1, "selective_rollback", "", "alice",
                               tables=("users,images", "public.audit_log", "users"),
                               policy=policy)
    assert recorded.tables == ("users", "images", "public.audit_log")
    assert recorded.runbook == "selective_rollback[users,images,public.audit_log]"
    assert approval(journal)["tables"] == ["users", "images", "public.audit_log"]

    by_runbook = record_decision(journal, 1, "selective_rollback", "", "bob", "users_only",
                                 policy=policy)
    assert (by_runbook.runbook, by_runbook.tables) == ("users_only", ())
    assert approval(journal) == {"type": "approve", "incident": 1, "by": "bob",
                                 "decision": "selective_rollback",
                                 "action": "selective_rollback", "runbook": "users_only"}


def test_the_guards_the_journal_can_tell_are_warnings_and_the_decision_is_recorded(
        journal: Journal, policy: Policy) -> None:
    now = time.time()
    fail_a_migration(journal, now, verified=False)
    evaluate_incident(journal, now)
    journal.add_event(now, {"type": "pause", "by": "ops", "reason": "maintenance"})
    run = journal.begin_run("app", incident=None, runbook="code_only", action="code_only",
                            scenario="by hand", by="carol", t=now, deadline=now + 600,
                            deploy=None, restore_point=None, plan=["rollback_code"])
    recorded = record_decision(journal, 1, "immediate_rollback", "", "alice", policy=policy,
                               app="app")
    warnings = recorded.warnings()
    assert len(warnings) == 3, warnings
    assert warnings[0].startswith("rollbackd is paused: the daemon refuses this run")
    assert warnings[1].startswith(f"run {run.id} (code_only) is going on")
    assert "restore point rp-1 of deploy 1 is NOT verified" in warnings[2]
    assert recorded.as_json()["guards"] == {
        "paused": True, "running_run": run.id, "restores_database": True,
        "restore_point": "rp-1", "restore_point_verified": False, "warnings": warnings}
    assert approval(journal)["action"] == "immediate_rollback"

    # A runbook that does not restore the database does not need a restore point.
    code = record_decision(journal, 1, "rollback", "", "alice", "code_only", policy=policy)
    assert not any("restore point" in w for w in code.warnings())


def test_rollback_still_approves_the_incidents_own_action(journal: Journal) -> None:
    journal.add_decision(Decision(time.time(), "open", 1, "migration_failed", "critical",
                                  "immediate_rollback", "immediate_rollback", 900, "approve",
                                  "migration.failed == 1"))
    recorded = record_decision(journal, 1, "rollback", "", "alice")
    assert (recorded.action, recorded.runbook) == ("immediate_rollback", "immediate_rollback")
    assert approval(journal)["action"] == "immediate_rollback"


# -- the approve event and the derived runbook -----------------------------------------------


def test_an_approve_event_checks_its_action_and_tables() -> None:
    good = {"type": "approve", "incident": 2, "by": "a", "action": "selective_rollback",
            "tables": ["users"]}
    assert parse_event(good) == good
    with pytest.raises(EventError, match="approve event: action must be one of"):
        parse_event({**good, "action": "evaluate"})
    with pytest.raises(EventError, match="approve event: tables must be a list"):
        parse_event({**good, "tables": "users"})
    with pytest.raises(EventError, match="approve event: tables must be a list"):
        parse_event({**good, "tables": [""]})


def test_a_selective_rollback_for_tables_restores_them_after_the_app_is_stopped() -> None:
    derived = with_tables(BUILTIN["selective_rollback"], ("users", "images"))
    kinds = [s.kind for s in derived.steps]
    assert kinds[1:5] == ["stop_app", "restore_database", "validate", "rollback_code"]
    assert derived.tables == ("users", "images")
    # Its own name: a run recovered after a crash is never continued with other steps.
    assert derived.name == "selective_rollback[users,images]"
    assert BUILTIN["selective_rollback"].tables == ()
    planned = with_tables(BUILTIN["planned_rollback"], ("users",))
    assert [s.kind for s in planned.steps] == [s.kind for s in
                                               BUILTIN["planned_rollback"].steps]
    assert planned.tables == ("users",)
    with pytest.raises(RunbookError, match=r"'a\.b\.c' is not a table name"):
        table_names(["a.b.c"])
    assert table_names(["A_1.b$2,, users"]) == ("A_1.b$2", "users")


# -- the daemon starts what was chosen -------------------------------------------------------


def daemon(config: Path, policy: Policy) -> Daemon:
    loaded = load_config(config)
    return Daemon(config, loaded, policy, Journal.in_state_dir(loaded.daemon.state_dir),
                  notifier=Notifier(None))


async def test_the_daemon_runs_the_chosen_action_with_its_timeline_for_the_person(
        config: Path, policy: Policy, journal: Journal) -> None:
    now = time.time()
    fail_a_migration(journal, now)
    d = daemon(config, policy)
    d._decide(now, {})
    [opened] = journal.decisions()
    assert (opened.action, d._run_task) == ("evaluate", None)

    record_decision(journal, 1, "planned_rollback", "bad rows", "alice", policy=policy)
    d._decide(now + 1, {})
    assert d._run_task is not None
    await d._run_task
    [run] = journal.runs()
    assert (run.runbook, run.action, run.incident, run.requested_by) == (
        "planned_rollback", "planned_rollback", 1, "alice")
    # The timeline of the rule whose action is planned_rollback, not the evaluate rule's 15m.
    assert run.deadline - run.started_at == pytest.approx(45 * 60)
    assert run.plan == tuple(s.kind for s in BUILTIN["planned_rollback"].steps)


async def test_the_daemon_runs_a_selective_rollback_of_the_tables_chosen(
        config: Path, policy: Policy, journal: Journal) -> None:
    now = time.time()
    fail_a_migration(journal, now)
    d = daemon(config, policy)
    d._decide(now, {})
    record_decision(journal, 1, "selective_rollback", "", "alice", tables=("users",),
                    policy=policy)
    d._decide(now + 1, {})
    assert d._run_task is not None
    await d._run_task
    [run] = journal.runs()
    assert (run.runbook, run.action) == ("selective_rollback[users]", "selective_rollback")
    assert "restore_database" in run.plan
    # No selective_rollback rule: the incident's own timeline.
    assert run.deadline - run.started_at == pytest.approx(15 * 60)


def test_an_approval_with_tables_that_are_not_names_is_ignored(
        config: Path, policy: Policy, journal: Journal) -> None:
    now = time.time()
    fail_a_migration(journal, now)
    d = daemon(config, policy)
    d._decide(now, {})
    # Written by another tool, past record_decision's checks.
    journal.add_event(now, {"type": "approve", "incident": 1, "by": "mallory",
                            "action": "selective_rollback", "tables": ["x; DROP TABLE x"]})
    d._decide(now + 1, {})
    assert d._run_task is None and journal.runs() == []


# -- the command line ----------------------------------------------------------------------


def test_decide_exits_2_on_a_malformed_decision_1_on_a_refused_one_0_when_recorded(
        config: Path, journal: Journal) -> None:
    unknown = rollbackd("decide", "1", "planned_rollback", config=config)
    assert unknown.returncode == 1 and "no incident 1 in the journal" in unknown.stderr
    now = time.time()
    fail_a_migration(journal, now, verified=False)
    evaluate_incident(journal, now)
    for args, error in [
        (["selective_rollback"], "selective_rollback restores the data of named tables"),
        (["selective_rollback", "--tables", "users;x"], "tables: table 'users;x' is not"),
        (["fix_forward", "--runbook", "code_only"], "named only with the decision rollback"),
        (["planned_rollback", "--tables", "users"], "tables go with selective_rollback"),
        (["restore"], "'restore' is not one of"),
    ]:
        refused = rollbackd("decide", "1", *args, config=config)
        assert refused.returncode == 2 and error in refused.stderr, (args, refused.stderr)
    no_runbook = rollbackd("decide", "1", "rollback", config=config)
    assert no_runbook.returncode == 1 and "runs no runbook: name one" in no_runbook.stderr
    assert journal.latest_event(("approve", "close")) is None

    decided = rollbackd("decide", "1", "selective_rollback", "--tables", "users",
                        "--tables", "images", "--reason", "bad rows", config=config)
    assert decided.returncode == 0, decided.stderr
    assert decided.stdout.splitlines()[0] == (
        "incident 1: selective_rollback recorded; the daemon starts "
        "selective_rollback[users,images] at its next cycle")
    assert ("rollbackd: warning: restore point rp-1 of deploy 1 is NOT verified"
            in decided.stderr)
    assert approval(journal)["tables"] == ["users", "images"]

    closed = rollbackd("decide", "1", "dismiss", "--json", config=config)
    assert closed.returncode == 0 and '"decision": "dismiss"' in closed.stdout
    evaluate_incident(journal, now + 1, "resolve")
    again = rollbackd("decide", "1", "fix_forward", config=config)
    assert again.returncode == 1 and "already resolved" in again.stderr
