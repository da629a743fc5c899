"""The procedures' checklists: is a database fit to serve, and is its data complete.

Used after every restore (on the shadow database before it is swapped in, and on the live one
after) and in drills. Each check is a :class:`CheckResult` whose message says
what is wrong and what to do about it, never just "failed".

The verdicts use the very queries the PostgreSQL probe counts with (``probes.postgres``), so a
restore is judged by the same rules that raised the alarm; the detail queries here only name
the offending objects for the message.

Everything is synchronous (one psycopg connection per call, every wait bounded by
``timeout``); async callers run it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from daemon.db.admin import connect
from daemon.db.backups import Manifest, TableCount
from probes.base import one_line
from probes.postgres import (
    INVALID_INDEXES_SQL,
    MISSING_TABLE_NAMES_SQL,
    MISSING_TABLES_SQL,
    UNVALIDATED_CONSTRAINTS_SQL,
)
from probes.settings import SqlCheck

_INVALID_INDEX_DETAILS: LiteralString = """
SELECT n.nspname, ci.relname, ct.relname, i.indisvalid, i.indisready, i.indislive
FROM pg_index i JOIN pg_class ci ON ci.oid = i.indexrelid
JOIN pg_class ct ON ct.oid = i.indrelid JOIN pg_namespace n ON n.oid = ci.relnamespace
WHERE NOT i.indisvalid OR NOT i.indisready OR NOT i.indislive
ORDER BY 1, 2"""

_UNVALIDATED_DETAILS: LiteralString = """
SELECT conrelid::regclass::text, conname, contype FROM pg_constraint
WHERE NOT convalidated AND contype IN ('f', 'c')
ORDER BY 1, 2"""

@dataclass(frozen=True, slots=True)
class CheckResult:
    """One item of a checklist: ``message`` tells a person what is wrong and what to do."""

    name: str
    ok: bool
    message: str

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "message": self.message}


def failures(results: Sequence[CheckResult]) -> list[CheckResult]:
    return [r for r in results if not r.ok]


def summary(results: Sequence[CheckResult]) -> str:
    """The failed checks' messages on one line (or "all N checks passed")."""
    failed = failures(results)
    if not failed:
        return f"all {len(results)} checks passed"
    return "; ".join(f"{r.name}: {r.message}" for r in failed)


def validate_database(dsn: str, *, expected_tables: Sequence[str] = (),
                      checks: Sequence[SqlCheck] = (), timeout: float = 30.0,
                      connect_timeout: float = 5.0) -> list[CheckResult]:
    """Connects; expected tables present; constraints validated; indexes valid; SQL checks.

    When the database cannot be reached the list holds that one failed ``connect`` check: the
    others cannot be judged. ``timeout`` bounds each statement.
    """
    try:
        with _connect(dsn, timeout, connect_timeout) as conn:
            results = [CheckResult("connect", True, "the database accepts connections")]
            results.append(_guard("expected_tables", lambda: _expected_tables(
                conn, expected_tables)))
            results.append(_guard("constraints_validated", lambda: _constraints(conn)))
            results.append(_guard("indexes_valid", lambda: _indexes(conn)))
            results += _sql_checks(conn, checks)
            return results
    except _UnreachableError as exc:
        return [CheckResult("connect", False, str(exc))]


def validate_data(dsn: str, manifest: Manifest, key_tables: Sequence[str], *,
                  checks: Sequence[SqlCheck] = (), timeout: float = 30.0,
                  connect_timeout: float = 5.0) -> list[CheckResult]:
    """Configured checks, and each key table holding no fewer rows than the restore point.

    A key table is named ``name`` or ``schema.name``; an unqualified name matches the
    manifest's ``public`` table first. A key table the restore point does not know is a
    failure (its count cannot be vouched for), as is one missing from the database.
    """
    try:
        with _connect(dsn, timeout, connect_timeout) as conn:
            results = [_guard(f"rows:{table}", functools.partial(_row_count, conn, manifest,
                                                                 table))
                       for table in key_tables]
            results += _sql_checks(conn, checks)
            return results
    except _UnreachableError as exc:
        return [CheckResult("connect", False, str(exc))]


# -- the checks --------------------------------------------------------------------------------


def _expected_tables(conn: psycopg.Connection[Any], tables: Sequence[str]) -> CheckResult:
    if not tables:
        return CheckResult("expected_tables", True, "no expected tables configured")
    if _count(conn, MISSING_TABLES_SQL, (list(tables),)) == 0:
        return CheckResult("expected_tables", True, f"all {len(tables)} expected tables exist")
    missing = [str(r[0]) for r in conn.execute(MISSING_TABLE_NAMES_SQL, (list(tables),)).fetchall()]
    return CheckResult("expected_tables", False,
                       f"missing table(s) {', '.join(missing)}: restore them from the restore "
                       "point (backup restore --tables) or fix database.expected_tables")


def _constraints(conn: psycopg.Connection[Any]) -> CheckResult:
    if _count(conn, UNVALIDATED_CONSTRAINTS_SQL) == 0:
        return CheckResult("constraints_validated", True,
                           "every foreign key and check constraint is validated")
    rows = conn.execute(_UNVALIDATED_DETAILS).fetchall()
    kinds = {"f": "foreign key", "c": "check"}
    named = [f"{kinds.get(str(kind), str(kind))} {name} on {table}" for table, name, kind in rows]
    first_table, first_name = rows[0][0], rows[0][1]
    return CheckResult("constraints_validated", False,
                       f"NOT VALID constraint(s): {', '.join(named)}; existing rows were never "
                       f"checked: run ALTER TABLE {first_table} VALIDATE CONSTRAINT "
                       f"{first_name} (and fix the rows it reports)")


def _indexes(conn: psycopg.Connection[Any]) -> CheckResult:
    if _count(conn, INVALID_INDEXES_SQL) == 0:
        return CheckResult("indexes_valid", True, "every index is valid")
    parts = []
    for schema, index, table, valid, ready, _live in conn.execute(_INVALID_INDEX_DETAILS):
        state = "invalid" if not valid else ("not ready" if not ready else "not live")
        parts.append(f"index {schema}.{index} on {table} is {state}")
    return CheckResult("indexes_valid", False,
                       f"{'; '.join(parts)} (a failed or running CREATE INDEX CONCURRENTLY?): "
                       "drop and recreate it (DROP INDEX CONCURRENTLY, then CREATE INDEX "
                       "CONCURRENTLY once the data allows it)")


def _row_count(conn: psycopg.Connection[Any], manifest: Manifest, table: str) -> CheckResult:
    name = f"rows:{table}"
    entry = _manifest_table(manifest, table)
    if entry is None:
        return CheckResult(name, False, f"the restore point {manifest.id} has no table {table}: "
                                        "remove it from database.key_tables or take a new "
                                        "restore point")
    query = sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(entry.schema_),
                                                         sql.Identifier(entry.name))
    try:
        row = conn.execute(query).fetchone()
    except psycopg.errors.UndefinedTable:
        return CheckResult(name, False, f"table {entry.qualified} is missing (the restore point "
                                        f"has {entry.rows} rows): restore it")
    rows = int(row[0]) if row is not None else 0
    if rows < entry.rows:
        return CheckResult(name, False,
                           f"{entry.qualified} has {rows} rows, fewer than the {entry.rows} of "
                           f"restore point {manifest.id}: {entry.rows - rows} row(s) lost; "
                           "restore the table's data from the restore point "
                           "(backup restore --tables) or find what deleted them")
    return CheckResult(name, True, f"{entry.qualified} has {rows} rows "
                                   f"(restore point: {entry.rows})")


def _manifest_table(manifest: Manifest, table: str) -> TableCount | None:
    if "." in table:
        schema, _, name = table.partition(".")
        candidates = [t for t in manifest.tables if (t.schema_, t.name) == (schema, name)]
    else:
        candidates = sorted((t for t in manifest.tables if t.name == table),
                            key=lambda t: t.schema_ != "public")
    return candidates[0] if candidates else None


def _sql_checks(conn: psycopg.Connection[Any], checks: Sequence[SqlCheck]) -> list[CheckResult]:
    results = []
    for check in checks:
        name = f"check:{check.name}"
        try:
            with conn.cursor() as cur:
                # The operator's own query from the config; the session is read-only.
                cur.execute(check.sql.encode())
                if cur.description is None:
                    results.append(CheckResult(name, False, "the check is not a query (it "
                                                            "returns no rows): fix its sql"))
                    continue
                row = cur.fetchone()
        except psycopg.Error as exc:
            if conn.closed:
                raise _UnreachableError(f"connection lost during check {check.name}: "
                                   f"{one_line(exc)}") from None
            results.append(CheckResult(name, False, f"the check could not run: {one_line(exc)}"
                                                    "; fix its sql"))
            continue
        if row is None:
            results.append(CheckResult(name, True, "no offending rows"))
        else:
            results.append(CheckResult(name, False, f"offending row found: {row!r}; inspect "
                                                    "the rows its query returns"))
    return results


# -- plumbing ----------------------------------------------------------------------------------


class _UnreachableError(Exception):
    pass


def _guard(name: str, check: Callable[[], CheckResult]) -> CheckResult:
    """The check's result, or a failed one naming the error (a check that errors vouches for
    nothing)."""
    try:
        result: CheckResult = check()
    except psycopg.Error as exc:
        if isinstance(exc, psycopg.OperationalError) and _closed(exc):
            raise _UnreachableError(f"connection lost: {one_line(exc)}") from None
        return CheckResult(name, False, f"could not be checked: {one_line(exc)}")
    return result


def _closed(exc: psycopg.Error) -> bool:
    return exc.sqlstate is None or exc.sqlstate.startswith("08") or exc.sqlstate == "57P01"


def _count(conn: psycopg.Connection[Any], query: LiteralString,
           params: Sequence[Any] | None = None) -> int:
    row = conn.execute(query, params).fetchone()
    return 0 if row is None or row[0] is None else int(row[0])



def _connect(dsn: str, timeout: float,
             connect_timeout: float) -> contextlib.AbstractContextManager[psycopg.Connection[Any]]:
    return connect(dsn, connect_timeout=connect_timeout, statement_timeout=timeout,
                   lock_timeout=min(timeout, 5.0), read_only=True,
                   error=lambda why: _UnreachableError(
                       f"{why}; is the server up and the database there?"))
