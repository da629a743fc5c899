"""The PostgreSQL probe against a real server: health, validators, lock waits, outages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import psycopg
import pytest

from policies.schema import convert
from probes.base import Probe
from probes.pg import connect, dbname_of, with_dbname
from probes.postgres import SIGNALS, PostgresProbe
from probes.settings import PostgresProbeSettings, SqlCheck
from tests.harness.servers import PgCluster, free_port


@asynccontextmanager
async def postgres_probe(
    dsn: str,
    *,
    expected_tables: Sequence[str] = (),
    checks: Sequence[SqlCheck] = (),
    **settings: object,
) -> AsyncIterator[PostgresProbe]:
    probe = PostgresProbe(dsn, convert(settings, PostgresProbeSettings),
                          expected_tables=expected_tables, checks=checks, connect_timeout=2)
    try:
        yield probe
    finally:
        await probe.aclose()


def run(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        for statement in statements:
            conn.execute(statement)


def rows(dsn: str, query: str) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        return conn.execute(query).fetchall()


async def test_connections_are_named_autocommit_and_bounded_by_both_timeouts(pg_db: str) -> None:
    conn = await connect(pg_db, connect_timeout=0.5, statement_timeout=0.4, lock_timeout=0.25)
    try:
        cur = await conn.execute(
            "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'),"
            " current_setting('application_name')")
        assert await cur.fetchone() == ("400ms", "250ms", "rollbackd")
        assert conn.autocommit
        with pytest.raises(psycopg.errors.QueryCanceled):
            await conn.execute("SELECT pg_sleep(2)")
    finally:
        await conn.close()


def test_a_dsn_can_be_pointed_at_another_database() -> None:
    dsn = "host=127.0.0.1 port=5432 user=app dbname=visionforge"
    assert dbname_of(dsn) == "visionforge"
    assert dbname_of(with_dbname(dsn, "postgres")) == "postgres"
    assert "user=app" in with_dbname(dsn, "postgres")


async def test_a_healthy_database_is_up_with_sane_values_and_no_validation_failures(
    pg_db: str,
) -> None:
    run(pg_db, "CREATE SCHEMA media",
        "CREATE TABLE users (id int PRIMARY KEY, email text UNIQUE)",
        "CREATE TABLE media.images (id int PRIMARY KEY, owner int REFERENCES users (id))")
    checks = [SqlCheck(name="orphans", sql="SELECT 1 WHERE false")]
    async with postgres_probe(pg_db, expected_tables=["users", "media.images"],
                              checks=checks) as probe:
        assert isinstance(probe, Probe)
        reading = await probe.measure()
    assert set(reading) == set(SIGNALS) == set(probe.signals())
    assert reading["db.up"] == 1.0
    latency = reading["db.latency_seconds"]
    assert latency is not None and 0 < latency < 1
    ratio = reading["db.connections_ratio"]
    assert ratio is not None and 0 < ratio <= 1
    for signal in ("db.invalid_indexes", "db.unvalidated_constraints", "db.missing_tables",
                   "db.blocked_queries", "db.validation_failures"):
        assert reading[signal] == 0.0, signal
    assert probe.last_error is None and probe.last_query_errors == {}


async def test_the_probe_session_shows_as_rollbackd_in_pg_stat_activity(pg_db: str) -> None:
    async with postgres_probe(pg_db) as probe:
        await probe.measure()
        named = rows(pg_db, "SELECT count(*) FROM pg_stat_activity WHERE"
                            " application_name = 'rollbackd' AND datname = current_database()")
    assert named == [(1,)]


async def test_one_connection_is_kept_across_ticks(pg_db: str) -> None:
    async with postgres_probe(pg_db) as probe:
        pids = set()
        for _ in range(3):
            await probe.measure()
            conn = probe._connection._conn
            assert conn is not None
            pids.add(conn.info.backend_pid)
    assert len(pids) == 1


async def test_an_index_left_invalid_by_a_failed_concurrent_build_is_counted(pg_db: str) -> None:
    run(pg_db, "CREATE TABLE users (id int, email text)",
        "INSERT INTO users VALUES (1, 'a@example.org'), (2, 'a@example.org')")
    with pytest.raises(psycopg.errors.UniqueViolation):
        run(pg_db, "CREATE UNIQUE INDEX CONCURRENTLY users_email ON users (email)")
    async with postgres_probe(pg_db) as probe:
        reading = await probe.measure()
    assert reading["db.invalid_indexes"] == 1.0
    assert reading["db.validation_failures"] == 1.0


async def test_an_index_a_migration_is_still_building_is_not_counted_as_invalid(
    pg_db: str,
) -> None:
    run(pg_db, "CREATE TABLE users (id int, email text)",
        "INSERT INTO users SELECT g, 'u' || g FROM generate_series(1, 60) g",
        # 50 ms per row: the concurrent build below takes about three seconds.
        "CREATE FUNCTION slow_lower(t text) RETURNS text IMMUTABLE LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_sleep(0.05); RETURN lower(t); END $$")
    build = asyncio.create_task(asyncio.to_thread(
        run, pg_db, "CREATE INDEX CONCURRENTLY users_lower ON users (slow_lower(email))"))
    try:
        deadline = asyncio.get_running_loop().time() + 5
        while not rows(pg_db, "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                              " WHERE c.relname = 'users_lower' AND NOT i.indisvalid"):
            assert asyncio.get_running_loop().time() < deadline, "the build never started"
            await asyncio.sleep(0.05)
        async with postgres_probe(pg_db) as probe:
            reading = await probe.measure()
        assert reading["db.invalid_indexes"] == 0.0
        assert reading["db.validation_failures"] == 0.0
    finally:
        await build


async def test_a_constraint_added_not_valid_is_counted_until_validated(pg_db: str) -> None:
    run(pg_db, "CREATE TABLE users (id int PRIMARY KEY)",
        "CREATE TABLE images (id int, owner int)",
        "INSERT INTO images VALUES (1, 42)",
        "ALTER TABLE images ADD CONSTRAINT images_owner FOREIGN KEY (owner)"
        " REFERENCES users (id) NOT VALID",
        "ALTER TABLE images ADD CONSTRAINT images_id CHECK (id > 0) NOT VALID")
    async with postgres_probe(pg_db) as probe:
        before = await probe.measure()
        run(pg_db, "ALTER TABLE images VALIDATE CONSTRAINT images_id")
        after = await probe.measure()
    assert before["db.unvalidated_constraints"] == 2.0
    assert after["db.unvalidated_constraints"] == 1.0
    assert before["db.validation_failures"] == after["db.validation_failures"] == 1.0


async def test_expected_tables_that_do_not_exist_are_counted_schema_qualified_or_not(
    pg_db: str,
) -> None:
    run(pg_db, "CREATE SCHEMA audit", "CREATE TABLE users (id int)")
    expected = ["users", "public.users", "images", "audit.log", '"Users"']
    async with postgres_probe(pg_db, expected_tables=expected) as probe:
        reading = await probe.measure()
    assert reading["db.missing_tables"] == 3.0
    assert reading["db.validation_failures"] == 1.0


async def test_configured_checks_fail_on_rows_and_say_why_when_they_cannot_run(
    pg_db: str,
) -> None:
    run(pg_db, "CREATE TABLE users (id int, email text)",
        "INSERT INTO users VALUES (1, NULL), (2, 'b@example.org')")
    checks = [
        SqlCheck(name="emails_present", sql="SELECT id FROM users WHERE email IS NULL"),
        SqlCheck(name="ids_positive", sql="SELECT id FROM users WHERE id <= 0"),
        SqlCheck(name="typo", sql="SELEC id FROM users"),
        SqlCheck(name="slow", sql="SELECT pg_sleep(2)"),
        SqlCheck(name="writes", sql="DELETE FROM users RETURNING id"),
    ]
    async with postgres_probe(pg_db, checks=checks, statement_timeout="300ms") as probe:
        reading = await probe.measure()
        # A query that does not fit the schema (the typo: SQLSTATE class 42) fails its check.
        assert probe.last_failed_checks == ["emails_present", "typo"]
        assert set(probe.last_check_errors) == {"typo", "slow", "writes"}
        assert "SyntaxError" in probe.last_check_errors["typo"]
        assert "QueryCanceled" in probe.last_check_errors["slow"]
        assert "read-only" in probe.last_check_errors["writes"]
    # Two checks failed; those that could not run can only add to that.
    assert reading["db.validation_failures"] == 2.0
    assert reading["db.up"] == 1.0
    # The check that tried to write did not: the probe's session is read-only.
    assert rows(pg_db, "SELECT count(*) FROM users") == [(2,)]


async def test_validation_failures_add_configured_checks_and_each_failing_built_in(
    pg_db: str,
) -> None:
    run(pg_db, "CREATE TABLE t (id int, k int)", "INSERT INTO t VALUES (1, 1), (2, 1)",
        "ALTER TABLE t ADD CONSTRAINT positive CHECK (id > 0) NOT VALID")
    with pytest.raises(psycopg.errors.UniqueViolation):
        run(pg_db, "CREATE UNIQUE INDEX CONCURRENTLY t_k ON t (k)")
    checks = [SqlCheck(name="dupes", sql="SELECT k FROM t GROUP BY k HAVING count(*) > 1"),
              SqlCheck(name="fine", sql="SELECT 1 FROM t WHERE id < 0")]
    async with postgres_probe(pg_db, expected_tables=["t", "gone", "also_gone"],
                              checks=checks) as probe:
        reading = await probe.measure()
    assert reading["db.missing_tables"] == 2.0
    # dupes + invalid index + NOT VALID constraint + missing tables (one each, not per item)
    assert reading["db.validation_failures"] == 4.0


async def test_a_query_that_fails_leaves_only_its_own_signal_unknown(pg_db: str) -> None:
    # A name with too many dots makes to_regclass raise instead of returning NULL.
    async with postgres_probe(pg_db, expected_tables=["a.b.c.d"]) as probe:
        reading = await probe.measure()
        errors = dict(probe.last_query_errors)
    assert reading["db.missing_tables"] is None
    assert "db.missing_tables" in errors
    # Without one of its parts the total would understate the failures: unknown too.
    assert reading["db.validation_failures"] is None
    assert reading["db.up"] == 1.0
    assert reading["db.invalid_indexes"] == 0.0
    assert reading["db.blocked_queries"] == 0.0


async def test_a_lock_wait_longer_than_blocked_after_is_counted(pg_db: str) -> None:
    run(pg_db, "CREATE TABLE jobs (id int)")
    holder = await psycopg.AsyncConnection.connect(pg_db)
    waiter = await psycopg.AsyncConnection.connect(pg_db, autocommit=True)
    try:
        await holder.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        waiting = asyncio.create_task(waiter.execute("SELECT count(*) FROM jobs"))
        async with postgres_probe(pg_db, blocked_after="1s") as probe:
            await asyncio.sleep(0.3)
            early = await probe.measure()
            await asyncio.sleep(1.0)
            late = await probe.measure()
            await holder.rollback()
            await waiting
            after = await probe.measure()
    finally:
        await holder.close()
        await waiter.close()
    assert early["db.blocked_queries"] == 0.0
    assert late["db.blocked_queries"] == 1.0
    assert after["db.blocked_queries"] == 0.0
    # A lock wait is a symptom, not a data validation.
    assert late["db.validation_failures"] == 0.0


async def test_a_server_nobody_listens_on_is_down_not_unknown() -> None:
    dsn = f"host=127.0.0.1 port={free_port()} user=postgres dbname=postgres"
    async with postgres_probe(dsn) as probe:
        reading = await probe.measure()
        assert probe.last_error is not None and "refused" in probe.last_error
    assert reading == {**dict.fromkeys(SIGNALS), "db.up": 0.0}


async def test_a_stopped_server_is_down_and_a_restarted_one_is_reconnected_to(
    pg_private: PgCluster,
) -> None:
    async with postgres_probe(pg_private.dsn()) as probe:
        assert (await probe.measure())["db.up"] == 1.0
        pg_private.stop()
        down = await probe.measure()
        pg_private.start()
        back = await probe.measure()
        # A crash (no clean shutdown) kills the kept connection just the same.
        pg_private.stop("immediate")
        pg_private.start()
        after_crash = await probe.measure()
    assert down == {**dict.fromkeys(SIGNALS), "db.up": 0.0}
    for reading in (back, after_crash):
        assert reading["db.up"] == 1.0
        assert reading["db.latency_seconds"] is not None
        assert reading["db.validation_failures"] == 0.0


async def test_a_probe_interrupted_mid_query_starts_the_next_tick_on_a_fresh_session(
    pg_db: str,
) -> None:
    checks = [SqlCheck(name="slow", sql="SELECT pg_sleep(1)")]
    async with postgres_probe(pg_db, checks=checks, statement_timeout="5s") as probe:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await probe.measure()
        interrupted = probe._connection._conn
        assert interrupted is not None
        probe.checks = []
        reading = await probe.measure()
        assert probe._connection._conn is not interrupted
        assert interrupted.closed
    assert reading["db.up"] == 1.0
    assert reading["db.validation_failures"] == 0.0


async def test_a_check_that_cannot_run_makes_validation_unknown_not_failed(pg_db: str) -> None:
    run(pg_db, "CREATE TABLE users (id int, email text)", "INSERT INTO users VALUES (1, 'a')")
    checks = [SqlCheck(name="emails_present", sql="SELECT id FROM users WHERE email IS NULL"),
              SqlCheck(name="slow", sql="SELECT pg_sleep(2)")]
    async with postgres_probe(pg_db, checks=checks, statement_timeout="300ms") as probe:
        reading = await probe.measure()
        assert probe.last_failed_checks == []
        assert "QueryCanceled" in probe.last_check_errors["slow"]
    # A slow database must not look like bad data (that would start a restore).
    assert reading["db.validation_failures"] is None

