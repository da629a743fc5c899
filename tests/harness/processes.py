"""Real processes for end-to-end tests: the example app and ``rollbackd run``.

Each process is started by the test and ended by its own pid, never by name.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.cli import ROLLBACKD
from tests.harness.paths import APP_DIR, ROOT
from tests.harness.servers import free_port, wait_for


class Proc:
    """A child process whose output goes to a log file the test can read on failure."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.argv = argv
        self._final_output = ""
        self._log: IO[bytes] = tempfile.NamedTemporaryFile(prefix="rollbackd-proc-", suffix=".log")  # noqa: SIM115
        self.popen = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, env=env or dict(os.environ),
            cwd=cwd or ROOT,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        if self._log.closed:
            return self._final_output
        return Path(self._log.name).read_text(errors="replace")

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


def migrate(dsn: str, *dirs: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, str(APP_DIR / "migrate.py"), "--dsn", dsn]
    for d in dirs or (APP_DIR / "migrations",):
        argv += ["--dir", str(d)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def start_app(dsn: str, port: int | None = None, pidfile: Path | None = None,
              version: str = "v1") -> tuple[Proc, str]:
    """The example app on a free loopback port; returns it and its base URL once it answers."""
    port = port or free_port()
    argv = [sys.executable, str(APP_DIR / "app.py"), "--dsn", dsn, "--host", "127.0.0.1",
            "--port", str(port), "--release-version", version]
    if pidfile is not None:
        argv += ["--pidfile", str(pidfile)]
    proc = Proc(argv)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{url}/health", timeout=2).status_code in (200, 503), 20,
             what=f"the example app on {url} ({proc.output()[-500:]})")
    return proc, url


def set_faults(app_url: str, **faults: object) -> None:
    response = httpx.post(f"{app_url}/admin/faults", json=faults, timeout=5)
    response.raise_for_status()


def start_daemon(config: Path, env: dict[str, str] | None = None, ready: bool = True,
                 limits: list[str] | None = None) -> Proc:
    """``limits``: prlimit(1) options for the daemon, e.g. ``["--nofile=1024:1024"]``."""
    wrapper = ["prlimit", *limits, "--"] if limits else []
    proc = Proc([*wrapper, *ROLLBACKD, "run", "--config", str(config)], env=env)
    if ready:
        url = daemon_url(config)
        wait_for(lambda: httpx.get(f"{url}/readyz", timeout=2).status_code == 200, 20,
                 what=f"rollbackd to become ready ({proc.output()[-2000:]})")
    return proc


def daemon_url(config: Path) -> str:
    import tomllib

    listen = tomllib.loads(config.read_text())["daemon"]["listen"]
    return f"http://{listen}"


Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Series:
    """The daemon's /metrics as {(name, sorted labels): value}."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    series: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return series


def signal_value(url: str, name: str) -> float | None:
    """``rollbackd_signal{signal=name}``; None when the series is NaN (unknown) or absent."""
    value = scrape(url).get(("rollbackd_signal", (("signal", name),)))
    return None if value is None or math.isnan(value) else value
