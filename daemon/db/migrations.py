"""The migration tool's version as a restore point records it and the executor compares it.

The same queries as the migrations probe (:data:`probes.migrations.PRESETS`, or the config's
custom ``version`` query), read synchronously on a connection the caller holds (a backup's
snapshot transaction, or a connection to the live database). The version is text as the tool
writes it (``3`` applied migrations for knex, ``20240131120000`` for rails, a revision id for
alembic); ``"0"`` when the tool has recorded nothing yet (its tables do not exist).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import psycopg

from daemon.db.admin import connect
from probes.base import one_line
from probes.migrations import PRESETS
from probes.postgres import MISSING_TABLE_NAMES_SQL
from probes.settings import CustomMigrations, MigrationPreset

Tool = MigrationPreset | CustomMigrations

NOTHING_APPLIED = "0"


class MigrationVersionError(Exception):
    """The version query failed; ``str()`` names the query's error."""


def read_version(conn: psycopg.Connection[Any], tool: Tool) -> str | None:
    """The tool's version on ``conn``; None when the tool has no version query (a custom
    configuration without ``version``). Runs inside a savepoint when ``conn`` is in a
    transaction, so a failing query does not end the caller's transaction.
    ``MigrationVersionError`` when the query fails."""
    if isinstance(tool, CustomMigrations):
        if tool.version is None:
            return None
        query: str = tool.version
        needs: tuple[str, ...] = ()
    else:
        preset = PRESETS[tool].version
        if preset.sql is None:
            return None
        query, needs = preset.sql, preset.needs
    in_transaction = conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
    if in_transaction:
        conn.execute("SAVEPOINT rollbackd_migration_version")
    try:
        if needs:
            missing = conn.execute(MISSING_TABLE_NAMES_SQL, (list(needs),)).fetchall()
            if missing:
                return NOTHING_APPLIED
        cur = conn.execute(query)  # the preset's or the operator's own query: no parameters
        if not cur.description:
            raise MigrationVersionError("the version query returns no column")
        row = cur.fetchone()
    except psycopg.Error as exc:
        if in_transaction:
            conn.execute("ROLLBACK TO SAVEPOINT rollbackd_migration_version")
        raise MigrationVersionError(f"the migration version query failed: "
                                    f"{one_line(exc)}") from None
    finally:
        if in_transaction and conn.info.transaction_status == \
                psycopg.pq.TransactionStatus.INTRANS:
            conn.execute("RELEASE SAVEPOINT rollbackd_migration_version")
    return _text(None if row is None else row[0])


def _text(value: Any) -> str:
    """A version query's value as the tool writes it (whole numbers in digits)."""
    if value is None:
        return NOTHING_APPLIED
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int):
        return str(int(value))
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    number = float(value)
    return str(int(number)) if number.is_integer() else repr(number)


def live_version(dsn: str, tool: Tool, *, connect_timeout: float = 5.0,
                 timeout: float = 30.0) -> str | None:
    """:func:`read_version` on a connection of its own to ``dsn``."""
    with connect(dsn, connect_timeout=connect_timeout, statement_timeout=timeout,
                 lock_timeout=min(timeout, 10.0), read_only=True,
                 error=MigrationVersionError) as conn:
        return read_version(conn, tool)
