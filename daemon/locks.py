"""One rollback at a time: on this host (a lock file) and across the fleet (an advisory lock).

* ``<state_dir>/rollback.lock`` is held with ``flock`` (released by the kernel when the holder
  dies, however it dies); the holder writes its pid and what it is doing into the file so that
  the refusal can name it.
* ``pg_try_advisory_lock(ROLLBACK_LOCK_KEY)`` is held on a session to the maintenance database
  for as long as the restore runs, so that of several app hosts sharing one database exactly
  one restores it. The server releases it when that session ends (a crashed host included).

Both are non-blocking: a second rollback is refused at once with :class:`LockError`, never
queued behind the first (it would then undo the first one's work).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from probes.base import one_line
from probes.pg import APPLICATION_NAME, connect_sync

LOCK_FILE = "rollback.lock"
ROLLBACK_LOCK_KEY = 0x726F6C6C6261636B
"""``rollback`` in ASCII as a bigint: a key no migration tool uses."""

_HOLDER_SQL = """
SELECT a.pid, a.application_name, host(a.client_addr), a.backend_start
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.database = (
        SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = (%(key)s >> 32)::oid AND l.objid = (%(key)s & 4294967295)::oid
  AND l.objsubid = 1
LIMIT 1"""


class LockError(Exception):
    """Another rollback holds the lock (or it cannot be taken); ``str()`` names the holder."""


@contextlib.contextmanager
def host_lock(state_dir: Path, what: str, *, name: str = LOCK_FILE,
              held_by: str = "another rollback") -> Iterator[Path]:
    """Hold ``<state_dir>/rollback.lock`` (or ``name``) for the block; ``LockError`` if another
    process (or another open of it in this one) has it. ``held_by`` says in the refusal what
    holds it."""
    path = state_dir / name
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise LockError(f"cannot open the lock {path}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockError(f"{held_by} is running on this host ({_holder(fd)}; "
                            f"lock file {path})") from None
        holder = {"pid": os.getpid(), "what": what, "since": time.time(),
                  "host": socket.gethostname()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        try:
            yield path
        finally:
            # Cleared before unlocking: a stale description must not name a finished holder.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    try:
        raw = os.pread(fd, 4096, 0)
        data = json.loads(raw.decode())
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(data["since"])))
        return f"pid {data['pid']}: {data['what']}, since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


@contextlib.contextmanager
def advisory_lock(maintenance_dsn: str, what: str, *, connect_timeout: float = 5.0,
                  key: int = ROLLBACK_LOCK_KEY, name: str = "the fleet-wide rollback lock",
                  ) -> Iterator[psycopg.Connection[Any]]:
    """Hold the fleet-wide advisory lock on a session to the maintenance database.

    ``LockError`` names the session holding it (pid, application, client address) or why the
    lock could not be taken. The yielded connection must stay open (and is only for the lock).
    """
    try:
        # The session idles for the whole restore: no server-side idle timeout may end it.
        conn = connect_sync(maintenance_dsn, connect_timeout=connect_timeout,
                            statement_timeout=30.0, lock_timeout=5.0,
                            application_name=f"{APPLICATION_NAME} lock: {what}", keep_idle=True)
    except psycopg.Error as exc:
        raise LockError(f"cannot take {name}: cannot connect to the "
                        f"maintenance database: {one_line(exc)}") from None
    with conn:
        try:
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
            if row is None or not row[0]:
                raise LockError(f"{name} is held by another session "
                                f"({_advisory_holder(conn, key)})")
        except psycopg.Error as exc:
            raise LockError(f"cannot take {name}: {one_line(exc)}") from None
        try:
            yield conn
        finally:
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


def _advisory_holder(conn: psycopg.Connection[Any], key: int) -> str:
    try:
        row = conn.execute(_HOLDER_SQL, {"key": key}).fetchone()
    except psycopg.Error:
        return "holder unknown"
    if row is None:
        return "holder unknown"
    pid, app, addr, since = row
    where = f" from {addr}" if addr else " (local socket)"
    return f"session pid {pid} '{app}'{where}, since {since:%Y-%m-%d %H:%M:%S}"


@contextlib.contextmanager
def rollback_lock(state_dir: Path, maintenance_dsn: str, what: str, *,
                  connect_timeout: float = 5.0) -> Iterator[None]:
    """Both locks, the host's first (cheap, and it keeps this host from asking twice)."""
    with host_lock(state_dir, what), advisory_lock(maintenance_dsn, what,
                                                   connect_timeout=connect_timeout):
        yield

