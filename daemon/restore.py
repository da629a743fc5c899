"""Restores from verified backups: by swap, in place, per table; schema checks; clones.

Every restore

* uses a backup only once it is verified (a backup verified before is re-checked against its
  manifest's checksums, so a file damaged since is refused too), and refuses it with the
  reason otherwise;
* runs under the rollback lock (this host's lock file and the fleet's advisory lock,
  :mod:`daemon.locks`), unless the caller (the runbook executor) already holds it;
* keeps the data it replaces: the old database renamed aside (swap, clone) or a verified safety
  backup (in place, tables); and returns a :class:`RestoreReport` naming where, and the data
  window it undid (from the restore point's snapshot to the start of the restore);
* fails loudly with :class:`RestoreError`, pg_restore's own error lines included; nothing is
  reported as done unless all of it was.

Strategies:

``swap``
    pg_restore -j N into a fresh ``<db>_shadow_<ts>``, database-level settings, grants, owner
    and connection limit copied from the live database, ANALYZE, validation; then, from the
    maintenance database: block connections to live, terminate its sessions (bounded by
    ``backups.terminate_timeout``), rename live to ``<db>_rolledback_<ts>`` and the shadow to
    the live name. Connections are refused only during that last step (``blocked_seconds``).
    Before the first rename any failure drops the shadow and re-allows connections: live is
    untouched. If the second rename fails the first is undone.
``in_place``
    A verified safety backup, then ``pg_restore --clean --if-exists --single-transaction``:
    all or nothing. (``--clean`` drops only what the archive holds: tables a failed
    migration added survive, and are listed in the report's notes.)
``tables``
    The data (and owned sequences' values) of named tables, in one psql transaction
    (``TRUNCATE`` + the archive's COPY data), after a verified safety dump of those tables.
    Tables referenced by foreign keys from other tables are refused unless ``cascade``.

Requires PostgreSQL 14 or newer (``pg_terminate_backend(pid, timeout)``, ``DROP DATABASE
... WITH (FORCE)``). Everything is synchronous with every wait bounded; the daemon calls it
through ``asyncio.to_thread``.

A process killed during a swap's pg_restore leaves live untouched and a stale shadow
database, which the next swap (under the lock, so nobody else can be using it) drops. Killed
during the swap step itself (a fraction of a second) it can leave live refusing connections;
the next swap finds the stale shadow and allows them again (by hand: ``ALTER DATABASE <db>
ALLOW_CONNECTIONS true`` from the maintenance database).
"""

from __future__ import annotations

import contextlib
import difflib
import graphlib
import hashlib
import os
import re
import secrets
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from daemon.backups import (
    BackupError,
    BackupStore,
    Manifest,
    check_files,
    find_restore_tool,
    iso,
)
from daemon.locks import rollback_lock
from daemon.pgcatalog import NoSuchTableError, TableRef, dump_pattern, resolve_tables
from daemon.pgtools import PgToolError, find_tool, libpq_env, run_tool, server_major
from daemon.validate import CheckResult, summary, validate_data, validate_database
from probes.base import one_line
from probes.pg import (
    connect_sync,
    with_dbname,
)
from probes.settings import SqlCheck

if TYPE_CHECKING:
    from daemon.config import Config

Strategy = Literal["swap", "in_place", "tables", "clone"]
MAX_IDENTIFIER = 63
STAMP = "%Y%m%d%H%M%S"
TERMINATE_STEP = 5.0
"""Longest single ``pg_terminate_backend`` wait; the loop re-checks in between."""
CLONE_COMMENT = "rollbackd clone of {db} taken at {at}"

# GUCs whose values are lists stored with each element quoted (pg_dump's
# variable_is_guc_list_quote): one string literal would become a single element.
_LIST_QUOTE_GUCS = frozenset({"local_preload_libraries", "search_path",
                              "session_preload_libraries", "shared_preload_libraries",
                              "temp_tablespaces", "unix_socket_directories"})
_TOC_ENTRY = re.compile(r"^\d+; \d+ \d+ (TABLE DATA|SEQUENCE SET) (\S+) (\S+) \S+$")


class RestoreError(Exception):
    """A restore that was refused or failed; ``str()`` says why and what state was left."""


@dataclass(frozen=True, slots=True)
class RestoreOptions:
    """Where and how to restore; ``from_config`` builds it from ``[database]``/``[backups]``.

    ``take_lock=False`` is for a caller that already holds :func:`daemon.locks.rollback_lock`
    (the runbook executor holds it for the whole runbook).
    """

    dsn: str
    state_dir: Path
    maintenance_db: str = "postgres"
    expected_tables: Sequence[str] = ()
    checks: Sequence[SqlCheck] = ()
    key_tables: Sequence[str] = ()
    connect_timeout: float = 5.0
    restore_timeout: float = 3600.0
    terminate_timeout: float = 15.0
    lock_wait_timeout: float = 30.0
    statement_timeout: float = 300.0
    """Bound on each SQL statement rollbackd runs itself (validation, ANALYZE, DDL)."""
    jobs: int = 2
    take_lock: bool = True

    @classmethod
    def from_config(cls, config: Config, **overrides: Any) -> RestoreOptions:
        db = config.database
        if db is None:
            raise RestoreError("the config has no [database] section (needed for restores)")
        b = config.backups
        values: dict[str, Any] = {
            "dsn": db.dsn, "state_dir": config.daemon.state_dir,
            "maintenance_db": db.maintenance_db, "expected_tables": list(db.expected_tables),
            "checks": list(db.checks), "key_tables": list(db.key_tables),
            "connect_timeout": float(db.connect_timeout),
            "restore_timeout": float(b.restore_timeout),
            "terminate_timeout": float(b.terminate_timeout),
            "lock_wait_timeout": float(b.lock_wait_timeout), "jobs": b.jobs}
        values.update(overrides)
        return cls(**values)

    @property
    def database(self) -> str:
        name = conninfo_to_dict(self.dsn).get("dbname")
        if not name:
            raise RestoreError("database.dsn names no dbname: a restore needs to know which "
                               "database it replaces")
        return str(name)

    @property
    def maintenance_dsn(self) -> str:
        return with_dbname(self.dsn, self.maintenance_db)


@dataclass(slots=True)
class RestoreReport:
    """What a restore did: the data window it undid and where the newer data is kept."""

    strategy: Strategy
    backup_id: str | None
    """The backup restored (None for a clone, named in ``source``)."""
    source: str
    database: str
    started_at: float
    finished_at: float
    data_window_start: float | None
    """The restore point's snapshot time: data written after it was undone."""
    data_window_end: float
    """When the restore began."""
    kept: str
    """Where the pre-restore data is: a database name or a safety backup id."""
    kept_kind: Literal["database", "backup", "tables"]
    safety_backup: str | None = None
    """In place and tables: the verified backup taken just before the restore."""
    blocked_seconds: float | None = None
    """Swap and clone: how long the live database refused connections."""
    tables: list[str] = field(default_factory=list)
    validation: list[CheckResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return round(self.finished_at - self.started_at, 3)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.validation)

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "strategy": self.strategy, "backup_id": self.backup_id,
            "source": self.source, "database": self.database, "started_at": self.started_at,
            "finished_at": self.finished_at, "duration": self.duration,
            "blocked_seconds": self.blocked_seconds,
            "data_window_start": self.data_window_start,
            "data_window_end": self.data_window_end,
            "data_window_start_iso": None if self.data_window_start is None
            else iso(self.data_window_start),
            "data_window_end_iso": iso(self.data_window_end),
            "kept": self.kept, "kept_kind": self.kept_kind,
            "safety_backup": self.safety_backup, "tables": self.tables,
            "validation": [r.as_json() for r in self.validation], "notes": self.notes,
        }

    def describe(self) -> list[str]:
        """The lines an operator reads (CLI output, completion notices)."""
        what = f"tables {', '.join(self.tables)} of" if self.tables else "database"
        lines = [f"restored {what} {self.database} from {self.source} by {self.strategy} "
                 f"in {self.duration:.1f}s"
                 + ("" if self.blocked_seconds is None
                    else f" (connections blocked {self.blocked_seconds:.2f}s)")]
        start = "unknown" if self.data_window_start is None else iso(self.data_window_start)
        lines.append(f"data window undone: {start} to {iso(self.data_window_end)}")
        where = {"database": f"database {self.kept}", "backup": f"safety backup {self.kept}",
                 "tables": f"tables {self.kept}"}[self.kept_kind]
        lines.append(f"data as it was before the restore is kept in {where}")
        if self.safety_backup is not None and self.safety_backup != self.kept:
            lines.append(f"a safety backup taken just before is {self.safety_backup}")
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"validation: {summary(self.validation)}")
        return lines


@dataclass(frozen=True, slots=True)
class SchemaDiff:
    identical: bool
    diff: list[str]
    """Unified diff lines, restore point (``---``) against live (``+++``)."""


@dataclass(frozen=True, slots=True)
class DownMigration:
    exit_code: int | None
    output: str
    """The last lines of the command's output."""
    diff: SchemaDiff | None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.diff is not None and self.diff.identical


# -- swap ------------------------------------------------------------------------------------


def restore_swap(store: BackupStore, backup_id: str, options: RestoreOptions) -> RestoreReport:
    """Restore ``backup_id`` into a shadow database, validate it, and swap it in."""
    live = options.database
    manifest = verified_manifest(store, backup_id, live, whole=True)
    with _locked(options, f"swap restore of {backup_id}"):
        started = time.time()
        stamp = datetime.fromtimestamp(started, UTC).strftime(STAMP)
        shadow = derived_name(live, f"_shadow_{stamp}")
        aside = derived_name(live, f"_rolledback_{stamp}")
        with admin_session(options) as admin:
            _repair_interrupted_swap(admin, live)
            props = database_properties(admin, live)
            create_like(admin, shadow, props)
        try:
            restore_into(store, manifest, options, shadow, props)
            _validate_replacement(options, shadow, manifest)
            with admin_session(options) as admin:
                blocked = _swap(admin, options, live, shadow, aside)
        except BaseException:
            _drop_quietly(options, shadow)
            raise
        validation = _validate_live(options, manifest)
        return RestoreReport(
            strategy="swap", backup_id=manifest.id, source=manifest.id, database=live,
            started_at=started, finished_at=time.time(),
            data_window_start=manifest.created_at, data_window_end=started, kept=aside,
            kept_kind="database", blocked_seconds=round(blocked, 3),
            validation=validation)


def restore_into(store: BackupStore, manifest: Manifest, options: RestoreOptions, name: str,
                 props: DatabaseProperties | None) -> None:
    """Fill the new, empty database ``name`` from the backup (pg_restore -j N, stopping at
    the first error), give it ``props``' settings, grants and owner, and ANALYZE it: the
    swap's shadow and the drill's scratch database are made alike."""
    _pg_restore(store, manifest, options, name, ["-j", str(options.jobs), "--exit-on-error"])
    _finish_replacement(options, name, props)


def _finish_replacement(options: RestoreOptions, name: str,
                        props: DatabaseProperties | None) -> None:
    if props is not None:
        with admin_session(options) as admin:
            _apply_properties(admin, name, props)
    with session(with_dbname(options.dsn, name), options) as conn:
        conn.execute("ANALYZE")


def _validate_replacement(options: RestoreOptions, name: str, manifest: Manifest | None) -> None:
    """The database to be swapped in must pass validation, or live stays as it is."""
    target = with_dbname(options.dsn, name)
    results = validate_database(target, expected_tables=options.expected_tables,
                                checks=options.checks, timeout=options.statement_timeout,
                                connect_timeout=options.connect_timeout)
    if manifest is not None and options.key_tables:
        results += validate_data(target, manifest, options.key_tables,
                                 timeout=options.statement_timeout,
                                 connect_timeout=options.connect_timeout)
    if not all(r.ok for r in results):
        raise RestoreError(f"the restored database {name} failed validation, so it was not "
                           f"swapped in (live is untouched): {summary(results)}")


def _swap(admin: psycopg.Connection[Any], options: RestoreOptions, live: str, replacement: str,
          aside: str) -> float:
    """Rename live aside and ``replacement`` to live; seconds live refused connections."""
    blocked_at = time.monotonic()
    admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(
        sql.Identifier(live)))
    try:
        _rename_when_free(admin, live, aside, time.monotonic() + options.terminate_timeout)
    except BaseException:
        with contextlib.suppress(psycopg.Error):
            admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(
                sql.Identifier(live)))
        raise
    try:
        _rename_when_free(admin, replacement, live, time.monotonic() + options.terminate_timeout)
    except BaseException as exc:
        _put_back(admin, aside, live, exc)
        raise
    blocked = time.monotonic() - blocked_at
    # The kept database is for people to read the newer data from: let them in. The swap
    # has happened by now, so a failure here must not make it look as if it had not.
    with contextlib.suppress(psycopg.Error):
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(
            sql.Identifier(aside)))
    return blocked


def _put_back(admin: psycopg.Connection[Any], aside: str, live: str, why: BaseException) -> None:
    try:
        admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
            sql.Identifier(aside), sql.Identifier(live)))
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(
            sql.Identifier(live)))
    except psycopg.Error as exc:
        raise RestoreError(
            f"the swap failed after renaming {live} to {aside} ({one_line(why)}) and the old "
            f"name could not be put back ({one_line(exc)}): there is NO database {live} now; "
            f"run ALTER DATABASE {aside} RENAME TO {live}; ALTER DATABASE {live} "
            "ALLOW_CONNECTIONS true") from None


def _rename_when_free(admin: psycopg.Connection[Any], old: str, new: str,
                      deadline: float) -> None:
    """Terminate ``old``'s sessions and rename it, retrying while sessions linger."""
    while True:
        left = _terminate(admin, old, deadline)
        try:
            admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                sql.Identifier(old), sql.Identifier(new)))
            return
        except psycopg.errors.ObjectInUse as exc:
            if time.monotonic() >= deadline:
                raise RestoreError(
                    f"database {old} could not be renamed: sessions would not end within "
                    f"backups.terminate_timeout ({len(left)} left: pids "
                    f"{', '.join(map(str, left)) or 'none visible'}; prepared transactions "
                    f"also hold it): {one_line(exc)}") from None
            time.sleep(0.05)


def _terminate(admin: psycopg.Connection[Any], database: str, deadline: float) -> list[int]:
    """Terminate every client session of ``database``; the pids still there at the deadline."""
    while True:
        wait = milliseconds_left(deadline, TERMINATE_STEP)
        rows = admin.execute(
            "SELECT pid, pg_terminate_backend(pid, %s) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()"
            " AND backend_type = 'client backend'", (max(wait, 1), database)).fetchall()
        if all(ended for _, ended in rows):
            return []
        if time.monotonic() >= deadline:
            return [int(pid) for pid, ended in rows if not ended]


def milliseconds_left(deadline: float, cap: float) -> int:
    return int(max(0.0, min(cap, deadline - time.monotonic())) * 1000)


def repair_interrupted_swap(options: RestoreOptions) -> list[str]:
    """Undo what a swap killed midway left behind (see the module docstring); returns the stale
    shadows dropped. Takes the rollback lock unless ``options.take_lock`` is false."""
    with _locked(options, "repair of an interrupted swap"), admin_session(options) as admin:
        return _repair_interrupted_swap(admin, options.database)


def _repair_interrupted_swap(admin: psycopg.Connection[Any], live: str) -> list[str]:
    """Shadows of an interrupted swap: under the lock nobody else can be restoring into them.

    A swap killed while it blocked connections left live refusing them; a stale shadow is
    the sign of that, so connections to live are allowed again too.
    """
    prefix = derived_name(live, "_shadow_00000000000000")[: -len("00000000000000")]
    pattern = re.compile(re.escape(prefix) + r"\d{14}$")
    stale = [str(name) for (name,) in admin.execute("SELECT datname FROM pg_database")
             if pattern.match(str(name))]
    for name in stale:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))
    if stale:
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(
            sql.Identifier(live)))
    return stale


def _drop_quietly(options: RestoreOptions, name: str) -> None:
    with contextlib.suppress(psycopg.Error, RestoreError), admin_session(options) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


def derived_name(live: str, suffix: str) -> str:
    """``live + suffix``, shortening ``live`` so the whole fits PostgreSQL's 63-byte names."""
    room = MAX_IDENTIFIER - len(suffix.encode())
    if len(live.encode()) <= room:
        return live + suffix
    # Shortened, two long names could share a prefix: a hash of the whole name keeps one
    # database's shadows and scratch copies from ever matching another's.
    digest = "_" + hashlib.sha256(live.encode()).hexdigest()[:8]
    base = live.encode()[:room - len(digest)].decode(errors="ignore")
    return base + digest + suffix


# -- database-level properties (lost by a restore into a database we created) ----------------


@dataclass(frozen=True, slots=True)
class DatabaseProperties:
    name: str
    encoding: str
    collate: str
    ctype: str
    provider: str
    locale: str | None
    owner: str
    connlimit: int
    acl: list[tuple[str, str, bool]] | None
    """(grantee, privilege, grantable); '' is PUBLIC; None: the default privileges."""
    settings: list[tuple[str, list[str]]]
    """(role or '' for every role, ['name=value', ...])."""


def database_properties(admin: psycopg.Connection[Any], name: str) -> DatabaseProperties:
    row = admin.execute(
        "SELECT to_jsonb(d), pg_encoding_to_char(d.encoding), pg_get_userbyid(d.datdba),"
        " d.datacl IS NULL FROM pg_database d WHERE d.datname = %s", (name,)).fetchone()
    if row is None:
        raise RestoreError(f"database {name} does not exist")
    data, encoding, owner, default_acl = row
    acl = None if default_acl else [
        (str(g), str(p), bool(o)) for g, p, o in admin.execute(
            "SELECT CASE WHEN a.grantee = 0 THEN '' ELSE pg_get_userbyid(a.grantee) END,"
            " a.privilege_type, a.is_grantable FROM pg_database d, aclexplode(d.datacl) a"
            " WHERE d.datname = %s", (name,)).fetchall()]
    settings = [(str(role), list(config)) for role, config in admin.execute(
        "SELECT COALESCE(pg_get_userbyid(NULLIF(s.setrole, 0)), ''), s.setconfig"
        " FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase"
        " WHERE d.datname = %s ORDER BY 1", (name,)).fetchall()]
    return DatabaseProperties(name=name, encoding=str(encoding), collate=str(data["datcollate"]),
                    ctype=str(data["datctype"]), provider=str(data.get("datlocprovider", "c")),
                    locale=data.get("datlocale", data.get("daticulocale")), owner=str(owner),
                    connlimit=int(data["datconnlimit"]), acl=acl, settings=settings)


def create_like(admin: psycopg.Connection[Any], name: str, props: DatabaseProperties) -> None:
    parts = [sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} "
                     "LC_CTYPE {}").format(sql.Identifier(name), sql.Literal(props.encoding),
                                          sql.Literal(props.collate), sql.Literal(props.ctype))]
    if props.provider == "i" and props.locale:
        parts.append(sql.SQL("LOCALE_PROVIDER icu ICU_LOCALE {}").format(
            sql.Literal(props.locale)))
    elif props.provider == "b" and props.locale:
        parts.append(sql.SQL("LOCALE_PROVIDER builtin BUILTIN_LOCALE {}").format(
            sql.Literal(props.locale)))
    admin.execute(sql.SQL(" ").join(parts))


def _apply_properties(admin: psycopg.Connection[Any], name: str, props: DatabaseProperties) -> None:
    db = sql.Identifier(name)
    admin.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(db, sql.Identifier(
        props.owner)))
    if props.connlimit != -1:
        admin.execute(sql.SQL("ALTER DATABASE {} CONNECTION LIMIT {}").format(
            db, sql.Literal(props.connlimit)))
    if props.acl is not None:
        admin.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db))
        for grantee, privilege, grantable in props.acl:
            admin.execute(sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                sql.SQL(privilege), db,
                sql.SQL("PUBLIC") if grantee == "" else sql.Identifier(grantee),
                sql.SQL(" WITH GRANT OPTION") if grantable else sql.SQL("")))
    for role, entries in props.settings:
        target = (sql.SQL("ALTER DATABASE {}").format(db) if role == "" else
                  sql.SQL("ALTER ROLE {} IN DATABASE {}").format(sql.Identifier(role), db))
        for entry in entries:
            setting, _, value = entry.partition("=")
            admin.execute(sql.SQL("{} SET {} TO {}").format(
                target, sql.Identifier(setting), _setting_value(setting, value)))


def _setting_value(name: str, value: str) -> sql.Composable:
    if name.lower() not in _LIST_QUOTE_GUCS:
        return sql.Literal(value)
    return sql.SQL(", ").join(sql.Literal(v) for v in _split_guc_list(value))


def _split_guc_list(value: str) -> list[str]:
    """``"$user", public`` -> ``['$user', 'public']`` (double quotes, "" inside them)."""
    items: list[str] = []
    current: list[str] = []
    quoted = False
    i = 0
    while i < len(value):
        ch = value[i]
        if quoted:
            if ch == '"' and value[i + 1:i + 2] == '"':
                current.append('"')
                i += 1
            elif ch == '"':
                quoted = False
            else:
                current.append(ch)
        elif ch == '"':
            quoted = True
        elif ch == ",":
            items.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
        i += 1
    items.append("".join(current).strip())
    return [item for item in items if item]


# -- in place --------------------------------------------------------------------------------


def restore_in_place(store: BackupStore, backup_id: str,
                     options: RestoreOptions) -> RestoreReport:
    """A verified safety backup, then one all-or-nothing pg_restore over the live database."""
    live = options.database
    manifest = verified_manifest(store, backup_id, live, whole=True)
    with _locked(options, f"in-place restore of {backup_id}"):
        # Writes between the safety backup and the restore would be in neither copy, and
        # pg_restore must connect, so connections cannot be blocked: the app must be stopped.
        _refuse_while_connected(options, live)
        started = time.time()
        safety = _safety_backup(store, options, None)
        _refuse_while_connected(options, live)
        _pg_restore(store, manifest, options, live,
                    ["--clean", "--if-exists", "--single-transaction", "--exit-on-error"],
                    kept=f"safety backup {safety}")
        with session(options.dsn, options) as conn:
            conn.execute("ANALYZE")
            extra = _extra_tables(conn, manifest)
        notes = [f"table(s) not in the restore point survived (--clean drops only what the "
                 f"archive holds): {', '.join(extra)}"] if extra else []
        return RestoreReport(
            strategy="in_place", backup_id=manifest.id, source=manifest.id, database=live,
            started_at=started, finished_at=time.time(),
            data_window_start=manifest.created_at, data_window_end=started, kept=safety,
            kept_kind="backup", safety_backup=safety,
            validation=_validate_live(options, manifest), notes=notes)


def _refuse_while_connected(options: RestoreOptions, live: str) -> None:
    with admin_session(options) as admin:
        row = admin.execute(
            "SELECT count(*), string_agg(DISTINCT coalesce(nullif(application_name, ''), "
            "'unnamed') || '@' || coalesce(client_addr::text, 'local'), ', ')"
            " FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
            " AND backend_type = 'client backend'", (live,)).fetchone()
    if row is not None and row[0]:
        raise RestoreError(
            f"an in-place restore needs the application stopped: {row[0]} session(s) are "
            f"connected to {live} ({row[1]}); stop it first, or use --strategy swap, which "
            "blocks connections for the swap itself")


def _extra_tables(conn: psycopg.Connection[Any], manifest: Manifest) -> list[str]:
    known = {t.qualified for t in manifest.tables}
    rows = conn.execute(
        "SELECT n.nspname || '.' || c.relname FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r'"
        " AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        " AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1").fetchall()
    return [str(r[0]) for r in rows if str(r[0]) not in known]


# -- tables ----------------------------------------------------------------------------------


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
    with _locked(options, f"table restore of {backup_id}"):
        started = time.time()
        with session(options.dsn, options) as conn:
            selected = _resolve(conn, tables)
            added = _referencing_closure(conn, selected, cascade)
            chosen = _referenced_first(conn, selected + added)
            sequences = _owned_sequences(conn, chosen)
        _check_in_backup(manifest, chosen)
        safety = _safety_backup(store, options, [t.qualified for t in chosen])
        stamp = datetime.fromtimestamp(started, UTC).strftime(STAMP)
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
            validation=_validate_live(options, manifest), notes=notes)


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
    pg_restore = _restore_tool(manifest, "pg_restore")
    psql = _restore_tool(manifest, "psql")
    archive = str(store.data_path(manifest))
    deadline = time.monotonic() + options.restore_timeout
    toc = _run(pg_restore.path, ["--list", archive], os.environ, deadline,
               "pg_restore --list", kept=None).stdout
    entries = _select_entries(toc, tables, sequences, manifest.id)
    store.dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".restore-", dir=store.dir) as scratch:
        listing = Path(scratch) / "entries.list"
        listing.write_text("\n".join(entries) + "\n")
        data = Path(scratch) / "data.sql"
        _run(pg_restore.path, ["--data-only", "-L", str(listing), "-f", str(data), archive],
             os.environ, deadline, "pg_restore (extracting the tables' data)", kept=None)
        truncate = Path(scratch) / "truncate.sql"
        names = ", ".join(t.dump_pattern for t in tables)
        keep = "".join(f"CREATE TABLE {dump_pattern(copy)} AS TABLE ONLY {t.dump_pattern};\n"
                       for t, copy in zip(tables, copies, strict=True))
        truncate.write_text(
            f"LOCK TABLE ONLY {names} IN ACCESS EXCLUSIVE MODE;\n"
            f"CREATE SCHEMA IF NOT EXISTS {KEPT_SCHEMA};\n"
            f"{keep}TRUNCATE TABLE ONLY {names};\n")
        env = _tool_env(options.dsn, options)
        _run(psql.path, ["-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction",
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


# -- schema ----------------------------------------------------------------------------------


def schema_diff(dsn: str, manifest: Manifest, store: BackupStore, *, timeout: float = 300.0,
                connect_timeout: float = 5.0) -> SchemaDiff:
    """The live schema against the restore point's ``schema.sql``: identical, or the diff.

    Both sides are normalised: comments, ``SET`` lines, ``\\restrict`` lines and blank lines
    carry no schema and differ between runs.
    """
    try:
        before = (store.path(manifest.id) / manifest.schema_file).read_text()
    except OSError as exc:
        raise RestoreError(f"cannot read the schema snapshot of {manifest.id}: "
                           f"{exc.strerror or exc}") from None
    try:
        pg_dump = find_tool("pg_dump", server_major(manifest.server_version_num))
        env = libpq_env(dsn, connect_timeout=connect_timeout)
    except PgToolError as exc:
        raise RestoreError(str(exc)) from None
    selection = [a for t in manifest.selected_tables or () for a in ("-t", dump_pattern(t))]
    result = _run(pg_dump.path, ["--schema-only", "-Fp", *selection], env,
                  time.monotonic() + timeout, "pg_dump --schema-only", kept=None)
    old, new = normalise_schema(before), normalise_schema(result.stdout)
    diff = list(difflib.unified_diff(old, new, fromfile=f"restore point {manifest.id}",
                                     tofile="live", lineterm="", n=2))
    return SchemaDiff(identical=not diff, diff=diff)


def normalise_schema(text: str) -> list[str]:
    skip = ("--", "SET ", "SELECT pg_catalog.set_config(", "\\restrict", "\\unrestrict")
    return [line.rstrip() for line in text.splitlines()
            if line.strip() and not line.startswith(skip)]


def run_down_migration(argv: Sequence[str], timeout: float, *, dsn: str, manifest: Manifest,
                       store: BackupStore) -> DownMigration:
    """Run the configured down-migration, then compare the schema with the restore point's.

    The schema is compared even when the command failed: the runbook needs to know what state
    it left.
    """
    if isinstance(argv, str) or not argv:
        raise RestoreError("the down-migration command must be a non-empty argv list")
    try:
        result = run_tool(list(argv), env=dict(os.environ), timeout=timeout)
        code: int | None = result.returncode
        output = _tail(result.stdout + result.stderr, 20)
    except PgToolError as exc:
        code, output = None, str(exc)
    try:
        diff: SchemaDiff | None = schema_diff(dsn, manifest, store,
                                              timeout=min(timeout, 300.0))
    except RestoreError as exc:
        diff, output = None, f"{output}\nschema comparison failed: {exc}".strip()
    return DownMigration(exit_code=code, output=output, diff=diff)


# -- clones ----------------------------------------------------------------------------------


def create_clone(options: RestoreOptions, name: str | None = None) -> str:
    """``CREATE DATABASE <name> TEMPLATE <live>``; the clone's name.

    PostgreSQL copies the files only when nobody is connected to the live database, so this is
    for a deploy that stops the application first; with sessions still connected it is
    refused (they are not terminated: that would be an outage the deploy did not plan).
    """
    live = options.database
    taken = time.time()
    clone = name or derived_name(live, "_clone_" + datetime.fromtimestamp(
        taken, UTC).strftime(STAMP))
    with admin_session(options) as admin:
        try:
            admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(clone), sql.Identifier(live)))
        except psycopg.errors.ObjectInUse:
            row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                                (live,)).fetchone()
            raise RestoreError(
                f"cannot clone {live}: {row[0] if row else 'some'} session(s) are connected "
                "to it; a clone is taken while the application is stopped for the deploy "
                "(stop it, then clone)") from None
        admin.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
            sql.Identifier(clone), sql.Literal(CLONE_COMMENT.format(db=live, at=taken))))
    return clone


def restore_from_clone(options: RestoreOptions, clone: str) -> RestoreReport:
    """Swap the clone in as the live database; the current live is kept as ``_rolledback_``."""
    live = options.database
    with _locked(options, f"clone restore from {clone}"):
        started = time.time()
        aside = derived_name(live, "_rolledback_" + datetime.fromtimestamp(
            started, UTC).strftime(STAMP))
        with admin_session(options) as admin:
            props = database_properties(admin, live)
            database_properties(admin, clone)
            taken = _clone_time(admin, clone, live)
            if taken is None:
                # Only a clone rollbackd took of this very database may replace it.
                raise RestoreError(f"{clone} is not a rollbackd clone of {live} (its comment "
                                   "does not say so): refusing to swap it in")
        _finish_replacement(options, clone, props)
        _validate_replacement(options, clone, None)
        with admin_session(options) as admin:
            blocked = _swap(admin, options, live, clone, aside)
        return RestoreReport(
            strategy="clone", backup_id=None, source=f"clone {clone}", database=live,
            started_at=started, finished_at=time.time(), data_window_start=taken,
            data_window_end=started, kept=aside, kept_kind="database",
            blocked_seconds=round(blocked, 3), validation=_validate_live(options, None))


def _clone_time(admin: psycopg.Connection[Any], clone: str, live: str) -> float | None:
    row = admin.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database"
                        " WHERE datname = %s", (clone,)).fetchone()
    comment = str(row[0]) if row and row[0] else ""
    match = re.fullmatch(re.escape(CLONE_COMMENT.format(db=live, at="@")).replace(
        "@", r"([0-9.]+)"), comment)
    return float(match.group(1)) if match else None


# -- shared steps ----------------------------------------------------------------------------


def verified_manifest(store: BackupStore, backup_id: str, live: str, *,
                      whole: bool) -> Manifest:
    """The manifest of a sound backup of ``live``; ``RestoreError`` with the reason if not.

    A backup verified before is re-checked against its checksums only (a file damaged since
    is caught; the bytes pg_restore read then are the bytes it reads now). One never verified,
    or that failed, is verified now.
    """
    try:
        manifest = store.get(backup_id)
        last = store.verification(backup_id)
        if last is not None and last.ok:
            try:
                check_files(store.path(backup_id), manifest, lambda *_: None)
            except BackupError as exc:
                raise RestoreError(f"backup {backup_id} is refused: {exc}") from None
        else:
            result = store.verify(backup_id)
            if not result.ok:
                raise RestoreError(f"backup {backup_id} is refused: it failed verification: "
                                   f"{result.reason}")
    except BackupError as exc:
        raise RestoreError(f"backup {backup_id} is refused: {exc}") from None
    if manifest.database != live:
        raise RestoreError(f"backup {backup_id} is of database {manifest.database}, not "
                           f"{live}: refusing to restore it over another database")
    if whole and manifest.selected_tables is not None:
        raise RestoreError(f"backup {backup_id} holds only the tables "
                           f"{', '.join(manifest.selected_tables)}: restore them with --tables")
    return manifest


def _safety_backup(store: BackupStore, options: RestoreOptions,
                   tables: list[str] | None) -> str:
    try:
        if tables is None:
            taken = store.create(options.dsn, "safety")
        else:
            taken = store.create(options.dsn, "tables", tables=tables)
        result = store.verify(taken.id)
    except BackupError as exc:
        raise RestoreError(f"the safety backup failed, nothing was restored: {exc}") from None
    if not result.ok:
        raise RestoreError(f"the safety backup {taken.id} failed verification, nothing was "
                           f"restored: {result.reason}")
    return taken.id


def _validate_live(options: RestoreOptions, manifest: Manifest | None) -> list[CheckResult]:
    results = validate_database(options.dsn, expected_tables=options.expected_tables,
                                checks=options.checks, timeout=options.statement_timeout,
                                connect_timeout=options.connect_timeout)
    if manifest is not None and options.key_tables:
        results += validate_data(options.dsn, manifest, options.key_tables,
                                 timeout=options.statement_timeout,
                                 connect_timeout=options.connect_timeout)
    return results


def _pg_restore(store: BackupStore, manifest: Manifest, options: RestoreOptions, target: str,
                flags: list[str], kept: str | None = None) -> None:
    tool = _restore_tool(manifest, "pg_restore")
    env = _tool_env(with_dbname(options.dsn, target), options)
    _run(tool.path, [*flags, "-d", target, str(store.data_path(manifest))], env,
         time.monotonic() + options.restore_timeout, f"pg_restore into {target}", kept=kept)


def _restore_tool(manifest: Manifest, name: str) -> Any:
    try:
        return find_restore_tool(manifest, name)
    except BackupError as exc:
        raise RestoreError(str(exc)) from None


def _tool_env(dsn: str, options: RestoreOptions) -> dict[str, str]:
    """libpq environment, with a lock_timeout: a restore fails rather than queue for locks."""
    try:
        env = libpq_env(dsn, connect_timeout=options.connect_timeout)
    except PgToolError as exc:
        raise RestoreError(str(exc)) from None
    lock = f"-c lock_timeout={max(1, int(options.lock_wait_timeout * 1000))}"
    env["PGOPTIONS"] = f"{env.get('PGOPTIONS', '')} {lock}".strip()
    return env


def _run(tool: Path, args: list[str], env: Any, deadline: float, what: str,
         kept: str | None) -> Any:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise RestoreError(f"{what}: the restore timeout ran out before it started")
    try:
        result = run_tool([str(tool), *args], env=env, timeout=remaining)
    except PgToolError as exc:
        raise RestoreError(f"{what} failed: {exc}" + _kept(kept)) from None
    if result.returncode != 0:
        raise RestoreError(f"{what} failed (exit status {result.returncode}); nothing was "
                           f"changed" + _kept(kept) + ". Its messages:\n"
                           + _error_lines(result.stderr))
    return result


def _kept(kept: str | None) -> str:
    return "" if kept is None else f" (the pre-restore data is also in {kept})"


def _error_lines(stderr: str, limit: int = 30) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    if len(lines) > limit:
        lines = [*lines[:limit - 1], f"... ({len(lines) - limit + 1} more lines)"]
    return "\n".join(lines) or "(no output)"


def _tail(text: str, lines: int) -> str:
    return "\n".join([line for line in text.strip().splitlines() if line.strip()][-lines:])


@contextlib.contextmanager
def _locked(options: RestoreOptions, what: str) -> Iterator[None]:
    if not options.take_lock:
        yield
        return
    with rollback_lock(options.state_dir, options.maintenance_dsn, what,
                       connect_timeout=options.connect_timeout):
        yield


@contextlib.contextmanager
def session(dsn: str, options: RestoreOptions) -> Iterator[psycopg.Connection[Any]]:
    try:
        conn = connect_sync(dsn, connect_timeout=options.connect_timeout,
                            statement_timeout=options.statement_timeout,
                            lock_timeout=options.lock_wait_timeout)
    except psycopg.Error as exc:
        raise RestoreError(f"cannot connect to {conninfo_to_dict(dsn).get('dbname')}: "
                           f"{one_line(exc)}") from None
    try:
        with conn:
            yield conn
    except psycopg.Error as exc:
        raise RestoreError(f"database error: {one_line(exc)}") from None


@contextlib.contextmanager
def admin_session(options: RestoreOptions) -> Iterator[psycopg.Connection[Any]]:
    """A session on the maintenance database: renames and drops cannot run from the target."""
    with session(options.maintenance_dsn, options) as conn:
        yield conn

