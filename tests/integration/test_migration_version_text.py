"""The migration tool's version as people read it, against a real PostgreSQL.

The incident: the status line showed an Alembic revision as ``1.91735e+14``. An Alembic
revision is an opaque id (twelve hex digits by default), not a number, even when all twelve
happen to be decimal digits. So the probe carries the version text in its outcome's ``info``
(for the status line and an info label), and ``migration.version`` is a number only in the
way the tool numbers its versions; for revision ids it is a fingerprint that changes exactly
when the revision does, never the id read as a number.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg

from probes.migrations import MigrationsProbe
from probes.runner import ProbeOutcome, measure_one
from probes.settings import CustomMigrations, MigrationPreset, MigrationsProbeSettings

ALEMBIC_TABLE = ("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL,"
                 " CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))")
RAILS_TABLE = "CREATE TABLE schema_migrations (version character varying NOT NULL PRIMARY KEY)"


def run(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]


@asynccontextmanager
async def migrations_probe(
    dsn: str, tool: MigrationPreset | CustomMigrations
) -> AsyncIterator[MigrationsProbe]:
    probe = MigrationsProbe(dsn, tool, MigrationsProbeSettings(), connect_timeout=2)
    try:
        yield probe
    finally:
        await probe.aclose()


async def tick(probe: MigrationsProbe) -> ProbeOutcome:
    outcome = await measure_one(probe, bound=10.0)
    assert outcome.ok, outcome.error
    assert outcome.problems == {}
    return outcome


def version_of(outcome: ProbeOutcome) -> float:
    value = outcome.reading["migration.version"]
    assert value is not None
    return value


async def test_an_alembic_hex_revision_is_reported_as_its_text(pg_db: str) -> None:
    run(pg_db, ALEMBIC_TABLE, "INSERT INTO alembic_version VALUES ('a1b2c3d4e5f6')")
    async with migrations_probe(pg_db, "alembic") as probe:
        first = await tick(probe)
        run(pg_db, "UPDATE alembic_version SET version_num = 'ffe01d2c3b4a'")
        upgraded = await tick(probe)
    assert first.info == {"migration.version": "a1b2c3d4e5f6"}
    assert upgraded.info == {"migration.version": "ffe01d2c3b4a"}
    # The number only has to change with the revision, for changed(migration.version).
    assert version_of(first) != version_of(upgraded)


async def test_an_alembic_revision_of_decimal_digits_is_not_read_as_a_number(
    pg_db: str,
) -> None:
    # One revision in a few hundred that Alembic generates has no letter in it.
    run(pg_db, ALEMBIC_TABLE, "INSERT INTO alembic_version VALUES ('191735000000')")
    async with migrations_probe(pg_db, "alembic") as probe:
        outcome = await tick(probe)
        run(pg_db, "UPDATE alembic_version SET version_num = '191735000001'")
        upgraded = await tick(probe)
    assert outcome.info == {"migration.version": "191735000000"}
    assert version_of(outcome) != 191735000000.0
    assert version_of(outcome) != version_of(upgraded)
    assert upgraded.info == {"migration.version": "191735000001"}


async def test_alembic_branches_are_reported_together_and_none_is_version_zero(
    pg_db: str,
) -> None:
    run(pg_db, ALEMBIC_TABLE)
    async with migrations_probe(pg_db, "alembic") as probe:
        at_base = await tick(probe)
        run(pg_db, "INSERT INTO alembic_version VALUES ('ffe01d2c3b4a'), ('a1b2c3d4e5f6')")
        two_heads = await tick(probe)
    assert version_of(at_base) == 0.0 and at_base.info == {}
    assert two_heads.info == {"migration.version": "a1b2c3d4e5f6,ffe01d2c3b4a"}


async def test_a_numbered_tool_keeps_its_number_and_gives_it_as_whole_digits(
    pg_db: str,
) -> None:
    run(pg_db, RAILS_TABLE,
        "INSERT INTO schema_migrations VALUES ('20240101000000'), ('20240215093000')")
    async with migrations_probe(pg_db, "rails") as probe:
        outcome = await tick(probe)
    assert version_of(outcome) == 20240215093000.0
    assert outcome.info == {"migration.version": "20240215093000"}


async def test_a_custom_version_query_giving_text_is_a_revision_and_a_number_a_number(
    pg_db: str,
) -> None:
    run(pg_db, "CREATE TABLE releases (id int, revision text)",
        "INSERT INTO releases VALUES (7, '1e5'), (8, 'a1b2c3d4e5f6')")
    by_text = CustomMigrations(version="SELECT revision FROM releases WHERE id = 7")
    by_number = CustomMigrations(version="SELECT max(id) FROM releases")
    async with migrations_probe(pg_db, by_text) as probe:
        text = await tick(probe)
    async with migrations_probe(pg_db, by_number) as probe:
        number = await tick(probe)
    # '1e5' is no hundred thousand: text from the database is an id, whatever it looks like.
    assert text.info == {"migration.version": "1e5"}
    assert version_of(text) != 100000.0
    assert version_of(number) == 8.0
    assert number.info == {"migration.version": "8"}


async def test_a_revision_keeps_the_number_earlier_releases_gave_it(pg_db: str) -> None:
    # Earlier releases computed the fingerprint in SQL; a different number after an upgrade
    # would read as a migration to changed(migration.version).
    run(pg_db, ALEMBIC_TABLE, "INSERT INTO alembic_version VALUES ('ae1027a6acf')")
    with psycopg.connect(pg_db, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute("SELECT ('x' || left(md5(string_agg(version_num, ',')), 12))"
                           "::bit(48)::bigint FROM alembic_version").fetchone()
    assert row is not None
    async with migrations_probe(pg_db, "alembic") as probe:
        outcome = await tick(probe)
    assert version_of(outcome) == float(row[0])
