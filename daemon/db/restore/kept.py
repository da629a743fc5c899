"""What restores keep, and pruning it by the backups' rules.

* ``<db>_rolledback_<ts>``: the live database a swap or clone restore replaced, holding the
  data that restore undid (:mod:`.swap`).
* Clones (:mod:`.clone`): fast restore points, so pruned like restore points. A clone is known
  by its comment (``rollbackd clone of <db> taken at <t>``), never by its name alone: a
  database merely named like one is someone else's. The live database is never one.
* ``rollbackd_kept.<schema>_<table>_<ts>_<hex>``: the rows a table restore replaced, one set
  per restore (same suffix), in the live database (:mod:`.tables`). Other tables in that schema
  (made by hand) are left alone.

Rules, for each of the three kinds separately, as for backups: the ``keep`` newest are kept,
and every one made within ``window`` seconds (the rollback window: a rollback, or a person
merging data back, may still need it); the rest is removed. Never removed: a database somebody
is connected to (plain ``DROP DATABASE``: the prune says so and goes on), a kept database that
refuses connections, and any database at all while an interrupted swap is unresolved (its
copies are part of it: ``rollbackd backup recover`` first). Runs under the rollback lock, so
no restore is between its steps meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import psycopg
from psycopg import sql

from daemon.db.admin import RestoreError, RestoreOptions, admin_session, session
from daemon.db.backups import KEPT_SCHEMA
from daemon.db.restore.clone import clone_time
from daemon.db.restore.common import locked
from daemon.db.restore.swap import ASIDE_INFIX, inspect_interrupted_swap, name_pattern
from probes.base import one_line

T = TypeVar("T")

KEPT_TABLE_SUFFIX = r"_(\d{14})_([0-9a-f]{4})$"
"""How a table restore names its copies (``derived_name(schema_table, _<ts>_<hex>)``)."""


@dataclass(frozen=True, slots=True)
class KeptDatabase:
    name: str
    kind: Literal["rolledback", "clone"]
    at: float
    """When it was set aside (from its name) or taken (a clone, from its comment)."""
    allow: bool


@dataclass(frozen=True, slots=True)
class KeptTableSet:
    """The copies one table restore made (``rollbackd_kept.x``, qualified)."""

    suffix: str
    at: float
    tables: list[str]


@dataclass(slots=True)
class KeptPruned:
    """What :func:`prune_kept` removed, and what it left that it might have removed (why)."""

    databases: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"databases": self.databases, "tables": self.tables, "notes": self.notes}

    def describe(self) -> list[str]:
        return ([f"removed database {name}" for name in self.databases]
                + [f"removed table {name}" for name in self.tables]
                + [f"note: {note}" for note in self.notes])


def kept_databases(admin: psycopg.Connection[Any], live: str) -> list[KeptDatabase]:
    """The databases restores of ``live`` kept, and its clones, oldest first."""
    aside = name_pattern(live, ASIDE_INFIX)
    found: list[KeptDatabase] = []
    for name, allow, comment in admin.execute(
            "SELECT datname, datallowconn, shobj_description(oid, 'pg_database')"
            " FROM pg_database").fetchall():
        name = str(name)
        if name == live:
            continue
        if match := aside.match(name):
            found.append(KeptDatabase(name, "rolledback", _stamp_time(match.group(1)),
                                      bool(allow)))
        elif (taken := clone_time(None if comment is None else str(comment), live)) is not None:
            found.append(KeptDatabase(name, "clone", taken, bool(allow)))
    return sorted(found, key=lambda d: (d.at, d.name))


def kept_table_sets(conn: psycopg.Connection[Any]) -> list[KeptTableSet]:
    """The sets of copies table restores left in ``rollbackd_kept``, oldest first."""
    sets: dict[str, list[str]] = {}
    rows = conn.execute("SELECT tablename, substring(tablename FROM %s) FROM pg_tables"
                        " WHERE schemaname = %s ORDER BY 1",
                        ("(" + KEPT_TABLE_SUFFIX[:-1] + ")$", KEPT_SCHEMA)).fetchall()
    for table, suffix in rows:
        if suffix is not None:
            sets.setdefault(str(suffix), []).append(f"{KEPT_SCHEMA}.{table}")
    return sorted((KeptTableSet(suffix, _stamp_time(suffix[1:15]), tables)
                   for suffix, tables in sets.items()), key=lambda s: (s.at, s.suffix))


def prune_kept(options: RestoreOptions, keep: int, window: float, *,
               now: float | None = None) -> KeptPruned:
    """Remove the kept databases, clones and kept table sets of ``options.database`` that the
    rules (module docstring) let go. Takes the rollback lock unless ``options.take_lock`` is
    false (``LockError`` while a rollback runs); ``RestoreError`` when the server cannot be
    reached. What it may not remove is named in ``notes``."""
    if keep < 0:
        raise RestoreError(f"keep must be >= 0, got {keep}")
    moment = time.time() if now is None else now
    live = options.database
    result = KeptPruned()
    with locked(options, "prune of kept databases and tables"):
        recovery = inspect_interrupted_swap(options)
        if recovery.state != "none":
            result.notes.append(f"kept databases of {live} not pruned: an interrupted swap is "
                                f"unresolved ({recovery.found}); run `rollbackd backup "
                                "recover` first")
        else:
            with admin_session(options) as admin:
                kept = kept_databases(admin, live)
                for kind in ("rolledback", "clone"):
                    mine = [d for d in kept if d.kind == kind]
                    for db in _beyond(mine, lambda d: d.at, keep, window, moment):
                        _drop_database(admin, db, result)
        if recovery.state not in ("live_missing", "between_renames", "live_blocked"):
            with session(options.dsn, options) as conn:
                for kept_set in _beyond(kept_table_sets(conn), lambda s: s.at, keep, window,
                                        moment):
                    _drop_tables(conn, kept_set, result)
                _drop_schema_if_empty(conn)
    result.databases.sort()
    result.tables.sort()
    return result


def _beyond(items: list[T], at: Callable[[T], float], keep: int, window: float,
            now: float) -> list[T]:
    """Those not among the ``keep`` newest and older than ``window``."""
    newest = sorted(items, key=at, reverse=True)
    return [item for item in newest[keep:] if now - at(item) >= window]


def _drop_database(admin: psycopg.Connection[Any], db: KeptDatabase, result: KeptPruned) -> None:
    if not db.allow:
        result.notes.append(f"{db.name} not removed: it refuses connections (a swap may not "
                            "have finished with it)")
        return
    try:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(db.name)))
    except psycopg.errors.ObjectInUse:
        result.notes.append(f"{db.name} not removed: in use (somebody is connected to it)")
    except psycopg.Error as exc:
        result.notes.append(f"{db.name} not removed: {one_line(exc)}")
    else:
        result.databases.append(db.name)


def _drop_tables(conn: psycopg.Connection[Any], kept: KeptTableSet, result: KeptPruned) -> None:
    try:
        with conn.transaction():
            for table in kept.tables:
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(
                    sql.Identifier(*table.split(".", 1))))
    except psycopg.Error as exc:
        result.notes.append(f"{', '.join(kept.tables)} not removed: {one_line(exc)}")
    else:
        result.tables += kept.tables


def _drop_schema_if_empty(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute("SELECT count(*) FROM pg_class c JOIN pg_namespace n"
                       " ON n.oid = c.relnamespace WHERE n.nspname = %s",
                       (KEPT_SCHEMA,)).fetchone()
    if row is not None and row[0] == 0:
        try:
            with conn.transaction():
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {}").format(
                    sql.Identifier(KEPT_SCHEMA)))
        except psycopg.Error:
            pass  # something else lives in it after all: it stays


def _stamp_time(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y%m%d%H%M%S").replace(tzinfo=UTC).timestamp()
