"""A running `rollbackd run` with its API enabled (one bearer token), and Alertmanager's
webhook payloads, for the API's tests."""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path
from typing import Any

import httpx

from daemon.journal import Journal
from tests.harness.cli import rollbackd as run_rollbackd
from tests.harness.config import config_file
from tests.harness.processes import Proc, daemon_url, scrape, start_daemon
from tests.harness.servers import free_port

POLICY = """\
[[rule]]
scenario = "high_latency"
when = "alert.HighLatency > 0"
clear_for = "1s"
severity = "medium"
action = "evaluate"
timeline = "60m"
"""

LABELS = {"alertname": "HighLatency", "severity": "warning", "service": "visionforge"}


def new_token() -> str:
    return "tok-" + secrets.token_hex(16)


def write_config(tmp_path: Path, api: str, policy: str = POLICY) -> Path:
    """A dry-run daemon on a free port with a 500 ms interval, ``policy`` (by default one
    evaluate rule on the HighLatency alert) and ``api`` (the config's extra sections)."""
    (tmp_path / "policy.toml").write_text(policy)
    return config_file(tmp_path, daemon={"interval": "500ms",
                                         "listen": f"127.0.0.1:{free_port()}",
                                         "mode": "dry-run", "policy": tmp_path / "policy.toml",
                                         "log_format": "json"},
                       app={"name": "visionforge"}, extra=api)


class Rollbackd:
    """A running daemon with one token file, and what a test needs to talk to it."""

    def __init__(self, tmp_path: Path, api: str | None = None, policy: str = POLICY) -> None:
        self.token = new_token()
        self.token_file = tmp_path / "api.token"
        self.token_file.write_text(self.token + "\n")
        if api is None:
            api = f'[api]\ntoken_files = ["{self.token_file}"]\n'
        self.config = write_config(tmp_path, api, policy)
        self.proc: Proc = start_daemon(self.config)
        self.url = daemon_url(self.config)
        self.journal = Journal.in_state_dir(tmp_path / "state")

    def call(self, method: str, path: str, token: str | None = "", **kwargs: Any
             ) -> httpx.Response:
        """A request with the daemon's token (``token=""``), another one, or none (None)."""
        headers = kwargs.pop("headers", {})
        if token is not None:
            headers.setdefault("Authorization", f"Bearer {token or self.token}")
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=15,
                             trust_env=False, **kwargs)

    def metric(self, name: str, **labels: str) -> float | None:
        return scrape(self.url).get((name, tuple(sorted(labels.items()))))

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_rollbackd(*args, config=self.config)

    def close(self) -> None:
        self.proc.close()
        self.journal.close()


def webhook(*alerts: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A version 4 notification as Alertmanager sends it."""
    return {"version": "4", "groupKey": '{}:{alertname="HighLatency"}', "truncatedAlerts": 0,
            "status": "firing", "receiver": "rollbackd", "groupLabels": {},
            "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am",
            "alerts": list(alerts), **extra}


def alert(status: str = "firing", **labels: Any) -> dict[str, Any]:
    return {"status": status, "labels": labels or dict(LABELS), "annotations": {},
            "startsAt": "2030-01-01T00:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus/graph", "fingerprint": "c0ffee"}
