"""A probe's outcome says why its signals are unknown or failed, for the log and the status.

Only the probes that measure past their own errors are here (HTTP, system, Prometheus' empty
answer); PostgreSQL and migrations are in test_postgres_check_errors.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from policies.schema import convert
from probes.http import HttpProbe
from probes.runner import ProbeOutcome, measure_one
from probes.settings import HttpProbeSettings, SystemProbeSettings
from probes.system import SystemProbe
from tests.harness.http import serving
from tests.harness.servers import free_port


class Unavailable(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def unavailable() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    server.daemon_threads = True
    with serving(server):
        yield f"http://127.0.0.1:{server.server_address[1]}/health"


async def http_tick(url: str, requests: int = 1) -> ProbeOutcome:
    probe = HttpProbe(convert(
        {"name": "api", "url": url, "timeout": 1.0, "requests": requests}, HttpProbeSettings))
    try:
        outcome = await measure_one(probe, bound=5.0)
    finally:
        await probe.aclose()
    assert outcome.ok, outcome.error
    return outcome


async def test_server_errors_are_counted_and_named_in_the_outcome(unavailable: str) -> None:
    outcome = await http_tick(unavailable, requests=2)
    assert outcome.reading["http.api.error_ratio"] == 1.0
    assert outcome.problems == {"http.api.error_ratio": "2 of 2 requests failed: HTTP 503 (x2)"}


async def test_a_refused_connection_is_named_in_the_outcome() -> None:
    outcome = await http_tick(f"http://127.0.0.1:{free_port()}/health")
    assert outcome.reading["http.api.up"] == 0.0
    assert "ConnectError" in outcome.problems["http.api.error_ratio"]


async def test_a_path_the_system_probe_cannot_measure_is_named_in_the_outcome(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "gone"
    probe = SystemProbe(SystemProbeSettings(paths=[tmp_path, missing]))
    outcome = await measure_one(probe, bound=5.0)
    assert outcome.ok, outcome.error
    assert outcome.reading["system.disk_free_ratio"] is not None
    assert str(missing) in outcome.problems["system.disk_free_ratio"]
    assert "No such file" in outcome.problems["system.disk_free_ratio"]
