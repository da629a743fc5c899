"""A throwaway PostgreSQL cluster: initdb and pg_ctl in a temp dir, on a free loopback port.

The one implementation behind ``rollbackd demo`` and the test suite (``tests/harness/servers``
wraps it to skip or fail a test when PostgreSQL is missing). PostgreSQL refuses to run as
root, so as root the server binaries run as the unprivileged ``postgres`` user through
``runuser``; client tools connect over TCP as the ``postgres`` role (trust authentication, on
127.0.0.1 only).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg

SERVER_USER = "postgres"


class PgUnavailableError(RuntimeError):
    """The machine cannot run a throwaway server; ``str()`` says what to install or create."""


def find_binary(name: str) -> str | None:
    """``name`` on PATH, else under /usr/lib/postgresql/<newest>/bin (Debian keeps them there)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    return str(candidates[-1]) if candidates else None


def server_binary(name: str, package: str = "postgresql") -> str:
    path = find_binary(name)
    if path is None:
        raise PgUnavailableError(f"{name} not found (install the Debian package {package})")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def as_server_user() -> list[str]:
    """The prefix that runs a server binary as ``postgres`` when we are root, else nothing."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise PgUnavailableError(f"running as root needs a '{SERVER_USER}' system user to run the "
                            "server (apt-get install postgresql creates it)") from None
    return ["runuser", "-u", SERVER_USER, "--"]


class PgCluster:
    """A PostgreSQL cluster in a temp dir on a free loopback port, owned by whoever made it.

    ``PgUnavailableError`` when the binaries or the server user are missing; ``RuntimeError`` (with
    the server's log) when initdb or pg_ctl fails.
    """

    def __init__(self, prefix: str = "rollbackd-pg-") -> None:
        self.initdb = server_binary("initdb")
        self.pg_ctl = server_binary("pg_ctl")
        self.prefix = as_server_user()
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.port = free_port()
        if self.prefix:
            pw = pwd.getpwnam(SERVER_USER)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        try:
            self._run([self.initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust",
                       "--no-sync", "-E", "UTF8", "--locale=C"])
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def _run(self, argv: list[str], timeout: float = 60) -> None:
        result = subprocess.run(self.prefix + argv, capture_output=True, text=True,
                                timeout=timeout, check=False)
        if result.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{argv[0]} failed: {result.stderr}{result.stdout}\n{log}")

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c full_page_writes=off -c synchronous_commit=off")
        self._run([self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30",
                   "-o", options, "start"])

    def stop(self, mode: str = "fast") -> None:
        self._run([self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop"])

    def is_running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def env(self) -> dict[str, str]:
        """Environment for client tools (pg_dump, psql) run as the current user over TCP."""
        return {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(self.port),
                "PGUSER": "postgres"}

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.dsn(), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
        return self.dsn(name)

    def execute(self, sql: str, dbname: str = "postgres") -> list[tuple[object, ...]]:
        with psycopg.connect(self.dsn(dbname), autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(sql)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def databases(self) -> list[str]:
        return [str(row[0]) for row in self.execute(
            "SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY datname")]

    def destroy(self) -> None:
        """Stop the server (immediate) if it runs, and remove its directory."""
        if self.is_running():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)
