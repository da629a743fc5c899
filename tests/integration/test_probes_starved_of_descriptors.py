"""When rollbackd itself runs out of file descriptors, the app and the database are not down.

EMFILE (the process's limit) or ENFILE (the system's) means rollbackd could not even open a
socket: nothing was measured, so the signals are unknown and the outcome says rollbackd is
starved, instead of http.up = 0 or db.up = 0 starting a page or a rollback. Each probe runs in
a child process (tests/integration/starved_child.py) that lowers its own RLIMIT_NOFILE and
exhausts it, against a real local HTTP server and a real PostgreSQL.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from probes.migrations import SIGNALS as MIGRATION_SIGNALS
from probes.postgres import SIGNALS as DB_SIGNALS
from tests.harness.http import serving
from tests.harness.paths import ROOT


class Healthy(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def healthy_app() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Healthy)
    server.daemon_threads = True
    with serving(server):
        yield f"http://127.0.0.1:{server.server_address[1]}/health"


def measured_while_starved(kind: str, target: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "tests.integration.starved_child", kind, target],
                          capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def assert_starved(outcome: dict[str, Any], signals: list[str]) -> None:
    assert outcome["reading"] == dict.fromkeys(signals)
    assert "starved of file descriptors" in outcome["error"]


async def test_a_starved_http_probe_leaves_the_app_unknown_not_down(healthy_app: str) -> None:
    result = measured_while_starved("http", healthy_app)

    signals = ["http.app.up", "http.app.error_ratio", "http.app.latency_p50",
               "http.app.latency_p95", "http.app.latency_p99"]
    assert_starved(result["starved"], signals)
    assert result["aggregate"]["http.up"] is None
    assert result["aggregate"]["http.error_ratio"] is None
    # With descriptors back, the same probe finds the app up: it never was down.
    assert result["freed"]["error"] is None
    assert result["freed"]["reading"]["http.app.up"] == 1.0
    assert result["freed"]["reading"]["http.app.error_ratio"] == 0.0


async def test_a_starved_postgres_probe_leaves_the_database_unknown_not_down(pg_db: str) -> None:
    result = measured_while_starved("postgres", pg_db)

    assert_starved(result["starved"], list(DB_SIGNALS))
    assert result["freed"]["error"] is None
    assert result["freed"]["reading"]["db.up"] == 1.0


async def test_a_starved_migrations_probe_says_why_it_could_not_look(pg_db: str) -> None:
    result = measured_while_starved("migrations", pg_db)

    assert_starved(result["starved"], list(MIGRATION_SIGNALS))
    assert result["freed"]["error"] is None
    assert result["freed"]["reading"]["migration.failed"] == 0.0
