"""The systemd notify protocol (sd_notify), spoken by hand over a Unix datagram socket.

The protocol is stable (systemd.io/PORTABILITY_AND_STABILITY) and small: one datagram of
``KEY=VALUE`` lines to ``$NOTIFY_SOCKET``. The PyPI wrappers are unmaintained or cannot send
``RELOADING=1`` and ``MONOTONIC_USEC=`` in one datagram, which systemd requires.

Nothing here may take the daemon down: a send that fails returns ``False`` (the caller logs
it, with :attr:`Notifier.last_error`) and never raises.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

# systemd drops a notification longer than its buffer (PIPE_BUF, 4096 bytes) whole, so a long
# status line is cut well below that rather than lost; `systemctl status` shows one line anyway.
_MAX_STATUS_BYTES = 1024
# Bounds how long the event loop can be held up when systemd's queue is full.
_SEND_TIMEOUT = 1.0


def _socket_address(value: str) -> str | None:
    """The address to connect to, or None when it is not a Unix socket we can speak to."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        # '@' is how systemd writes the leading NUL of a Linux abstract socket name.
        return "\0" + value[1:]
    return None


def _watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Half the watchdog timeout, as sd_watchdog_enabled(3) advises, when the ping is ours."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = environ.get("WATCHDOG_PID")
    # WATCHDOG_PID names the process systemd watches; a child that inherited the variables
    # (anything we spawn) must not ping on its parent's behalf.
    if owner is not None and (not owner.isdigit() or int(owner) != pid):
        return None
    return int(usec) / 2 / 1_000_000


def _one_line(text: str) -> str:
    # A newline would start a new KEY=VALUE assignment inside the datagram.
    return " ".join(part.strip() for part in text.replace("\0", "").splitlines() if part.strip())


class Notifier:
    """Sends state changes to systemd; every method is a no-op without ``$NOTIFY_SOCKET``.

    Methods return ``True`` when the message was delivered or there was nobody to tell,
    ``False`` when a send failed (see :attr:`last_error`).
    """

    def __init__(
        self,
        socket_value: str | None = None,
        watchdog_interval: float | None = None,
        send_timeout: float = _SEND_TIMEOUT,
    ) -> None:
        self._socket_value = socket_value or None
        self._watchdog_interval = watchdog_interval
        self._send_timeout = send_timeout
        self._last_error: OSError | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        return cls(
            socket_value=environ.get("NOTIFY_SOCKET"),
            watchdog_interval=_watchdog_interval(environ, os.getpid()),
        )

    def __repr__(self) -> str:
        return f"Notifier(socket={self._socket_value!r}, watchdog={self._watchdog_interval!r})"

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings (half of ``WatchdogSec``), or None when off."""
        return self._watchdog_interval

    @property
    def enabled(self) -> bool:
        """Whether systemd asked for notifications (``$NOTIFY_SOCKET`` is set)."""
        return self._socket_value is not None

    @property
    def last_error(self) -> OSError | None:
        """Why the most recent failed send failed, for the caller's log line."""
        return self._last_error

    def send(self, message: str) -> bool:
        """Send one datagram of ``KEY=VALUE`` lines as given."""
        if self._socket_value is None:
            return True
        address = _socket_address(self._socket_value)
        if address is None:
            return self._failed(OSError(f"unsupported NOTIFY_SOCKET {self._socket_value!r}"))
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(self._send_timeout)
                sock.connect(address)
                # 'replace': a path decoded with surrogateescape must not raise here.
                sock.send(message.encode("utf-8", errors="replace"))
        except OSError as exc:
            return self._failed(exc)
        return True

    def ready(self) -> bool:
        """Start-up finished, or a reload finished (systemd waits for it after RELOADING=1)."""
        return self.send("READY=1")

    def status(self, text: str) -> bool:
        """A one-line description of the current state, shown by ``systemctl status``."""
        encoded = _one_line(text).encode("utf-8", errors="replace")[:_MAX_STATUS_BYTES]
        return self.send("STATUS=" + encoded.decode("utf-8", errors="ignore"))

    def reloading(self) -> bool:
        """A reload started; the timestamp lets systemd order it against its own reload requests."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def watchdog(self) -> bool:
        """Proof of life; systemd aborts the service when pings stop for ``WatchdogSec``."""
        return self.send("WATCHDOG=1")

    def _failed(self, error: OSError) -> bool:
        self._last_error = error
        return False
