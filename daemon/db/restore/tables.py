"""The tables strategy: the data (and owned sequences' values) of named tables, in one psql
transaction (``TRUNCATE`` + the archive's COPY data), after a verified safety dump of those
tables; the rows replaced are copied aside into ``rollbackd_kept`` in the same transaction.
Tables referenced by foreign keys from other tables are refused unless ``cascade``.

Each sequence owned by an integer column of a restored table is then set, in the same
transaction, to at least the highest value of that column among the kept rows (``setval`` to
the greater of the restore point's value and that maximum): new rows never take the ids of
the kept rows, so those can be merged back. ``rollbackd_kept`` is left out of whole-database
backups (:data:`daemon.db.backups.KEPT_SCHEMA`) and pruned with them
(:mod:`daemon.db.restore.kept`).
"""
from __future__ import annotations

import graphlib
import os
import re
import secrets
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from daemon.db.admin import (
    RestoreError,
    RestoreOptions,
    derived_name,
    session,
)
from daemon.db.backups import KEPT_SCHEMA, BackupStore, Manifest
from daemon.db.catalog import NoSuchTableError, TableRef, dump_pattern, resolve_tables
from daemon.db.restore.common import (
    RestoreReport,
    locked,
    restore_tool,
    run_client,
    safety_backup,
    tool_env,
    validate_live,
    verified_manifest,
)
from daemon.fmt import db_stamp

_TOC_ENTRY = re.compile(r"^\d+; \d+ \d+ (TABLE DATA|SEQUENCE SET) (\S+) (\S+) \S+$")


@dataclass(frozen=True, slots=True)
class _OwnedSequence:
    seq: TableRef
    table_oid: int
    column: str | None
    """The column owning it, when it is of an integer type (its values are the ids)."""


def restore_tables(store: BackupStore, backup_id: str, options: RestoreOptions,
                   tables: Sequence[str], cascade: bool = False) -> RestoreReport:
    """Replace the rows of ``tables`` (and their sequences' values) with the backup's.

    One transaction: all the tables change, or none. Refused when other tables have foreign
    keys to these (their rows could be left dangling or be cascaded away) unless ``cascade``,
    which restores those tables too (and says so in the report).
    """
    if not tables:
        raise RestoreError("no table named to restore")
    live = options.database
    manifest = verified_manifest(store, backup_id, live, whole=False)
    with locked(options, f"table restore of {backup_id}"):
        started = time.time()
        with session(options.dsn, options) as conn:
            selected = _resolve(conn, tables)
            added = _referencing_closure(conn, selected, cascade)
            chosen = _referenced_first(conn, selected + added)
            sequences = _owned_sequences(conn, chosen)
        _check_in_backup(manifest, chosen)
        safety = safety_backup(store, options, [t.qualified for t in chosen])
        stamp = db_stamp(started)
        unique = f"_{stamp}_{secrets.token_hex(2)}"  # two restores may share a second
        copies = [f"{KEPT_SCHEMA}.{derived_name(f'{t.schema}_{t.name}', unique)}"
                  for t in chosen]
        copy_of = {t.oid: copy for t, copy in zip(chosen, copies, strict=True)}
        _restore_table_data(store, manifest, options, chosen, sequences, safety, copies,
                            copy_of)
        with session(options.dsn, options) as conn:
            for table in chosen:
                conn.execute(sql.SQL("ANALYZE {}").format(table.ident))
            moved = _sequences_past_kept(conn, sequences, copy_of)
        notes = ([f"--cascade also restored {', '.join(t.qualified for t in added)} (they "
                  f"reference {', '.join(t.qualified for t in selected)})"] if added else [])
        notes += [f"sequence {seq} continues after {top}, the highest id among the rows kept "
                  "aside (not from the restore point's value), so they can be merged back "
                  "without colliding" for seq, top in moved]
        return RestoreReport(
            strategy="tables", backup_id=manifest.id, source=manifest.id, database=live,
            started_at=started, finished_at=time.time(),
            data_window_start=manifest.created_at, data_window_end=started,
            kept=", ".join(copies), kept_kind="tables", safety_backup=safety,
            tables=[t.qualified for t in chosen],
            validation=validate_live(options, manifest), notes=notes)


def _resolve(conn: psycopg.Connection[Any], names: Sequence[str]) -> list[TableRef]:
    try:
        return resolve_tables(conn, names)
    except NoSuchTableError as exc:
        raise RestoreError(f"no such table in {conn.info.dbname}: {exc}") from None


def _referencing_closure(conn: psycopg.Connection[Any], selected: list[TableRef],
                         cascade: bool) -> list[TableRef]:
    """Tables outside ``selected`` with foreign keys into it (transitively when cascading)."""
    chosen = {r.oid for r in selected}
    added: list[TableRef] = []
    while True:
        rows = conn.execute(
            "SELECT DISTINCT c.conrelid::int, n.nspname, t.relname,"
            " c.confrelid::regclass::text, c.conname"
            " FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid"
            " JOIN pg_namespace n ON n.oid = t.relnamespace"
            " WHERE c.contype = 'f' AND c.confrelid = ANY(%s::oid[])"
            " AND NOT c.conrelid = ANY(%s::oid[]) ORDER BY 2, 3",
            (sorted(chosen), sorted(chosen))).fetchall()
        if not rows:
            return added
        if not cascade:
            refs = ", ".join(f"{s}.{t} ({name} -> {target})" for _, s, t, target, name in rows)
            raise RestoreError(
                f"refused: foreign keys from other tables reference "
                f"{', '.join(r.qualified for r in selected)}: {refs}; restoring only the "
                "named tables could break those rows: add --cascade to restore the "
                "referencing tables too")
        for oid, schema, name, _, _ in rows:
            if int(oid) not in chosen:
                chosen.add(int(oid))
                added.append(TableRef(int(oid), str(schema), str(name)))


def _referenced_first(conn: psycopg.Connection[Any], tables: list[TableRef]) -> list[TableRef]:
    """``tables`` with each referenced table before those whose foreign keys point at it.

    Foreign keys are checked row by row as the COPY data arrives (they are rarely
    DEFERRABLE), so the data must be loaded in that order; pg_restore -L keeps the list's.
    """
    oids = [t.oid for t in tables]
    rows = conn.execute(
        "SELECT conrelid::int, confrelid::int FROM pg_constraint WHERE contype = 'f'"
        " AND conrelid = ANY(%s::oid[]) AND confrelid = ANY(%s::oid[])"
        " AND conrelid <> confrelid", (oids, oids)).fetchall()
    graph: dict[int, set[int]] = {oid: set() for oid in oids}
    for referencing, referenced in rows:
        graph[int(referencing)].add(int(referenced))
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError:
        return tables  # a cycle of foreign keys: no order can satisfy it, the load will say
    by_oid = {t.oid: t for t in tables}
    return [by_oid[oid] for oid in order]


def _owned_sequences(conn: psycopg.Connection[Any],
                     tables: list[TableRef]) -> list[_OwnedSequence]:
    rows = conn.execute(
        "SELECT DISTINCT s.oid::int, n.nspname, s.relname, d.refobjid::int, a.attname,"
        " a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)"
        " FROM pg_depend d"
        " JOIN pg_class s ON s.oid = d.objid JOIN pg_namespace n ON n.oid = s.relnamespace"
        " LEFT JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid"
        " WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass"
        " AND d.refobjid = ANY(%s::oid[]) AND s.relkind = 'S' AND d.deptype IN ('a', 'i')"
        " ORDER BY 2, 3", ([t.oid for t in tables],)).fetchall()
    return [_OwnedSequence(TableRef(int(o), str(s), str(n)), int(table),
                           str(column) if column is not None and integer else None)
            for o, s, n, table, column, integer in rows]


def _sequence_floor(owned: _OwnedSequence, copy: str) -> str:
    """SQL moving ``owned`` past the highest id among the kept rows ``copy``: setval only
    when its next value would not exceed that id (an ascending sequence; otherwise as the
    restore point left it)."""
    assert owned.column is not None
    seq = owned.seq.dump_pattern
    regclass = "'" + seq.replace("'", "''") + "'::regclass"
    column = '"' + owned.column.replace('"', '""') + '"'
    return (f"SELECT setval({regclass}, k.top) FROM (SELECT max({column})::bigint AS top"
            f" FROM {dump_pattern(copy)}) k, {seq} s, pg_sequence p"
            f" WHERE p.seqrelid = {regclass} AND p.seqincrement > 0 AND k.top IS NOT NULL"
            " AND k.top >= s.last_value + CASE WHEN s.is_called THEN p.seqincrement ELSE 0 END;"
            "\n")


def _sequences_past_kept(conn: psycopg.Connection[Any], owned: list[_OwnedSequence],
                         copy_of: dict[int, str]) -> list[tuple[str, int]]:
    """The sequences now standing at the kept rows' highest id, and that id."""
    moved: list[tuple[str, int]] = []
    for o in owned:
        if o.column is None or o.table_oid not in copy_of:
            continue
        row = conn.execute(sql.SQL("SELECT s.last_value, (SELECT max({})::bigint FROM {})"
                                   " FROM {} s").format(
            sql.Identifier(o.column), sql.Identifier(*copy_of[o.table_oid].split(".", 1)),
            o.seq.ident)).fetchone()
        if row is not None and row[1] is not None and int(row[0]) == int(row[1]):
            moved.append((o.seq.qualified, int(row[1])))
    return moved


def _check_in_backup(manifest: Manifest, tables: list[TableRef]) -> None:
    known = {t.qualified for t in manifest.tables}
    absent = [t.qualified for t in tables if t.qualified not in known]
    if absent:
        raise RestoreError(f"backup {manifest.id} holds no data for {', '.join(absent)}")


def _restore_table_data(store: BackupStore, manifest: Manifest, options: RestoreOptions,
                        tables: list[TableRef], sequences: list[_OwnedSequence], safety: str,
                        copies: list[str], copy_of: dict[int, str]) -> None:
    """One psql transaction: lock the tables, copy their rows aside (so that nothing written
    since the safety dump is lost), empty them, load the backup's rows, and move the owned
    sequences past the kept rows' ids."""
    try:
        store.dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".restore-", dir=store.dir) as scratch:
            _load(store, manifest, options, tables, sequences, safety, copies, copy_of,
                  Path(scratch))
    except OSError as exc:
        raise RestoreError(f"cannot write the table restore's scratch files in {store.dir}: "
                           f"{exc.strerror or exc}; nothing was restored") from None


def _load(store: BackupStore, manifest: Manifest, options: RestoreOptions,
          tables: list[TableRef], sequences: list[_OwnedSequence], safety: str,
          copies: list[str], copy_of: dict[int, str], scratch: Path) -> None:
    pg_restore = restore_tool(manifest, "pg_restore")
    psql = restore_tool(manifest, "psql")
    archive = str(store.data_path(manifest))
    deadline = time.monotonic() + options.restore_timeout
    toc = run_client(pg_restore.path, ["--list", archive], os.environ, deadline,
               "pg_restore --list", kept=None).stdout
    entries = _select_entries(toc, tables, [o.seq for o in sequences], manifest.id)
    listing = scratch / "entries.list"
    listing.write_text("\n".join(entries) + "\n")
    data = scratch / "data.sql"
    run_client(pg_restore.path, ["--data-only", "-L", str(listing), "-f", str(data), archive],
         os.environ, deadline, "pg_restore (extracting the tables' data)", kept=None)
    truncate = scratch / "truncate.sql"
    names = ", ".join(t.dump_pattern for t in tables)
    keep = "".join(f"CREATE TABLE {dump_pattern(copy)} AS TABLE ONLY {t.dump_pattern};\n"
                   for t, copy in zip(tables, copies, strict=True))
    truncate.write_text(
        f"LOCK TABLE ONLY {names} IN ACCESS EXCLUSIVE MODE;\n"
        f"CREATE SCHEMA IF NOT EXISTS {KEPT_SCHEMA};\n"
        f"{keep}TRUNCATE TABLE ONLY {names};\n")
    floors = scratch / "sequences.sql"
    floors.write_text("".join(_sequence_floor(o, copy_of[o.table_oid]) for o in sequences
                              if o.column is not None and o.table_oid in copy_of))
    env = tool_env(options.dsn, options)
    run_client(psql.path, ["-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction",
                           "-o", os.devnull, "-f", str(truncate), "-f", str(data),
                           "-f", str(floors)], env, deadline,
         "psql (replacing the tables' rows, one transaction)",
         kept=f"safety backup {safety}")


def _select_entries(toc: str, tables: list[TableRef], sequences: list[TableRef],
                    backup_id: str) -> list[str]:
    wanted_data = {(t.schema, t.name) for t in tables}
    wanted_seq = {(s.schema, s.name) for s in sequences}
    rank = {(t.schema, t.name): i for i, t in enumerate(tables)}
    picked: list[tuple[int, str]] = []
    found: set[tuple[str, str]] = set()
    for line in toc.splitlines():
        match = _TOC_ENTRY.match(line)
        if match is None:
            continue
        kind, schema, name = match.groups()
        key = (schema, name)
        if (kind == "TABLE DATA" and key in wanted_data) or (
                kind == "SEQUENCE SET" and key in wanted_seq):
            picked.append((rank.get(key, len(rank)) if kind == "TABLE DATA" else len(rank),
                           line))
            found.add(key)
    absent = sorted(f"{s}.{n}" for s, n in wanted_data - found)
    if absent:
        raise RestoreError(f"backup {backup_id}'s table of contents has no data entry for "
                           f"{', '.join(absent)}")
    # Data in foreign-key order, then the sequence values (the sort is stable).
    return [line for _, line in sorted(picked, key=lambda p: p[0])]
