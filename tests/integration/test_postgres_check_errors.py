"""Data checks whose query breaks, against a real PostgreSQL: what counts, and what is said.

The incident behind these tests: a deploy renamed a column, a configured check's query stopped
fitting the schema, and all rollbackd said, two minutes later, was "no measurement for
db.validation_failures". A query that no longer fits the schema (SQLSTATE class 42) is the
deploy breaking the data contract, so it is a measured failure; a slow or lost database is
still unknown. Either way the reason must reach the probe's outcome.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import psycopg

from policies.schema import convert
from probes.migrations import MigrationsProbe
from probes.pg import dbname_of
from probes.postgres import PostgresProbe
from probes.runner import ProbeOutcome, measure_one
from probes.settings import CustomMigrations, MigrationsProbeSettings, PostgresProbeSettings
from probes.settings import SqlCheck as Check
from tests.harness.servers import free_port

EMAILS_PRESENT = Check(name="emails_present", sql="SELECT id FROM users WHERE email IS NULL")


def run(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]


@asynccontextmanager
async def postgres_probe(
    dsn: str, checks: Sequence[Check], **settings: object
) -> AsyncIterator[PostgresProbe]:
    probe = PostgresProbe(dsn, convert(settings, PostgresProbeSettings), checks=checks,
                          connect_timeout=2)
    try:
        yield probe
    finally:
        await probe.aclose()


async def tick(probe: PostgresProbe | MigrationsProbe) -> ProbeOutcome:
    outcome = await measure_one(probe, bound=10.0)
    assert outcome.ok, outcome.error
    return outcome


def users_table(dsn: str) -> None:
    run(dsn, "CREATE TABLE users (id int PRIMARY KEY, email text)",
        "INSERT INTO users VALUES (1, 'a@example.org')")


async def test_a_check_broken_by_a_renamed_column_counts_as_failed_and_says_why(
    pg_db: str,
) -> None:
    users_table(pg_db)
    async with postgres_probe(pg_db, [EMAILS_PRESENT]) as probe:
        before = await tick(probe)
        # The deploy's migration: the check was written against the old name.
        run(pg_db, "ALTER TABLE users RENAME COLUMN email TO email_address")
        after = await tick(probe)

    assert before.reading["db.validation_failures"] == 0.0
    assert before.problems == {}
    assert after.reading["db.validation_failures"] == 1.0
    reason = after.problems["check.emails_present"]
    assert "42703" in reason
    assert 'column "email" does not exist' in reason
    assert "counted as failed" in reason
    assert probe.last_failed_checks == ["emails_present"]


async def test_a_check_on_a_dropped_table_counts_as_failed(pg_db: str) -> None:
    users_table(pg_db)
    run(pg_db, "DROP TABLE users")
    async with postgres_probe(pg_db, [EMAILS_PRESENT]) as probe:
        outcome = await tick(probe)
    assert outcome.reading["db.validation_failures"] == 1.0
    assert 'relation "users" does not exist' in outcome.problems["check.emails_present"]


async def test_a_check_that_times_out_stays_unknown_and_its_reason_is_in_the_outcome(
    pg_db: str,
) -> None:
    users_table(pg_db)
    slow = Check(name="slow", sql="SELECT pg_sleep(2)")
    async with postgres_probe(pg_db, [EMAILS_PRESENT, slow],
                              statement_timeout="300ms") as probe:
        outcome = await tick(probe)
    assert outcome.reading["db.validation_failures"] is None
    assert "statement timeout" in outcome.problems["check.slow"]
    assert "check.emails_present" not in outcome.problems


async def test_a_check_whose_connection_is_lost_stays_unknown_and_says_so(pg_db: str) -> None:
    users_table(pg_db)
    # The server ends the probe's own session in the middle of the check, as a restart would.
    dies = Check(name="dies", sql="SELECT pg_terminate_backend(pg_backend_pid())")
    async with postgres_probe(pg_db, [dies, EMAILS_PRESENT]) as probe:
        outcome = await tick(probe)
    assert outcome.reading["db.validation_failures"] is None
    assert outcome.reading["db.up"] == 1.0
    assert "terminating connection" in outcome.problems["check.dies"]
    assert "connection lost" in outcome.problems["db.validation_failures"]


async def test_a_check_the_probe_may_not_read_stays_unknown(
    pg_db: str,
) -> None:
    # Permission denied is class 42 too, but it is rollbackd that cannot see, not bad data.
    users_table(pg_db)
    role = f"reader_{dbname_of(pg_db)}"
    run(pg_db, f"CREATE ROLE {role} LOGIN")
    dsn = pg_db.replace("user=postgres", f"user={role}")
    async with postgres_probe(dsn, [EMAILS_PRESENT]) as probe:
        outcome = await tick(probe)
    assert outcome.reading["db.validation_failures"] is None
    assert "42501" in outcome.problems["check.emails_present"]
    assert "undetermined" in outcome.problems["check.emails_present"]


async def test_a_failed_query_and_an_unreachable_database_are_explained_in_the_outcome(
    pg_db: str,
) -> None:
    # A name with too many dots makes to_regclass raise instead of returning NULL.
    probe = PostgresProbe(pg_db, PostgresProbeSettings(), expected_tables=["a.b.c.d"],
                          connect_timeout=2)
    try:
        outcome = await tick(probe)
    finally:
        await probe.aclose()
    assert outcome.reading["db.missing_tables"] is None
    assert "improper relation name" in outcome.problems["db.missing_tables"]

    nowhere = f"host=127.0.0.1 port={free_port()} user=postgres dbname=postgres"
    async with postgres_probe(nowhere, []) as probe:
        down = await tick(probe)
    assert down.reading["db.up"] == 0.0
    assert "refused" in down.problems["db.up"]


async def test_migration_query_errors_are_explained_in_the_outcome(pg_db: str) -> None:
    custom = CustomMigrations(failed="SELECT failed FROM nowhere")
    probe = MigrationsProbe(pg_db, custom, MigrationsProbeSettings(), connect_timeout=2)
    try:
        outcome = await tick(probe)
    finally:
        await probe.aclose()
    assert outcome.reading["migration.failed"] is None
    assert 'relation "nowhere" does not exist' in outcome.problems["migration.failed"]
