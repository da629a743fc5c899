"""Several app hosts on one database, on one machine: each a :func:`rollback_host` of its own
(the example app and a ``rollbackd run`` config) listening on its own loopback address
(127.0.0.2, 127.0.0.3, ...; every 127/8 address works on Linux), all in one ``[fleet]``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import psycopg

from daemon.config import load_config, load_policy
from daemon.db.fleet import FleetDb, FleetIncident
from daemon.journal import Journal
from daemon.service.loop import Daemon
from daemon.service.sd_notify import Notifier
from probes.pg import with_dbname
from tests.harness.config import config_file
from tests.harness.rollbacks import Host, rollback_host

FLEET = "visionforge-fleet"


def fleet_hosts(dsn: str, tmp_path: Path, count: int = 3, *, fleet: str = FLEET,
                heartbeat: str = "500ms", interval: str = "500ms", mode: str = "auto",
                extra: str = "", rules: str = "", runbook: str | None = None) -> list[Host]:
    """``count`` hosts of ``fleet`` on ``dsn`` (seeded once), host ``i`` on 127.0.0.(i+2)
    with fleet id ``host<i>``, in ``mode``, with ``extra`` config (``[paging]``), more
    policy ``rules`` and the failed migration's ``runbook``; close each with
    :meth:`Host.close`."""
    hosts: list[Host] = []
    try:
        for i in range(count):
            directory = tmp_path / f"host{i}"
            directory.mkdir()
            hosts.append(rollback_host(
                dsn, directory, address=f"127.0.0.{i + 2}", seed=i == 0, interval=interval,
                mode=mode, rules=rules, runbook=runbook,
                extra=f'\n[fleet]\nname = "{fleet}"\nid = "host{i}"\nheartbeat = "{heartbeat}"\n'
                      f'{extra}'))
    except BaseException:
        for host in hosts:
            host.close()
        raise
    return hosts


@contextlib.contextmanager
def closing(hosts: list[Host]) -> Iterator[list[Host]]:
    try:
        yield hosts
    finally:
        for host in hosts:
            host.close()


def fleet_daemon(tmp_path: Path, dsn: str, fleet: str, *, heartbeat: str = "200ms") -> Daemon:
    """Host h1 of ``fleet`` as a ``Daemon`` object (not started: tests drive its fleet);
    close its journal when done."""
    path = config_file(tmp_path, daemon={"mode": "auto"}, app={"name": "app"},
                       database={"dsn": dsn},
                       extra=f'[fleet]\nname = "{fleet}"\nid = "h1"\nheartbeat = "{heartbeat}"\n')
    config = load_config(path)
    return Daemon(path, config, load_policy(config, path),
                  Journal.in_state_dir(config.daemon.state_dir), notifier=Notifier(None))


def maintenance_dsn(dsn: str) -> str:
    return with_dbname(dsn, "postgres")


def fleet_incidents(dsn: str, fleet: str = FLEET) -> list[FleetIncident]:
    """Every incident of ``fleet`` in the maintenance database, oldest first."""
    db = FleetDb(maintenance_dsn(dsn), fleet, "test")
    found: list[FleetIncident] = []
    latest = db.latest()
    if latest is None:
        return found
    for number in range(1, latest.id + 1):
        incident = db.incident(number)
        if incident is not None and incident.fleet == fleet:
            found.append(incident)
    return found


def code_states(dsn: str, fleet: str = FLEET) -> dict[str, str | None]:
    """Each host of ``fleet``: its code_state."""
    return {h.host: h.part for h in FleetDb(maintenance_dsn(dsn), fleet, "test").glance().hosts}


def parts(db: FleetDb, incident: FleetIncident) -> dict[str, str | None]:
    """Each host following ``incident``, as ``db``'s host looks: its part."""
    return {h.host: h.part for h in db.look().hosts if h.following == incident.id}


def leave(db: FleetDb, incident: FleetIncident, alive_within: float = 60) -> bool:
    """``db``'s host leaves the decision ``incident`` awaits (its own incident cleared)."""
    lock = db.lock("cleared")
    try:
        return lock.leave(incident.id, alive_within)
    finally:
        lock.release()


def silent(dsn: str, host: str) -> None:
    """``host`` stopped beating an hour ago (its daemon is down); ``dsn``: where the fleet's
    tables are."""
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE rollbackd.fleet_hosts SET heartbeat_at = now() - interval '1h' "
                     "WHERE host = %s", (host,))
