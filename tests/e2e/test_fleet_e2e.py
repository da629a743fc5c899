"""Three app hosts on one database, each with its own example app and ``rollbackd run`` (on
127.0.0.2, 127.0.0.3 and 127.0.0.4), in one fleet: a bad deploy (a failed migration that
changed the schema) is rolled back once in the database and on every host; and when the host
restoring it is SIGKILLed in the middle of its swap, another host completes the swap and the
fleet still ends rolled back, with one restore. In approve mode, the fleet is paged once and
one person's decision, on any host, is the decision of every host."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from daemon.db.fleet import CLEARED, FleetDb, FleetIncident
from daemon.durable import HOLD_ENV
from daemon.journal import Run
from probes.pg import dbname_of
from tests.harness.alertmanager_server import AlertmanagerServer, running_alertmanager_with
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
from tests.harness.processes import Proc, daemon_url, start_daemon, wait_until_ready
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


def the_run(host: Host, context: str) -> Run:
    """The host's one run: a second would be a second rollback of the same incident."""
    runs = host.journal.runs()
    assert len(runs) == 1, ([r.summary for r in runs], context)
    return runs[0]


def outputs(daemons: list[Proc]) -> str:
    """Each daemon's lines about the fleet, its warnings and errors, and its last lines."""
    said = []
    for i, daemon in enumerate(daemons):
        lines = daemon.output().splitlines()
        notable = [line for line in lines if '"fleet"' in line or '"level": "error"' in line
                   or ('"level": "warning"' in line and '"event": "probe' not in line)]
        said.append(f"--- daemon {i}:\n" + "\n".join([*notable[-40:], "...", *lines[-3:]]))
    return "\n".join(said)


@dataclass
class RunningFleet:
    """Three hosts of one fleet (``name``), each with its ``rollbackd run``."""

    name: str
    hosts: list[Host]
    daemons: list[Proc]

    def said(self) -> str:
        return outputs(self.daemons)

    def wait(self, predicate: Callable[[], object], timeout: float, what: str) -> None:
        """wait_for, failing with what the daemons said by then (not when the wait began)."""
        try:
            wait_for(predicate, timeout, what=what)
        except BaseException:
            pytest.fail(f"{what}:\n{self.said()}")

    def incident(self) -> FleetIncident:
        [incident] = fleet_incidents(self.hosts[0].dsn, self.name)
        return incident

    def host(self, fleet_id: str | None) -> Host:
        """The host of ``fleet_id`` (host0, host1, ...)."""
        return self.hosts[int(str(fleet_id).removeprefix("host"))]

    def kill(self, index: int) -> None:
        os.kill(self.daemons[index].pid, signal.SIGKILL)
        self.daemons[index].popen.wait(10)

    def restart(self, index: int) -> Run:
        """Host ``index``'s daemon started again; its run, once recovered."""
        self.daemons[index].close()
        self.daemons[index] = start_daemon(self.hosts[index].config)
        host = self.hosts[index]
        self.wait(lambda: ended_runs(host), 60, f"host{index}'s run to be recovered")
        return the_run(host, self.said())


@contextlib.contextmanager
def running_fleet(pg_db: str, tmp_path: Path, *, held: Mapping[int, str] | None = None,
                  **options: Any) -> Iterator[RunningFleet]:
    """A fleet of three hosts with their daemons; ``held``: host index -> the test hold point
    its daemon stops at; ``options`` go to :func:`fleet_hosts`."""
    name = f"fleet-{secrets.token_hex(4)}"
    with closing(fleet_hosts(pg_db, tmp_path, fleet=name, **options)) as hosts:
        daemons: list[Proc] = []
        try:
            for i, host in enumerate(hosts):
                point = (held or {}).get(i)
                daemons.append(start_daemon(host.config, ready=False, env=None if point is None
                                            else {**os.environ, HOLD_ENV: point}))
            for daemon, host in zip(daemons, hosts, strict=True):
                wait_until_ready(daemon, host.config)
            yield RunningFleet(name, hosts, daemons)
        finally:
            for daemon in daemons:
                daemon.close()


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


def every_host_rolled_back(fleet: RunningFleet) -> bool:
    return (all(ended_runs(h) for h in fleet.hosts)
            and all(s == "done" for host, s in code_states(fleet.hosts[0].dsn,
                                                           fleet.name).items()
                    if host != "ghost"))


def test_a_bad_deploy_is_rolled_back_once_in_the_database_and_on_all_three_hosts(
        pg_db: str, tmp_path: Path) -> None:
    with running_fleet(pg_db, tmp_path) as fleet:
        first_pids = [h.app_pid() for h in fleet.hosts]
        leader, *followers = fleet.hosts
        bad_deploy(leader, followers)
        fleet.wait(lambda: every_host_rolled_back(fleet), 60, "every host to roll back")
        context = fleet.said()
        led = the_run(leader, context)
        assert (led.runbook, led.status) == (RUNBOOK, "succeeded"), (led, context)
        for host in followers:
            run = the_run(host, context)
            assert (run.runbook, run.status) == (f"{RUNBOOK}@fleet", "succeeded"), \
                (run.summary, context)
            kinds = [s.kind for s in host.journal.steps(run.id)]
            assert "restore_database" not in kinds and "page" not in kinds, kinds
            assert host.journal.restores() == [] and host.journal.pages() == []
        check_rolled_back_once(fleet.hosts, fleet.name, context)
        # Each host's deploy of v2 is rolled back: its own code and config, the fleet's
        # database (what `rollbackd status` says, and nothing left to roll back to).
        for i, host in enumerate(fleet.hosts):
            deploy = host.journal.latest_deploy("visionforge")
            assert deploy is not None and (deploy.version, deploy.status) == (
                "v2", "rolled_back"), (f"host{i}", deploy, context)
        # What an operator on a follower reads: why its app restarted, with no incident there.
        status = rollbackd("status", config=followers[0].config)
        assert status.returncode == 0, status.stderr
        assert "deploy     v2 (rolled_back)" in status.stdout, status.stdout
        number = fleet.incident().id  # the fleets' tables are shared: not always 1
        assert re.search(rf"run        1 {RUNBOOK}@fleet succeeded at .* \(migration_failed, by "
                         rf"rollbackd\); part of fleet {fleet.name} incident {number} ",
                         status.stdout), status.stdout
        # The leader's incident report says its run was the fleet's.
        report = rollbackd("incidents", "report", str(led.incident), config=leader.config)
        assert report.returncode == 0, report.stderr
        assert f"part of fleet {fleet.name} incident {number} " in report.stdout, report.stdout
        # Every app was stopped and started again by its own host's rollbackd.
        assert all(h.app_pid() not in (None, pid) for h, pid in zip(fleet.hosts, first_pids,
                                                                    strict=True))
        wait_for(lambda: fleet.incident().resolved_at is not None, 10,
                 what="the fleet incident to resolve")


# -- a host lost during the rollback --------------------------------------------------------


IN_PLACE = """
[[runbook]]
name = "immediate_in_place"
description = "immediate_rollback, restoring over the live database"
steps = [
    { step = "page", template = "emergency" },
    { step = "stop_app", force = true },
    { step = "restore_database", strategy = "in_place" },
    { step = "validate", checklist = "database" },
    { step = "rollback_code" },
    { step = "rollback_config" },
    { step = "start_app" },
    { step = "validate", checklist = "application" },
]
"""


@contextlib.contextmanager
def leader_lost_at(point: str, pg_db: str, tmp_path: Path,
                   **options: Any) -> Iterator[RunningFleet]:
    """A bad deploy whose rollback leader (host0) is SIGKILLed at ``point``; yields once
    another host settled the fleet's database part."""
    with running_fleet(pg_db, tmp_path, held={0: point}, **options) as fleet:
        leader, *followers = fleet.hosts
        bad_deploy(leader, followers)
        fleet.wait(lambda: f"test hold at {point}" in fleet.daemons[0].output(), 60,
                   f"the leader to reach {point}")
        fleet.kill(0)
        fleet.wait(lambda: fleet.incident().db_state != "restoring", 60,
                   "another host to settle the database part")
        yield fleet


def the_followers_then_the_lost_leader_roll_back(fleet: RunningFleet, context: str) -> None:
    """After another host settled the database as restored: every follower rolls back, and
    the lost leader, started again, carries its run on after the swap completed for it; one
    restore in all."""
    followers = fleet.hosts[1:]
    fleet.wait(lambda: all(ended_runs(h) for h in followers), 60, "the followers to roll back")
    for host in followers:
        run = the_run(host, context)
        assert run.status == "succeeded", (run.summary, context)
    led = fleet.restart(0)
    context = f"{led.summary}\n{fleet.said()}"
    assert led.status == "succeeded", context
    check_rolled_back_once(fleet.hosts, fleet.name, context)


def test_the_restoring_host_killed_mid_swap_is_taken_over_and_the_fleet_ends_rolled_back(
        pg_db: str, tmp_path: Path) -> None:
    with leader_lost_at("swap:after_first_rename", pg_db, tmp_path) as fleet:
        # Another host took the lock over and completed the swap; the others follow.
        incident = fleet.incident()
        context = f"{incident.describe()}\n{fleet.said()}"
        assert incident.db_state == "restored" and incident.db_host != "host0", context
        assert incident.facts["lost"] == "host0", context
        assert incident.facts["swap_outcome"] == "completed", context
        the_followers_then_the_lost_leader_roll_back(fleet, context)


def test_the_restoring_host_killed_after_its_swap_is_found_restored_and_the_fleet_follows(
        pg_db: str, tmp_path: Path) -> None:
    """Killed between the end of its swap and the journaling of it, the leader leaves nothing
    cut short, but the copy its swap set aside since it began: the host that takes over finds
    the database restored (never restores again), every host follows, and the lost host's
    run carries on when it starts again."""
    with leader_lost_at("runbook:3:restore_database:after", pg_db, tmp_path) as fleet:
        incident = fleet.incident()
        context = f"{incident.describe()}\n{fleet.said()}"
        assert incident.db_state == "restored" and incident.db_host != "host0", context
        assert "host0 was lost after its swap completed" in incident.note, context
        assert str(incident.facts["kept"]).startswith(f"{dbname_of(pg_db)}_rolledback_"), \
            context
        the_followers_then_the_lost_leader_roll_back(fleet, context)


def test_the_restoring_host_killed_after_an_in_place_restore_leaves_the_fleet_failed_and_paged(
        pg_db: str, tmp_path: Path) -> None:
    """An in-place restore leaves nothing to tell whether it ended: the host that takes over
    cannot know the database's state, so the fleet's database part is ``failed`` and paged,
    the followers keep their code, and nothing restores again, not even the lost host when
    it starts again."""
    with leader_lost_at("runbook:3:restore_database:after", pg_db, tmp_path,
                        rules=IN_PLACE, runbook="immediate_in_place") as fleet:
        incident, followers = fleet.incident(), fleet.hosts[1:]
        context = f"{incident.describe()}\n{fleet.said()}"
        assert incident.db_state == "failed" and incident.db_host != "host0", context
        assert "no swap was found cut short" in incident.note, context
        [page] = [p for p in fleet.host(incident.db_host).journal.pages()
                  if p.template == "emergency"]
        assert page.dedup_key.endswith("database-failed"), page
        fleet.wait(lambda: all(code_states(pg_db, fleet.name)[f"host{i}"] == "failed"
                               for i in (1, 2)), 30,
                   "the followers to record that they did not roll back")
        assert all(h.journal.runs() == [] and h.health() is not None for h in followers)

        fleet.restart(0)
        restores = [r for host in fleet.hosts for r in host.journal.restores()]
        assert len(restores) == 1, (restores, fleet.said())


def test_an_incident_whose_opener_died_before_the_database_part_is_led_by_another_host(
        pg_db: str, tmp_path: Path) -> None:
    with running_fleet(pg_db, tmp_path) as fleet:
        for host in fleet.hosts:  # each host's restore point of the release
            began = rollbackd("deploy", "begin", "--version", "v2", config=host.config)
            assert began.returncode == 0, began.stderr
        with psycopg.connect(pg_db, autocommit=True) as conn:  # what the release changed
            conn.execute("CREATE TABLE released_in_v2 (id int)")
        # A host opened the incident and died before taking the fleet's lock, long ago.
        ghost = FleetDb(maintenance_dsn(pg_db), fleet.name, "ghost")
        opened, _ = ghost.open_or_join("migration_failed", RUNBOOK, RUNBOOK, None)
        with psycopg.connect(maintenance_dsn(pg_db), autocommit=True) as conn:
            conn.execute("UPDATE rollbackd.fleet_incidents SET updated_at = now() - "
                         "interval '1 hour' WHERE id = %s", (opened.id,))
        fleet.wait(lambda: every_host_rolled_back(fleet), 90,
                   "a live host to lead and every host to roll back")
        incident = fleet.incident()
        context = f"{incident.describe()}\n{fleet.said()}"
        assert incident.db_host in {"host0", "host1", "host2"}, context
        runs = {f"host{i}": h.journal.runs() for i, h in enumerate(fleet.hosts)}
        assert [r.runbook for r in runs[incident.db_host]] == [RUNBOOK], (runs, context)
        assert all([r.runbook for r in host_runs] == [f"{RUNBOOK}@fleet"]
                   for name, host_runs in runs.items() if name != incident.db_host), runs
        assert all(r.status == "succeeded" for rs in runs.values() for r in rs), context
        check_rolled_back_once(fleet.hosts, fleet.name, context)
        assert scalar(pg_db, "SELECT to_regclass('released_in_v2') IS NULL") is True


def test_a_follower_killed_in_its_own_part_finishes_it_when_it_starts_again(
        pg_db: str, tmp_path: Path) -> None:
    point = "runbook:1:stop_app:after"  # the follower's app is stopped, not yet journaled
    with running_fleet(pg_db, tmp_path, held={1: point}) as fleet:
        leader, follower, other = fleet.hosts
        bad_deploy(leader, [follower, other])
        fleet.wait(lambda: f"test hold at {point}" in fleet.daemons[1].output(), 60,
                   f"the follower to reach {point}")
        assert follower.health() is None  # its app is down: the moment to lose it
        fleet.kill(1)
        [cut] = follower.journal.runs()
        assert cut.status == "running", cut

        run = fleet.restart(1)
        fleet.wait(lambda: every_host_rolled_back(fleet), 90,
                   "the follower to finish its part after its restart")
        context = f"{run.summary}\n{fleet.said()}"
        assert (run.id, run.runbook, run.status) == (cut.id, f"{RUNBOOK}@fleet",
                                                      "succeeded"), context
        check_rolled_back_once(fleet.hosts, fleet.name, context)


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


@contextlib.contextmanager
def awaiting_the_fleets_decision(pg_db: str, tmp_path: Path
                                 ) -> Iterator[tuple[RunningFleet, StandIn]]:
    """A bad deploy in approve mode, paging through a webhook: every host opens an incident
    awaiting a person, all joined to one fleet incident, and one decision page goes out
    (from the host that opened it); the others' are journaled as left to it."""
    with stand_in() as hook, running_fleet(
            pg_db, tmp_path, mode="approve", rules=SHARED_SYMPTOM,
            extra=f'[paging]\n[paging.webhook]\nurl = "{hook.url}/hook"\n') as fleet:
        leader, *others = fleet.hosts
        bad_deploy(leader, others)
        fleet.wait(lambda: all(open_incident(h) for h in fleet.hosts) and decision_pages(hook)
                   and all(p.status != "pending" for h in fleet.hosts for p in h.journal.pages()),
                   60, "every host to open an incident and settle its decision page")
        incident = fleet.incident()
        context = f"{incident.describe()}\n{fleet.said()}"
        assert incident.db_state == "awaiting", context
        [page] = decision_pages(hook)
        assert page["app"] == fleet.name and page["incident"] == incident.id, (page, context)
        assert f"on {incident.opened_by}" in str(page["text"]), page["text"]
        for i, host in enumerate(fleet.hosts):
            [decision_page] = [p for p in host.journal.pages() if p.template == "decision"]
            mine = f"host{i}" == incident.opened_by
            assert decision_page.status == ("delivered" if mine else "recorded"), \
                (decision_page, context)
        assert all(h.journal.runs() == [] for h in fleet.hosts)  # nothing before a person
        yield fleet, hook
        assert len(decision_pages(hook)) == 1, decision_pages(hook)  # nor after


def open_incident(host: Host) -> int | None:
    """The host's open incident's number, if it has one."""
    latest = host.journal.incidents(limit=1)
    return latest[0].incident if latest and latest[0].state == "open" else None


def decision_pages(hook: StandIn) -> list[dict[str, object]]:
    return [b for b in hook.bodies() if b.get("kind") == "decision"]


def test_in_approve_mode_the_fleet_is_paged_once_and_one_decision_rolls_back_every_host(
        pg_db: str, tmp_path: Path) -> None:
    with awaiting_the_fleets_decision(pg_db, tmp_path) as (fleet, hook):
        # A person decides on a host that did not page: it leads, the others follow.
        opener = fleet.host(fleet.incident().opened_by)
        decider = next(h for h in fleet.hosts if h is not opener)
        number = open_incident(decider)
        decided = rollbackd("decide", str(number), "rollback", "--reason", "bad v2",
                            config=decider.config)
        assert decided.returncode == 0, decided.stdout + decided.stderr
        fleet.wait(lambda: every_host_rolled_back(fleet), 90, "every host to roll back")
        context = fleet.said()
        led = the_run(decider, context)
        assert (led.runbook, led.status, led.incident) == (RUNBOOK, "succeeded", number), \
            (led, context)
        for host in (h for h in fleet.hosts if h is not decider):
            run = the_run(host, context)
            assert (run.runbook, run.status) == (f"{RUNBOOK}@fleet", "succeeded"), \
                (run.summary, context)
            assert run.incident is not None, run  # its own incident, approved for the fleet
            assert [a for a in host.journal.events_of_type("approve")
                    if a.payload.get("by") == f"fleet {fleet.name}"], context
        check_rolled_back_once(fleet.hosts, fleet.name, context)
        assert fleet.incident().db_host == f"host{fleet.hosts.index(decider)}", context
        # The leader's runbook tells people, under the fleet's identity; the followers' not.
        fleet.wait(lambda: all(p.status != "pending" for p in decider.journal.pages()), 30,
                   "the leader's pages to be sent")
        [emergency] = [b for b in hook.bodies() if b.get("kind") == "emergency"]
        assert (emergency["app"], emergency["incident"]) == (fleet.name, fleet.incident().id)
        # Every host's incident resolves; the leader tells it, once.
        fleet.wait(lambda: not any(open_incident(h) for h in fleet.hosts)
                   and all(p.status != "pending" for h in fleet.hosts
                           for p in h.journal.pages()),
                   60, "every host's incident to resolve and its pages to settle")
        [completion] = [b for b in hook.bodies() if b.get("kind") == "completion"]
        assert completion["app"] == fleet.name, completion


def every_host_shows_the_fleet_incident(fleet: RunningFleet) -> None:
    """What an operator looks at on any host: ``rollbackd status``, the live page and the
    status line name the fleet incident and every host's part in it."""
    incident = fleet.incident()
    for i, host in enumerate(fleet.hosts):
        status = rollbackd("status", config=host.config)
        assert status.returncode == 0, status.stderr
        assert f"fleet      {fleet.name} (this host: host{i}): {incident.describe()}" \
            in status.stdout, status.stdout
        # (A host whose look is late on a busy machine is also said to be silent.)
        assert re.search(r"hosts      host0 \(awaiting[^)]*\), host1 \(awaiting[^)]*\), "
                         r"host2 \(awaiting[^)]*\)", status.stdout), status.stdout
        url = f"{daemon_url(host.config)}/live.json"
        live = httpx.get(url, timeout=5).json()
        assert live["fleet"]["incident"]["id"] == incident.id, live["fleet"]
        assert [(h["host"], h["part"]) for h in live["fleet"]["hosts"]] == [
            (f"host{n}", "pending") for n in range(3)], live["fleet"]
        # The status line is the cycle's: the host that opened the incident says it once a
        # look after the opening has been read.
        words = f"fleet incident {incident.id} (immediate_rollback): database awaiting"
        fleet.wait(lambda u=url, w=words: w in httpx.get(u, timeout=5).json()["status_line"],
                   10, f"host{i}'s status line to name the fleet incident")


def test_in_approve_mode_an_ack_and_a_dismissal_on_one_host_hold_for_every_host(
        pg_db: str, tmp_path: Path) -> None:
    with awaiting_the_fleets_decision(pg_db, tmp_path) as (fleet, _):
        opener = fleet.host(fleet.incident().opened_by)
        every_host_shows_the_fleet_incident(fleet)

        # Acknowledged on a host that did not page: the one that pages stops escalating.
        other = next(h for h in fleet.hosts if h is not opener)
        acked = rollbackd("ack", str(open_incident(other)), "--by", "bob", config=other.config)
        assert acked.returncode == 0, acked.stdout + acked.stderr
        n = open_incident(opener)
        fleet.wait(lambda: any(e.payload.get("via") == f"fleet {fleet.name}" for e in
                               opener.journal.events_of_type("ack", incident=n)),
                   30, "the opener to journal the fleet's acknowledgement")
        assert str(fleet.incident().acked_by).startswith("bob on host"), fleet.incident()

        dismissed = rollbackd("decide", str(n), "dismiss", "--reason", "known noise",
                              config=opener.config)
        assert dismissed.returncode == 0, dismissed.stdout + dismissed.stderr
        fleet.wait(lambda: not any(open_incident(h) for h in fleet.hosts), 60,
                   "every host's incident to close")
        incident = fleet.incident()
        context = f"{incident.describe()}\n{fleet.said()}"
        assert incident.db_state == "dismissed" and incident.resolved_at is not None, context
        assert "known noise" in incident.note, context
        assert all(h.journal.runs() == [] and h.journal.restores() == [] for h in fleet.hosts)


UNHEALTHY = """
[[rule]]
scenario = "app_unhealthy"
when = "http.health.error_ratio > 0.5"
clear_for = "2s"
severity = "critical"
action = "planned_rollback"
timeline = "30m"
"""
"""What only some hosts see: their own app failing its health check."""


def health(host: Host, state: str) -> None:
    """Make the host's app fail its health check (``fail``) or pass it again (``ok``)."""
    httpx.post(f"{host.app_url}/admin/faults", json={"health": state},
               timeout=5).raise_for_status()


def fleet_alerts(am: AlertmanagerServer, fleet: str) -> list[dict[str, Any]]:
    """The fleet's alerts Alertmanager holds active."""
    answer = httpx.get(f"{am.url}/api/v2/alerts", params={
        "filter": [f'app="{fleet}"'], "active": "true", "silenced": "true"}, timeout=5,
        trust_env=False)
    answer.raise_for_status()
    alerts: list[dict[str, Any]] = answer.json()
    return alerts


def test_in_approve_mode_a_host_whose_app_recovers_leaves_the_decision_to_the_hosts_still_failing(
        pg_db: str, tmp_path: Path) -> None:
    """The recovered host's incident resolves on its own, which is nobody's decision: the
    fleet incident stays open for the host whose app still fails, its alert stays up in
    Alertmanager, and it ends (nothing done) once that app recovers too."""
    with stand_in() as hook, running_alertmanager_with({
            "route": {"receiver": "hook", "group_wait": "0s", "group_interval": "1s"},
            "receivers": [{"name": "hook", "webhook_configs": [{"url": hook.url}]}]}) as am, \
            running_fleet(pg_db, tmp_path, mode="approve", rules=UNHEALTHY,
                          extra=f'[paging]\n[paging.alertmanager]\nurls = ["{am.url}"]\n'
                                'resend = "2s"\n') as fleet:
        for host in fleet.hosts:  # v2 deployed everywhere: a rollback has a release to undo
            began = rollbackd("deploy", "begin", "--version", "v2", config=host.config)
            assert began.returncode == 0, began.stderr
        failing = fleet.hosts[:2]
        for host in failing:
            health(host, "fail")
        # host2's app is fine: it has no incident, so it does not follow the decision.
        awaiting = {"host0": "pending", "host1": "pending", "host2": None}
        fleet.wait(lambda: all(open_incident(h) for h in failing) and fleet_alerts(am, fleet.name)
                   and code_states(fleet.hosts[0].dsn, fleet.name) == awaiting,
                   60, "both failing hosts to await the fleet's decision, and its alert")
        incident = fleet.incident()
        assert incident.db_state == "awaiting", f"{incident.describe()}\n{fleet.said()}"
        opener = fleet.host(incident.opened_by)
        [other] = [h for h in failing if h is not opener]

        # The host that paged recovers: it leaves the decision to the other, and keeps the
        # fleet's alert up for it.
        health(opener, "ok")
        fleet.wait(lambda: open_incident(opener) is None
                   and code_states(opener.dsn, fleet.name)[incident.opened_by] == "done",
                   30, "the recovered host's incident to resolve and leave the fleet's")
        time.sleep(5)  # two of Alertmanager's resend periods: a negative check can only wait
        context = f"{fleet.incident().describe()}\n{fleet.said()}"
        assert fleet.incident().db_state == "awaiting" and open_incident(other), context
        assert fleet_alerts(am, fleet.name), context
        [held] = [p for p in opener.journal.pages() if p.event == "resolve"]
        assert held.status == "pending", (held, context)

        # The other recovers too: nobody's incident awaits, the fleet incident ends.
        health(other, "ok")
        fleet.wait(lambda: not fleet.incident().open and fleet_alerts(am, fleet.name) == [],
                   30, "the fleet incident to end and its alert to resolve")
        ended = fleet.incident()
        context = f"{ended.describe()}\n{fleet.said()}"
        assert (ended.db_state, ended.note) == ("dismissed", CLEARED), context
        assert not any(h.journal.events_of_type("close") for h in fleet.hosts), context
        assert all(h.journal.runs() == [] for h in fleet.hosts), context
