"""The PostgreSQL probe: is the database up, how fast, how full, and is its data sound.

A database that cannot be reached is a measurement (``db.up = 0``), not a probe failure: the
policy pages on it. Everything else is then unknown, since nothing else could be looked at.
Each other signal comes from its own query, so one query that times out leaves only its own
signal unknown.

A configured check whose query no longer fits the schema (SQLSTATE class 42: an undefined
column or table, a syntax error against the new schema) counts as a failed check: a deploy
that breaks the data contract is what checks are there to catch. Permission denied (42501) is
the exception: that is rollbackd unable to look, so, like a timeout or a lost connection, it
leaves the check undetermined. Every reason is in :meth:`PostgresProbe.notes`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any, ClassVar, LiteralString

import psycopg

from policies.samples import Reading
from probes.base import Notes, one_line, starved_of_descriptors
from probes.pg import KeptConnection
from probes.settings import PostgresProbeSettings, SqlCheck

UP = "db.up"
LATENCY = "db.latency_seconds"
CONNECTIONS_RATIO = "db.connections_ratio"
INVALID_INDEXES = "db.invalid_indexes"
UNVALIDATED_CONSTRAINTS = "db.unvalidated_constraints"
MISSING_TABLES = "db.missing_tables"
BLOCKED_QUERIES = "db.blocked_queries"
VALIDATION_FAILURES = "db.validation_failures"

SCHEMA_MISMATCH_CLASS = "42"
INSUFFICIENT_PRIVILEGE = "42501"

SIGNALS = (UP, LATENCY, CONNECTIONS_RATIO, INVALID_INDEXES, UNVALIDATED_CONSTRAINTS,
           MISSING_TABLES, BLOCKED_QUERIES, VALIDATION_FAILURES)

BUILT_IN_VALIDATORS = (INVALID_INDEXES, UNVALIDATED_CONSTRAINTS, MISSING_TABLES)
"""The counts that are also data validations: each one above zero is one failed validation."""

# A failed CREATE INDEX CONCURRENTLY leaves its index behind with indisvalid = false. One still
# being built looks the same until it finishes: it is a migration at work, not a failure, so
# the builds pg_stat_progress_create_index reports are left out.
INVALID_INDEXES_SQL: LiteralString = """
SELECT count(*) FROM pg_index
WHERE (NOT indisvalid OR NOT indisready OR NOT indislive)
  AND indexrelid NOT IN (SELECT index_relid FROM pg_stat_progress_create_index)"""

UNVALIDATED_CONSTRAINTS_SQL: LiteralString = """
SELECT count(*) FROM pg_constraint
WHERE NOT convalidated AND contype IN ('f', 'c')"""

# to_regclass resolves a name as the application would (search_path, optional schema) and
# gives NULL instead of an error for a relation that does not exist.
MISSING_TABLE_NAMES_SQL: LiteralString = (
    "SELECT t FROM unnest(%s::text[]) AS t WHERE to_regclass(t) IS NULL")
MISSING_TABLES_SQL: LiteralString = (
    "SELECT count(*) FROM (" + MISSING_TABLE_NAMES_SQL + ") AS missing")

# pg_locks is cluster-wide; only sessions of this database are this application's business.
# pg_locks.waitstart exists from PostgreSQL 14 on (older servers leave this signal unknown).
BLOCKED_QUERIES_SQL: LiteralString = """
SELECT count(DISTINCT l.pid)
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE NOT l.granted AND a.datname = current_database()
  AND l.waitstart < now() - make_interval(secs => %s)"""

# Connections are a cluster-wide budget, so every database's client backends count.
CONNECTIONS_SQL: LiteralString = """
SELECT count(*) FILTER (WHERE backend_type = 'client backend'),
       current_setting('max_connections')::int
         - current_setting('superuser_reserved_connections')::int
FROM pg_stat_activity"""



class PostgresProbe:
    """Health and validators of the application's database, over one kept connection.

    After each ``measure``: ``last_error`` says why the database counted as down (or ``None``),
    ``last_query_errors`` which signals were left unknown and why, ``last_failed_checks`` the
    configured checks that failed and ``last_check_errors`` why those that errored did.
    """

    kind: ClassVar[str] = "postgres"

    def __init__(
        self,
        dsn: str,
        settings: PostgresProbeSettings,
        *,
        expected_tables: Sequence[str] = (),
        checks: Sequence[SqlCheck] = (),
        connect_timeout: float = 5.0,
    ) -> None:
        self.name = "postgres"
        self.timeout = float(settings.timeout)
        self.settings = settings
        self.expected_tables = list(expected_tables)
        self.checks = list(checks)
        # Read-only, because configured checks are SQL from the config file: a mistaken check
        # must not be able to change the data it is meant to validate.
        self._connection = KeptConnection(
            dsn, connect_timeout=connect_timeout,
            statement_timeout=float(settings.statement_timeout),
            lock_timeout=float(settings.lock_timeout), read_only=True)
        self.last_error: str | None = None
        self.last_query_errors: dict[str, str] = {}
        self.last_check_errors: dict[str, str] = {}
        self.last_failed_checks: list[str] = []

    def signals(self) -> list[str]:
        return list(SIGNALS)

    async def measure(self) -> Reading:
        self.last_error = None
        self.last_query_errors = {}
        self.last_check_errors = {}
        self.last_failed_checks = []
        reading: dict[str, float | None] = dict.fromkeys(SIGNALS)
        try:
            async with self._connection.use() as (conn, latency):
                reading[UP] = 1.0
                reading[LATENCY] = latency
                if latency is None:
                    self.last_query_errors[LATENCY] = "SELECT 1 failed on a live connection"
                await self._measure_on(conn, reading)
        except psycopg.OperationalError as exc:
            if reading[UP] is not None:
                raise  # raised inside, after connecting: not a reachability verdict
            if (starved := starved_of_descriptors(exc)) is not None:
                raise starved from exc
            self.last_error = one_line(exc, with_type=True)
            reading[UP] = 0.0
        return reading

    async def _measure_on(
        self, conn: psycopg.AsyncConnection[Any], reading: dict[str, float | None]
    ) -> None:
        reading[CONNECTIONS_RATIO] = await self._guarded(
            CONNECTIONS_RATIO, self._connections_ratio(conn))
        reading[INVALID_INDEXES] = await self._guarded(
            INVALID_INDEXES, _count(conn, INVALID_INDEXES_SQL))
        reading[UNVALIDATED_CONSTRAINTS] = await self._guarded(
            UNVALIDATED_CONSTRAINTS, _count(conn, UNVALIDATED_CONSTRAINTS_SQL))
        reading[MISSING_TABLES] = await self._guarded(MISSING_TABLES, self._missing_tables(conn))
        reading[BLOCKED_QUERIES] = await self._guarded(
            BLOCKED_QUERIES,
            _count(conn, BLOCKED_QUERIES_SQL, (float(self.settings.blocked_after),)))
        failed_checks, undetermined = await self._run_checks(conn)
        built_ins = [reading[name] for name in BUILT_IN_VALIDATORS]
        failures = failed_checks + sum(1 for value in built_ins if value)
        if failures == 0 and (undetermined or any(value is None for value in built_ins)):
            # Nothing failed for sure and something could not be checked: unknown, never a
            # failure (a slow database must not look like bad data and start a restore).
            reading[VALIDATION_FAILURES] = None
        else:
            # With failures found, unchecked parts could only add to them: a lower bound.
            reading[VALIDATION_FAILURES] = float(failures)

    async def _guarded(self, signal: str, measuring: Awaitable[float | None]) -> float | None:
        """The awaited value, or ``None`` (with the reason kept) when its query failed."""
        try:
            value: float | None = await measuring
        except psycopg.Error as exc:
            self.last_query_errors[signal] = one_line(exc, with_type=True)
            return None
        return value

    async def _connections_ratio(self, conn: psycopg.AsyncConnection[Any]) -> float | None:
        cur = await conn.execute(CONNECTIONS_SQL)
        row = await cur.fetchone()
        if row is None or row[1] is None or int(row[1]) <= 0:
            self.last_query_errors[CONNECTIONS_RATIO] = f"no usable connections reported: {row}"
            return None
        return float(row[0]) / float(row[1])

    async def _missing_tables(self, conn: psycopg.AsyncConnection[Any]) -> float:
        if not self.expected_tables:
            return 0.0
        return await _count(conn, MISSING_TABLES_SQL, (self.expected_tables,))

    async def _run_checks(self, conn: psycopg.AsyncConnection[Any]) -> tuple[int, bool]:
        """How many configured checks failed (found offending rows, or no longer fit the
        schema), and whether any could not run."""
        undetermined = False
        for check in self.checks:
            try:
                if await _check_fails(conn, check):
                    self.last_failed_checks.append(check.name)
            except psycopg.Error as exc:
                self.last_check_errors[check.name] = sql_error(exc)
                if no_longer_fits_schema(exc):
                    self.last_failed_checks.append(check.name)
                    continue
                # A check that cannot run for reasons of the moment (timeout, permissions, a
                # lost connection) neither passes nor fails.
                undetermined = True
                if conn.closed:
                    lost = one_line(exc, with_type=True)
                    self.last_query_errors[VALIDATION_FAILURES] = (
                        f"connection lost during check {check.name}: {lost}")
                    break
        return len(self.last_failed_checks), undetermined

    def notes(self) -> Notes:
        problems: dict[str, str] = {}
        if self.last_error is not None:
            problems[UP] = self.last_error
        problems.update(self.last_query_errors)
        for name, error in self.last_check_errors.items():
            verdict = ("counted as failed: the query no longer fits the schema"
                       if name in self.last_failed_checks else "undetermined")
            problems[f"check.{name}"] = f"{error} ({verdict})"
        return Notes(problems=problems)

    async def aclose(self) -> None:
        await self._connection.aclose()


def sql_error(exc: psycopg.Error) -> str:
    """One line naming the error's SQLSTATE and class, e.g. ``SQLSTATE 42703 UndefinedColumn:
    column "email" does not exist``."""
    text = one_line(exc, with_type=True)
    return text if exc.sqlstate is None else f"SQLSTATE {exc.sqlstate} {text}"


def no_longer_fits_schema(exc: psycopg.Error) -> bool:
    """True for the errors of a query written against another schema (class 42), except a
    missing grant: that one is about who asks, not about the data."""
    state = exc.sqlstate or ""
    return state.startswith(SCHEMA_MISMATCH_CLASS) and state != INSUFFICIENT_PRIVILEGE


async def _count(
    conn: psycopg.AsyncConnection[Any], query: LiteralString, params: Sequence[Any] | None = None
) -> float:
    cur = await conn.execute(query, params)
    row = await cur.fetchone()
    if row is None or row[0] is None:
        return 0.0
    return float(row[0])


async def _check_fails(conn: psycopg.AsyncConnection[Any], check: SqlCheck) -> bool:
    """True when the check's query returns a row (one offending row is enough to know)."""
    async with conn.cursor() as cur:
        # The query text is the operator's own, from the config; it takes no parameters.
        await cur.execute(check.sql)
        if cur.description is None:
            raise psycopg.ProgrammingError(
                f"check {check.name} is not a query: it returns no rows to inspect")
        return await cur.fetchone() is not None
