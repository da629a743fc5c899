"""sd_notify over a real Unix datagram socket, as systemd would receive it."""

from __future__ import annotations

import os
import select
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daemon.service.sd_notify import Notifier


class Receiver:
    """The service manager's end: a bound datagram socket that collects what arrives."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def notifier(self, **extra: str) -> Notifier:
        return Notifier.from_env({"NOTIFY_SOCKET": self.env_value, **extra})

    def receive(self) -> bytes:
        return self.sock.recv(8192)

    def nothing_pending(self) -> bool:
        readable, _, _ = select.select([self.sock], [], [], 0.05)
        return not readable


def _bound(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2)
    return sock


@pytest.fixture
def path_receiver() -> Iterator[Receiver]:
    # pytest's tmp_path can exceed the 108-byte limit of a Unix socket path.
    with tempfile.TemporaryDirectory(prefix="rbd-notify-") as tmp:
        path = str(Path(tmp) / "notify.sock")
        sock = _bound(path)
        yield Receiver(sock, path)
        sock.close()


@pytest.fixture
def abstract_receiver() -> Iterator[Receiver]:
    name = f"rollbackd-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = _bound("\0" + name)
    yield Receiver(sock, "@" + name)
    sock.close()


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda n: n.ready(), b"READY=1"),
        (lambda n: n.stopping(), b"STOPPING=1"),
        (lambda n: n.watchdog(), b"WATCHDOG=1"),
        (lambda n: n.status("3 probes ok, db up"), b"STATUS=3 probes ok, db up"),
    ],
    ids=["ready", "stopping", "watchdog", "status"],
)
def test_each_state_change_arrives_as_exactly_one_datagram(
    path_receiver: Receiver, call: Callable[[Notifier], bool], expected: bytes
) -> None:
    notifier = path_receiver.notifier()
    assert call(notifier) is True
    assert path_receiver.receive() == expected
    assert path_receiver.nothing_pending()


def test_an_abstract_socket_named_with_at_is_reached_through_its_nul_name(
    abstract_receiver: Receiver,
) -> None:
    notifier = abstract_receiver.notifier()
    assert notifier.enabled
    assert notifier.ready() is True
    assert abstract_receiver.receive() == b"READY=1"


def test_reloading_carries_the_current_monotonic_time_in_the_same_datagram(
    path_receiver: Receiver,
) -> None:
    notifier = path_receiver.notifier()
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading() is True
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000

    lines = path_receiver.receive().decode().split("\n")
    assert lines[0] == "RELOADING=1"
    assert len(lines) == 2 and lines[1].startswith("MONOTONIC_USEC="), lines
    stamp = int(lines[1].removeprefix("MONOTONIC_USEC="))
    assert before <= stamp <= after
    assert path_receiver.nothing_pending()


def test_a_multi_line_status_is_sent_as_one_line_so_it_cannot_inject_assignments(
    path_receiver: Receiver,
) -> None:
    notifier = path_receiver.notifier()
    assert notifier.status("db down\nREADY=1\r\n  retrying \n") is True
    assert path_receiver.receive() == b"STATUS=db down READY=1 retrying"


def test_a_huge_status_is_cut_instead_of_being_dropped_by_systemd(
    path_receiver: Receiver,
) -> None:
    notifier = path_receiver.notifier()
    assert notifier.status("é" * 5000) is True
    datagram = path_receiver.receive()
    assert datagram.startswith(b"STATUS=\xc3\xa9")
    assert len(datagram) <= len(b"STATUS=") + 1024
    datagram.decode("utf-8")  # cut on a character boundary


def test_without_notify_socket_every_call_is_a_successful_no_op() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    calls = [
        notifier.ready(),
        notifier.status("x"),
        notifier.reloading(),
        notifier.stopping(),
        notifier.watchdog(),
    ]
    assert calls == [True] * 5
    assert notifier.last_error is None


def test_an_empty_notify_socket_counts_as_unset() -> None:
    assert not Notifier.from_env({"NOTIFY_SOCKET": ""}).enabled


def test_a_socket_nobody_listens_on_makes_sends_return_false_without_raising() -> None:
    with tempfile.TemporaryDirectory(prefix="rbd-notify-") as tmp:
        notifier = Notifier.from_env({"NOTIFY_SOCKET": str(Path(tmp) / "gone.sock")})
        assert notifier.ready() is False
        assert isinstance(notifier.last_error, FileNotFoundError)


def test_a_receiver_that_went_away_makes_sends_return_false(path_receiver: Receiver) -> None:
    notifier = path_receiver.notifier()
    assert notifier.ready() is True
    path_receiver.sock.close()
    assert notifier.watchdog() is False
    assert isinstance(notifier.last_error, ConnectionRefusedError)


def test_an_address_that_is_not_a_unix_socket_is_a_failure_not_a_crash() -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert notifier.enabled
    assert notifier.ready() is False
    assert "unsupported NOTIFY_SOCKET" in str(notifier.last_error)


def test_the_watchdog_is_pinged_at_half_the_timeout_when_it_watches_us() -> None:
    env = {"WATCHDOG_USEC": "30000000"}
    assert Notifier.from_env(env).watchdog_interval == 15.0
    ours = {**env, "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_env(ours).watchdog_interval == 15.0


def test_a_watchdog_meant_for_another_process_is_not_ours_to_ping() -> None:
    # What a child of the daemon (pg_dump, the app's install command) inherits.
    env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getppid())}
    assert os.getppid() != os.getpid()
    assert Notifier.from_env(env).watchdog_interval is None


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "soon"},
        {"WATCHDOG_USEC": "-5"},
        {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "not-a-pid"},
    ],
    ids=["unset", "zero", "garbage", "negative", "garbage-pid"],
)
def test_no_or_unusable_watchdog_settings_mean_no_watchdog(env: dict[str, str]) -> None:
    assert Notifier.from_env(env).watchdog_interval is None


def test_the_watchdog_datagram_reaches_systemd_under_the_interval_it_asked_for(
    path_receiver: Receiver,
) -> None:
    notifier = path_receiver.notifier(WATCHDOG_USEC="2000000", WATCHDOG_PID=str(os.getpid()))
    assert notifier.watchdog_interval == 1.0
    assert notifier.watchdog() is True
    assert path_receiver.receive() == b"WATCHDOG=1"
