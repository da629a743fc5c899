"""The data window of a restore, row by row: the rows of the kept copy that the restored
database lacks, by primary key.

A swap (or clone) keeps the database it replaced under another name; a table restore copies
the rows it replaced into ``rollbackd_kept``. For each table of the kept copy this says how
many of its rows have a primary key the restored table does not hold, with a few example keys.
The kept keys are read in key order through a server-side cursor, in batches, each batch looked
up in the restored table by its index (an anti-join on the server): memory stays bounded by a
batch whatever the table's size, and at most ``cap`` keys are compared per table (the report
says when a table was capped). A table without a primary key is compared by its row counts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from daemon.db.admin import connect, derived_name
from daemon.db.backups import KEPT_SCHEMA
from daemon.db.restore.kept import KEPT_TABLE_SUFFIX
from probes.base import one_line

KEY_CAP = 1_000_000
"""Kept keys compared per table at most."""
EXAMPLES = 20
"""Example keys listed per table at most."""
BATCH = 5_000
"""Kept keys fetched, and looked up in the restored table, at a time."""


class DataWindowError(Exception):
    """The copies cannot be compared (a database cannot be reached); ``str()`` says why."""


@dataclass(frozen=True, slots=True)
class TableDiff:
    """One table of the kept copy against the restored table of the same name."""

    table: str
    """``schema.name`` in the restored database."""
    kept_as: str
    """``schema.name`` of the copy holding the replaced rows."""
    key: tuple[str, ...]
    """The primary key's columns the rows were compared by; empty: compared by counts."""
    missing: int | None
    """Rows of the kept copy whose key the restored table lacks (None: not compared by key)."""
    examples: tuple[str, ...]
    """Some of those keys, in key order: ``41``, or ``(7, 'a')`` for a composite key."""
    compared: int
    """Kept rows (keys) looked at."""
    capped: bool
    """Only the first ``compared`` keys, in key order, were compared."""
    kept_rows: int | None
    live_rows: int | None
    """Row counts, for the tables compared by counts (and kept-only tables: ``kept_rows``)."""
    note: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"table": self.table, "kept_as": self.kept_as, "key": list(self.key),
                "missing": self.missing, "examples": list(self.examples),
                "compared": self.compared, "capped": self.capped,
                "kept_rows": self.kept_rows, "live_rows": self.live_rows, "note": self.note}


@dataclass(frozen=True, slots=True)
class _Table:
    oid: int
    schema: str
    name: str
    key: tuple[str, ...]

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)


# Ordinary and partitioned tables of the database's own (no partitions: their parent holds
# their rows; no catalogue, toast, extension or rollbackd_kept tables), with their primary
# key's columns in key order.
_TABLES = """
SELECT c.oid, n.nspname, c.relname, coalesce(
    (SELECT array_agg(a.attname::text ORDER BY k.ord)
     FROM pg_index i, unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord), pg_attribute a
     WHERE i.indrelid = c.oid AND i.indisprimary AND a.attrelid = c.oid
       AND a.attnum = k.attnum), '{}')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', %(kept)s)
  AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp\\_%%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 2, 3
"""


def _tables(conn: psycopg.Connection[Any]) -> dict[tuple[str, str], _Table]:
    rows = conn.execute(_TABLES, {"kept": KEPT_SCHEMA}).fetchall()
    return {(str(s), str(n)): _Table(int(o), str(s), str(n), tuple(str(k) for k in key))
            for o, s, n, key in rows}


def _columns(conn: psycopg.Connection[Any], oid: int) -> dict[str, str]:
    """Column name -> its type, without modifier (what a kept key's text is cast to)."""
    rows = conn.execute(
        "SELECT attname, format_type(atttypid, NULL) FROM pg_attribute"
        " WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (oid,)).fetchall()
    return {str(name): str(kind) for name, kind in rows}


@contextmanager
def _session(dsn: str, connect_timeout: float, statement_timeout: float
             ) -> Iterator[psycopg.Connection[Any]]:
    with connect(dsn, connect_timeout=connect_timeout, statement_timeout=statement_timeout,
                 lock_timeout=5.0, read_only=True, error=DataWindowError) as conn:
        yield conn


def compare_databases(live_dsn: str, kept_dsn: str, *, connect_timeout: float,
                      statement_timeout: float = 300.0, cap: int = KEY_CAP,
                      examples: int = EXAMPLES) -> list[TableDiff]:
    """Every table of the kept database (a swap's ``<db>_rolledback_<ts>``) against the table
    of the same name in the restored one. Raises :class:`DataWindowError` when either cannot
    be reached; a table that cannot be compared says why in its ``note``."""
    with _session(kept_dsn, connect_timeout, statement_timeout) as kept, \
            _session(live_dsn, connect_timeout, statement_timeout) as live:
        kept_tables = _tables(kept)
        live_tables = _tables(live)
        diffs: list[TableDiff] = []
        for name, table in kept_tables.items():
            restored = live_tables.get(name)
            if restored is None:
                diffs.append(_kept_only(kept, table))
                continue
            diffs.append(_compare(kept, live, table, restored, table.key, cap, examples))
        return diffs


_COPY_SUFFIX = re.compile(KEPT_TABLE_SUFFIX)


def compare_kept_tables(dsn: str, copies: Sequence[str], *, connect_timeout: float,
                        statement_timeout: float = 300.0, cap: int = KEY_CAP,
                        examples: int = EXAMPLES) -> list[TableDiff]:
    """A table restore's copies (``rollbackd_kept.<schema>_<table>_<ts>_<hex>``, in the same
    database) against the tables they were copied from, by those tables' primary keys."""
    with _session(dsn, connect_timeout, statement_timeout) as kept, \
            _session(dsn, connect_timeout, statement_timeout) as live:
        live_tables = _tables(live)
        diffs: list[TableDiff] = []
        for copy in copies:
            schema, _, name = copy.partition(".")
            source = _source_of(name, live_tables.values()) if schema == KEPT_SCHEMA else None
            if source is None:
                diffs.append(TableDiff(table="?", kept_as=copy, key=(), missing=None,
                                       examples=(), compared=0, capped=False, kept_rows=None,
                                       live_rows=None, note="not a copy a table restore made "
                                       "(no table of the database matches its name)"))
                continue
            row = kept.execute(
                "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relname = %s", (schema, name)).fetchone()
            if row is None:
                diffs.append(TableDiff(table=source.qualified, kept_as=copy, key=source.key,
                                       missing=None, examples=(), compared=0, capped=False,
                                       kept_rows=None, live_rows=None,
                                       note="the copy is gone (dropped since the restore)"))
                continue
            copied = _Table(int(row[0]), schema, name, ())
            diffs.append(_compare(kept, live, copied, source, source.key, cap, examples))
        return diffs


def _source_of(copy: str, tables: Iterable[_Table]) -> _Table | None:
    """The table a copy was made from: the copy's name is derived from ``schema_name`` and
    the restore's suffix (shortened with a hash when long), so derive it again and match."""
    match = _COPY_SUFFIX.search(copy)
    if match is None:
        return None
    for table in tables:
        if derived_name(f"{table.schema}_{table.name}", match.group(0)) == copy:
            return table
    return None


def _count(conn: psycopg.Connection[Any], table: _Table) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table.ident)).fetchone()
    return int(row[0]) if row is not None else 0


def _kept_only(kept: psycopg.Connection[Any], table: _Table) -> TableDiff:
    try:
        rows = _count(kept, table)
    except psycopg.Error as exc:
        return _failed(table.qualified, table.qualified, table.key, exc)
    return TableDiff(table=table.qualified, kept_as=table.qualified, key=table.key,
                     missing=rows, examples=(), compared=rows, capped=False, kept_rows=rows,
                     live_rows=None, note="the restored database has no such table: every "
                     "row of it is only in the kept copy")


def _failed(table: str, kept_as: str, key: tuple[str, ...], exc: Exception) -> TableDiff:
    return TableDiff(table=table, kept_as=kept_as, key=key, missing=None, examples=(),
                     compared=0, capped=False, kept_rows=None, live_rows=None,
                     note=f"cannot compare: {one_line(exc)}")


def _by_counts(kept: psycopg.Connection[Any], live: psycopg.Connection[Any], copy: _Table,
               restored: _Table, why: str) -> TableDiff:
    try:
        kept_rows, live_rows = _count(kept, copy), _count(live, restored)
    except psycopg.Error as exc:
        return _failed(restored.qualified, copy.qualified, (), exc)
    return TableDiff(table=restored.qualified, kept_as=copy.qualified, key=(), missing=None,
                     examples=(), compared=kept_rows, capped=False, kept_rows=kept_rows,
                     live_rows=live_rows, note=f"{why}: only the row counts are compared "
                     f"(kept copy {kept_rows}, restored {live_rows})")


def _compare(kept: psycopg.Connection[Any], live: psycopg.Connection[Any], copy: _Table,
             restored: _Table, key: tuple[str, ...], cap: int, examples: int) -> TableDiff:
    if not key:
        return _by_counts(kept, live, copy, restored, "no primary key")
    try:
        types = _columns(live, restored.oid)
        kept_columns = _columns(kept, copy.oid)
    except psycopg.Error as exc:
        return _failed(restored.qualified, copy.qualified, key, exc)
    absent = [c for c in key if c not in types or c not in kept_columns]
    if absent:
        return _by_counts(kept, live, copy, restored,
                          f"the key column {', '.join(absent)} is not in both copies")
    try:
        missing, found, compared, capped = _anti_join(
            kept, live, copy, restored, key, [types[c] for c in key], cap, examples)
    except psycopg.Error as exc:
        return _failed(restored.qualified, copy.qualified, key, exc)
    note = (f"only the first {compared} keys (in key order) were compared; the rest of the "
            "kept copy was not" if capped else None)
    return TableDiff(table=restored.qualified, kept_as=copy.qualified, key=key,
                     missing=missing, examples=tuple(found), compared=compared, capped=capped,
                     kept_rows=None if capped else compared, live_rows=None, note=note)


def _anti_join(kept: psycopg.Connection[Any], live: psycopg.Connection[Any], copy: _Table,
               restored: _Table, key: tuple[str, ...], types: list[str], cap: int,
               examples: int) -> tuple[int, list[str], int, bool]:
    """(missing, example keys, keys compared, capped): the kept keys in key order, a batch
    at a time, each batch's keys absent from the restored table found by the server."""
    # Qualified, so that ORDER BY is by the columns (their index), not by the text output.
    columns = sql.SQL(", ").join(sql.SQL("k.{}::text").format(sql.Identifier(c)) for c in key)
    order = sql.SQL(", ").join(sql.SQL("k.{}").format(sql.Identifier(c)) for c in key)
    read = sql.SQL("SELECT {} FROM {} AS k ORDER BY {} LIMIT {}").format(
        columns, copy.ident, order, sql.Literal(cap + 1))
    names = [sql.Identifier(f"k{i}") for i in range(len(key))]
    arrays = sql.SQL(", ").join(sql.SQL("%s::text[]") for _ in key)
    # format_type's text is the catalogue's own, quoted as needed, for this very session.
    matches = sql.SQL(" AND ").join(
        sql.SQL("l.{} = u.{}::{}").format(sql.Identifier(column), name, sql.SQL(kind))
        for column, name, kind in zip(key, names, types, strict=True))
    probe = sql.SQL(
        "SELECT u.ord FROM unnest({}) WITH ORDINALITY AS u({}, ord)"
        " WHERE NOT EXISTS (SELECT 1 FROM {} AS l WHERE {}) ORDER BY u.ord").format(
        arrays, sql.SQL(", ").join(names), restored.ident, matches)
    missing = compared = 0
    found: list[str] = []
    capped = False
    with kept.transaction(), kept.cursor(name="rollbackd_data_window") as cursor:
        cursor.execute(read)
        while batch := cursor.fetchmany(BATCH):
            if compared + len(batch) > cap:
                batch = batch[:cap - compared]
                capped = True
            compared += len(batch)
            if batch:
                values = [[row[i] for row in batch] for i in range(len(key))]
                absent = [int(r[0]) - 1 for r in live.execute(probe, values).fetchall()]
                missing += len(absent)
                for index in absent[:max(0, examples - len(found))]:
                    found.append(_key_text(batch[index]))
            if capped:
                break
    return missing, found, compared, capped


def _key_text(row: Sequence[Any]) -> str:
    if len(row) == 1:
        return str(row[0])
    return "(" + ", ".join(str(v) for v in row) + ")"
