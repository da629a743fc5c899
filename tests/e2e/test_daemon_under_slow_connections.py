"""1,100 slow unauthenticated connections against a `rollbackd run` held to systemd's default
1,024 file descriptors: the daemon must keep probing at its interval, never read its own
starvation as the app's or the database's failure, and keep its log short."""

from __future__ import annotations

import json
import resource
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.journal import Journal
from tests.harness.processes import Proc, daemon_url, migrate, scrape, start_app, start_daemon
from tests.harness.servers import PgCluster, free_port

pytestmark = pytest.mark.e2e

INTERVAL = 0.5
ATTACK_SECONDS = 8.0
SLOW_CLIENTS = 1100

# Any false "down" opens an incident at once.
POLICY = """\
[[rule]]
scenario = "database_unreachable"
when = "db.up == 0"
severity = "critical"
action = "page"
timeline = "15m"

[[rule]]
scenario = "app_down"
when = "http.up == 0"
severity = "high"
action = "page"
timeline = "30m"
"""


@pytest.fixture
def watched(pg_private: PgCluster, tmp_path: Path) -> Iterator[tuple[Path, Proc]]:
    dsn = pg_private.create_database("visionforge")
    assert migrate(dsn).returncode == 0
    app, app_url = start_app(dsn)
    (tmp_path / "policy.toml").write_text(POLICY)
    config = tmp_path / "rollbackd.toml"
    config.write_text(f"""\
[daemon]
state_dir = "{tmp_path / 'state'}"
interval = "{INTERVAL}s"
listen = "127.0.0.1:{free_port()}"
mode = "dry-run"
log_format = "json"
policy = "{tmp_path / 'policy.toml'}"

[app]
name = "visionforge"

[database]
dsn = "{dsn}"

[[probes.http]]
name = "health"
url = "{app_url}/health"
""")
    daemon = start_daemon(config, limits=["--nofile=1024:1024"])
    yield config, daemon
    daemon.close()
    app.close()


def open_slow_clients(url: str, count: int) -> list[socket.socket]:
    """Connections that send half a request line and then nothing (slowloris)."""
    host, port = url.removeprefix("http://").split(":")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, count + 500)), hard))
    clients = []
    for _ in range(count):
        sock = socket.socket()
        sock.settimeout(2)
        try:
            sock.connect((host, int(port)))
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        except OSError:
            sock.close()
            continue
        clients.append(sock)
    return clients


def cycle_lines(output: str) -> list[dict[str, object]]:
    lines = []
    for raw in output.splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if line.get("event") == "cycle":
            lines.append(line)
    return lines


def events(output: str) -> list[tuple[str, int]]:
    """The most frequent log lines, by event name."""
    counts: Counter[str] = Counter()
    for raw in output.splitlines():
        try:
            counts[str(json.loads(raw).get("event"))] += 1
        except ValueError:
            counts[raw[:100]] += 1
    return counts.most_common(5)


def test_slow_connections_neither_stall_the_loop_nor_open_an_incident(
        watched: tuple[Path, Proc], tmp_path: Path) -> None:
    config, daemon = watched
    url = daemon_url(config)
    time.sleep(2 * INTERVAL)
    before = len(cycle_lines(daemon.output()))
    clients = open_slow_clients(url, SLOW_CLIENTS)
    try:
        time.sleep(ATTACK_SECONDS)
        during = cycle_lines(daemon.output())[before:]
    finally:
        for sock in clients:
            sock.close()
    output = daemon.output()
    assert daemon.running(), output[-3000:]
    # The loop kept cycling (a cycle every interval; half of them is a generous floor).
    assert len(during) >= ATTACK_SECONDS / INTERVAL / 2, output[-3000:]
    journal = Journal.in_state_dir(tmp_path / "state")
    try:
        assert journal.incidents() == [], [d for d in journal.decisions()]
    finally:
        journal.close()
    series = scrape(url)
    assert series[("rollbackd_incident_open", (("severity", "critical"),))] == 0
    assert series[("rollbackd_http_connections_refused_total", (("reason", "limit"),))] > 0
    # Repeated errors are summarised, not logged per connection.
    assert len(output.splitlines()) < 40 * ATTACK_SECONDS / INTERVAL, events(output)
    assert "Traceback" not in output
