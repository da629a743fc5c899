"""Running the example app and its tools as child processes, each ended by its own pid.

The one implementation behind ``rollbackd demo`` and the test suite (``tests/harness/processes``
imports it): :class:`Proc` (a child whose output goes to a log file), :func:`migrate`,
:func:`seed`, :func:`start_app` and :func:`set_faults`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import httpx

from examples.pgcluster import free_port

ROOT = Path(__file__).resolve().parent.parent
APP_DIR = ROOT / "examples" / "visionforge"


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.1,
               what: str = "") -> None:
    """Poll ``predicate`` until it is truthy; ``TimeoutError`` naming ``what`` (and the last
    answer or exception) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as exc:  # the thing we wait for may not be up yet
            last = exc
        else:
            if last:
                return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g}s waiting for {what or predicate} "
                       f"(last: {last!r})")


class Proc:
    """A child process whose output goes to a log file that can be read while it runs."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None,
                 cwd: Path | None = None, log: Path | None = None,
                 new_session: bool = False) -> None:
        """``log``: append the output there (default: a temp file). ``new_session``: out of
        the terminal's process group, so that Ctrl-C reaches only whoever started it, which
        then stops it in its own time."""
        self.argv = argv
        self._final_output = ""
        # Closed by close(), which may come long after this returns.
        self._log: IO[bytes] = (
            log.open("ab") if log is not None
            else tempfile.NamedTemporaryFile(prefix="rollbackd-proc-", suffix=".log"))  # noqa: SIM115
        self.log_path = Path(self._log.name)
        self.popen = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env or dict(os.environ), cwd=cwd or ROOT, start_new_session=new_session,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        if self._log.closed:
            return self._final_output
        return self.log_path.read_text(errors="replace")

    def running(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.running():
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
        if self.running():
            os.kill(self.pid, signal.SIGTERM)
            try:
                return self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
        return self.popen.wait(10)

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.stop()
        if not self._log.closed:
            self._final_output = self.output()
            self._log.close()


def run_tool(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """One of the example app's tools (``migrate.py``, ``seed.py``) to completion."""
    return subprocess.run([sys.executable, str(APP_DIR / script), *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def migrate(dsn: str, *dirs: Path) -> subprocess.CompletedProcess[str]:
    """``migrate.py`` with ``dirs`` (default: release v1's migrations)."""
    argv = ["--dsn", dsn]
    for d in dirs or (APP_DIR / "migrations",):
        argv += ["--dir", str(d)]
    return run_tool("migrate.py", *argv)


def seed(dsn: str, users: int, images: int) -> subprocess.CompletedProcess[str]:
    return run_tool("seed.py", "--dsn", dsn, "--users", str(users), "--images", str(images))


def answers(url: str) -> bool:
    """Whether the app at ``url`` answers /health at all (200, or 503 without its database)."""
    return httpx.get(f"{url}/health", timeout=2, trust_env=False).status_code in (200, 503)


def start_app(dsn: str, port: int | None = None, pidfile: Path | None = None,
              version: str = "v1", timeout: float = 20) -> tuple[Proc, str]:
    """The example app on a free loopback port; returns it and its base URL once it answers.
    ``TimeoutError`` (the app stopped) when it does not answer within ``timeout``."""
    port = port or free_port()
    argv = [sys.executable, str(APP_DIR / "app.py"), "--dsn", dsn, "--host", "127.0.0.1",
            "--port", str(port), "--release-version", version]
    if pidfile is not None:
        argv += ["--pidfile", str(pidfile)]
    proc = Proc(argv)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: answers(url), timeout, what=f"the example app on {url}")
    except TimeoutError as exc:
        proc.close()
        raise TimeoutError(f"{exc}: {proc.output()[-500:]}") from None
    return proc, url


def set_faults(app_url: str, **faults: object) -> None:
    """The app's injected faults (``error_ratio``, ``latency_ms``, ``health``); the keys given
    only."""
    response = httpx.post(f"{app_url}/admin/faults", json=faults, timeout=5, trust_env=False)
    response.raise_for_status()
