"""`rollbackd run` and the CLI against a journal that is not the one of their state directory:
replaced while the daemon runs (webhooks answered 503, /readyz failing, a log line naming the
file), emptied or swapped before it starts (exit 1 naming the file)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from daemon.journal import Journal
from tests.harness.paths import ROOT
from tests.harness.processes import Proc, daemon_url, start_daemon
from tests.harness.servers import free_port, wait_for

pytestmark = pytest.mark.e2e

POLICY = """\
[[rule]]
scenario = "high_latency"
when = "alert.HighLatency > 0"
severity = "medium"
action = "evaluate"
timeline = "60m"
"""


def write_config(tmp_path: Path) -> tuple[Path, str]:
    token = "tok-" + secrets.token_hex(16)
    (tmp_path / "api.token").write_text(token + "\n")
    (tmp_path / "policy.toml").write_text(POLICY)
    config = tmp_path / "rollbackd.toml"
    config.write_text(f"""\
[daemon]
state_dir = "{tmp_path / 'state'}"
interval = "300ms"
listen = "127.0.0.1:{free_port()}"
mode = "dry-run"
policy = "{tmp_path / 'policy.toml'}"
log_format = "json"

[app]
name = "visionforge"

[api]
token_files = ["{tmp_path / 'api.token'}"]
""")
    return config, token


def notification() -> dict[str, object]:
    return {"version": "4", "status": "firing", "receiver": "rollbackd", "alerts": [
        {"status": "firing", "labels": {"alertname": "HighLatency", "severity": "warning"},
         "startsAt": "2030-01-01T00:00:00Z", "fingerprint": "c0ffee"}]}


def post_alert(url: str, token: str) -> httpx.Response:
    return httpx.post(f"{url}/api/v1/alertmanager", json=notification(), timeout=10,
                      headers={"Authorization": f"Bearer {token}"}, trust_env=False)


def rollbackd(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)


def another_journal(tmp_path: Path) -> Path:
    """A sound journal of another state directory."""
    other = Journal.in_state_dir(tmp_path / "elsewhere")
    other.add_event(1.0, {"type": "resume", "by": "someone"})
    other.close()
    return other.path


@pytest.mark.parametrize("how", ["replaced", "removed"])
def test_a_journal_replaced_under_the_running_daemon_refuses_webhooks_with_503(
        tmp_path: Path, how: str) -> None:
    config, token = write_config(tmp_path)
    daemon = start_daemon(config)
    try:
        url = daemon_url(config)
        accepted = post_alert(url, token)
        assert accepted.status_code == 200, accepted.text
        path = tmp_path / "state" / "journal.sqlite3"
        if how == "replaced":
            os.replace(another_journal(tmp_path), path)
        else:
            path.unlink()

        refused = post_alert(url, token)
        assert refused.status_code == 503, refused.text
        assert str(path) in refused.json()["error"]
        wait_for(lambda: httpx.get(f"{url}/readyz", timeout=2).status_code == 503, 5,
                 what="/readyz to fail")
        logged = [json.loads(line) for line in daemon.output().splitlines()
                  if line.startswith("{")]
        assert any(entry.get("event") == "journal unavailable to the API"
                   and str(path) in entry.get("error", "") for entry in logged)
        assert any(entry.get("event") == "the journal is unusable; refusing what cannot be "
                   "journaled" and entry.get("path") == str(path) for entry in logged)
        assert daemon.running()
    finally:
        daemon.close()


def test_the_daemon_and_the_cli_refuse_an_emptied_journal(tmp_path: Path) -> None:
    config, _ = write_config(tmp_path)
    Journal.in_state_dir(tmp_path / "state").close()
    path = tmp_path / "state" / "journal.sqlite3"
    path.write_bytes(b"")

    daemon = Proc([sys.executable, "-m", "daemon", "run", "--config", str(config)])
    try:
        assert daemon.popen.wait(30) == 1
        assert f"rollbackd: {path}: the journal is empty (0 bytes)" in daemon.output()
    finally:
        daemon.close()
    for command in (["status"], ["incidents"], ["pause"]):
        result = rollbackd(config, *command)
        assert result.returncode == 1, (command, result.stderr)
        assert result.stderr.startswith(f"rollbackd: {path}: the journal is empty")
        assert result.stderr.count("\n") == 1
    assert path.stat().st_size == 0


def test_the_daemon_refuses_to_start_on_another_state_directorys_journal(
        tmp_path: Path) -> None:
    config, _ = write_config(tmp_path)
    Journal.in_state_dir(tmp_path / "state").close()
    path = tmp_path / "state" / "journal.sqlite3"
    os.replace(another_journal(tmp_path), path)
    daemon = Proc([sys.executable, "-m", "daemon", "run", "--config", str(config)])
    try:
        assert daemon.popen.wait(30) == 1
        assert f"rollbackd: {path}: not the journal of this state directory" in daemon.output()
    finally:
        daemon.close()


def test_a_state_dir_that_is_a_file_is_a_config_error(tmp_path: Path) -> None:
    config, _ = write_config(tmp_path)
    (tmp_path / "state").write_text("")
    for command in (["run"], ["status"]):
        result = rollbackd(config, *command)
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.startswith(f"rollbackd: {config}: daemon.state_dir: "
                                        f"{tmp_path / 'state'}: not a directory")
