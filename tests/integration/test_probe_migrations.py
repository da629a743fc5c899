"""The migrations probe against a real server, each preset on its tool's real table layout.

Advisory lock keys are restated here from each tool's source (not imported from the probe), so
that a wrong key in the probe fails these tests instead of agreeing with itself.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

from probes.base import Probe
from probes.migrations import PRESETS, SIGNALS, MigrationsProbe
from probes.pg import dbname_of, with_dbname
from probes.settings import MIGRATION_PRESETS, CustomMigrations, MigrationsProbeSettings
from tests.harness.servers import PgCluster, free_port


def run(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        for statement in statements:
            conn.execute(statement)


@contextmanager
def advisory_lock_held(dsn: str, key: int) -> Any:
    """Another session holding ``key`` as the running tool would, until the block ends."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        conn.execute("SELECT pg_advisory_lock(%s::bigint)", (key,))
        yield


@asynccontextmanager
async def migrations_probe(
    dsn: str, tool: Any, probe_timeout: float = 3.0
) -> AsyncIterator[MigrationsProbe]:
    probe = MigrationsProbe(dsn, tool, MigrationsProbeSettings(timeout=probe_timeout),
                            connect_timeout=2)
    try:
        yield probe
    finally:
        await probe.aclose()


def state(reading: Any) -> tuple[float | None, float | None, float | None]:
    return (reading["migration.failed"], reading["migration.in_progress"],
            reading["migration.version"])


def java_hash(text: str) -> int:
    """String.hashCode() as Java defines it: s[0]*31^(n-1) + ... + s[n-1], as a signed int."""
    n = len(text)
    total: int = sum(ord(c) * 31 ** (n - 1 - i) for i, c in enumerate(text)) % 2**32
    return total - 2**32 if total >= 2**31 else total


LockKey = Callable[[str], int]  # the database name to the key the tool locks while migrating


@dataclass(frozen=True)
class Step:
    """Rows written by the tool at some point, whether it holds its lock, and what we expect."""

    what: str
    sql: tuple[str, ...]
    expect: tuple[float, float, float]  # failed, in_progress, version
    lock_held: bool = False


@dataclass(frozen=True)
class Tool:
    tables: tuple[str, ...]
    steps: tuple[Step, ...]
    lock: LockKey | None = None
    extra: dict[str, Any] = field(default_factory=dict)


TOOLS: dict[str, Tool] = {
    "knex": Tool(
        tables=("CREATE TABLE knex_migrations (id serial PRIMARY KEY, name varchar(255),"
                " batch integer, migration_time timestamptz)",
                "CREATE TABLE knex_migrations_lock (index serial PRIMARY KEY, is_locked integer)",
                "INSERT INTO knex_migrations_lock (is_locked) VALUES (0)"),
        steps=(
            Step("clean", ("INSERT INTO knex_migrations (name, batch, migration_time) VALUES"
                           " ('20240101_users.js', 1, now()), ('20240102_images.js', 2, now())",),
                 (0, 0, 2)),
            Step("running", ("UPDATE knex_migrations_lock SET is_locked = 1",), (0, 1, 2)),
        ),
    ),
    "prisma": Tool(
        tables=("""CREATE TABLE _prisma_migrations (
                    id VARCHAR(36) PRIMARY KEY NOT NULL, checksum VARCHAR(64) NOT NULL,
                    finished_at TIMESTAMPTZ, migration_name VARCHAR(255) NOT NULL, logs TEXT,
                    rolled_back_at TIMESTAMPTZ, started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                    applied_steps_count INTEGER NOT NULL DEFAULT 0)""",),
        steps=(
            Step("clean", ("INSERT INTO _prisma_migrations (id, checksum, finished_at,"
                           " migration_name, applied_steps_count) VALUES"
                           " ('a', 'x', now(), '20240101_init', 1),"
                           " ('b', 'y', now(), '20240102_images', 1)",
                           # a failure someone resolved with `migrate resolve --rolled-back`
                           "INSERT INTO _prisma_migrations (id, checksum, migration_name, logs,"
                           " rolled_back_at) VALUES ('c', 'z', '20240103_bad', 'boom', now())"),
                 (0, 0, 2)),
            Step("running", ("INSERT INTO _prisma_migrations (id, checksum, migration_name)"
                             " VALUES ('d', 'w', '20240104_tags')",), (0, 1, 2), lock_held=True),
            Step("failed", ("UPDATE _prisma_migrations SET logs = 'relation exists'"
                            " WHERE id = 'd'",), (1, 0, 2)),
        ),
        lock=lambda db: 72707369,
    ),
    "golang-migrate": Tool(
        tables=("CREATE TABLE schema_migrations (version bigint NOT NULL PRIMARY KEY,"
                " dirty boolean NOT NULL)",),
        steps=(
            Step("clean", ("INSERT INTO schema_migrations VALUES (20240102030405, false)",),
                 (0, 0, 20240102030405)),
            Step("running", ("UPDATE schema_migrations SET version = 20240203000000,"
                             " dirty = true",), (0, 1, 20240203000000), lock_held=True),
            Step("failed", (), (1, 0, 20240203000000)),
        ),
        lock=lambda db: (zlib.crc32(f"public\x00schema_migrations\x00{db}".encode())
                         * 1486364155) % 2**32,
    ),
    "flyway": Tool(
        tables=("""CREATE TABLE flyway_schema_history (
                    installed_rank INT NOT NULL, version VARCHAR(50),
                    description VARCHAR(200) NOT NULL, type VARCHAR(20) NOT NULL,
                    script VARCHAR(1000) NOT NULL, checksum INT,
                    installed_by VARCHAR(100) NOT NULL,
                    installed_on TIMESTAMP NOT NULL DEFAULT now(), execution_time INT NOT NULL,
                    success BOOLEAN NOT NULL,
                    CONSTRAINT flyway_schema_history_pk PRIMARY KEY (installed_rank))""",),
        steps=(
            Step("clean", ("INSERT INTO flyway_schema_history (installed_rank, version,"
                           " description, type, script, checksum, installed_by, execution_time,"
                           " success) VALUES (1, '1', 'init', 'SQL', 'V1__init.sql', 1, 'app',"
                           " 10, true), (2, '1.1', 'images', 'SQL', 'V1.1__images.sql', 2, 'app',"
                           " 10, true)",), (0, 0, 2)),
            Step("running", (), (0, 1, 2), lock_held=True),
            Step("failed", ("INSERT INTO flyway_schema_history (installed_rank, version,"
                            " description, type, script, checksum, installed_by, execution_time,"
                            " success) VALUES (3, '1.2', 'index', 'SQL', 'V1.2__index.sql', 3,"
                            " 'app', 10, false)",), (1, 0, 2)),
        ),
        lock=lambda db: 77431708279161 + java_hash('"public"."flyway_schema_history"'),
    ),
    "liquibase": Tool(
        tables=("""CREATE TABLE databasechangelog (
                    id VARCHAR(255) NOT NULL, author VARCHAR(255) NOT NULL,
                    filename VARCHAR(255) NOT NULL, dateexecuted TIMESTAMP NOT NULL,
                    orderexecuted INTEGER NOT NULL, exectype VARCHAR(10) NOT NULL,
                    md5sum VARCHAR(35), description VARCHAR(255), comments VARCHAR(255),
                    tag VARCHAR(255), liquibase VARCHAR(20), contexts VARCHAR(255),
                    labels VARCHAR(255), deployment_id VARCHAR(10))""",
                """CREATE TABLE databasechangeloglock (
                    id INTEGER NOT NULL, locked BOOLEAN NOT NULL, lockgranted TIMESTAMP,
                    lockedby VARCHAR(255),
                    CONSTRAINT databasechangeloglock_pkey PRIMARY KEY (id))""",
                "INSERT INTO databasechangeloglock VALUES (1, false, NULL, NULL)"),
        steps=(
            Step("clean", ("INSERT INTO databasechangelog (id, author, filename, dateexecuted,"
                           " orderexecuted, exectype, deployment_id) VALUES"
                           " ('1', 'dev', 'db.xml', now(), 1, 'EXECUTED', '1'),"
                           " ('2', 'dev', 'db.xml', now(), 2, 'MARK_RAN', '1')",), (0, 0, 2)),
            Step("running", ("UPDATE databasechangeloglock SET locked = true,"
                             " lockgranted = now(), lockedby = 'deploy-host'",), (0, 1, 2)),
            Step("failed", ("UPDATE databasechangeloglock SET locked = false",
                            "INSERT INTO databasechangelog (id, author, filename, dateexecuted,"
                            " orderexecuted, exectype, deployment_id) VALUES"
                            " ('3', 'dev', 'db.xml', now(), 3, 'FAILED', '2')"), (1, 0, 2)),
        ),
    ),
    "node-pg-migrate": Tool(
        tables=("CREATE TABLE pgmigrations (id SERIAL PRIMARY KEY, name varchar(255) NOT NULL,"
                " run_on timestamp NOT NULL)",),
        steps=(
            Step("clean", ("INSERT INTO pgmigrations (name, run_on) VALUES"
                           " ('1700000000000_init', now()), ('1700000000001_images', now()),"
                           " ('1700000000002_tags', now())",), (0, 0, 3)),
            Step("running", (), (0, 1, 3), lock_held=True),
        ),
        lock=lambda db: 7241865325823964,
    ),
    "alembic": Tool(
        tables=("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL,"
                " CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))",),
        steps=(
            # A revision is an id even when it is all digits: its version is a fingerprint.
            Step("clean", ("INSERT INTO alembic_version VALUES ('0042')",),
                 (0, 0, 214282601322874)),
        ),
    ),
    "django": Tool(
        tables=("CREATE TABLE django_migrations (id bigserial PRIMARY KEY,"
                " app varchar(255) NOT NULL, name varchar(255) NOT NULL,"
                " applied timestamptz NOT NULL)",),
        steps=(
            Step("clean", ("INSERT INTO django_migrations (app, name, applied) VALUES"
                           " ('contenttypes', '0001_initial', now()),"
                           " ('auth', '0001_initial', now()), ('images', '0001_initial', now())",),
                 (0, 0, 3)),
        ),
    ),
    "rails": Tool(
        tables=("CREATE TABLE schema_migrations (version character varying NOT NULL"
                " PRIMARY KEY)",
                "CREATE TABLE ar_internal_metadata (key character varying PRIMARY KEY,"
                " value character varying, created_at timestamp(6) NOT NULL,"
                " updated_at timestamp(6) NOT NULL)"),
        steps=(
            Step("clean", ("INSERT INTO schema_migrations VALUES ('20240101000000'),"
                           " ('20240215093000'), ('20231231235959')",), (0, 0, 20240215093000)),
            Step("running", (), (0, 1, 20240215093000), lock_held=True),
        ),
        lock=lambda db: 2053462845 * zlib.crc32(db.encode()),
    ),
    "sequelize": Tool(
        tables=('CREATE TABLE "SequelizeMeta" (name VARCHAR(255) NOT NULL UNIQUE PRIMARY KEY)',),
        steps=(
            Step("clean", ("""INSERT INTO "SequelizeMeta" VALUES ('20240101-users.js'),"""
                           " ('20240102-images.js')",), (0, 0, 2)),
        ),
    ),
}


def test_every_preset_the_config_accepts_has_a_row_of_queries_and_a_test_layout() -> None:
    assert set(PRESETS) == set(MIGRATION_PRESETS) == set(TOOLS)


@pytest.mark.parametrize("preset", sorted(TOOLS))
async def test_a_preset_reads_clean_running_and_failed_states_from_the_tools_tables(
    pg_db: str, preset: str
) -> None:
    tool = TOOLS[preset]
    db = dbname_of(pg_db)
    assert db is not None
    run(pg_db, *tool.tables)
    async with migrations_probe(pg_db, preset) as probe:
        assert isinstance(probe, Probe)
        for step in tool.steps:
            run(pg_db, *step.sql)
            if step.lock_held:
                assert tool.lock is not None
                with advisory_lock_held(pg_db, tool.lock(db)):
                    reading = await probe.measure()
            else:
                reading = await probe.measure()
            assert state(reading) == step.expect, f"{preset}, {step.what}"
            assert probe.last_query_errors == {}, f"{preset}, {step.what}"


@pytest.mark.parametrize("preset", sorted(p for p, t in TOOLS.items() if t.lock is not None))
async def test_the_tools_lock_held_in_another_database_is_not_this_ones_migration(
    pg_db: str, preset: str
) -> None:
    tool = TOOLS[preset]
    db = dbname_of(pg_db)
    assert db is not None and tool.lock is not None
    run(pg_db, *tool.tables)
    async with migrations_probe(pg_db, preset) as probe:
        with advisory_lock_held(with_dbname(pg_db, "postgres"), tool.lock(db)):
            reading = await probe.measure()
    assert reading["migration.in_progress"] == 0.0


async def test_older_golang_migrate_releases_locking_on_the_database_name_are_seen(
    pg_db: str,
) -> None:
    db = dbname_of(pg_db)
    assert db is not None
    run(pg_db, *TOOLS["golang-migrate"].tables)
    async with migrations_probe(pg_db, "golang-migrate") as probe:
        with advisory_lock_held(pg_db, (zlib.crc32(db.encode()) * 1486364155) % 2**32):
            reading = await probe.measure()
    assert state(reading) == (0, 1, 0)


async def test_no_migration_ever_run_reads_as_zeros_for_every_preset(pg_db: str) -> None:
    for preset in sorted(PRESETS):
        async with migrations_probe(pg_db, preset) as probe:
            reading = await probe.measure()
            assert state(reading) == (0, 0, 0), preset
            assert probe.last_query_errors == {}, preset


async def test_alembic_hex_revisions_give_a_version_that_changes_with_the_revision(
    pg_db: str,
) -> None:
    run(pg_db, *TOOLS["alembic"].tables, "INSERT INTO alembic_version VALUES ('ae1027a6acf')")
    async with migrations_probe(pg_db, "alembic") as probe:
        first = (await probe.measure())["migration.version"]
        again = (await probe.measure())["migration.version"]
        run(pg_db, "UPDATE alembic_version SET version_num = '27c6a30d7c24'")
        upgraded = (await probe.measure())["migration.version"]
    assert first is not None and upgraded is not None
    assert first == again != upgraded
    assert first > 0 and first == int(first) < 2**48


async def test_an_unreachable_database_leaves_every_migration_signal_unknown() -> None:
    dsn = f"host=127.0.0.1 port={free_port()} user=postgres dbname=postgres"
    async with migrations_probe(dsn, "knex") as probe:
        reading = await probe.measure()
        assert probe.last_error is not None
    assert reading == dict.fromkeys(SIGNALS)


async def test_the_probe_reconnects_after_a_server_restart(pg_private: PgCluster) -> None:
    dsn = pg_private.dsn()
    run(dsn, *TOOLS["django"].tables, *TOOLS["django"].steps[0].sql)
    async with migrations_probe(dsn, "django") as probe:
        assert state(await probe.measure()) == (0, 0, 3)
        pg_private.stop()
        down = await probe.measure()
        pg_private.start()
        back = await probe.measure()
    assert down == dict.fromkeys(SIGNALS)
    assert state(back) == (0, 0, 3)


async def test_custom_queries_give_numbers_no_row_is_zero_and_a_missing_query_is_unknown(
    pg_db: str,
) -> None:
    run(pg_db, "CREATE TABLE deploys (version int, ok boolean)",
        "INSERT INTO deploys VALUES (7, true), (8, false)")
    custom = CustomMigrations(
        failed="SELECT NOT ok FROM deploys ORDER BY version DESC LIMIT 1",
        version="SELECT max(version) FROM deploys WHERE version > 100")
    async with migrations_probe(pg_db, custom) as probe:
        reading = await probe.measure()
    assert reading == {"migration.failed": 1.0, "migration.in_progress": None,
                       "migration.version": 0.0}
    custom = CustomMigrations(in_progress="SELECT 1 FROM deploys WHERE version < 0",
                              version="SELECT max(version) FROM deploys")
    async with migrations_probe(pg_db, custom) as probe:
        reading = await probe.measure()
    assert reading == {"migration.failed": None, "migration.in_progress": 0.0,
                       "migration.version": 8.0}


async def test_a_custom_query_that_errors_or_is_not_a_number_is_unknown_and_says_why(
    pg_db: str,
) -> None:
    custom = CustomMigrations(failed="SELECT * FROM nowhere", in_progress="SELECT 'yes'",
                              version="SELECT pg_sleep(1)")
    async with migrations_probe(pg_db, custom, probe_timeout=1.0) as probe:
        reading = await probe.measure()
        errors = dict(probe.last_query_errors)
    assert reading == dict.fromkeys(SIGNALS)
    assert "UndefinedTable" in errors["migration.failed"]
    assert "ValueError" in errors["migration.in_progress"]
    assert "QueryCanceled" in errors["migration.version"]


async def test_custom_queries_cannot_write(pg_db: str) -> None:
    run(pg_db, "CREATE TABLE deploys (version int)", "INSERT INTO deploys VALUES (1)")
    custom = CustomMigrations(version="DELETE FROM deploys RETURNING version")
    async with migrations_probe(pg_db, custom) as probe:
        reading = await probe.measure()
        assert "read-only" in probe.last_query_errors["migration.version"]
    assert reading["migration.version"] is None
