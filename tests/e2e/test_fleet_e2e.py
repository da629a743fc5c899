"""Three app hosts on one database, each with its own example app and ``rollbackd run`` (on
127.0.0.2, 127.0.0.3 and 127.0.0.4), in one fleet: a bad deploy (a failed migration that
changed the schema) is rolled back once in the database and on every host; and when the host
restoring it is SIGKILLed in the middle of its swap, another host completes the swap and the
fleet still ends rolled back, with one restore. In approve mode, the fleet is paged once and
one person's decision, on any host, is the decision of every host."""

from __future__ import annotations

import os
import secrets
import signal
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from daemon.db.fleet import FleetDb, FleetIncident
from daemon.durable import HOLD_ENV
from daemon.journal import Run
from tests.harness.cli import rollbackd
from tests.harness.data import scalar
from tests.harness.fleet import (
    closing,
    code_states,
    fleet_hosts,
    fleet_incidents,
    maintenance_dsn,
)
from tests.harness.paging import StandIn, stand_in
from tests.harness.processes import Proc, start_daemon
from tests.harness.rollbacks import Host, deploy_invalid_index
from tests.harness.servers import wait_for

pytestmark = pytest.mark.e2e

RUNBOOK = "immediate_rollback"


def bad_deploy(leader: Host, others: list[Host]) -> None:
    """Every host deploys v2 (each its own restore point of the shared database); the leader
    runs the migration, which fails after leaving an invalid index (the schema changed)."""
    for host in others:
        began = rollbackd("deploy", "begin", "--version", "v2", config=host.config)
        assert began.returncode == 0, began.stderr
    deployed = deploy_invalid_index(leader.config, leader.dsn)
    assert deployed.returncode == 1, deployed.stdout + deployed.stderr


def ended_runs(host: Host) -> list[Run]:
    return [r for r in host.journal.runs() if r.status != "running"]


def outputs(daemons: list[Proc]) -> str:
    """Each daemon's lines about the fleet, its warnings and errors, and its last lines."""
    said = []
    for i, daemon in enumerate(daemons):
        lines = daemon.output().splitlines()
        notable = [line for line in lines if '"fleet"' in line or '"level": "error"' in line
                   or ('"level": "warning"' in line and '"event": "probe' not in line)]
        said.append(f"--- daemon {i}:\n" + "\n".join([*notable[-40:], "...", *lines[-3:]]))
    return "\n".join(said)


def wait_for_hosts(predicate: Callable[[], object], timeout: float, what: str,
                   daemons: list[Proc]) -> None:
    """wait_for, failing with what the daemons said by then (not when the wait began)."""
    try:
        wait_for(predicate, timeout, what=what)
    except BaseException:
        pytest.fail(f"{what}:\n{outputs(daemons)}")


def check_rolled_back_once(hosts: list[Host], fleet: str, context: str) -> None:
    """One restore across the journals, the fleet's database restored once, every host's
    run succeeded and its app answers v1 on a schema without the invalid index."""
    restores = [r for host in hosts for r in host.journal.restores()]
    assert [r.status for r in restores] == ["restored"], (restores, context)
    [incident] = fleet_incidents(hosts[0].dsn, fleet)
    assert incident.db_state == "restored", (incident, context)
    assert scalar(hosts[0].dsn, "SELECT count(*) FROM pg_index WHERE NOT indisvalid") == 0
    for host in hosts:
        wait_for(lambda h=host: (health := h.health()) is not None  # type: ignore[misc]
                 and health.get("version") == "v1", 20, what=f"{host.app_url} answering v1")


def test_a_bad_deploy_is_rolled_back_once_in_the_database_and_on_all_three_hosts(
        pg_db: str, tmp_path: Path) -> None:
    fleet = f"fleet-{secrets.token_hex(4)}"
    with closing(fleet_hosts(pg_db, tmp_path, fleet=fleet)) as hosts:
        first_pids = [h.app_pid() for h in hosts]
        daemons = [start_daemon(h.config) for h in hosts]
        try:
            leader, *followers = hosts
            bad_deploy(leader, followers)
            wait_for_hosts(lambda: all(ended_runs(h) for h in hosts)
                           and all(s == "done" for s in code_states(pg_db, fleet).values()),
                           60, "every host to roll back", daemons)
            context = outputs(daemons)
            [led] = leader.journal.runs()
            assert (led.runbook, led.status) == (RUNBOOK, "succeeded"), (led, context)
            for host in followers:
                [run] = host.journal.runs()
                assert (run.runbook, run.status) == (f"{RUNBOOK}@fleet", "succeeded"), \
                    (run.summary, context)
                kinds = [s.kind for s in host.journal.steps(run.id)]
                assert "restore_database" not in kinds and "page" not in kinds, kinds
                assert host.journal.restores() == [] and host.journal.pages() == []
            check_rolled_back_once(hosts, fleet, context)
            # Every app was stopped and started again by its own host's rollbackd.
            assert all(h.app_pid() not in (None, pid) for h, pid in zip(hosts, first_pids,
                                                                        strict=True))
            wait_for(lambda: fleet_incidents(pg_db, fleet)[0].resolved_at is not None, 10,
                     what="the fleet incident to resolve")
        finally:
            for daemon in daemons:
                daemon.close()


def test_the_restoring_host_killed_mid_swap_is_taken_over_and_the_fleet_ends_rolled_back(
        pg_db: str, tmp_path: Path) -> None:
    fleet = f"fleet-{secrets.token_hex(4)}"
    point = "swap:after_first_rename"
    with closing(fleet_hosts(pg_db, tmp_path, fleet=fleet)) as hosts:
        leader, *followers = hosts
        daemons = [start_daemon(leader.config, env={**os.environ, HOLD_ENV: point})]
        daemons += [start_daemon(h.config) for h in followers]
        try:
            bad_deploy(leader, followers)
            wait_for_hosts(lambda: f"test hold at {point}" in daemons[0].output(), 60,
                           f"the leader to reach {point}", daemons)
            os.kill(daemons[0].pid, signal.SIGKILL)
            daemons[0].popen.wait(10)

            # Another host takes the lock over and completes the swap; the others follow.
            wait_for_hosts(lambda: fleet_incidents(pg_db, fleet)[0].db_state != "restoring",
                           60, "another host to settle the database part", daemons)
            [incident] = fleet_incidents(pg_db, fleet)
            context = f"{incident.describe()}\n{outputs(daemons)}"
            assert incident.db_state == "restored" and incident.db_host != "host0", context
            assert incident.facts["lost"] == "host0", context
            assert incident.facts["swap_outcome"] == "completed", context
            wait_for_hosts(lambda: all(ended_runs(h) for h in followers), 60,
                           "the followers to roll back", daemons)
            for host in followers:
                [run] = host.journal.runs()
                assert run.status == "succeeded", (run.summary, context)

            # The lost host comes back: its run carries on after the swap completed for it.
            daemons[0].close()
            daemons[0] = start_daemon(leader.config)
            wait_for_hosts(lambda: ended_runs(leader), 60, "the leader's run to be recovered",
                           daemons)
            [led] = leader.journal.runs()
            context = f"{led.summary}\n{outputs(daemons)}"
            assert led.status == "succeeded", context
            check_rolled_back_once(hosts, fleet, context)
        finally:
            for daemon in daemons:
                daemon.close()


# -- approve mode: one decision for the fleet ----------------------------------------------


SHARED_SYMPTOM = """
[[rule]]
scenario = "data_validation_failed"
when = "db.validation_failures > 0"
severity = "critical"
action = "immediate_rollback"
timeline = "30m"
"""
"""What every host sees of the bad deploy (the invalid index it left fails a validation): in
approve mode each host's engine opens an incident of its own."""


def approve_mode_hosts(pg_db: str, tmp_path: Path, fleet: str, hook: StandIn) -> list[Host]:
    return fleet_hosts(pg_db, tmp_path, fleet=fleet, mode="approve", rules=SHARED_SYMPTOM,
                       extra=f'[paging]\n[paging.webhook]\nurl = "{hook.url}/hook"\n')


def open_incident(host: Host) -> int | None:
    """The host's open incident's number, if it has one."""
    latest = host.journal.incidents(limit=1)
    return latest[0].incident if latest and latest[0].state == "open" else None


def decision_pages(hook: StandIn) -> list[dict[str, object]]:
    return [b for b in hook.bodies() if b.get("kind") == "decision"]


def await_the_fleets_decision(hosts: list[Host], hook: StandIn, fleet: str,
                              daemons: list[Proc]) -> FleetIncident:
    """A bad deploy in approve mode: every host opens an incident awaiting a person, all
    joined to one fleet incident, and one decision page goes out (from its opener)."""
    leader, *others = hosts
    bad_deploy(leader, others)
    wait_for_hosts(lambda: all(open_incident(h) for h in hosts) and decision_pages(hook)
                   and all(p.status != "pending" for h in hosts for p in h.journal.pages()),
                   60, "every host to open an incident and settle its decision page", daemons)
    [incident] = fleet_incidents(hosts[0].dsn, fleet)
    context = f"{incident.describe()}\n{outputs(daemons)}"
    assert incident.db_state == "awaiting", context
    [page] = decision_pages(hook)
    assert page["app"] == fleet and page["incident"] == incident.id, (page, context)
    assert f"on {incident.opened_by}" in str(page["text"]), page["text"]
    for host in hosts:
        [decision_page] = [p for p in host.journal.pages() if p.template == "decision"]
        mine = f"host{hosts.index(host)}" == incident.opened_by
        assert decision_page.status == ("delivered" if mine else "recorded"), \
            (decision_page, context)
    return incident


def test_in_approve_mode_the_fleet_is_paged_once_and_one_decision_rolls_back_every_host(
        pg_db: str, tmp_path: Path) -> None:
    fleet = f"fleet-{secrets.token_hex(4)}"
    with stand_in() as hook, closing(approve_mode_hosts(pg_db, tmp_path, fleet,
                                                              hook)) as hosts:
        daemons = [start_daemon(h.config) for h in hosts]
        try:
            waiting = await_the_fleets_decision(hosts, hook, fleet, daemons)
            assert all(h.journal.runs() == [] for h in hosts)  # nothing before a person

            # A person decides on a host that did not page: it leads, the others follow.
            decider = next(h for i, h in enumerate(hosts) if f"host{i}" != waiting.opened_by)
            number = open_incident(decider)
            decided = rollbackd("decide", str(number), "rollback", "--reason", "bad v2",
                                config=decider.config)
            assert decided.returncode == 0, decided.stdout + decided.stderr
            wait_for_hosts(lambda: all(ended_runs(h) for h in hosts)
                           and all(s == "done" for s in code_states(pg_db, fleet).values()),
                           90, "every host to roll back", daemons)
            context = outputs(daemons)
            [led] = decider.journal.runs()
            assert (led.runbook, led.status, led.incident) == (RUNBOOK, "succeeded", number), \
                (led, context)
            for host in (h for h in hosts if h is not decider):
                [run] = host.journal.runs()
                assert (run.runbook, run.status) == (f"{RUNBOOK}@fleet", "succeeded"), \
                    (run.summary, context)
                assert run.incident is not None, run  # its own incident, approved for the fleet
                assert [a for a in host.journal.events_of_type("approve")
                        if a.payload.get("by") == f"fleet {fleet}"], context
            check_rolled_back_once(hosts, fleet, context)
            [incident] = fleet_incidents(pg_db, fleet)
            assert incident.db_host == f"host{hosts.index(decider)}", (incident, context)
            assert len(decision_pages(hook)) == 1, decision_pages(hook)
        finally:
            for daemon in daemons:
                daemon.close()


def test_in_approve_mode_an_ack_and_a_dismissal_on_one_host_hold_for_every_host(
        pg_db: str, tmp_path: Path) -> None:
    fleet = f"fleet-{secrets.token_hex(4)}"
    with stand_in() as hook, closing(approve_mode_hosts(pg_db, tmp_path, fleet,
                                                              hook)) as hosts:
        daemons = [start_daemon(h.config) for h in hosts]
        try:
            waiting = await_the_fleets_decision(hosts, hook, fleet, daemons)
            opener = hosts[int(waiting.opened_by.removeprefix("host"))]

            # Acknowledged on a host that did not page: the one that pages stops escalating.
            other = next(h for h in hosts if h is not opener)
            acked = rollbackd("ack", str(open_incident(other)), "--by", "bob", config=other.config)
            assert acked.returncode == 0, acked.stdout + acked.stderr
            n = open_incident(opener)
            wait_for_hosts(lambda: any(e.payload.get("via") == f"fleet {fleet}" for e in
                                       opener.journal.events_of_type("ack", incident=n)),
                           30, "the opener to journal the fleet's acknowledgement", daemons)
            [incident] = fleet_incidents(pg_db, fleet)
            assert str(incident.acked_by).startswith("bob on host"), incident

            number = open_incident(opener)
            dismissed = rollbackd("decide", str(number), "dismiss", "--reason", "known noise",
                                  config=opener.config)
            assert dismissed.returncode == 0, dismissed.stdout + dismissed.stderr
            wait_for_hosts(lambda: not any(open_incident(h) for h in hosts), 60,
                           "every host's incident to close", daemons)
            [incident] = fleet_incidents(pg_db, fleet)
            context = f"{incident.describe()}\n{outputs(daemons)}"
            assert incident.db_state == "dismissed" and incident.resolved_at is not None, context
            assert "known noise" in incident.note, context
            assert all(h.journal.runs() == [] and h.journal.restores() == [] for h in hosts)
            assert len(decision_pages(hook)) == 1, decision_pages(hook)
        finally:
            for daemon in daemons:
                daemon.close()


# -- hosts lost at other moments -----------------------------------------------------------


def test_an_incident_whose_opener_died_before_the_database_part_is_led_by_another_host(
        pg_db: str, tmp_path: Path) -> None:
    fleet = f"fleet-{secrets.token_hex(4)}"
    with closing(fleet_hosts(pg_db, tmp_path, fleet=fleet)) as hosts:
        daemons = [start_daemon(h.config) for h in hosts]
        try:
            for host in hosts:  # each host's restore point of the release
                began = rollbackd("deploy", "begin", "--version", "v2", config=host.config)
                assert began.returncode == 0, began.stderr
            with psycopg.connect(pg_db, autocommit=True) as conn:  # what the release changed
                conn.execute("CREATE TABLE released_in_v2 (id int)")
            # A host opened the incident and died before taking the fleet's lock, long ago.
            ghost = FleetDb(maintenance_dsn(pg_db), fleet, "ghost")
            opened, _ = ghost.open_or_join("migration_failed", RUNBOOK, RUNBOOK, None)
            with psycopg.connect(maintenance_dsn(pg_db), autocommit=True) as conn:
                conn.execute("UPDATE rollbackd.fleet_incidents SET updated_at = now() - "
                             "interval '1 hour' WHERE id = %s", (opened.id,))
            wait_for_hosts(lambda: all(ended_runs(h) for h in hosts)
                           and all(s == "done" for h, s in code_states(pg_db, fleet).items()
                                   if h != "ghost"),
                           90, "a live host to lead and every host to roll back", daemons)
            [incident] = fleet_incidents(pg_db, fleet)
            context = f"{incident.describe()}\n{outputs(daemons)}"
            assert incident.db_host in {"host0", "host1", "host2"}, context
            runs = {f"host{i}": h.journal.runs() for i, h in enumerate(hosts)}
            assert [r.runbook for r in runs[incident.db_host]] == [RUNBOOK], (runs, context)
            assert all([r.runbook for r in host_runs] == [f"{RUNBOOK}@fleet"]
                       for name, host_runs in runs.items() if name != incident.db_host), runs
            assert all(r.status == "succeeded" for rs in runs.values() for r in rs), context
            check_rolled_back_once(hosts, fleet, context)
            assert scalar(pg_db, "SELECT to_regclass('released_in_v2') IS NULL") is True
        finally:
            for daemon in daemons:
                daemon.close()


def test_a_follower_killed_in_its_own_part_finishes_it_when_it_starts_again(
        pg_db: str, tmp_path: Path) -> None:
    fleet = f"fleet-{secrets.token_hex(4)}"
    point = "runbook:1:stop_app:after"  # the follower's app is stopped, not yet journaled
    with closing(fleet_hosts(pg_db, tmp_path, fleet=fleet)) as hosts:
        leader, follower, other = hosts
        daemons = [start_daemon(leader.config),
                   start_daemon(follower.config, env={**os.environ, HOLD_ENV: point}),
                   start_daemon(other.config)]
        try:
            bad_deploy(leader, [follower, other])
            wait_for_hosts(lambda: f"test hold at {point}" in daemons[1].output(), 60,
                           f"the follower to reach {point}", daemons)
            assert follower.health() is None  # its app is down: the moment to lose it
            os.kill(daemons[1].pid, signal.SIGKILL)
            daemons[1].popen.wait(10)
            [cut] = follower.journal.runs()
            assert cut.status == "running", cut

            daemons[1].close()
            daemons[1] = start_daemon(follower.config)
            wait_for_hosts(lambda: all(ended_runs(h) for h in hosts)
                           and all(s == "done" for s in code_states(pg_db, fleet).values()),
                           90, "the follower to finish its part after its restart", daemons)
            [run] = follower.journal.runs()
            context = f"{run.summary}\n{outputs(daemons)}"
            assert (run.id, run.runbook, run.status) == (cut.id, f"{RUNBOOK}@fleet",
                                                          "succeeded"), context
            check_rolled_back_once(hosts, fleet, context)
        finally:
            for daemon in daemons:
                daemon.close()


def test_the_restoring_host_killed_after_its_restore_leaves_the_fleet_paged_not_restored_twice(
        pg_db: str, tmp_path: Path) -> None:
    """Killed between the end of its restore and the journaling of it, the leader leaves no
    swap cut short: the host that takes over cannot tell whether the database was restored,
    so the fleet's database part is ``failed`` and paged, and nothing restores it again, not
    even the lost host when it starts again."""
    fleet = f"fleet-{secrets.token_hex(4)}"
    point = "runbook:3:restore_database:after"
    with closing(fleet_hosts(pg_db, tmp_path, fleet=fleet)) as hosts:
        leader, *followers = hosts
        daemons = [start_daemon(leader.config, env={**os.environ, HOLD_ENV: point})]
        daemons += [start_daemon(h.config) for h in followers]
        try:
            bad_deploy(leader, followers)
            wait_for_hosts(lambda: f"test hold at {point}" in daemons[0].output(), 60,
                           f"the leader to reach {point}", daemons)
            os.kill(daemons[0].pid, signal.SIGKILL)
            daemons[0].popen.wait(10)

            wait_for_hosts(lambda: fleet_incidents(pg_db, fleet)[0].db_state != "restoring",
                           60, "another host to settle the database part", daemons)
            [incident] = fleet_incidents(pg_db, fleet)
            context = f"{incident.describe()}\n{outputs(daemons)}"
            assert incident.db_state == "failed" and incident.db_host != "host0", context
            assert "no swap was found cut short" in incident.note, context
            taker = hosts[int(str(incident.db_host).removeprefix("host"))]
            [page] = [p for p in taker.journal.pages() if p.template == "emergency"]
            assert page.dedup_key.endswith("database-failed"), page
            wait_for_hosts(lambda: all(code_states(pg_db, fleet)[f"host{i}"] == "failed"
                                       for i in (1, 2)), 30,
                           "the followers to record that they did not roll back", daemons)
            assert all(h.journal.runs() == [] and h.health() is not None for h in followers)

            daemons[0].close()
            daemons[0] = start_daemon(leader.config)
            wait_for_hosts(lambda: ended_runs(leader), 60, "the leader's run to be recovered",
                           daemons)
            restores = [r for host in hosts for r in host.journal.restores()]
            assert len(restores) == 1, (restores, outputs(daemons))
        finally:
            for daemon in daemons:
                daemon.close()
