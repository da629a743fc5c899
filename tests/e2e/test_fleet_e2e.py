"""Three app hosts on one database, each with its own example app and ``rollbackd run`` (on
127.0.0.2, 127.0.0.3 and 127.0.0.4), in one fleet: a bad deploy (a failed migration that
changed the schema) is rolled back once in the database and on every host; and when the host
restoring it is SIGKILLed in the middle of its swap, another host completes the swap and the
fleet still ends rolled back, with one restore."""

from __future__ import annotations

import os
import secrets
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from daemon.durable import HOLD_ENV
from daemon.journal import Run
from tests.harness.cli import rollbackd
from tests.harness.data import scalar
from tests.harness.fleet import closing, code_states, fleet_hosts, fleet_incidents
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
