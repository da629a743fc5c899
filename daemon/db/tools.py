"""PostgreSQL client tools (pg_dump, pg_restore, psql): finding the right ones, and the libpq
environment they connect with (they run through :mod:`daemon.proc`).

A dump taken by a client older than the server is refused by pg_dump itself, and a restore by a
client older than the dump's format fails halfway through: so tools are looked up for a server
major version, preferring the Debian per-version directory, and never older than that major.

Connection parameters reach the tools through the libpq environment built from the DSN, never
through argv, where every user of the host could read a password in ``ps``.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

from daemon.proc import ProcError, run_process
from probes.pg import APPLICATION_NAME, libpq_connect_timeout

DEBIAN_ROOT = Path("/usr/lib/postgresql")
VERSION_TIMEOUT = 10.0

# libpq connection parameters and the environment variables that set them (libpq docs 34.15).
LIBPQ_ENV = {
    "host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT", "dbname": "PGDATABASE",
    "user": "PGUSER", "password": "PGPASSWORD", "passfile": "PGPASSFILE",
    "require_auth": "PGREQUIREAUTH", "channel_binding": "PGCHANNELBINDING",
    "service": "PGSERVICE", "options": "PGOPTIONS", "application_name": "PGAPPNAME",
    "sslmode": "PGSSLMODE", "requiressl": "PGREQUIRESSL", "sslnegotiation": "PGSSLNEGOTIATION",
    "sslcompression": "PGSSLCOMPRESSION", "sslcert": "PGSSLCERT", "sslkey": "PGSSLKEY",
    "sslcertmode": "PGSSLCERTMODE", "sslrootcert": "PGSSLROOTCERT", "sslcrl": "PGSSLCRL",
    "sslcrldir": "PGSSLCRLDIR", "sslsni": "PGSSLSNI", "requirepeer": "PGREQUIREPEER",
    "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION",
    "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION", "gssencmode": "PGGSSENCMODE",
    "krbsrvname": "PGKRBSRVNAME", "gsslib": "PGGSSLIB", "gssdelegation": "PGGSSDELEGATION",
    "connect_timeout": "PGCONNECT_TIMEOUT", "client_encoding": "PGCLIENTENCODING",
    "target_session_attrs": "PGTARGETSESSIONATTRS", "load_balance_hosts": "PGLOADBALANCEHOSTS",
}

_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


class PgToolError(ProcError):
    """A client tool that cannot be found or configured; ``str()`` is for an operator."""


@dataclass(frozen=True, slots=True)
class Tool:
    """A client binary and the PostgreSQL version it belongs to."""

    name: str
    path: Path
    version: str
    """As the tool prints it, e.g. ``15.18``."""
    major: int


def server_major(server_version_num: int) -> int:
    """The major version in ``server_version_num`` (150018 -> 15, 90624 -> 9)."""
    return server_version_num // 10000


def tool_version(path: Path) -> tuple[str, int]:
    """``(version, major)`` that ``path --version`` reports."""
    result = run_process([str(path), "--version"], env=dict(os.environ), timeout=VERSION_TIMEOUT)
    match = _VERSION.search(result.stdout)
    if result.returncode != 0 or match is None:
        raise PgToolError(f"{path} --version did not report a PostgreSQL version: "
                          f"{(result.stdout + result.stderr).strip()[:200]}")
    major = int(match.group(1))
    minor = match.group(2)
    return (f"{major}.{minor}" if minor is not None else str(major)), major


def _candidates(name: str, major: int) -> list[Path]:
    """Where to look, best first: this major's Debian directory, newer majors', then PATH."""
    found: list[Path] = [DEBIAN_ROOT / str(major) / "bin" / name]
    newer = sorted(int(p.name) for p in _debian_majors() if int(p.name) > major)
    found += [DEBIAN_ROOT / str(m) / "bin" / name for m in newer]
    on_path = shutil.which(name)
    if on_path:
        found.append(Path(on_path))
    return [p for p in found if p.is_file() and os.access(p, os.X_OK)]


def _debian_majors() -> list[Path]:
    if not DEBIAN_ROOT.is_dir():
        return []
    return [p for p in DEBIAN_ROOT.iterdir() if p.name.isdigit()]


def find_tool(name: str, major: int) -> Tool:
    """The ``name`` client (``pg_dump``, ``pg_restore``, ``psql``) for a server of ``major``.

    Raises ``PgToolError`` when none is installed, or when every one found is older than the
    server (the message names what was found, so the operator knows which package to add).
    """
    seen: list[str] = []
    for path in _candidates(name, major):
        version, tool_major = tool_version(path)
        if tool_major >= major:
            return Tool(name, path, version, tool_major)
        seen.append(f"{path} is {version}")
    if not seen:
        raise PgToolError(f"{name} not found (looked in {DEBIAN_ROOT}/{major}/bin and on PATH; "
                          f"install postgresql-client-{major})")
    raise PgToolError(f"no {name} for PostgreSQL {major} or newer: {'; '.join(seen)} "
                      f"(install postgresql-client-{major})")


def libpq_env(dsn: str, *, connect_timeout: float | None = None,
              base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment that makes a libpq client connect as ``dsn`` says, with no argv needed.

    Starts from ``base`` (default: this process's environment, so a ``PGPASSFILE`` or
    ``PGSERVICEFILE`` the service was given still applies) and sets every parameter the DSN
    names. ``application_name`` defaults to rollbackd's, so our tools' sessions are told apart
    from the application's. Raises ``PgToolError`` for a parameter libpq reads from no
    environment variable (naming it, never its value).
    """
    try:
        params = conninfo_to_dict(dsn)
    except Exception as exc:  # psycopg raises ProgrammingError; the DSN may hold a password
        raise PgToolError(f"the database DSN cannot be parsed ({type(exc).__name__})") from None
    env = dict(os.environ if base is None else base)
    env.setdefault("PGAPPNAME", APPLICATION_NAME)
    if connect_timeout is not None and "connect_timeout" not in params:
        env["PGCONNECT_TIMEOUT"] = str(libpq_connect_timeout(connect_timeout))
    for key, value in params.items():
        if value is None:
            continue
        var = LIBPQ_ENV.get(key)
        if var is None:
            raise PgToolError(f"the DSN parameter {key!r} cannot be passed to the PostgreSQL "
                              "client tools (no libpq environment variable sets it)")
        env[var] = str(value)
    return env
