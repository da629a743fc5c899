"""The migrations probe: has the migration tool recorded a failure, is it running, at what version.

Each supported tool is a row of data (``PRESETS``): the queries that read its own state tables
and, where the tool serialises itself with a PostgreSQL advisory lock, the lock keys it takes.
A tool's tables that do not exist yet mean no migration has ever run, which is a measurement
(failed 0, in progress 0, version 0). A database that cannot be reached leaves all three
signals unknown: ``db.up`` of the postgres probe is the one that says so.

``migration.version`` per preset (a number, so that ``changed()`` and dashboards can use it):

* golang-migrate: the ``version`` in ``schema_migrations`` (the tool's own numbering);
* rails: the highest ``version`` in ``schema_migrations`` (a timestamp like 20240131120000);
* flyway: the highest ``installed_rank`` of a successful row (Flyway versions such as 1.2.3
  are not numbers);
* alembic: a 48-bit fingerprint of the current head revision(s): it changes exactly when the
  revision does, but has no order (Alembic keeps only the current head, not a history to
  count). A revision is an id, never read as a number, even one of decimal digits only
  (``191735000000`` is as likely a generated id as ``--rev-id`` numbering);
* knex, prisma, liquibase, node-pg-migrate, django, sequelize: the number of applied
  migrations.

The version as people read it (``a1b2c3d4e5f6``, ``20240131120000``) is in the probe's notes,
``info["migration.version"]``: the status line and an info label show that, not the number.
A version query that gives text (the alembic preset, or a custom query) is a revision id; one
that gives a number is that number.

Tools that record no failure (knex, node-pg-migrate, alembic, django, rails, sequelize) report
``migration.failed = 0`` from their tables: wrapping the migration command
(``rollbackd deploy run -- CMD``) is the signal that sees their failures. Tools without any
running marker (alembic, django, sequelize) likewise report ``migration.in_progress = 0``.
A stale lock row left by a killed knex or liquibase reads as in progress, as the tool itself
sees it (it refuses to migrate until the lock is released).
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar, LiteralString

import psycopg

from policies.samples import Reading
from probes.base import Notes, one_line, starved_of_descriptors
from probes.pg import KeptConnection
from probes.postgres import MISSING_TABLE_NAMES_SQL
from probes.settings import CustomMigrations, MigrationPreset, MigrationsProbeSettings

FAILED = "migration.failed"
IN_PROGRESS = "migration.in_progress"
VERSION = "migration.version"
SIGNALS = (FAILED, IN_PROGRESS, VERSION)


@dataclass(frozen=True, slots=True)
class Database:
    """Where the tool runs: some tools derive their advisory lock key from these names."""

    name: str
    schema: str


def golang_migrate_lock_keys(db: Database) -> tuple[int, ...]:
    """golang-migrate's ``GenerateAdvisoryLockId``: crc32 of the names times a salt, in uint32.

    Current releases hash schema, table and database joined by NUL; older ones the database
    name alone. Both are watched, so either version of the tool is seen.
    """
    salt = 1486364155

    def key(text: str) -> int:
        return (zlib.crc32(text.encode()) * salt) & 0xFFFFFFFF

    return (key("\x00".join((db.schema, "schema_migrations", db.name))), key(db.name))


def rails_lock_keys(db: Database) -> tuple[int, ...]:
    """ActiveRecord's ``MIGRATOR_SALT * Zlib.crc32(current_database)`` (fits a bigint)."""
    return (2053462845 * zlib.crc32(db.name.encode()),)


def java_string_hash(text: str) -> int:
    """Java's ``String.hashCode()``: over UTF-16 code units, wrapped to a signed 32-bit int."""
    units = text.encode("utf-16-be")
    h = 0
    for i in range(0, len(units), 2):
        h = (31 * h + int.from_bytes(units[i:i + 2], "big")) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def flyway_lock_keys(db: Database) -> tuple[int, ...]:
    """Flyway's ``LOCK_MAGIC_NUM`` ("Flyway" in ASCII) plus the hash of the quoted table name.

    The name is ``"schema"."flyway_schema_history"`` as Flyway's PostgreSQL dialect quotes it;
    the schema is the connection's current one, which is Flyway's default too.
    """
    magic = int.from_bytes(b"Flyway", "big")
    table = f'"{_quote_part(db.schema)}"."flyway_schema_history"'
    return (magic + java_string_hash(table),)


def _quote_part(name: str) -> str:
    return name.replace('"', '""')


def fixed_keys(*keys: int) -> Callable[[Database], tuple[int, ...]]:
    def keys_of(_: Database) -> tuple[int, ...]:
        return keys

    return keys_of


# A bigint advisory lock shows in pg_locks as classid = high 32 bits, objid = low 32 bits,
# objsubid = 1; advisory locks belong to one database, the one this probe is connected to.
LOCK_HELD: LiteralString = """EXISTS (
  SELECT 1 FROM pg_locks
  WHERE locktype = 'advisory' AND granted AND objsubid = 1
    AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
    AND ((classid::bigint << 32) | objid::bigint) = ANY(%(locks)s::bigint[]))"""


@dataclass(frozen=True, slots=True)
class Query:
    """How one signal is read for a tool.

    ``sql`` returns one row with one number or boolean; ``None`` means the tool keeps no such
    state, so the signal is 0. ``needs`` are the tables it reads: while one is missing the tool
    has not run yet and the signal is 0 too.
    """

    sql: LiteralString | None
    needs: tuple[str, ...] = ()


NOT_RECORDED = Query(None)


@dataclass(frozen=True, slots=True)
class Preset:
    """A migration tool's state, as data: one query per signal, and its advisory lock keys."""

    failed: Query
    in_progress: Query
    version: Query
    lock_keys: Callable[[Database], tuple[int, ...]] | None = None

    def queries(self) -> dict[str, Query]:
        return {FAILED: self.failed, IN_PROGRESS: self.in_progress, VERSION: self.version}


def _count(table: LiteralString, where: LiteralString = "TRUE") -> Query:
    return Query("SELECT count(*) FROM " + table + " WHERE " + where, (table,))


def _any_row(table: LiteralString, where: LiteralString) -> Query:
    return Query("SELECT EXISTS (SELECT 1 FROM " + table + " WHERE " + where + ")", (table,))


LOCK_QUERY = Query("SELECT " + LOCK_HELD)

PRESETS: Mapping[str, Preset] = {
    # knex_migrations_lock.is_locked is 1 while migrating (and after a crash, until unlocked).
    "knex": Preset(
        failed=NOT_RECORDED,
        in_progress=_any_row("knex_migrations_lock", "is_locked = 1"),
        version=_count("knex_migrations"),
    ),
    # Prisma writes the row (started_at) before applying and finished_at after; an unfinished,
    # not rolled back row is a failure unless `migrate` still holds its lock (still running).
    "prisma": Preset(
        failed=Query("SELECT EXISTS (SELECT 1 FROM _prisma_migrations WHERE finished_at IS NULL"
                     " AND rolled_back_at IS NULL) AND NOT " + LOCK_HELD,
                     ("_prisma_migrations",)),
        in_progress=LOCK_QUERY,
        version=_count("_prisma_migrations",
                       "finished_at IS NOT NULL AND rolled_back_at IS NULL"),
        lock_keys=fixed_keys(72707369),
    ),
    # dirty is set before a migration's body runs and cleared after: dirty while the lock is
    # held is a migration running, dirty without it one that died or failed.
    "golang-migrate": Preset(
        failed=Query("SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE dirty) AND NOT "
                     + LOCK_HELD, ("schema_migrations",)),
        in_progress=LOCK_QUERY,
        version=Query("SELECT coalesce(max(version), 0) FROM schema_migrations",
                      ("schema_migrations",)),
        lock_keys=golang_migrate_lock_keys,
    ),
    # success = false only for non-transactional migrations: on PostgreSQL a failed
    # transactional one is rolled back with its history row.
    "flyway": Preset(
        failed=_any_row("flyway_schema_history", "NOT success"),
        in_progress=LOCK_QUERY,
        version=Query("SELECT coalesce(max(installed_rank), 0) FROM flyway_schema_history"
                      " WHERE success", ("flyway_schema_history",)),
        lock_keys=flyway_lock_keys,
    ),
    "liquibase": Preset(
        failed=_any_row("databasechangelog", "exectype = 'FAILED'"),
        in_progress=_any_row("databasechangeloglock", "locked"),
        version=_count("databasechangelog", "exectype <> 'FAILED'"),
    ),
    "node-pg-migrate": Preset(
        failed=NOT_RECORDED,
        in_progress=LOCK_QUERY,
        version=_count("pgmigrations"),
        lock_keys=fixed_keys(7241865325823964),
    ),
    "alembic": Preset(
        failed=NOT_RECORDED,
        in_progress=NOT_RECORDED,
        # Several rows while branches are unmerged; none at base (no revision applied).
        version=Query(
            "SELECT string_agg(version_num, ',' ORDER BY version_num) FROM alembic_version",
            ("alembic_version",)),
    ),
    "django": Preset(
        failed=NOT_RECORDED,
        in_progress=NOT_RECORDED,
        version=_count("django_migrations"),
    ),
    "rails": Preset(
        failed=NOT_RECORDED,
        in_progress=LOCK_QUERY,
        version=Query("SELECT coalesce(max(CASE WHEN version ~ '^[0-9]{1,18}$'"
                      " THEN version::bigint END), 0) FROM schema_migrations",
                      ("schema_migrations",)),
        lock_keys=rails_lock_keys,
    ),
    "sequelize": Preset(
        failed=NOT_RECORDED,
        in_progress=NOT_RECORDED,
        version=_count('"SequelizeMeta"'),
    ),
}

IDENTITY_SQL: LiteralString = "SELECT current_database(), coalesce(current_schema(), 'public')"



def _number(value: Any) -> float:
    """A query's single value as a signal: NULL is nothing recorded (0), booleans are 0/1."""
    if value is None:
        return 0.0
    return float(value)


@dataclass(frozen=True, slots=True)
class Version:
    """A version as a signal (``number``) and as the tool writes it (``text``, ``None`` when
    nothing is recorded)."""

    number: float
    text: str | None


def revision_fingerprint(revision: str) -> int:
    """48 bits of the revision text's MD5: equal revisions, equal numbers; exact in a float.

    The same number the SQL ``('x' || left(md5(t), 12))::bit(48)::bigint`` gives, which earlier
    releases reported, so upgrading rollbackd does not look like a migration.
    """
    digest = hashlib.md5(revision.encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[:6], "big")


def _version(value: Any) -> Version:
    """A version query's value: text is a revision id, anything else a number."""
    if value is None:
        return Version(0.0, None)
    if isinstance(value, str):
        return Version(float(revision_fingerprint(value)), value)
    number = _number(value)
    return Version(number, _number_text(value))


def _number_text(value: Any) -> str:
    """A numeric version in whole digits (``20240215093000``, not ``2.02402e+13``)."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    number = float(value)
    return str(int(number)) if number.is_integer() else repr(number)


class MigrationsProbe:
    """The state a migration tool keeps in the database, read over one kept connection.

    After each ``measure``, ``last_error`` says why the database could not be read (or is
    ``None``), ``last_query_errors`` which signals were left unknown and why, and
    ``last_version_text`` the version as the tool writes it.
    """

    kind: ClassVar[str] = "migrations"

    def __init__(
        self,
        dsn: str,
        tool: MigrationPreset | CustomMigrations,
        settings: MigrationsProbeSettings,
        *,
        connect_timeout: float = 5.0,
    ) -> None:
        self.name = "migrations"
        self.timeout = float(settings.timeout)
        self.tool = tool
        self._custom: CustomMigrations | None = None
        self._preset: Preset | None = None
        if isinstance(tool, CustomMigrations):
            self._custom = tool
        else:
            self._preset = PRESETS[tool]
        # A handful of small catalog reads per tick share the probe's timeout; a migration
        # holding an exclusive lock on a state table must cost one unknown, not the whole tick.
        self._connection = KeptConnection(
            dsn, connect_timeout=connect_timeout, statement_timeout=self.timeout / 2,
            lock_timeout=self.timeout / 4, read_only=True)
        self.last_error: str | None = None
        self.last_query_errors: dict[str, str] = {}
        self.last_version_text: str | None = None

    def signals(self) -> list[str]:
        return list(SIGNALS)

    async def measure(self) -> Reading:
        self.last_error = None
        self.last_query_errors = {}
        self.last_version_text = None
        try:
            async with self._connection.use() as (conn, _):
                if self._custom is not None:
                    return await self._custom_reading(conn, self._custom)
                assert self._preset is not None
                return await self._preset_reading(conn, self._preset)
        except psycopg.OperationalError as exc:
            if (starved := starved_of_descriptors(exc)) is not None:
                raise starved from exc
            self.last_error = one_line(exc, with_type=True)
            return dict.fromkeys(SIGNALS)

    async def _preset_reading(
        self, conn: psycopg.AsyncConnection[Any], preset: Preset
    ) -> Reading:
        queries = preset.queries()
        needed = sorted({table for q in queries.values() for table in q.needs})
        try:
            missing = await _missing_tables(conn, needed)
            params: dict[str, Any] = {}
            if preset.lock_keys is not None:
                params["locks"] = list(preset.lock_keys(await _database(conn)))
        except psycopg.Error as exc:
            self.last_query_errors = dict.fromkeys(SIGNALS, one_line(exc, with_type=True))
            return dict.fromkeys(SIGNALS)
        reading: dict[str, float | None] = {}
        for signal, query in queries.items():
            if query.sql is None or missing.intersection(query.needs):
                reading[signal] = 0.0
            else:
                uses_locks = "%(locks)s" in query.sql
                reading[signal] = await self._value(
                    conn, signal, query.sql, params if uses_locks else None)
        return reading

    async def _custom_reading(
        self, conn: psycopg.AsyncConnection[Any], custom: CustomMigrations
    ) -> Reading:
        given = {FAILED: custom.failed, IN_PROGRESS: custom.in_progress, VERSION: custom.version}
        reading: dict[str, float | None] = {}
        for signal, sql in given.items():
            # The queries are the operator's own, from the config; they take no parameters.
            reading[signal] = None if sql is None else await self._value(conn, signal, sql, None)
        return reading

    async def _value(
        self,
        conn: psycopg.AsyncConnection[Any],
        signal: str,
        sql: str,
        params: Mapping[str, Any] | None,
    ) -> float | None:
        """The query's first value as a number (no row: 0), or ``None`` if it failed; for
        the version, its text is kept too."""
        try:
            value = await _first_value(conn, sql, params)
            if signal != VERSION:
                return _number(value)
            version = _version(value)
        except (psycopg.Error, TypeError, ValueError, ArithmeticError) as exc:
            self.last_query_errors[signal] = one_line(exc, with_type=True)
            return None
        self.last_version_text = version.text
        return version.number

    def notes(self) -> Notes:
        problems: dict[str, str] = {}
        if self.last_error is not None:
            problems["connection"] = self.last_error
        problems.update(self.last_query_errors)
        info = {} if self.last_version_text is None else {VERSION: self.last_version_text}
        return Notes(problems=problems, info=info)

    async def aclose(self) -> None:
        await self._connection.aclose()


async def _first_value(
    conn: psycopg.AsyncConnection[Any], sql: str, params: Mapping[str, Any] | None
) -> Any:
    """The first column of the first row; ``None`` when there is no row."""
    cur = await conn.execute(sql, params)
    if not cur.description:
        raise psycopg.ProgrammingError("the statement returns no column to read")
    row = await cur.fetchone()
    return None if row is None else row[0]


async def _missing_tables(conn: psycopg.AsyncConnection[Any], tables: list[str]) -> set[str]:
    if not tables:
        return set()
    cur = await conn.execute(MISSING_TABLE_NAMES_SQL, (tables,))
    return {str(row[0]) for row in await cur.fetchall()}


async def _database(conn: psycopg.AsyncConnection[Any]) -> Database:
    cur = await conn.execute(IDENTITY_SQL)
    row = await cur.fetchone()
    if row is None:
        raise psycopg.DataError("current_database() returned no row")
    return Database(name=str(row[0]), schema=str(row[1]))
