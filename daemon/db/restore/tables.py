"""The tables strategy: the data (and owned sequences' values) of named tables, in one psql
transaction (``TRUNCATE`` + the archive's COPY data), after a verified safety dump of those
tables; the rows replaced are copied aside into ``rollbackd_kept`` in the same transaction.
Tables referenced by foreign keys from other tables are refused unless ``cascade``.
"""
from __future__ import annotations

import graphlib
import os
import re
import secrets
import tempfile
import time
from collections.abc import Sequence
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
from daemon.db.backups import BackupStore, Manifest
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


KEPT_SCHEMA = "rollbackd_kept"
"""Where a table restore keeps the rows it replaced, copied in the same transaction."""


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
        _restore_table_data(store, manifest, options, chosen, sequences, safety, copies)
        with session(options.dsn, options) as conn:
            for table in chosen:
                conn.execute(sql.SQL("ANALYZE {}").format(table.ident))
        notes = ([f"--cascade also restored {', '.join(t.qualified for t in added)} (they "
                  f"reference {', '.join(t.qualified for t in selected)})"] if added else [])
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


def _owned_sequences(conn: psycopg.Connection[Any], tables: list[TableRef]) -> list[TableRef]:
    rows = conn.execute(
        "SELECT DISTINCT s.oid::int, n.nspname, s.relname FROM pg_depend d"
        " JOIN pg_class s ON s.oid = d.objid JOIN pg_namespace n ON n.oid = s.relnamespace"
        " WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass"
        " AND d.refobjid = ANY(%s::oid[]) AND s.relkind = 'S' AND d.deptype IN ('a', 'i')"
        " ORDER BY 2, 3", ([t.oid for t in tables],)).fetchall()
    return [TableRef(int(o), str(s), str(n)) for o, s, n in rows]


def _check_in_backup(manifest: Manifest, tables: list[TableRef]) -> None:
    known = {t.qualified for t in manifest.tables}
    absent = [t.qualified for t in tables if t.qualified not in known]
    if absent:
        raise RestoreError(f"backup {manifest.id} holds no data for {', '.join(absent)}")


def _restore_table_data(store: BackupStore, manifest: Manifest, options: RestoreOptions,
                        tables: list[TableRef], sequences: list[TableRef], safety: str,
                        copies: list[str]) -> None:
    """One psql transaction: lock the tables, copy their rows aside (so that nothing written
    since the safety dump is lost), empty them and load the backup's rows."""
    pg_restore = restore_tool(manifest, "pg_restore")
    psql = restore_tool(manifest, "psql")
    archive = str(store.data_path(manifest))
    deadline = time.monotonic() + options.restore_timeout
    toc = run_client(pg_restore.path, ["--list", archive], os.environ, deadline,
               "pg_restore --list", kept=None).stdout
    entries = _select_entries(toc, tables, sequences, manifest.id)
    store.dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".restore-", dir=store.dir) as scratch:
        listing = Path(scratch) / "entries.list"
        listing.write_text("\n".join(entries) + "\n")
        data = Path(scratch) / "data.sql"
        run_client(pg_restore.path, ["--data-only", "-L", str(listing), "-f", str(data), archive],
             os.environ, deadline, "pg_restore (extracting the tables' data)", kept=None)
        truncate = Path(scratch) / "truncate.sql"
        names = ", ".join(t.dump_pattern for t in tables)
        keep = "".join(f"CREATE TABLE {dump_pattern(copy)} AS TABLE ONLY {t.dump_pattern};\n"
                       for t, copy in zip(tables, copies, strict=True))
        truncate.write_text(
            f"LOCK TABLE ONLY {names} IN ACCESS EXCLUSIVE MODE;\n"
            f"CREATE SCHEMA IF NOT EXISTS {KEPT_SCHEMA};\n"
            f"{keep}TRUNCATE TABLE ONLY {names};\n")
        env = tool_env(options.dsn, options)
        run_client(psql.path, ["-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction",
                         "-f", str(truncate), "-f", str(data)], env, deadline,
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
