"""Each host does its part of a fleet incident (its code, configuration and app) once: not
again when a look at the fleet taken before its part ended is acted on after, nor when its
own engine decides the same rollback after it followed the fleet's; and a host that cannot
read its fleet runs no rollback that may restore the shared database."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.db.fleet import FleetDb, FleetIncident
from daemon.runbooks.context import RunRequest
from daemon.runbooks.executor import RunRefusedError
from daemon.service.fleet import Fleet
from daemon.service.loop import Daemon
from tests.harness.fleet import fleet_daemon, maintenance_dsn

RUNBOOK = "immediate_rollback"


@pytest.fixture
def host(pg_db: str, tmp_path: Path) -> Iterator[Daemon]:
    """Host h1 of a fleet of its own (a fresh name: the fleet's tables are shared)."""
    daemon = fleet_daemon(tmp_path, pg_db, f"vf-{secrets.token_hex(4)}")
    yield daemon
    daemon.journal.close()


def restored_by_another_host(fleet: Fleet, pg_db: str) -> FleetIncident:
    """A fleet incident opened by h0, whose database part h0 did: h1's part is to do."""
    other = FleetDb(maintenance_dsn(pg_db), fleet.name, "h0")
    other.ensure_schema()
    fleet.db.look()  # h1 beats, so that opening the incident makes it follow
    incident, opened = other.open_or_join("migration_failed", "immediate_rollback", RUNBOOK,
                                          None)
    assert opened
    lock = other.lock("test")
    try:
        lock.set_db_state(incident.id, "restoring")
        return lock.set_db_state(incident.id, "restored")
    finally:
        lock.release()


async def test_a_look_taken_before_this_hosts_part_ended_does_not_start_it_again(
        host: Daemon, pg_db: str) -> None:
    fleet = host.fleet
    assert fleet is not None
    incident = restored_by_another_host(fleet, pg_db)
    assert fleet.db.look().mine_pending
    launched: list[RunRequest] = []

    def part_ends_now() -> bool:
        """The run doing this host's part ends between the look and the act on it."""
        fleet.db.set_code_state(incident.id, "done")
        return False

    def launch(request: RunRequest) -> tuple[bool, str]:
        launched.append(request)
        return True, ""

    fleet.tick(part_ends_now, launch, host.policy)
    assert fleet._task is not None
    await fleet._task

    assert launched == []


async def test_a_rollback_decided_here_after_this_host_did_its_part_does_not_run_again(
        host: Daemon, pg_db: str) -> None:
    fleet = host.fleet
    assert fleet is not None
    incident = restored_by_another_host(fleet, pg_db)
    fleet.db.set_code_state(incident.id, "done")
    runbook = host.policy.all_runbooks()[RUNBOOK]
    decided = RunRequest(runbook, None, "app_compromised", "immediate_rollback",
                         "errors while the app restarted", "rollbackd", 900.0)

    assert await fleet.run(decided, host.executor) is None

    assert host.journal.runs() == []


async def test_a_host_that_cannot_read_its_fleet_refuses_a_rollback_that_may_restore_the_database(
        tmp_path: Path) -> None:
    """It cannot tell whether another host restores the shared database already: a second
    restore is worse than a refusal (which pages)."""
    host = fleet_daemon(tmp_path, "host=127.0.0.1 port=9 dbname=app connect_timeout=2", "vf")
    try:
        assert host.fleet is not None
        runbook = host.policy.all_runbooks()[RUNBOOK]
        decided = RunRequest(runbook, None, "migration_failed", "immediate_rollback",
                             "migration.failed == 1", "rollbackd", 900.0)

        with pytest.raises(RunRefusedError, match="the fleet's state cannot be read, so no "
                                                  "rollback that may restore the shared "
                                                  "database runs: "):
            await host.fleet.run(decided, host.executor)

        assert host.journal.runs() == []
    finally:
        host.journal.close()
