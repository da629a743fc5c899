"""Real servers for tests: a throwaway PostgreSQL cluster, binaries, free ports.

The cluster is the demo's own (examples/pgcluster.py, one implementation): PostgreSQL refuses
to run as root, so when the tests run as root (as in CI) the server binaries run as the
unprivileged ``postgres`` user through ``runuser``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import pytest

from examples.apprun import wait_until
from examples.pgcluster import PgCluster as _PgCluster
from examples.pgcluster import PgUnavailableError, find_binary, free_port

__all__ = ["IN_CI", "ManagedServer", "PgCluster", "find_binary", "free_port",
           "require_binary", "wait_for"]

IN_CI = os.environ.get("CI", "").lower() == "true"


def _unavailable(message: str) -> NoReturn:
    """Skip the test, saying why; fail it under CI=true, where everything must be there."""
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def require_binary(name: str, package: str) -> str:
    """The binary's path; skip with the reason when missing, but fail under CI=true."""
    path = find_binary(name)
    if path is None:
        _unavailable(f"{name} not found (install the Debian package {package})")
    return path


class PgCluster(_PgCluster):
    """examples.pgcluster.PgCluster (the demo's too), skipping the test when the machine
    cannot run it (failing it under CI=true).

    Its data directory is a copy of one made by the very same initdb once per test process
    (initdb takes a second or two, a copy a tenth of that; tests start a couple of dozen
    clusters of their own). The server, its configuration and its start are the base's."""

    def __init__(self) -> None:
        try:
            super().__init__()
        except PgUnavailableError as exc:
            _unavailable(str(exc))

    def _run(self, argv: list[str], timeout: float = 60) -> None:
        if argv[:3] != [self.initdb, "-D", str(self.data)]:
            super()._run(argv, timeout)
            return
        template = _initdb_template(self, argv[3:], timeout)
        copied = subprocess.run([*self.prefix, "cp", "-a", str(template), str(self.data)],
                                capture_output=True, text=True, timeout=timeout, check=False)
        if copied.returncode != 0:
            raise RuntimeError(f"copying the initdb template failed: {copied.stderr}")


_templates: dict[tuple[str, ...], Path] = {}
"""initdb's options -> a data directory it made, for this process's clusters to copy."""


def _initdb_template(cluster: PgCluster, options: list[str], timeout: float) -> Path:
    key = (cluster.initdb, *options)
    if key not in _templates:
        root = Path(tempfile.mkdtemp(prefix="rollbackd-pg-template-"))
        atexit.register(shutil.rmtree, root, True)
        shutil.copystat(cluster.dir, root)  # mode 0700; the owner below
        os.chown(root, cluster.dir.stat().st_uid, cluster.dir.stat().st_gid)
        data = root / "data"
        _PgCluster._run(cluster, [cluster.initdb, "-D", str(data), *options], timeout)
        _templates[key] = data
    return _templates[key]


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.1,
             what: str = "") -> None:
    """Poll ``predicate`` until it is truthy (:func:`examples.apprun.wait_until`); fail the
    test naming ``what`` after ``timeout``."""
    try:
        wait_until(predicate, timeout, interval, what)
    except TimeoutError as exc:
        pytest.fail(str(exc))


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
