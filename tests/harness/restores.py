"""Restores as tests drive them: restore options and a restore config for the example app's
database, the writes a restore undoes, the databases a swap leaves, and a rollbackd held and
SIGKILLed at a named step (``ROLLBACKD_TEST_HOLD``, :func:`daemon.durable.hold_point`)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from daemon.db.backups import BackupStore, Manifest
from daemon.db.restore import RestoreOptions
from probes.pg import dbname_of
from tests.harness.config import config_file
from tests.harness.data import run, seed_visionforge
from tests.harness.processes import Proc
from tests.harness.servers import PgCluster, wait_for

TABLES = ["users", "images", "audit_log"]


def restore_options(dsn: str, tmp_path: Path, **overrides: object) -> RestoreOptions:
    """Short timeouts, the example app's tables expected and checked, state in ``tmp_path``."""
    values: dict[str, object] = {
        "dsn": dsn, "state_dir": tmp_path / "state", "expected_tables": TABLES,
        "key_tables": TABLES, "connect_timeout": 2.0, "restore_timeout": 60.0,
        "terminate_timeout": 5.0, "lock_wait_timeout": 5.0, "statement_timeout": 30.0}
    values.update(overrides)
    return RestoreOptions(**values)  # type: ignore[arg-type]


def restore_config(tmp_path: Path, dsn: str) -> Path:
    """A config for restores of the example app's database, state in ``tmp_path/state`` (the
    same as :func:`restore_options`'), backups in ``tmp_path/backups``."""
    return config_file(
        tmp_path,
        database={"dsn": dsn, "connect_timeout": "2s", "expected_tables": TABLES,
                  "key_tables": ["users", "images"]},
        backups={"dir": tmp_path / "backups", "min_free": "0", "terminate_timeout": "5s",
                 "restore_timeout": "2m", "lock_wait_timeout": "5s"})


def write_after_restore_point(dsn: str) -> None:
    """Inserts, updates and deletes in the example app's tables: what a restore undoes."""
    run(dsn, "INSERT INTO users (email, name) VALUES ('late@example.com', 'Late')",
        "INSERT INTO images (user_id, filename) SELECT max(id), 'late.jpg' FROM users",
        "UPDATE images SET title = 'changed' WHERE id <= 5",
        "DELETE FROM audit_log WHERE id % 3 = 0")


def cluster_state(cluster: PgCluster, name: str) -> list[tuple[object, ...]]:
    """Database ``name`` and every ``name_*`` one: whether it takes connections, its comment."""
    return cluster.execute(
        "SELECT datname, datallowconn, shobj_description(oid, 'pg_database') FROM pg_database"
        f" WHERE datname = '{name}' OR datname LIKE '{name}\\_%' ORDER BY 1")


def killed_at(point: str, argv: list[str]) -> str:
    """Run ``argv`` until it holds at ``point``, SIGKILL it there; its output."""
    proc = Proc(argv, env={**os.environ, "ROLLBACKD_TEST_HOLD": point})
    try:
        wait_for(lambda: f"test hold at {point}" in proc.output(), 120,
                 interval=0.05, what=f"the process to reach {point}")
        os.kill(proc.pid, signal.SIGKILL)
        proc.popen.wait(10)
    finally:
        proc.close()
    return proc.output()


def rollbackd_sessions_gone(cluster: PgCluster) -> None:
    """Wait until a killed rollbackd's sessions have ended (the server notices the closed
    sockets)."""
    wait_for(lambda: cluster.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'rollbackd%'")
        == [(0,)], 30, what="the killed rollbackd's sessions to end")


def restore_point_pg_restore_refuses(cluster: PgCluster, dsn: str,
                                     store: BackupStore) -> tuple[Manifest, str]:
    """A seeded database and a restore point that pg_restore cannot load: a table in it is
    owned by a role dropped since (``ALTER ... OWNER TO`` fails), so every restore fails.
    Returns the restore point and the dropped role's name (pg_restore's error names it)."""
    role = f"gone_{dbname_of(dsn)}"
    seed_visionforge(dsn)
    cluster.execute(f"CREATE ROLE {role}")
    run(dsn, f"ALTER TABLE images OWNER TO {role}")
    manifest = store.create(dsn, "restore_point")
    run(dsn, "ALTER TABLE images OWNER TO postgres")
    cluster.execute(f"DROP ROLE {role}")
    return manifest, role
