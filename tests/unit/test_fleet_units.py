"""Fleet mode's pure parts: the follower's part of a runbook, where a run's database steps
stand, what a host taking over from a lost one makes of the database, the lock key, the
config, and the identity a fleet incident's pages go out under."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from daemon.config import ConfigError, PagingSettings, load_config
from daemon.db.fleet import FleetIncident, can_move, fleet_key
from daemon.db.restore import SwapRecovery
from daemon.journal import Journal, RunStep
from daemon.locks import ROLLBACK_LOCK_KEY
from daemon.paging.outbox import NoPageObserver, Outbox, alert_labels
from daemon.service.fleet import completed_for, database_part, lost_verdict
from policies.runbooks import BUILTIN, fleet_follower, with_fleet_followers
from tests.harness.paging import FleetOf


def step(idx: int, kind: str, outcome: str | None, attempt: int = 1) -> RunStep:
    return RunStep(idx, 1, idx, kind, attempt, 1.0, None if outcome is None else 2.0,
                   outcome, "", "", {})  # type: ignore[arg-type]


def incident(**changes: object) -> FleetIncident:
    values: dict[str, object] = {
        "id": 4, "fleet": "vf", "opened_by": "a", "scenario": "migration_failed",
        "action": "immediate_rollback", "runbook": "immediate_rollback",
        "restore_point": "rp", "db_state": "restoring", "db_host": "a", "note": "",
        "opened_at": 1.0, "updated_at": 2.0, "resolved_at": None, "facts": {}}
    values.update(changes)
    return FleetIncident(**values)  # type: ignore[arg-type]


def swap(outcome: str, applied: bool = True) -> SwapRecovery:
    return SwapRecovery("app", "between_renames", outcome, "live renamed aside",  # type: ignore[arg-type]
                        kept="app_rolledback_1", applied=applied)


def test_a_follower_runs_its_own_app_code_and_config_but_no_database_step_and_no_page() -> None:
    follower = fleet_follower(BUILTIN["planned_rollback"])
    assert follower.name == "planned_rollback@fleet"
    assert [s.kind for s in follower.steps] == [
        "stop_app", "rollback_code", "rollback_config", "validate", "start_app", "validate",
        "validate"]
    assert fleet_follower(follower) is follower
    both = with_fleet_followers(BUILTIN)
    assert both["immediate_rollback@fleet"].steps == fleet_follower(
        BUILTIN["immediate_rollback"]).steps
    assert set(BUILTIN) < set(both)


def test_the_database_part_is_done_when_each_database_step_ended_ok_or_skipped() -> None:
    plan = ["page", "stop_app", "safety_backup", "restore_database", "start_app"]
    assert database_part(plan, []) is None
    assert database_part(plan, [step(1, "page", "ok"), step(2, "stop_app", "ok"),
                                step(3, "safety_backup", "ok")]) is None
    assert database_part(plan, [step(3, "safety_backup", "ok"),
                                step(4, "restore_database", None)]) is None
    assert database_part(plan, [step(3, "safety_backup", "ok"),
                                step(4, "restore_database", "skipped")]) == "done"
    assert database_part(plan, [step(3, "safety_backup", "failed"),
                                step(3, "safety_backup", "ok", attempt=2),
                                step(4, "restore_database", "ok")]) == "done"
    assert database_part(plan, [step(3, "safety_backup", "ok"),
                                step(4, "restore_database", "failed")]) == "failed"
    assert database_part(["stop_app", "rollback_code"], []) == "done"


def test_a_host_taking_over_never_restores_again_it_completes_reverts_or_pages() -> None:
    state, note, facts = lost_verdict(incident(), "b", swap("completed"), None)
    assert state == "restored" and "b completed its swap" in note
    assert facts == {"lost": "a", "observed_by": "b", "swap_outcome": "completed",
                     "database": "app", "kept": "app_rolledback_1",
                     "found": "live renamed aside"}
    state, note, _ = lost_verdict(incident(), "b", swap("reverted"), None)
    assert state == "failed" and "a second restore is not started" in note
    state, note, _ = lost_verdict(incident(), "b", swap("nothing", applied=False), None)
    assert state == "failed" and "the database's state is not known" in note
    # Nothing cut short, but a copy set aside since it began: its swap completed unrecorded.
    state, note, facts = lost_verdict(incident(), "b", swap("completed", applied=False), None)
    assert state == "restored" and "a was lost after its swap completed" in note
    assert facts["swap_outcome"] == "completed" and facts["kept"] == "app_rolledback_1"
    assert completed_for(incident(db_state="restored", facts=facts), "a") is not None
    state, note, _ = lost_verdict(incident(), "b", None, "cannot connect")
    assert state == "failed" and "could not observe the database (cannot connect)" in note


def test_only_the_whole_database_put_back_rolls_every_hosts_deploy_back() -> None:
    """A follower's deploy reads rolled_back after a whole restore, or a swap completed by the
    host that took over; not after some tables, nothing restored, or a failure."""
    assert incident(db_state="restored", facts={"whole_database": True}).database_rolled_back
    _, _, completed = lost_verdict(incident(), "b", swap("completed"), None)
    assert incident(db_state="restored", facts=completed).database_rolled_back
    assert not incident(db_state="restored", facts={"whole_database": False}
                        ).database_rolled_back  # a selective rollback: some tables only
    assert not incident(db_state="restored", note="the runbook has no database step"
                        ).database_rolled_back
    assert not incident(db_state="failed", facts={"whole_database": True}).database_rolled_back


def test_the_lost_host_reads_the_swap_completed_for_it_and_no_other_host_does() -> None:
    _, note, facts = lost_verdict(incident(), "b", swap("completed"), None)
    done = incident(db_state="restored", db_host="b", note=note, facts=facts)
    found = completed_for(done, "a")
    assert found is not None and found.applied and found.outcome == "completed"
    assert (found.database, found.kept) == ("app", "app_rolledback_1")
    assert completed_for(done, "c") is None
    assert completed_for(incident(db_state="failed", facts=facts), "a") is None
    assert completed_for(None, "a") is None


def test_the_lock_key_is_the_fleets_own_and_the_database_state_moves_forward_only() -> None:
    assert fleet_key("vf") == fleet_key("vf") != fleet_key("other")
    assert fleet_key("vf") != ROLLBACK_LOCK_KEY
    # Never negative, whatever the name (pg_locks shows its halves as oids).
    assert all(0 <= fleet_key(f"fleet-{n}") < 2**63 for n in range(200))
    assert can_move("pending", "restoring") and can_move("restoring", "restored")
    assert can_move("restoring", "restoring")  # another host took over
    assert not can_move("restored", "restoring") and not can_move("failed", "restored")


def test_a_fleet_needs_a_database_and_its_host_id_defaults_to_the_hostname(
        tmp_path: Path) -> None:
    path = tmp_path / "rollbackd.toml"
    path.write_text('[fleet]\nname = "vf"\n')
    with pytest.raises(ConfigError, match=r"\[fleet\] needs \[database\]"):
        load_config(path)
    path.write_text('[database]\ndsn = "dbname=app"\n[fleet]\nname = "vf"\n')
    fleet = load_config(path).fleet
    assert fleet is not None and fleet.id == socket.gethostname() and fleet.heartbeat == 5.0
    path.write_text('[database]\ndsn = "dbname=app"\n[fleet]\nname = "no spaces"\n')
    with pytest.raises(ConfigError, match=r"fleet\.name"):
        load_config(path)


def test_two_hosts_pages_of_one_fleet_incident_carry_the_same_alert_labels(
        tmp_path: Path) -> None:
    labels = []
    for host, local in (("a", 3), ("b", 9)):
        journal = Journal.in_state_dir(tmp_path / host)
        page = journal.add_page("visionforge", t=1.0, incident=None, run=local, level=1,
                                template="emergency", summary="x", details={},
                                dedup_key=f"{host}/x")
        outbox = Outbox(journal, "visionforge", PagingSettings(), NoPageObserver())
        message = outbox.message(page, outbox.rendered(page, 2.0))
        assert message.app == "visionforge" and message.incident is None
        outbox.fleet = FleetOf("vf", runs={local: 12})
        message = outbox.message(page, outbox.rendered(page, 2.0))
        assert message.alert_key == "vf/incident-12/L1"
        labels.append(alert_labels(message))
        journal.close()
    assert labels[0] == labels[1]
    assert labels[0]["app"] == "vf" and labels[0]["incident"] == "12"
