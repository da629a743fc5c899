"""``rollbackd status`` on a host of a fleet: the fleet's open incident and each host's part,
read from the maintenance database without beating for the host (the command is not its
daemon), and a fleet that cannot be read said in one line."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from daemon.db.fleet import FleetDb
from daemon.journal import Journal
from probes.pg import dbname_of
from tests.harness.cli import rollbackd
from tests.harness.config import config_file
from tests.harness.fleet import fleet_daemon, maintenance_dsn


def host_config(tmp_path: Path, dsn: str, fleet: str, **database: str) -> Path:
    return config_file(tmp_path, app={"name": "app"}, database={"dsn": dsn, **database},
                       extra=f'[fleet]\nname = "{fleet}"\nid = "h1"\nheartbeat = "10s"\n')


def test_status_names_the_fleet_incident_and_each_hosts_part_without_beating(
        pg_db: str, tmp_path: Path) -> None:
    fleet = f"vf-{secrets.token_hex(4)}"
    h0 = FleetDb(maintenance_dsn(pg_db), fleet, "h0")
    h0.ensure_schema()
    h0.look()
    incident, _ = h0.open_or_join("migration_failed", "immediate_rollback",
                                  "immediate_rollback", "rp-1")
    config = host_config(tmp_path, pg_db, fleet)

    shown = rollbackd("status", config=config)
    as_json = rollbackd("status", "--json", config=config)

    assert shown.returncode == 0, shown.stderr
    assert (f"fleet      {fleet} (this host: h1): fleet {fleet} incident {incident.id} "
            "(migration_failed -> immediate_rollback, opened by h0): database pending"
            in shown.stdout), shown.stdout
    assert "hosts      h0 (part pending)\n" in shown.stdout, shown.stdout
    status = json.loads(as_json.stdout)["fleet"]
    assert status["incident"]["id"] == incident.id and status["problem"] is None, status
    assert [(h["host"], h["part"], h["alive"]) for h in status["hosts"]] == [
        ("h0", "pending", True)], status
    # h1's daemon never looked: the command did not make it a host of the fleet either.
    assert [h.host for h in h0.glance().hosts] == ["h0"]


def test_a_fleet_that_cannot_be_read_is_said_in_one_line(tmp_path: Path) -> None:
    config = host_config(tmp_path, "host=127.0.0.1 port=9 dbname=app connect_timeout=2",
                         "vf")

    shown = rollbackd("status", config=config)

    assert shown.returncode == 0, shown.stderr
    [line] = [line for line in shown.stdout.splitlines() if line.startswith("fleet")]
    assert line.startswith("fleet      vf (this host: h1): CANNOT BE READ: "), line
    assert "127.0.0.1" in line or "port 9" in line or "connect" in line, line


def test_before_any_host_of_the_fleet_started_status_says_so(
        pg_db: str, tmp_path: Path) -> None:
    # A maintenance database no rollbackd has used: the fleet's schema is not there yet.
    config = host_config(tmp_path, pg_db, "vf", maintenance_db=str(dbname_of(pg_db)))

    shown = rollbackd("status", config=config)

    assert shown.returncode == 0, shown.stderr
    assert ("fleet      vf (this host: h1): CANNOT BE READ: no host of fleet vf has started "
            "yet (the rollbackd schema is not in the maintenance database)") in shown.stdout, \
        shown.stdout


async def test_the_daemon_counts_its_looks_at_the_fleet_and_says_when_it_cannot_read_it(
        tmp_path: Path) -> None:
    host = fleet_daemon(tmp_path, "host=127.0.0.1 port=9 dbname=app", "vf")
    try:
        assert host.fleet is not None
        host.fleet.tick(lambda: False, lambda request: (False, "none"), host.policy)
        assert host.fleet._task is not None
        await host.fleet._task

        status = host.fleet_status()
        assert status is not None and status.problem is not None, status
        assert str(status.words()).startswith("fleet vf CANNOT BE READ: "), status.words()
        exposed = host.metrics.registry.get_sample_value
        assert exposed("rollbackd_fleet_looks_total") == 1
        assert exposed("rollbackd_fleet_look_failures_total") == 1
    finally:
        host.journal.close()


async def test_a_look_at_an_open_fleet_incident_sets_the_gauge_and_the_status_line(
        pg_db: str, tmp_path: Path) -> None:
    fleet = f"vf-{secrets.token_hex(4)}"
    host = fleet_daemon(tmp_path, pg_db, fleet, heartbeat="5s")  # no host goes silent
    try:
        assert host.fleet is not None
        h0 = FleetDb(maintenance_dsn(pg_db), fleet, "h0")
        h0.ensure_schema()
        incident, _ = h0.open_or_join("migration_failed", "immediate_rollback",
                                      "immediate_rollback", None)
        host.fleet.tick(lambda: True, lambda request: (False, "busy"), host.policy)
        assert host.fleet._task is not None
        await host.fleet._task

        exposed = host.metrics.registry.get_sample_value
        assert exposed("rollbackd_fleet_incident_open") == 1
        assert exposed("rollbackd_fleet_look_failures_total") == 0
        status = host.fleet_status()
        assert status is not None
        assert status.words() == (f"fleet incident {incident.id} (immediate_rollback): "
                                  "database pending; h0 (part pending)"), status.words()
    finally:
        host.journal.close()


def test_a_rollback_by_hand_that_restores_the_shared_database_is_refused_on_a_fleet_host(
        tmp_path: Path) -> None:
    """The other hosts would not follow it: their code would stay on the release whose
    schema the restore took away. Without --yes the plan says so; a code-only runbook is
    not concerned."""
    config = host_config(tmp_path, "host=127.0.0.1 port=9 dbname=app", "vf")

    plan = rollbackd("rollback", "--runbook", "immediate_rollback", config=config)
    refused = rollbackd("rollback", "--runbook", "immediate_rollback", "--yes", config=config)
    code_only = rollbackd("rollback", "--runbook", "code_only", "--json", config=config)

    assert plan.returncode == 0, plan.stderr
    assert "warning: this host is in fleet vf: a rollback by hand changes the database" \
        in plan.stdout, plan.stdout
    assert refused.returncode == 1, refused.stdout + refused.stderr
    [line] = refused.stderr.strip().splitlines()
    assert "not executed: this host is in fleet vf" in line and "--without-fleet" in line, line
    assert not (tmp_path / "state").exists() or not Journal.in_state_dir(
        tmp_path / "state").runs()
    assert json.loads(code_only.stdout)["plan"]["fleet"] is None, code_only.stdout


def test_a_restore_by_hand_on_a_fleet_host_is_refused_without_without_fleet(
        tmp_path: Path) -> None:
    config = host_config(tmp_path, "host=127.0.0.1 port=9 dbname=app", "vf")

    refused = rollbackd("backup", "restore", "rp-1", "--yes", config=config)
    alone = rollbackd("backup", "restore", "rp-1", "--yes", "--without-fleet", config=config)

    assert refused.returncode == 1, refused.stdout + refused.stderr
    [line] = refused.stderr.strip().splitlines()
    assert "not executed: this host is in fleet vf" in line and "--without-fleet" in line, line
    # Let through, it goes on to the restore itself (which finds no backup rp-1 here).
    assert alone.returncode == 1 and "fleet" not in alone.stderr, alone.stderr


def test_check_says_the_host_is_in_a_fleet_and_where_the_fleet_is_kept(tmp_path: Path) -> None:
    config = host_config(tmp_path, "host=127.0.0.1 port=9 dbname=app", "vf")

    checked = rollbackd("check", config=config)

    assert checked.returncode == 0, checked.stderr
    assert ("fleet     vf as host h1, a look every 10s, in database postgres: the database "
            "part of a rollback runs once, from one host") in checked.stdout, checked.stdout


async def test_the_look_at_start_up_is_counted_like_every_other(pg_db: str,
                                                                tmp_path: Path) -> None:
    host = fleet_daemon(tmp_path, pg_db, f"vf-{secrets.token_hex(4)}")
    try:
        assert host.fleet is not None
        await host.fleet.before_recovery(host.executor, None)

        exposed = host.metrics.registry.get_sample_value
        assert exposed("rollbackd_fleet_looks_total") == 1
        assert exposed("rollbackd_fleet_look_failures_total") == 0
        assert exposed("rollbackd_fleet_incident_open") == 0
    finally:
        host.journal.close()
