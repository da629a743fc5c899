"""A real Prometheus for tests: own config, own storage, a free loopback port, ended by its pid."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from typing import Any

import httpx

from tests.harness.servers import ManagedServer, wait_for


class PrometheusServer(ManagedServer):
    """Prometheus scraping ``targets`` ("127.0.0.1:PORT") every ``scrape_interval``.

    With ``scrape_self`` it also scrapes its own /metrics (job "prometheus"), which gives
    tests a target that is certainly up.
    """

    def __init__(self, targets: Sequence[str] = (), scrape_interval: str = "1s",
                 scrape_self: bool = True, metrics_path: str = "/metrics") -> None:
        super().__init__("prometheus", "prometheus", "prometheus")
        self.config = self.dir / "prometheus.yml"
        self.config.write_text(self._config(list(targets), scrape_interval, scrape_self,
                                            metrics_path))

    def _config(self, targets: list[str], interval: str, scrape_self: bool,
                metrics_path: str) -> str:
        # JSON is YAML, and json.dumps quotes every value correctly.
        jobs: list[dict[str, Any]] = []
        if scrape_self:
            jobs.append({"job_name": "prometheus",
                         "static_configs": [{"targets": [self.address]}]})
        if targets:
            jobs.append({"job_name": "targets", "metrics_path": metrics_path,
                         "static_configs": [{"targets": targets}]})
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval,
                       "scrape_timeout": interval},
            "scrape_configs": jobs,
        }
        return json.dumps(config, indent=2)

    def start(self) -> None:
        argv = [
            self.binary,
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address={self.address}",
            "--storage.tsdb.retention.time=1h",
        ]
        self.launch(argv)

    def query(self, promql: str) -> dict[str, Any]:
        """The whole JSON body of an instant query (whatever its status)."""
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql},
                             timeout=5.0, trust_env=False)
        body: dict[str, Any] = response.json()
        return body

    def wait_for_series(self, promql: str, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Poll ``promql`` until it returns a series (the first scrape comes ~5 s after start)."""
        result: list[dict[str, Any]] = []

        def has_series() -> bool:
            nonlocal result
            body = self.query(promql)
            result = body.get("data", {}).get("result", []) if body["status"] == "success" else []
            return bool(result)

        wait_for(has_series, timeout, interval=0.2, what=f"prometheus to have {promql}")
        return result


@contextlib.contextmanager
def running_prometheus(targets: Sequence[str] = (), scrape_interval: str = "1s",
                       scrape_self: bool = True,
                       metrics_path: str = "/metrics") -> Iterator[PrometheusServer]:
    """A started :class:`PrometheusServer`, stopped on exit; use it from a pytest fixture."""
    server = PrometheusServer(targets, scrape_interval, scrape_self, metrics_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()

