"""A host for end-to-end runbook tests: the example app seeded and running under the
``process`` adapter, a ``rollbackd run`` config in auto mode with one migration_failed rule,
and ``rollbackd deploy run`` of a failing v2."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from subprocess import CompletedProcess

import httpx

from daemon.journal import Journal, Run
from examples.apprun import answers
from tests.harness.cli import rollbackd
from tests.harness.config import config_file
from tests.harness.data import seed_visionforge
from tests.harness.paths import APP_DIR
from tests.harness.processes import Proc, start_app
from tests.harness.servers import free_port, wait_for

POLICY = """\
[guards]
watch_for = "3s"

[[rule]]
scenario = "migration_failed"
when = "migration.failed == 1"
severity = "critical"
action = "{action}"
timeline = "15m"
"""


@dataclass
class Host:
    dsn: str
    app_url: str
    pidfile: Path
    config: Path
    journal: Journal
    app: Proc
    """The app as the test started it (the daemon starts its own after a rollback)."""

    def app_pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def health(self) -> dict[str, object] | None:
        """The app's /health answer when it is 200, else None."""
        try:
            answer = httpx.get(f"{self.app_url}/health", timeout=2)
        except httpx.HTTPError:
            return None
        return answer.json() if answer.status_code == 200 else None

    def answers(self) -> bool:
        return self.health() is not None

    def close(self) -> None:
        self.journal.close()
        self.app.close()
        pid = self.app_pid()  # the app as the daemon started it again
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def rollback_host(dsn: str, tmp_path: Path, *, action: str = "immediate_rollback",
                  start_delay: float = 0, interval: str = "1s", address: str = "127.0.0.1",
                  seed: bool = True, extra: str = "", mode: str = "auto",
                  rules: str = "", runbook: str | None = None) -> Host:
    """The example app seeded in ``dsn`` and running (v1); a daemon config whose rule rolls
    a failed migration back with ``action``. ``start_delay``: seconds the app's start
    command waits first; ``address``: the loopback address the app and the daemon listen on
    (several hosts on one machine); ``seed``: false when another host seeded ``dsn``;
    ``extra``: more of the config (``[fleet]``); ``mode``: the daemon's; ``rules``: more of
    the policy (rules, runbooks); ``runbook``: the one the failed migration's rule runs (else
    the action's bundled one). Close it with :meth:`Host.close`."""
    if seed:
        seed_visionforge(dsn)
    pidfile = tmp_path / "app.pid"
    port = free_port()
    app_argv = [sys.executable, str(APP_DIR / "app.py"), "--dsn", dsn, "--host",
                address, "--port", str(port), "--pidfile", str(pidfile),
                "--release-version", "v1"]
    if address == "127.0.0.1":
        app, url = start_app(dsn, port=port, pidfile=pidfile)
    else:
        app, url = Proc(app_argv), f"http://{address}:{port}"
        wait_for(lambda: answers(url), 20, what=f"the example app on {url} ({app.output()})")
    start = (["sh", "-c", f'sleep {start_delay}; exec "$0" "$@"', *app_argv] if start_delay
             else app_argv)
    policy = tmp_path / "policy.toml"
    named = f'runbook = "{runbook}"\n' if runbook else ""  # the last table is that rule
    policy.write_text(POLICY.format(action=action) + named + rules)
    (tmp_path / "backups").mkdir()
    config = config_file(
        tmp_path,
        daemon={"interval": interval, "listen": f"{address}:{free_port()}", "mode": mode,
                "policy": policy, "log_format": "json"},
        app={"name": "visionforge",
             "control": {"adapter": "process", "pidfile": pidfile, "start": start,
                         "stop_timeout": "5s"}},
        database={"dsn": dsn, "migrations": "knex",
                  "expected_tables": ["users", "images", "audit_log"]},
        backups={"dir": tmp_path / "backups", "min_free": "1MB"},
        extra=f"""\
[probes.postgres]
timeout = "800ms"

[probes.migrations]
timeout = "800ms"

[[probes.http]]
name = "health"
url = "{url}/health"
timeout = "500ms"
window = "2s"
""" + extra)
    return Host(dsn, url, pidfile, config, Journal.in_state_dir(tmp_path / "state"), app)


def deploy_run(config: Path, *command: str) -> CompletedProcess[str]:
    """``rollbackd deploy run --version v2 -- COMMAND`` (--config before the verb: everything
    after -- is the migration command)."""
    return rollbackd("--config", str(config), "deploy", "run", "--version", "v2", "--",
                     *command, timeout=120)


def deploy_invalid_index(config: Path, dsn: str) -> CompletedProcess[str]:
    """``deploy run`` of v2 whose non-transactional migration fails after leaving an invalid
    index behind: a failed deploy that changed the schema (exit 1)."""
    return deploy_run(config, sys.executable, str(APP_DIR / "migrate.py"), "--dsn", dsn,
                      "--dir", str(APP_DIR / "migrations"),
                      "--dir", str(APP_DIR / "releases" / "v2-invalid-index"))


def finished_run(journal: Journal) -> Run | None:
    """The newest run once it has ended."""
    runs = journal.runs()
    return runs[0] if runs and runs[0].status != "running" else None
