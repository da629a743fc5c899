"""Apply VisionForge's SQL migrations the way knex does, so rollbackd's knex preset reads them.

    python examples/visionforge/migrate.py --dsn DSN --dir DIR [--dir DIR2 ...]
    python examples/visionforge/migrate.py --dsn DSN --status [--dir DIR ...]
    python examples/visionforge/migrate.py --dsn DSN --unlock

Every ``*.sql`` file of the given directories that ``knex_migrations`` does not record yet is
applied in file-name order, each in its own transaction, and recorded with one batch number
for the whole run. ``knex_migrations_lock.is_locked`` is 1 while the run lasts and 0 after,
as with knex; a run killed midway leaves it at 1 (knex then says "Migration table is already
locked", and ``--unlock`` clears it like ``knex migrate:unlock``).

A file whose first line is ``-- migrate:no-transaction`` runs outside a transaction, one
statement at a time (``CREATE INDEX CONCURRENTLY`` refuses to run inside one).

Exit status: 0 when everything is applied, 1 when a migration fails (its transaction is rolled
back, the lock released, the PostgreSQL error printed on stderr) or the database cannot be
used, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.rows import TupleRow

Conn = psycopg.Connection[TupleRow]

NO_TRANSACTION_MARKER = "-- migrate:no-transaction"
DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z_0-9]*)?\$")

SETUP_SQL = (
    "CREATE TABLE IF NOT EXISTS knex_migrations ("
    " id serial PRIMARY KEY, name varchar(255), batch integer, migration_time timestamptz)",
    "CREATE TABLE IF NOT EXISTS knex_migrations_lock (index serial PRIMARY KEY, is_locked integer)",
    "INSERT INTO knex_migrations_lock (is_locked)"
    " SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM knex_migrations_lock)",
)


class MigrationError(Exception):
    """A migration run that cannot go on; the message is meant for stderr."""


@dataclass(frozen=True)
class Migration:
    name: str
    path: Path
    transactional: bool

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")


def discover(dirs: Sequence[Path]) -> list[Migration]:
    """The migrations of all ``dirs``, ordered by file name (the order knex uses)."""
    found: dict[str, Migration] = {}
    for directory in dirs:
        if not directory.is_dir():
            raise MigrationError(f"migrations directory not found: {directory}")
        for path in directory.glob("*.sql"):
            if path.name in found:
                raise MigrationError(
                    f"migration {path.name} is in both {found[path.name].path.parent} "
                    f"and {directory}")
            first_line = path.read_text(encoding="utf-8").split("\n", 1)[0].strip()
            found[path.name] = Migration(path.name, path, first_line != NO_TRANSACTION_MARKER)
    return [found[name] for name in sorted(found)]


def split_statements(sql: str) -> list[str]:
    """Split a script on top-level semicolons, respecting quotes, dollar quotes and comments.

    Only needed outside a transaction: a multi-statement query string would run as one
    implicit transaction, which is exactly what a no-transaction migration must avoid.
    """
    statements: list[str] = []
    start = i = 0
    while i < len(sql):
        if sql.startswith("--", i):
            i = _end_of(sql, "\n", i + 2)
        elif sql.startswith("/*", i):
            i = _end_of(sql, "*/", i + 2)
        elif sql[i] in "'\"":
            i = _end_of(sql, sql[i], i + 1)
        elif sql[i] == "$" and (tag := _dollar_tag(sql, i)):
            i = _end_of(sql, tag, i + len(tag))
        elif sql[i] == ";":
            statements.append(sql[start:i])
            i += 1
            start = i
        else:
            i += 1
    statements.append(sql[start:])
    return [s.strip() for s in statements if _has_code(s)]


def _end_of(sql: str, closer: str, pos: int) -> int:
    found = sql.find(closer, pos)
    return len(sql) if found < 0 else found + len(closer)


def _dollar_tag(sql: str, pos: int) -> str | None:
    match = DOLLAR_TAG.match(sql, pos)
    return match.group(0) if match else None


def _has_code(statement: str) -> bool:
    lines = [line.split("--", 1)[0].strip() for line in statement.splitlines()]
    return any(lines)


def ensure_tables(conn: Conn) -> None:
    with conn.transaction():
        for statement in SETUP_SQL:
            conn.execute(statement)


def acquire_lock(conn: Conn) -> None:
    with conn.transaction():
        conn.execute("SELECT is_locked FROM knex_migrations_lock FOR UPDATE")
        cur = conn.execute("UPDATE knex_migrations_lock SET is_locked = 1 WHERE is_locked = 0")
        if cur.rowcount == 0:
            raise MigrationError(
                "Migration table is already locked (another run is going on, or one was "
                "killed: clear it with --unlock)")


def release_lock(conn: Conn) -> None:
    conn.execute("UPDATE knex_migrations_lock SET is_locked = 0")


def applied(conn: Conn) -> list[tuple[str, int, object]]:
    rows = conn.execute(
        "SELECT name, batch, migration_time FROM knex_migrations ORDER BY id").fetchall()
    return [(str(name), int(batch), when) for name, batch, when in rows]


def next_batch(conn: Conn) -> int:
    row = conn.execute("SELECT coalesce(max(batch), 0) + 1 FROM knex_migrations").fetchone()
    assert row is not None
    return int(row[0])


def apply(conn: Conn, migration: Migration, batch: int) -> None:
    record = "INSERT INTO knex_migrations (name, batch, migration_time) VALUES (%s, %s, now())"
    if migration.transactional:
        with conn.transaction():
            conn.execute(migration.sql)
            conn.execute(record, (migration.name, batch))
        return
    for statement in split_statements(migration.sql):
        conn.execute(statement)
    conn.execute(record, (migration.name, batch))


def describe_error(migration: Migration, exc: psycopg.Error) -> str:
    diag = exc.diag
    lines = [f"migration {migration.name} failed"
             + (" and was rolled back" if migration.transactional else
                " (no transaction: what ran before the error stays)"),
             f"ERROR:  {diag.message_primary or str(exc).strip()}"
             + (f" (SQLSTATE {exc.sqlstate})" if exc.sqlstate else "")]
    if diag.message_detail:
        lines.append(f"DETAIL:  {diag.message_detail}")
    if diag.message_hint:
        lines.append(f"HINT:  {diag.message_hint}")
    return "\n".join(lines)


def migrate(conn: Conn, migrations: Sequence[Migration]) -> int:
    """Apply what is pending under the knex lock; return the number of migrations applied."""
    ensure_tables(conn)
    acquire_lock(conn)
    try:
        done = {name for name, _, _ in applied(conn)}
        pending = [m for m in migrations if m.name not in done]
        if not pending:
            return 0
        batch = next_batch(conn)
        for migration in pending:
            try:
                apply(conn, migration, batch)
            except psycopg.Error as exc:
                raise MigrationError(describe_error(migration, exc)) from exc
            print(f"applied {migration.name} (batch {batch})", flush=True)
        return len(pending)
    finally:
        try:
            release_lock(conn)
        except psycopg.Error as exc:
            # Leave the lock as knex would after a crash, but say so next to the real error.
            print(f"migrate: could not release the lock: {str(exc).strip()}", file=sys.stderr)


def status(conn: Conn, migrations: Sequence[Migration]) -> None:
    exists = conn.execute("SELECT to_regclass('knex_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        print("no knex_migrations table: nothing applied")
        rows: list[tuple[str, int, object]] = []
    else:
        rows = applied(conn)
        for name, batch, when in rows:
            print(f"applied  {name}  batch {batch}  {when}")
        lock = conn.execute("SELECT max(is_locked) FROM knex_migrations_lock").fetchone()
        print(f"lock: is_locked = {lock[0] if lock else None}")
    done = {name for name, _, _ in rows}
    for migration in migrations:
        if migration.name not in done:
            print(f"pending  {migration.name}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--dsn", required=True, help="libpq connection string")
    parser.add_argument("--dir", dest="dirs", type=Path, action="append", default=[],
                        help="a directory of *.sql migrations (repeatable)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--status", action="store_true", help="print applied migrations")
    what.add_argument("--unlock", action="store_true", help="clear a stale knex lock")
    parser.add_argument("--lock-timeout", type=int, default=10_000, metavar="MS",
                        help="PostgreSQL lock_timeout for migrations (default 10000)")
    parser.add_argument("--statement-timeout", type=int, default=600_000, metavar="MS",
                        help="PostgreSQL statement_timeout for migrations (default 600000)")
    args = parser.parse_args(argv)
    if not args.dirs and not (args.status or args.unlock):
        parser.error("--dir is required to apply migrations")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        migrations = discover(args.dirs)
        with psycopg.connect(
            args.dsn, autocommit=True, connect_timeout=5, application_name="visionforge-migrate",
            options=f"-c lock_timeout={args.lock_timeout} "
                    f"-c statement_timeout={args.statement_timeout}",
        ) as conn:
            if args.status:
                status(conn, migrations)
                return 0
            if args.unlock:
                ensure_tables(conn)
                release_lock(conn)
                print("lock released")
                return 0
            count = migrate(conn, migrations)
    except MigrationError as exc:
        print(f"migrate: {exc}", file=sys.stderr)
        return 1
    except psycopg.Error as exc:
        print(f"migrate: database error: {str(exc).strip()}", file=sys.stderr)
        return 1
    print(f"{count} migration(s) applied" if count else "already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
