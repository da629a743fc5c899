"""A restore point records the migration tool's version in its snapshot, so that the executor
can tell a database a failed migration left unchanged from one it changed."""

from __future__ import annotations

from pathlib import Path

from daemon.db.migrations import live_version
from probes.settings import CustomMigrations
from tests.harness.data import run, seed_visionforge, store_in
from tests.harness.paths import APP_DIR
from tests.harness.processes import migrate


def test_the_restore_point_records_the_version_and_the_live_one_moves_on(
        pg_db: str, tmp_path: Path) -> None:
    seed_visionforge(pg_db)
    store = store_in(tmp_path / "backups")
    manifest = store.create(pg_db, "restore_point", migrations="knex")
    assert manifest.migration_version == "3"  # three knex migrations applied
    assert store.get(manifest.id).migration_version == "3"
    assert live_version(pg_db, "knex") == "3"
    assert migrate(pg_db, APP_DIR / "migrations", APP_DIR / "releases" / "v2-good").returncode == 0
    assert live_version(pg_db, "knex") == "4"


def test_a_failed_transactional_migration_leaves_the_version(pg_db: str) -> None:
    seed_visionforge(pg_db)
    failed = migrate(pg_db, APP_DIR / "migrations", APP_DIR / "releases" / "v2-failing")
    assert failed.returncode == 1
    assert live_version(pg_db, "knex") == "3"


def test_nothing_applied_is_0_and_a_failing_custom_query_records_none(
        pg_db: str, tmp_path: Path) -> None:
    run(pg_db, "CREATE TABLE t (id int)")
    store = store_in(tmp_path / "backups")
    assert store.create(pg_db, "manual", migrations="knex").migration_version == "0"
    broken = CustomMigrations(version="SELECT max(v) FROM no_such_table")
    manifest = store.create(pg_db, "manual", migrations=broken)
    assert manifest.migration_version is None
    assert store.verify(manifest.id).ok
    assert store.create(pg_db, "manual").migration_version is None
