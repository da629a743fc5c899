"""A real Alertmanager for tests: rollbackd's webhook receiver or a configuration of the test's
own, own storage, loopback, ended by its pid."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from tests.harness.servers import ManagedServer, require_binary

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                   "ALL_PROXY")


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rollbackd_webhook_config(webhook_url: str, token_file: Path) -> dict[str, Any]:
    """A configuration that sends every alert to ``webhook_url`` with the bearer token read
    from ``token_file`` (``http_config.authorization.credentials_file``), grouped fast enough
    for tests: group_wait 1s, group_interval 1s, repeat_interval 1m, send_resolved."""
    return {
        "route": {"receiver": "rollbackd", "group_by": ["alertname"],
                  "group_wait": "1s", "group_interval": "1s", "repeat_interval": "1m"},
        "receivers": [{
            "name": "rollbackd",
            "webhook_configs": [{
                "url": webhook_url,
                "send_resolved": True,
                "http_config": {"authorization": {"type": "Bearer",
                                                  "credentials_file": str(token_file)}},
            }],
        }],
    }


class AlertmanagerServer(ManagedServer):
    """Alertmanager with the given configuration (a dict: JSON is YAML, and json.dumps
    quotes every value correctly), its own storage, on loopback."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__("alertmanager", "prometheus-alertmanager", "prometheus-alertmanager")
        self.config = self.dir / "alertmanager.yml"
        self.config.write_text(json.dumps(config, indent=2))

    def start(self) -> None:
        argv = [
            self.binary,
            f"--config.file={self.config}",
            f"--storage.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",  # empty: no gossip, no cluster settling wait
            "--log.level=debug",
        ]
        # The webhook goes to loopback; a proxy from the environment must not intercept it.
        env = {k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES}
        self.launch(argv, env=env)

    def post_alert(self, labels: Mapping[str, str], *, resolved: bool = False) -> None:
        """Raise an alert through API v2 (as Prometheus does), or resolve it with an endsAt
        in the past."""
        now = datetime.now(UTC)
        alert: dict[str, Any] = {"labels": dict(labels),
                                 "annotations": {"summary": "raised by a rollbackd test"},
                                 "startsAt": rfc3339(now - timedelta(minutes=1))}
        if resolved:
            alert["endsAt"] = rfc3339(now - timedelta(seconds=1))
        response = httpx.post(f"{self.url}/api/v2/alerts", json=[alert], timeout=5.0,
                              trust_env=False)
        response.raise_for_status()


    def amtool(self, *args: str) -> str:
        """``amtool ARGS`` against this Alertmanager (as an on-call person runs it)."""
        binary = require_binary("amtool", "prometheus-alertmanager")
        env = {k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES}
        done = subprocess.run([binary, *args, f"--alertmanager.url={self.url}"], env=env,
                              capture_output=True, text=True, timeout=30, check=True)
        return done.stdout.strip()


@contextlib.contextmanager
def running_alertmanager(webhook_url: str, token_file: Path) -> Iterator[AlertmanagerServer]:
    """A started Alertmanager that sends every alert to rollbackd's webhook receiver
    (:func:`rollbackd_webhook_config`), stopped on exit."""
    with running_alertmanager_with(rollbackd_webhook_config(webhook_url, token_file)) as server:
        yield server


@contextlib.contextmanager
def running_alertmanager_with(config: Mapping[str, Any]) -> Iterator[AlertmanagerServer]:
    """A started :class:`AlertmanagerServer` with ``config``, stopped on exit."""
    server = AlertmanagerServer(config)
    server.start()
    try:
        yield server
    finally:
        server.stop()
