"""Live traffic for the demo: a thread that keeps creating users through the app's HTTP API and
records every write the app acknowledged, so that the demo can check afterwards where each one
is (the restored database, or the copy rollbackd kept of the one it replaced).

A write counts only when the app answered 201 with the new row: that answer comes after the
transaction committed. Anything else (a refused connection while the app is stopped, a 5xx, a
timeout) is a failed attempt, counted but not recorded, because nothing promised it exists.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import httpx


@dataclass(frozen=True, slots=True)
class Write:
    """An acknowledged write: the row's id and e-mail (unique per write), and when the app's
    answer arrived (epoch seconds)."""

    seq: int
    id: int
    email: str
    at: float


class Traffic:
    """Creates a user every ``every`` seconds from a thread of its own until :meth:`stop`.

    ``client``: the httpx client to use (its transport can be a mock in tests); by default one
    for ``url`` with a short timeout. ``clock``: epoch seconds (``time.time``).
    """

    def __init__(self, url: str, *, tag: str, every: float = 0.1,
                 client: httpx.Client | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.url = url.rstrip("/")
        self.tag = tag
        self.every = every
        self._client = client or httpx.Client(timeout=2.0, trust_env=False)
        self._clock = clock
        self._lock = threading.Lock()
        self._writes: list[Write] = []
        self._failures: Counter[str] = Counter()
        self._attempts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the writer ------------------------------------------------------------------------

    def write_one(self) -> Write | None:
        """One attempt; the write when the app acknowledged it, else None (and counted)."""
        with self._lock:
            self._attempts += 1
            seq = self._attempts
        email = f"{self.tag}-{seq}@traffic.example"
        try:
            answer = self._client.post(f"{self.url}/api/users",
                                       json={"email": email, "name": f"Traffic {seq}"})
        except httpx.HTTPError as exc:
            self._fail(type(exc).__name__)
            return None
        if answer.status_code != 201:
            self._fail(f"HTTP {answer.status_code}")
            return None
        try:
            body = answer.json()
            row_id, row_email = int(body["id"]), str(body["email"])
        except (ValueError, KeyError, TypeError):
            self._fail("unreadable answer")
            return None
        if row_email != email:
            self._fail("answer for another row")
            return None
        write = Write(seq, row_id, email, self._clock())
        with self._lock:
            self._writes.append(write)
        return write

    def _fail(self, why: str) -> None:
        with self._lock:
            self._failures[why] += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.write_one()
            self._stop.wait(max(0.0, self.every - (time.monotonic() - started)))

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("traffic already started")
        self._thread = threading.Thread(target=self._run, name="demo-traffic", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop writing (the write under way finishes first) and close the client."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._client.close()

    # -- what it recorded ------------------------------------------------------------------

    @property
    def writes(self) -> list[Write]:
        with self._lock:
            return list(self._writes)

    @property
    def failures(self) -> dict[str, int]:
        with self._lock:
            return dict(self._failures)

    @property
    def attempts(self) -> int:
        with self._lock:
            return self._attempts

    def acknowledged_since(self, t: float) -> int:
        with self._lock:
            return sum(1 for w in self._writes if w.at >= t)

    def describe(self) -> str:
        """``412 writes acknowledged, 37 failed (ConnectError 30, HTTP 503 7)``."""
        with self._lock:
            failed = sum(self._failures.values())
            line = f"{len(self._writes)} writes acknowledged, {failed} failed"
            if failed:
                line += " (" + ", ".join(f"{why} {n}" for why, n in
                                         self._failures.most_common()) + ")"
            return line
