"""Administration sessions on PostgreSQL: the one way rollbackd connects for its own work
(backups, restores, validation, drills), and what restores and drills do to whole databases:
derived names that fit 63 bytes, terminating sessions, holding every other session out of a
database, ending what a killed restore left running, dropping, creating a database like
another (encoding, locale, owner, grants, settings).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from probes.base import one_line
from probes.pg import APPLICATION_NAME, connect_sync, dbname_of, with_dbname
from probes.settings import SqlCheck

if TYPE_CHECKING:
    from daemon.config import Config

MAX_IDENTIFIER = 63

RESTORE_APPLICATION = "rollbackd-restore:"
"""``application_name`` prefix of the sessions a restore works in
(``rollbackd-restore:<pid>@<host>``): how the next restore, or rollbackd's start, finds what a
killed one left running."""


TERMINATE_STEP = 5.0
"""Longest single ``pg_terminate_backend`` wait; the loop re-checks in between."""


_LIST_QUOTE_GUCS = frozenset({"local_preload_libraries", "search_path",
                              "session_preload_libraries", "shared_preload_libraries",
                              "temp_tablespaces", "unix_socket_directories"})


class RestoreError(Exception):
    """A restore that was refused or failed; ``str()`` says why and what state was left."""


@dataclass(frozen=True, slots=True)
class RestoreOptions:
    """Where and how to restore; ``from_config`` builds it from ``[database]``/``[backups]``.

    ``take_lock=False`` is for a caller that already holds :func:`daemon.locks.rollback_lock`
    (one that restores several things under one hold).
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


@contextlib.contextmanager
def connect(dsn: str, *, connect_timeout: float, statement_timeout: float,
            lock_timeout: float, read_only: bool = False,
            error: Callable[[str], Exception] = RestoreError,
            application_name: str = APPLICATION_NAME,
            ) -> Iterator[psycopg.Connection[Any]]:
    """A bounded session (every wait has a timeout) for rollbackd's own work; a failure to
    connect, or a database error inside the block, is raised as ``error(one line)`` (libpq's
    messages never repeat the password)."""
    try:
        conn = connect_sync(dsn, connect_timeout=connect_timeout,
                            statement_timeout=statement_timeout, lock_timeout=lock_timeout,
                            read_only=read_only, application_name=application_name)
    except psycopg.Error as exc:
        raise error(f"cannot connect to database {dbname_of(dsn) or '(default)'}: "
                    f"{one_line(exc)}") from None
    try:
        with conn:
            yield conn
    except psycopg.Error as exc:
        raise error(f"database error: {one_line(exc)}") from None


def session(dsn: str, options: RestoreOptions) -> contextlib.AbstractContextManager[
        psycopg.Connection[Any]]:
    """:func:`connect` with a restore's timeouts."""
    return connect(dsn, connect_timeout=options.connect_timeout,
                   statement_timeout=options.statement_timeout,
                   lock_timeout=options.lock_wait_timeout)


@contextlib.contextmanager
def admin_session(options: RestoreOptions) -> Iterator[psycopg.Connection[Any]]:
    """A session on the maintenance database: renames and drops cannot run from the target."""
    with session(options.maintenance_dsn, options) as conn:
        yield conn


def terminate_sessions(admin: psycopg.Connection[Any], database: str, deadline: float) -> list[int]:
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


# Every session of the database but ours and ``keep``: the client backends listed in
# pg_stat_activity, and those still starting. A backend takes a lock on its database's
# pg_database row before it checks datallowconn and holds it until its start-up transaction
# ends, after it shows up in pg_stat_activity: so once connections are disallowed, a scan of
# both that finds nobody means nobody else can get in.
_OTHER_SESSIONS = """
SELECT pid, pg_terminate_backend(pid, %(wait)s) FROM (
    SELECT pid FROM pg_stat_activity
    WHERE datname = %(db)s AND backend_type = 'client backend'
    UNION
    SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.objid
    WHERE l.locktype = 'object' AND l.classid = 'pg_database'::regclass
      AND d.datname = %(db)s AND l.pid IS NOT NULL
) s WHERE pid <> pg_backend_pid() AND pid <> ALL(%(keep)s::int[])"""


def hold_out(admin: psycopg.Connection[Any], database: str, keep: Collection[int],
             deadline: float) -> None:
    """Disallow new connections to ``database`` and end every session of it but ``keep``'s
    (superusers', rollbackd's own and those still starting included); ``RestoreError`` naming
    the sessions left at the deadline. The caller allows connections again (even on error)."""
    admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(
        sql.Identifier(database)))
    left: list[int] = []
    while True:
        wait = milliseconds_left(deadline, TERMINATE_STEP)
        rows = admin.execute(_OTHER_SESSIONS, {"wait": max(wait, 1), "db": database,
                                               "keep": list(keep)}).fetchall()
        if not rows:
            return
        left = [int(pid) for pid, ended in rows if not ended]
        if time.monotonic() >= deadline:
            break
    raise RestoreError(
        f"the sessions of {database} would not end within backups.terminate_timeout "
        f"(pids {', '.join(map(str, left)) or 'still arriving'}); nothing was restored")


def allow_connections(admin: psycopg.Connection[Any], database: str) -> None:
    admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(
        sql.Identifier(database)))


def restore_application_name(pid: int | None = None, host: str | None = None) -> str:
    """``rollbackd-restore:<pid>@<host>`` (this process's by default), cut to 63 bytes as
    PostgreSQL cuts application names."""
    name = (f"{RESTORE_APPLICATION}{os.getpid() if pid is None else pid}"
            f"@{socket.gethostname() if host is None else host}")
    return name.encode()[:MAX_IDENTIFIER].decode(errors="ignore")


def end_leftover_restores(admin: psycopg.Connection[Any], deadline: float) -> list[int]:
    """End the sessions of restores that are no longer running (a pg_restore that outlived a
    killed rollbackd, its locks and its uncommitted transaction): named by
    :func:`restore_application_name` for this process (a finished restore's) or for a pid
    that no longer runs on this host. Call it holding the rollback lock: then a restore of
    another host is not running either, so its sessions are ended too. The pids ended."""
    rows = admin.execute(
        "SELECT pid, application_name FROM pg_stat_activity WHERE application_name LIKE %s"
        " AND pid <> pg_backend_pid()", (RESTORE_APPLICATION + "%",),
    ).fetchall()
    doomed = [int(pid) for pid, name in rows if _leftover(str(name))]
    for pid in doomed:
        admin.execute("SELECT pg_terminate_backend(%s, %s)",
                      (pid, max(milliseconds_left(deadline, TERMINATE_STEP), 1)))
    return doomed


def _leftover(name: str) -> bool:
    owner, _, _ = name.removeprefix(RESTORE_APPLICATION).partition("@")
    if not owner.isdigit():
        return False
    pid = int(owner)
    if name != restore_application_name(pid):
        return True  # another host's: it would hold the rollback lock if it were running
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def milliseconds_left(deadline: float, cap: float) -> int:
    return int(max(0.0, min(cap, deadline - time.monotonic())) * 1000)


def drop_quietly(options: RestoreOptions, name: str) -> None:
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


def apply_properties(admin: psycopg.Connection[Any], name: str, props: DatabaseProperties) -> None:
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
