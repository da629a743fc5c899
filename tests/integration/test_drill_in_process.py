"""Restore drills in process against a real PostgreSQL: which backup, refusals, leftovers, locks."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from daemon.config import load_config
from daemon.db.drill import DrillError, drill_lock_key, run_drill
from probes.pg import dbname_of
from tests.harness.data import restore_point
from tests.harness.drill import journal, scratch_databases, write_config
from tests.harness.servers import PgCluster


def test_the_newest_verified_restore_point_is_drilled_not_an_unverified_or_other_backup(
        pg_db: str, tmp_path: Path) -> None:
    store, _older = restore_point(pg_db, tmp_path)
    newest_verified = store.create(pg_db, "restore_point")
    assert store.verify(newest_verified.id).ok
    store.create(pg_db, "restore_point")  # never verified
    manual = store.create(pg_db, "manual")
    assert store.verify(manual.id).ok

    report = run_drill(load_config(write_config(tmp_path, pg_db)))

    assert report.ok, report.describe()
    assert report.backup_id == newest_verified.id


def test_a_drill_refuses_when_the_copy_would_cross_min_free_and_journals_the_refusal(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    restore_point(pg_db, tmp_path)

    report = run_drill(load_config(write_config(tmp_path, pg_db, min_free="1000TB")))

    assert not report.ok
    assert report.error is not None
    assert "not enough free space on the server" in report.error
    assert "backups.min_free is 1000.0 TB" in report.error
    assert report.restore_seconds is None and report.checks == []
    assert scratch_databases(pg_cluster, pg_db) == []
    drill = journal(tmp_path).latest_drill()
    assert drill is not None and not drill.ok


def test_a_scratch_database_left_by_a_killed_drill_is_dropped_by_the_next_one(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    restore_point(pg_db, tmp_path)
    stale = f"{dbname_of(pg_db)}_drill_20000101000000"
    pg_cluster.execute(f'CREATE DATABASE "{stale}"')

    report = run_drill(load_config(write_config(tmp_path, pg_db)))

    assert report.ok, report.describe()
    assert scratch_databases(pg_cluster, pg_db) == []
    assert any(stale in note for note in report.notes)


def test_a_second_drill_of_the_same_database_is_refused_while_one_runs(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    restore_point(pg_db, tmp_path)
    config = load_config(write_config(tmp_path, pg_db))
    with psycopg.connect(pg_cluster.dsn(), autocommit=True, connect_timeout=5) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (drill_lock_key(dbname_of(pg_db) or ""),))
        with pytest.raises(DrillError, match=r"another drill of \S+ is running"):
            run_drill(config)
    assert journal(tmp_path).latest_drill() is None
