"""The checklists against a real PostgreSQL: each broken thing is named with what to do."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from daemon.db.validate import CheckResult, failures, validate_data, validate_database
from probes.settings import SqlCheck
from tests.harness.data import run, seed_visionforge, store_in
from tests.harness.servers import PgCluster, free_port

TABLES = ["users", "images", "audit_log"]


def by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.name: r for r in results}


def test_a_sound_database_passes_every_check(pg_db: str) -> None:
    seed_visionforge(pg_db)
    checks = [SqlCheck(name="no_orphans", sql="SELECT 1 FROM images i WHERE NOT EXISTS "
                                              "(SELECT 1 FROM users u WHERE u.id = i.user_id)")]
    results = validate_database(pg_db, expected_tables=TABLES, checks=checks, timeout=10)
    assert failures(results) == []
    assert set(by_name(results)) == {"connect", "expected_tables", "constraints_validated",
                                     "indexes_valid", "check:no_orphans"}


def test_an_invalid_index_left_by_a_failed_concurrent_build_is_named_with_the_fix(
        pg_db: str) -> None:
    seed_visionforge(pg_db)
    with psycopg.connect(pg_db, autocommit=True, connect_timeout=5) as conn, \
            pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("CREATE UNIQUE INDEX CONCURRENTLY images_filename_key"
                     " ON images (user_id, filename)")
    result = by_name(validate_database(pg_db, expected_tables=TABLES))["indexes_valid"]
    assert not result.ok
    assert "images_filename_key" in result.message and "invalid" in result.message
    assert "drop and recreate" in result.message


def test_a_not_valid_foreign_key_and_a_missing_table_fail_their_checks(pg_db: str) -> None:
    seed_visionforge(pg_db)
    run(pg_db, "CREATE TABLE tags (id int PRIMARY KEY, image_id bigint)",
        "ALTER TABLE tags ADD CONSTRAINT tags_image_fk FOREIGN KEY (image_id)"
        " REFERENCES images (id) NOT VALID")
    results = by_name(validate_database(pg_db, expected_tables=[*TABLES, "comments"]))
    assert not results["constraints_validated"].ok
    assert "tags_image_fk" in results["constraints_validated"].message
    assert "VALIDATE CONSTRAINT" in results["constraints_validated"].message
    assert not results["expected_tables"].ok
    assert "comments" in results["expected_tables"].message


def test_a_failing_check_and_a_broken_check_both_fail(pg_db: str) -> None:
    seed_visionforge(pg_db)
    checks = [SqlCheck(name="has_rows", sql="SELECT id FROM users LIMIT 1"),
              SqlCheck(name="typo", sql="SELECT FROM no_such_table")]
    results = by_name(validate_database(pg_db, checks=checks))
    assert not results["check:has_rows"].ok and "offending row" in results["check:has_rows"].message
    assert not results["check:typo"].ok and "no_such_table" in results["check:typo"].message


def test_fewer_rows_than_the_restore_point_fails_the_data_check(
        pg_db: str, tmp_path: Path) -> None:
    seed_visionforge(pg_db)
    manifest = store_in(tmp_path).create(pg_db, "manual")
    assert failures(validate_data(pg_db, manifest, TABLES)) == []
    run(pg_db, "DELETE FROM images WHERE id <= 3", "INSERT INTO users (email, name)"
                                                   " VALUES ('more@x', 'More')")
    results = by_name(validate_data(pg_db, manifest, [*TABLES, "nope"]))
    assert not results["rows:images"].ok and "3 row(s) lost" in results["rows:images"].message
    assert results["rows:users"].ok
    assert not results["rows:nope"].ok


def test_an_unreachable_database_is_one_failed_connect_check(pg_cluster: PgCluster) -> None:
    dsn = f"host=127.0.0.1 port={free_port()} user=postgres dbname=x"
    results = validate_database(dsn, expected_tables=TABLES, connect_timeout=2)
    assert [(r.name, r.ok) for r in results] == [("connect", False)]
    assert "cannot connect" in results[0].message
