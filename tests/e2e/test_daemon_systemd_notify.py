"""The daemon speaks systemd's notify protocol: READY, STATUS, WATCHDOG, RELOADING, STOPPING."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.processes import Proc, start_daemon
from tests.harness.servers import free_port

pytestmark = pytest.mark.e2e


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    yield sock, str(path)
    sock.close()


def receive_until(sock: socket.socket, wanted: str, timeout: float) -> list[str]:
    """Datagrams received until one contains ``wanted``; fails listing what came instead."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            message = sock.recv(4096).decode()
        except TimeoutError:
            continue
        got.append(message)
        if wanted in message:
            return got
    pytest.fail(f"no datagram with {wanted!r} within {timeout}s; got {got!r}")


def test_the_daemon_notifies_systemd_through_its_whole_life(
    notify_socket: tuple[socket.socket, str], tmp_path: Path
) -> None:
    sock, path = notify_socket
    config = tmp_path / "rollbackd.toml"
    config.write_text(f"""\
[daemon]
state_dir = "{tmp_path}"
interval = "1s"
listen = "127.0.0.1:{free_port()}"
log_format = "json"

[probes.system]
paths = ["{tmp_path}"]
""")
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}
    env.pop("WATCHDOG_PID", None)
    daemon: Proc = start_daemon(config, env=env, ready=False)
    try:
        receive_until(sock, "READY=1", 15)
        status = receive_until(sock, "STATUS=", 5)[-1]
        assert "probes ok" in status and "\n" not in status.removeprefix("STATUS=")
        receive_until(sock, "WATCHDOG=1", 3)

        daemon.signal(signal.SIGHUP)
        reloading = receive_until(sock, "RELOADING=1", 5)[-1]
        fields = dict(line.split("=", 1) for line in reloading.splitlines())
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert 0 <= now_usec - int(fields["MONOTONIC_USEC"]) < 5_000_000
        receive_until(sock, "READY=1", 5)

        daemon.signal(signal.SIGTERM)
        receive_until(sock, "STOPPING=1", 5)
        assert daemon.popen.wait(10) == 0
    finally:
        daemon.close()
