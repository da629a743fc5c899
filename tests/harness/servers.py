"""Real servers for tests: a throwaway PostgreSQL cluster, binaries, free ports.

PostgreSQL refuses to run as root, so when the tests run as root (as in CI) the server
binaries run as the unprivileged ``postgres`` user through ``runuser``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def find_binary(name: str) -> str | None:
    """``name`` on PATH, else under /usr/lib/postgresql/<newest>/bin (Debian keeps them there)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return candidates[-1] if candidates else None


def require_binary(name: str, package: str) -> str:
    """The binary's path; skip with the reason when missing, but fail under CI=true."""
    path = find_binary(name)
    if path is None:
        message = f"{name} not found (install the Debian package {package})"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_server_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        message = "running as root needs a 'postgres' system user to run the server"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return ["runuser", "-u", "postgres", "--"]


class PgCluster:
    """A PostgreSQL cluster in a temp dir on a free loopback port, owned by this test run."""

    def __init__(self) -> None:
        self.initdb = require_binary("initdb", "postgresql")
        self.pg_ctl = require_binary("pg_ctl", "postgresql")
        self.prefix = _as_server_user()
        self.dir = Path(tempfile.mkdtemp(prefix="rollbackd-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.port = free_port()
        if self.prefix:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self._run([self.initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust",
                   "--no-sync", "-E", "UTF8", "--locale=C"])

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
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def execute(self, sql: str, dbname: str = "postgres") -> list[tuple[object, ...]]:
        with psycopg.connect(self.dsn(dbname), autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(sql)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def destroy(self) -> None:
        if self.is_running():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_for(predicate: object, timeout: float, interval: float = 0.1, what: str = "") -> None:
    """Poll ``predicate`` until it is truthy; fail the test naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = predicate()  # type: ignore[operator]
        except Exception as exc:  # the thing we wait for may not be up yet
            last = exc
        else:
            if last:
                return
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what or predicate} (last: {last!r})")


class ManagedServer:
    """A server binary (Prometheus, Alertmanager) that a test starts on a free loopback port
    in a temp dir of its own, waits for on ``/-/ready``, and ends by its pid."""

    READY_TIMEOUT = 30.0
    STOP_TIMEOUT = 10.0

    def __init__(self, name: str, binary: str, package: str) -> None:
        self.name = name
        self.binary = require_binary(binary, package)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.address}"
        self.dir = Path(tempfile.mkdtemp(prefix=f"rollbackd-{name}-"))
        self.log = self.dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def launch(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, cwd=self.dir, env=env)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + self.READY_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n"
                                   f"{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/-/ready", timeout=2.0,
                             trust_env=False).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} on {self.address} not ready after "
                           f"{self.READY_TIMEOUT}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """End the process this object started, by its pid: terminate, then kill."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=self.STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=self.STOP_TIMEOUT)
        shutil.rmtree(self.dir, ignore_errors=True)
