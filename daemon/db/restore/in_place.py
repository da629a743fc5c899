"""The in-place strategy: a verified safety backup, then ``pg_restore --clean --if-exists
--single-transaction`` over the live database: all or nothing. (``--clean`` drops only what
the archive holds: tables a failed migration added survive, and are listed in the report's
notes.)

No write may land between the safety backup and the restore, where it would be in neither
copy; and the application may well be running (each request opening a connection of its own),
as may rollbackd's own probes. So, in one session of its own (the *holder*):

1. lock every table of the live database ``IN EXCLUSIVE MODE``: reads go on, writes wait
   (an open transaction that holds a write lock is ended after a short wait: its writes were
   never acknowledged);
2. take and verify the safety backup: it imports a snapshot taken after the lock, so it holds
   every write acknowledged before the restore (pg_dump's ``ACCESS SHARE`` locks do not
   conflict with the holder's);
3. start pg_restore and wait until its session is connected;
4. from the maintenance database, disallow connections to live and end every other session,
   superusers', rollbackd's own (probes reconnect later) and those still starting included
   (:func:`daemon.db.admin.hold_out`);
5. end the holder's transaction: pg_restore, alone in the database, takes its locks;
6. allow connections again, whatever happened (``finally``).

Writes refused or aborted meanwhile were never acknowledged; writes made after step 6 land in
the restored database.

A killed restore: pg_restore dies with rollbackd (:mod:`daemon.proc`) and its session notices
within a second (``client_connection_check_interval``), so its transaction never commits. What
it leaves is the live database refusing connections and ``<state_dir>/restore-in-progress.json``,
written atomically before step 4 and marked before step 5 (from then on the restore may have
committed, as far as anyone can tell afterwards). :func:`recover_interrupted_in_place` (the next
restore calls it first; the daemon should at start-up) ends leftover restore sessions and allows
connections again; the record stays, so that :func:`interrupted_in_place` (``status``) and the
next in-place restore's report name the safety backup that holds the data from before the
interrupted restore, until an in-place restore completes.

Not held back: writes to large objects and sequence increments, which no table lock stops.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from daemon.db.admin import (
    RestoreError,
    RestoreOptions,
    admin_session,
    allow_connections,
    connect,
    end_leftover_restores,
    hold_out,
    restore_application_name,
    session,
)
from daemon.db.backups import BackupStore, Manifest
from daemon.db.restore.common import (
    RestoreReport,
    check_exit,
    locked,
    restore_tool,
    safety_backup,
    tool_env,
    validate_live,
    verified_manifest,
)
from daemon.durable import replace_atomically
from daemon.fmt import when
from daemon.proc import ProcError, Running, started
from probes.base import one_line

STATE_FILE = "restore-in-progress.json"

LOCK_STEP = 1.0
"""Seconds the holder waits for the table locks before it ends the sessions holding them."""

_USER_TABLES = """
SELECT c.oid, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
ORDER BY c.oid"""

# Sessions holding, or queued for, a lock on the tables that conflicts with EXCLUSIVE.
_END_WRITERS = """
SELECT pid, pg_terminate_backend(pid, %(wait)s) FROM (
    SELECT DISTINCT pid FROM pg_locks
    WHERE database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND relation = ANY(%(tables)s::oid[]) AND mode <> 'AccessShareLock'
      AND pid IS NOT NULL AND pid <> pg_backend_pid()
) s"""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One in-place restore that got as far as taking its safety backup."""

    backup_id: str
    pid: int
    host: str
    started_at: float
    safety_backup: str
    may_have_restored: bool = False
    """Set before pg_restore is let in: from then on only the database knows if it committed."""


@dataclass(frozen=True, slots=True)
class InterruptedRestore:
    """What ``restore-in-progress.json`` records: in-place restores of ``database`` that were
    interrupted (killed) after they may have restored it, oldest first."""

    database: str
    attempts: list[Attempt] = field(default_factory=list)
    blocked_connections: bool = False
    """Connections to ``database`` may still be disallowed by the interrupted restore."""

    @property
    def safety_backups(self) -> list[str]:
        return [a.safety_backup for a in self.attempts]

    def describe(self) -> str:
        """One line for an operator."""
        if not self.attempts:
            return (f"a previous in-place restore of database {self.database} was interrupted "
                    "and may have left it refusing connections")
        first = self.attempts[0]
        text = (f"a previous in-place restore of database {self.database} from backup "
                f"{first.backup_id} (pid {first.pid} on {first.host}, started "
                f"{when(first.started_at)}) was interrupted and may have restored it; the data "
                f"from before it is in safety backup {first.safety_backup}")
        later = self.safety_backups[1:]
        if later:
            text += f" (later interrupted attempts took {', '.join(later)})"
        return text

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def restore_in_place(store: BackupStore, backup_id: str,
                     options: RestoreOptions) -> RestoreReport:
    """A verified safety backup, then one all-or-nothing pg_restore over the live database,
    every other session held out (see the module docstring)."""
    live = options.database
    manifest = verified_manifest(store, backup_id, live, whole=True)
    with locked(options, f"in-place restore of {backup_id}"):
        previous = _recover_locked(options)
        if previous is not None and previous.database != live:
            raise RestoreError(
                f"{options.state_dir / STATE_FILE} records interrupted restores of another "
                f"database: {previous.describe()}; keep that safety backup, move the file "
                "away, then restore again")
        started_at = time.time()
        deadline = time.monotonic() + options.restore_timeout
        name = restore_application_name()
        with _holding_writes(options, name, deadline) as holder:
            safety = safety_backup(store, options, None)
            attempt = Attempt(backup_id=manifest.id, pid=os.getpid(),
                              host=socket.gethostname(), started_at=started_at,
                              safety_backup=safety)
            _restore_alone(store, manifest, options, holder, name, deadline, previous, attempt)
        with session(options.dsn, options) as conn:
            conn.execute("ANALYZE")
            extra = _extra_tables(conn, manifest)
        notes = [f"table(s) not in the restore point survived (--clean drops only what the "
                 f"archive holds): {', '.join(extra)}"] if extra else []
        kept = safety
        if previous is not None and previous.attempts:
            kept = previous.attempts[0].safety_backup
            notes.insert(0, previous.describe() + f"; the data just before this restore is in "
                                                  f"safety backup {safety}")
        return RestoreReport(
            strategy="in_place", backup_id=manifest.id, source=manifest.id, database=live,
            started_at=started_at, finished_at=time.time(),
            data_window_start=manifest.created_at, data_window_end=started_at, kept=kept,
            kept_kind="backup", safety_backup=safety,
            validation=validate_live(options, manifest), notes=notes)


def interrupted_in_place(state_dir: Path) -> InterruptedRestore | None:
    """The record of interrupted in-place restores in ``state_dir``, if there is one."""
    path = state_dir / STATE_FILE
    try:
        data = json.loads(path.read_bytes())
        return InterruptedRestore(
            database=str(data["database"]),
            attempts=[Attempt(**a) for a in data["attempts"]],
            blocked_connections=bool(data.get("blocked_connections", False)))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RestoreError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise RestoreError(f"{path} is not a record of interrupted restores ({exc}): read it, "
                           "keep the safety backups it names, then remove it") from None


def recover_interrupted_in_place(options: RestoreOptions) -> InterruptedRestore | None:
    """Undo what a killed in-place restore left (for rollbackd's start, and the next restore):
    end leftover restore sessions and allow connections again. Returns the record of restores
    that may have completed (kept: it names where the data from before them is), if any.
    Takes the rollback lock unless ``options.take_lock`` is false."""
    with locked(options, "recovery of an interrupted in-place restore"):
        return _recover_locked(options)


def _recover_locked(options: RestoreOptions) -> InterruptedRestore | None:
    record = interrupted_in_place(options.state_dir)
    with admin_session(options) as admin:
        end_leftover_restores(admin, time.monotonic() + options.terminate_timeout)
        if record is not None and record.blocked_connections:
            allow_connections(admin, record.database)
    if record is None:
        return None
    # An attempt killed before pg_restore was let in changed nothing.
    record = replace(record, attempts=[a for a in record.attempts if a.may_have_restored],
                     blocked_connections=False)
    _write_state(options.state_dir, record if record.attempts else None)
    return record if record.attempts else None


def _write_state(state_dir: Path, record: InterruptedRestore | None) -> None:
    path = state_dir / STATE_FILE
    try:
        if record is None:
            path.unlink(missing_ok=True)
        else:
            state_dir.mkdir(parents=True, exist_ok=True)
            replace_atomically(path, (json.dumps(record.as_json(), indent=2) + "\n").encode())
    except OSError as exc:
        raise RestoreError(f"cannot write {path}: {exc.strerror or exc}") from None


class _Holder:
    """The session holding every table's EXCLUSIVE lock until pg_restore is let in."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.pid = int(conn.info.backend_pid)

    def release(self) -> None:
        self.conn.execute("ROLLBACK")


@contextlib.contextmanager
def _holding_writes(options: RestoreOptions, name: str, deadline: float) -> Iterator[_Holder]:
    with connect(options.dsn, connect_timeout=options.connect_timeout,
                 statement_timeout=options.statement_timeout,
                 lock_timeout=options.lock_wait_timeout, application_name=name) as conn:
        # It idles in its transaction while the safety backup runs.
        conn.execute("SET idle_in_transaction_session_timeout = 0")
        tables = conn.execute(_USER_TABLES).fetchall()
        lock = sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(sql.SQL(", ").join(
            sql.Identifier(schema, table) for _, schema, table in tables))
        until = min(deadline, time.monotonic() + options.lock_wait_timeout
                    + options.terminate_timeout)
        while True:
            conn.execute("BEGIN")
            if not tables:
                break
            conn.execute("SELECT set_config('lock_timeout', %s, true)",
                         (str(max(1, int(min(LOCK_STEP, options.lock_wait_timeout) * 1000))),))
            try:
                conn.execute(lock)
                break
            except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected) as exc:
                conn.execute("ROLLBACK")
                if time.monotonic() >= until:
                    raise RestoreError(f"the tables could not be locked against writes within "
                                       f"backups.lock_wait_timeout + terminate_timeout "
                                       f"({one_line(exc)}); nothing was restored") from None
                # Their transactions were not committed: no acknowledged write is lost.
                conn.execute(_END_WRITERS, {"wait": int(LOCK_STEP * 1000),
                                            "tables": [int(oid) for oid, _, _ in tables]})
        yield _Holder(conn)


def _restore_alone(store: BackupStore, manifest: Manifest, options: RestoreOptions,
                   holder: _Holder, name: str, deadline: float,
                   previous: InterruptedRestore | None, attempt: Attempt) -> None:
    """Steps 3 to 6: pg_restore alone in the live database; the state file kept up to date."""
    live = options.database
    earlier = [] if previous is None else previous.attempts
    kept = f"safety backup {attempt.safety_backup}"
    tool = restore_tool(manifest, "pg_restore")
    # pg_restore queues for the holder's locks until the others are held out.
    env = tool_env(options.dsn, options, application_name=name,
                   lock_timeout=options.lock_wait_timeout + options.terminate_timeout
                   + 2 * options.connect_timeout)
    argv = [str(tool.path), "--clean", "--if-exists", "--single-transaction",
            "--exit-on-error", "-d", live, str(store.data_path(manifest))]
    letting_in = replace(attempt, may_have_restored=True)
    _write_state(options.state_dir, InterruptedRestore(live, [*earlier, attempt], True))
    backend: int | None = None
    released = False
    ended: str | None = None  # "restored" or "rolled back", once pg_restore's status is known
    try:
        with started(argv, env=env) as child:
            backend = _connected(options, name, holder.pid, child, deadline, kept)
            with admin_session(options) as admin:
                hold_out(admin, live, (holder.pid, backend),
                         min(deadline, time.monotonic() + options.terminate_timeout))
            _write_state(options.state_dir, InterruptedRestore(live, [*earlier, letting_in],
                                                               True))
            released = True
            holder.release()
            try:
                result = child.wait(deadline - time.monotonic())
            except ProcError as exc:
                raise RestoreError(f"pg_restore into {live} failed: {exc} (the pre-restore "
                                   f"data is in {kept})") from None
            ended = "restored" if result.returncode == 0 else "rolled back"
            check_exit(result, f"pg_restore into {live}", kept)
    finally:
        let_in = False
        try:
            _let_in(options, live, None if ended else backend)
            let_in = True
        finally:
            # Killed or timed out after pg_restore was let in: it may have committed.
            attempts = ([*earlier, letting_in] if released and ended is None
                        else [] if ended == "restored" else earlier)
            _write_state(options.state_dir, InterruptedRestore(live, attempts, not let_in)
                         if attempts or not let_in else None)


def _connected(options: RestoreOptions, name: str, holder: int, child: Running,
               deadline: float, kept: str) -> int:
    """The pid of pg_restore's session once it is connected (before connections are refused)."""
    until = min(deadline, time.monotonic() + 2 * options.connect_timeout + 10)
    with admin_session(options) as admin:
        while True:
            row = admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = %s"
                " AND pid <> %s LIMIT 1", (options.database, name, holder)).fetchone()
            if row is not None:
                return int(row[0])
            done = child.finished(0.05)
            if done is not None:
                check_exit(done, f"pg_restore into {options.database}", kept)
                raise RestoreError(f"pg_restore into {options.database} ended before it "
                                   "connected; nothing was changed")
            if time.monotonic() >= until:
                raise RestoreError(f"pg_restore did not connect to {options.database} in time; "
                                   "nothing was changed")


def _let_in(options: RestoreOptions, live: str, unfinished: int | None) -> None:
    """Allow connections again; first end the session of a pg_restore that did not finish."""
    try:
        with admin_session(options) as admin:
            if unfinished is not None:
                admin.execute("SELECT pg_terminate_backend(%s, %s)",
                              (unfinished, int(options.terminate_timeout * 1000)))
            allow_connections(admin, live)
    except RestoreError as exc:
        raise RestoreError(f"connections to {live} could not be allowed again ({exc}): run "
                           f"ALTER DATABASE {live} ALLOW_CONNECTIONS true") from None


def _extra_tables(conn: psycopg.Connection[Any], manifest: Manifest) -> list[str]:
    known = {t.qualified for t in manifest.tables}
    rows = conn.execute(
        "SELECT n.nspname || '.' || c.relname FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r'"
        " AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        " AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1").fetchall()
    return [str(r[0]) for r in rows if str(r[0]) not in known]
