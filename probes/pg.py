"""Connections to PostgreSQL as rollbackd opens them: bounded in every wait, named, autocommit.

Probes, backups and the executor all connect through here, so that no session of rollbackd can
wait forever on a connection, a statement or a lock, and every one of them shows up as
``application_name = rollbackd`` in ``pg_stat_activity`` (which is how an operator, or the
swap step terminating sessions, tells them apart from the application's).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

APPLICATION_NAME = "rollbackd"

LIBPQ_MIN_CONNECT_TIMEOUT = 2
"""libpq rounds any ``connect_timeout`` below 2 s up to 2 s (and 0 means wait forever)."""


def milliseconds(seconds: float) -> int:
    """``seconds`` as the whole milliseconds PostgreSQL timeouts take; 0 stays 0 (no timeout)."""
    if seconds < 0:
        raise ValueError(f"a timeout cannot be negative: {seconds}")
    return 0 if seconds == 0 else max(1, math.ceil(seconds * 1000))


def session_options(
    *, statement_timeout: float, lock_timeout: float, read_only: bool = False, existing: str = ""
) -> str:
    """The libpq ``options`` value that sets the timeouts, after any options the DSN already had.

    Later ``-c`` settings win in PostgreSQL, so ours go last: a DSN cannot lift the bounds.
    """
    ours = (f"-c statement_timeout={milliseconds(statement_timeout)} "
            f"-c lock_timeout={milliseconds(lock_timeout)}")
    if read_only:
        ours += " -c default_transaction_read_only=on"
    return f"{existing.strip()} {ours}".strip()


def libpq_connect_timeout(seconds: float) -> int:
    """Whole seconds for libpq's ``connect_timeout``, at least its 2 s floor (0 = forever)."""
    if seconds <= 0:
        raise ValueError(f"connect_timeout must be positive: {seconds}")
    return max(LIBPQ_MIN_CONNECT_TIMEOUT, math.ceil(seconds))


def with_dbname(dsn: str, dbname: str) -> str:
    """The same connection parameters pointed at another database (e.g. the maintenance one)."""
    return make_conninfo(dsn, dbname=dbname)


def dbname_of(dsn: str) -> str | None:
    """The database a DSN names, if it names one (else libpq defaults it to the user name)."""
    value = conninfo_to_dict(dsn).get("dbname")
    return None if value is None else str(value)


async def connect(
    dsn: str,
    *,
    connect_timeout: float,
    statement_timeout: float,
    lock_timeout: float,
    read_only: bool = False,
) -> psycopg.AsyncConnection[Any]:
    """Open an autocommit connection to ``dsn`` with every wait bounded.

    ``statement_timeout`` and ``lock_timeout`` are seconds (0 disables one, as in PostgreSQL)
    and are set at connection start through libpq ``options``, so they hold for the whole
    session without an extra round trip. ``connect_timeout`` is rounded up to whole seconds,
    and to at least 2 s, which is the least libpq honours. ``read_only`` makes every
    transaction of the session read-only (for sessions that run SQL taken from the config).

    Raises ``psycopg.OperationalError`` when the server cannot be reached, refuses the login,
    or does not answer in time (``psycopg.errors.ConnectionTimeout``).
    """
    try:
        return await psycopg.AsyncConnection.connect(dsn, **_bounded(
            dsn, connect_timeout=connect_timeout, statement_timeout=statement_timeout,
            lock_timeout=lock_timeout, read_only=read_only))
    except psycopg.Error as exc:
        scrub_connect_error(exc, dsn)
        raise


def connect_sync(
    dsn: str,
    *,
    connect_timeout: float,
    statement_timeout: float,
    lock_timeout: float,
    read_only: bool = False,
    application_name: str = APPLICATION_NAME,
    keep_idle: bool = False,
) -> psycopg.Connection[Any]:
    """:func:`connect`'s synchronous twin, for the work that runs in threads (backups,
    restores, validation, locks). ``keep_idle`` exempts the session from the server's
    ``idle_session_timeout``, for a session that only holds a lock."""
    try:
        return psycopg.connect(dsn, **_bounded(
            dsn, connect_timeout=connect_timeout, statement_timeout=statement_timeout,
            lock_timeout=lock_timeout, read_only=read_only, application_name=application_name,
            keep_idle=keep_idle))
    except psycopg.Error as exc:
        scrub_connect_error(exc, dsn)
        raise


def _bounded(dsn: str, *, connect_timeout: float, statement_timeout: float,
             lock_timeout: float, read_only: bool, application_name: str = APPLICATION_NAME,
             keep_idle: bool = False) -> dict[str, Any]:
    """Connection keywords with every wait bounded; raises ``psycopg.Error`` for a DSN libpq
    cannot parse."""
    existing = conninfo_to_dict(dsn).get("options")
    options = session_options(statement_timeout=statement_timeout, lock_timeout=lock_timeout,
                              read_only=read_only,
                              existing="" if existing is None else str(existing))
    if keep_idle:
        options += " -c idle_session_timeout=0"
    return {"autocommit": True, "connect_timeout": libpq_connect_timeout(connect_timeout),
            "application_name": application_name[:63], "options": options}


_QUOTED_VALUE = re.compile(r'(value:?) "[^"]*"')


def scrub_connect_error(exc: psycopg.Error, dsn: str) -> None:
    """Take out of ``exc``'s message what libpq quotes from the DSN: the value it found
    invalid (``invalid integer value "..." for connection option "port"``: a password typed
    into the wrong field) and the password itself. The exception keeps its class and
    SQLSTATE; only its text changes, before anyone logs it."""
    text = str(exc)
    scrubbed = _QUOTED_VALUE.sub(lambda m: f'{m.group(1)} "***"', text)
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.Error:
        password = None
    if password:
        scrubbed = scrubbed.replace(str(password), "***")
    if scrubbed != text:
        exc.args = (scrubbed, *exc.args[1:])


async def round_trip(conn: psycopg.AsyncConnection[Any]) -> float:
    """Seconds that ``SELECT 1`` takes on ``conn``, there and back."""
    started = time.perf_counter()
    cur = await conn.execute("SELECT 1")
    await cur.fetchone()
    return time.perf_counter() - started


class KeptConnection:
    """One connection kept open from use to use, and replaced when it has broken.

    A probe that connected anew every tick would add a login (and its log line on the server)
    per tick; keeping one means noticing when it dies under us, which happens on every server
    restart or crash: the next use then finds it closed and connects again, once.
    """

    def __init__(
        self,
        dsn: str,
        *,
        connect_timeout: float,
        statement_timeout: float,
        lock_timeout: float,
        read_only: bool = False,
    ) -> None:
        self.dsn = dsn
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        self.lock_timeout = lock_timeout
        self.read_only = read_only
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._suspect = False

    @asynccontextmanager
    async def use(self) -> AsyncIterator[tuple[psycopg.AsyncConnection[Any], float | None]]:
        """A live connection and the round trip of the ``SELECT 1`` that proved it alive.

        The round trip is ``None`` when the server answered the ping with an error (a statement
        timeout on an overloaded server): the connection is alive but the latency unmeasured.
        Raises ``psycopg.OperationalError`` when no connection can be had.
        """
        conn, latency = await self._checked()
        try:
            yield conn, latency
        except BaseException:
            # Interrupted mid-query (the probe's timeout cancels the task), the session may still
            # be waiting for a result it will never read: it is not fit to be reused.
            self._suspect = True
            raise

    async def _checked(self) -> tuple[psycopg.AsyncConnection[Any], float | None]:
        kept = self._conn
        if kept is not None and not kept.closed and not self._suspect:
            try:
                return kept, await round_trip(kept)
            except psycopg.OperationalError:
                if not kept.closed:
                    return kept, None
        await self.aclose()
        conn = await connect(self.dsn, connect_timeout=self.connect_timeout,
                             statement_timeout=self.statement_timeout,
                             lock_timeout=self.lock_timeout, read_only=self.read_only)
        self._conn = conn
        try:
            return conn, await round_trip(conn)
        except psycopg.OperationalError:
            if conn.closed:
                await self.aclose()
                raise
            return conn, None

    async def aclose(self) -> None:
        """Close the kept connection, if any; the next use connects again."""
        conn, self._conn, self._suspect = self._conn, None, False
        if conn is not None:
            await conn.close()
