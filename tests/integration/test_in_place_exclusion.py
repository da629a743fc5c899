"""An in-place restore against a real PostgreSQL while other sessions come and go: it holds
every other session out for its whole duration, so that no acknowledged write is in neither
the safety backup nor the restored database; rollbackd's own sessions do not stop it; and
what a killed restore leaves behind is cleaned up."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest

from daemon.db.backups import BackupStore, Manifest
from daemon.db.restore import (
    RestoreError,
    RestoreOptions,
    interrupted_in_place,
    recover_interrupted_in_place,
    restore_in_place,
)
from daemon.db.restore.in_place import STATE_FILE
from probes.pg import APPLICATION_NAME, dbname_of
from tests.harness.data import (
    restore_into_fresh_database,
    run,
    scalar,
    seed_visionforge,
    store_in,
    table_checksums,
)
from tests.harness.processes import Proc
from tests.harness.restores import restore_point_pg_restore_refuses
from tests.harness.servers import PgCluster, wait_for

TABLES = ["users", "images", "audit_log"]

# The application as rollbackd meets it: every request opens a connection of its own, writes
# one audit row, and only a committed insert counts as acknowledged (its id goes to the file).
WRITER = r"""
import os, sys, time
import psycopg

dsn, acknowledged, stop = sys.argv[1:4]
n = 0
with open(acknowledged, "a", buffering=1) as out:
    while not os.path.exists(stop):
        n += 1
        try:
            with psycopg.connect(dsn, connect_timeout=2, autocommit=True,
                                 application_name="visionforge") as conn:
                conn.execute("INSERT INTO audit_log (action, entity, entity_id)"
                             " VALUES ('upload', 'writer', %s)", (n,))
        except psycopg.Error:
            time.sleep(0.02)
            continue
        out.write(f"{n}\n")
        time.sleep(0.01)
"""


def options(dsn: str, tmp_path: Path, **overrides: object) -> RestoreOptions:
    values: dict[str, object] = {
        "dsn": dsn, "state_dir": tmp_path / "state", "expected_tables": TABLES,
        "key_tables": TABLES, "connect_timeout": 2.0, "restore_timeout": 60.0,
        "terminate_timeout": 5.0, "lock_wait_timeout": 5.0, "statement_timeout": 30.0}
    values.update(overrides)
    return RestoreOptions(**values)  # type: ignore[arg-type]


def restore_point(dsn: str, tmp_path: Path) -> tuple[BackupStore, Manifest]:
    seed_visionforge(dsn)
    store = store_in(tmp_path / "backups")
    manifest = store.create(dsn, "restore_point")
    assert store.verify(manifest.id).ok
    return store, manifest


def writer_ids(dsn: str) -> set[int]:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT entity_id FROM audit_log WHERE entity = 'writer'").fetchall()
    return {int(r[0]) for r in rows}


def acknowledged(path: Path) -> set[int]:
    if not path.exists():
        return set()
    return {int(line) for line in path.read_text().split("\n")[:-1]}


def allows_connections(cluster: PgCluster, name: str) -> bool:
    return bool(cluster.execute(
        f"SELECT datallowconn FROM pg_database WHERE datname = '{name}'")[0][0])


def ended(conn: psycopg.Connection[object]) -> bool:
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return True
    return False


def dead_pid() -> int:
    """The pid of a process that has exited (as a killed rollbackd's would be)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_no_acknowledged_write_is_lost_while_the_app_writes_during_an_in_place_restore(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    store, rp = restore_point(pg_db, tmp_path)
    acked_file, stop = tmp_path / "acknowledged", tmp_path / "stop"
    writer = Proc([sys.executable, "-c", WRITER, pg_db, str(acked_file), str(stop)])
    try:
        wait_for(lambda: len(acknowledged(acked_file)) >= 20, 30,
                 what=f"the writer to be writing ({writer.output()[-500:]})")
        report = restore_in_place(store, rp.id, options(pg_db, tmp_path))
        after_restore = len(acknowledged(acked_file))
        # Connections are allowed again: the application goes on writing.
        wait_for(lambda: len(acknowledged(acked_file)) >= after_restore + 10, 30,
                 what=f"the writer to write after the restore ({writer.output()[-500:]})")
        stop.touch()
        writer.popen.wait(30)
    finally:
        writer.close()

    assert report.ok, report.validation
    assert report.safety_backup is not None and report.kept == report.safety_backup
    safety = store.get(report.safety_backup)
    scratch = restore_into_fresh_database(pg_cluster, store, safety, f"{dbname_of(pg_db)}_s")
    in_safety, in_live = writer_ids(scratch), writer_ids(pg_db)
    acked = acknowledged(acked_file)
    # Every acknowledged write is in the safety backup (before the restore) or in the
    # restored database (after it); none in both: the restore undid exactly the earlier ones.
    assert sorted(acked - in_safety - in_live) == []
    assert in_safety & in_live == set()
    assert len(acked & in_safety) >= 20 and len(acked & in_live) >= 10


def test_a_connection_still_starting_when_the_restore_begins_is_held_out_too(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    """A backend that passed the database's allow-connections check but is not yet listed in
    pg_stat_activity (post_auth_delay holds it there) must be ended like the others."""
    store, rp = restore_point(pg_db, tmp_path)
    name = dbname_of(pg_db)
    outcome: dict[str, object] = {}

    def slow_client() -> None:
        try:
            with psycopg.connect(pg_db, connect_timeout=60, autocommit=True,
                                 options="-c post_auth_delay=20") as conn:
                conn.execute("INSERT INTO audit_log (action, entity) VALUES ('late', 'slow')")
                outcome["wrote"] = True
        except psycopg.OperationalError as exc:
            outcome["refused"] = str(exc)

    starting = threading.Thread(target=slow_client)
    starting.start()
    try:
        wait_for(lambda: pg_cluster.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.objid"
            " WHERE l.locktype = 'object' AND l.classid = 'pg_database'::regclass"
            f" AND d.datname = '{name}' AND l.pid NOT IN (SELECT pid FROM pg_stat_activity"
            "  WHERE datname IS NOT NULL)")[0][0] == 1, 10,
                 what="the slow client to be inside its start-up")
        report = restore_in_place(store, rp.id, options(pg_db, tmp_path))
    finally:
        starting.join(60)
    assert report.ok, report.validation
    assert "refused" in outcome, outcome
    assert scalar(pg_db, "SELECT count(*) FROM audit_log WHERE entity = 'slow'") == 0


def test_rollbackds_own_sessions_and_an_open_transaction_do_not_stop_an_in_place_restore(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    store, rp = restore_point(pg_db, tmp_path)
    at_restore_point = table_checksums(pg_db, rp)
    run(pg_db, "DELETE FROM images WHERE id <= 10")
    probe = psycopg.connect(pg_db, autocommit=True, connect_timeout=5,
                            application_name=APPLICATION_NAME)
    paused_probe = psycopg.connect(pg_db, autocommit=True, connect_timeout=5,
                                   application_name=APPLICATION_NAME)
    paused_probe.execute("SELECT count(*) FROM users")
    in_transaction = psycopg.connect(pg_db, connect_timeout=5, application_name="visionforge")
    in_transaction.execute("INSERT INTO users (email, name) VALUES ('open@x', 'Open')")
    try:
        report = restore_in_place(store, rp.id, options(pg_db, tmp_path))
        assert report.ok, report.validation
        assert table_checksums(pg_db, rp) == at_restore_point
        for conn in (probe, paused_probe, in_transaction):
            assert ended(conn)
    finally:
        for conn in (probe, paused_probe, in_transaction):
            conn.close()
    assert allows_connections(pg_cluster, str(dbname_of(pg_db)))
    assert not (tmp_path / "state" / STATE_FILE).exists()


def test_a_failed_in_place_restore_allows_connections_again_and_changes_nothing(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    name = dbname_of(pg_db)
    store = store_in(tmp_path / "backups")
    rp, role = restore_point_pg_restore_refuses(pg_cluster, pg_db, store)
    before = table_checksums(pg_db, rp)

    with psycopg.connect(pg_db, connect_timeout=5) as app, \
            pytest.raises(RestoreError, match=f'role "{role}" does not exist') as failed:
        restore_in_place(store, rp.id, options(pg_db, tmp_path))
    assert "pg_restore: error" in str(failed.value) and "safety backup" in str(failed.value)
    assert ended(app)
    assert allows_connections(pg_cluster, str(name))
    assert table_checksums(pg_db, rp) == before
    assert interrupted_in_place(tmp_path / "state") is None


def test_leftover_sessions_of_a_killed_restore_are_ended_and_connections_allowed_again(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    store, rp = restore_point(pg_db, tmp_path)
    name = str(dbname_of(pg_db))
    host = socket.gethostname()
    # What a killed in-place restore leaves: its pg_restore's session, still holding its
    # locks; the database refusing connections; and its record naming the safety backup.
    safety = store.create(pg_db, "safety")
    leftover = psycopg.connect(pg_db, connect_timeout=5,
                               application_name=f"rollbackd-restore:{dead_pid()}@{host}")
    leftover.execute("LOCK TABLE images IN ACCESS EXCLUSIVE MODE")
    live_pid_holder = Proc(["sleep", "60"])
    alive = psycopg.connect(pg_db, autocommit=True, connect_timeout=5,
                            application_name=f"rollbackd-restore:{live_pid_holder.pid}@{host}")
    other = psycopg.connect(pg_db, autocommit=True, connect_timeout=5,
                            application_name="visionforge")
    state = tmp_path / "state"
    state.mkdir()
    (state / STATE_FILE).write_text(json.dumps({
        "database": name, "blocked_connections": True, "attempts": [{
            "backup_id": rp.id, "pid": dead_pid(), "host": host,
            "started_at": rp.created_at + 1, "safety_backup": safety.id,
            "may_have_restored": True}]}))
    pg_cluster.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    try:
        recovered = recover_interrupted_in_place(options(pg_db, tmp_path))
        assert ended(leftover)
        assert not ended(alive) and not ended(other)
        assert allows_connections(pg_cluster, name)
        assert recovered is not None and recovered.safety_backups == [safety.id]
        assert f"safety backup {safety.id}" in recovered.describe()
        assert interrupted_in_place(state) == recovered  # kept until a restore finishes

        report = restore_in_place(store, rp.id, options(pg_db, tmp_path))
    finally:
        for conn in (leftover, alive, other):
            conn.close()
        live_pid_holder.close()
    # The data from before the interrupted restore is where that one put it.
    assert report.kept == safety.id and report.safety_backup not in (None, safety.id)
    assert any("interrupted" in note and safety.id in note for note in report.notes)
    text = "\n".join(report.describe())
    assert f"kept in safety backup {safety.id}" in text and str(report.safety_backup) in text
    assert interrupted_in_place(state) is None


def test_a_restore_killed_before_pg_restore_was_let_in_is_forgotten_once_recovered(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    store, rp = restore_point(pg_db, tmp_path)
    name = str(dbname_of(pg_db))
    safety = store.create(pg_db, "safety")
    state = tmp_path / "state"
    state.mkdir()
    # Killed while it was ending the other sessions: the database refuses connections, and
    # nothing was restored (pg_restore was still waiting for the holder's locks).
    (state / STATE_FILE).write_text(json.dumps({
        "database": name, "blocked_connections": True, "attempts": [{
            "backup_id": rp.id, "pid": dead_pid(), "host": socket.gethostname(),
            "started_at": rp.created_at + 1, "safety_backup": safety.id,
            "may_have_restored": False}]}))
    pg_cluster.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')

    assert recover_interrupted_in_place(options(pg_db, tmp_path)) is None
    assert allows_connections(pg_cluster, name)
    assert interrupted_in_place(state) is None
    report = restore_in_place(store, rp.id, options(pg_db, tmp_path))
    assert report.kept == report.safety_backup != safety.id
    assert not any("interrupted" in note for note in report.notes)
