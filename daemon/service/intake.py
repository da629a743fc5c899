"""Group commit of webhook events: many requests share one journal transaction (one fsync).

A webhook is answered 200 only once its events are journaled (synchronous=FULL: on disk). Doing
that per request, inside the event loop, costs one fsync each and blocks the loop meanwhile:
above a hundred or so requests a second, answers queue for seconds. Here handlers queue their
events and wait; one writer task takes whatever is queued (up to a bound), journals it in ONE
transaction in a thread of its own (the loop never waits on the disk), then answers every
request of the batch: all journaled, or all failed with the journal's error (503: the sender
retries; never 200 for what is not journaled).

The thread has its own connection: a second :class:`~daemon.journal.Journal` on the same file,
opened, used and closed in that one thread (sqlite3 connections stay in their thread), checked
to be the very journal the daemon opened, and checking the file and its id on every write as
every Journal does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from daemon.journal import Journal, JournalError
from daemon.logs import get_logger

Payloads = Sequence[Mapping[str, Any]]

MAX_BATCH_REQUESTS = 256
"""Requests journaled in one transaction at most."""
MAX_BATCH_EVENTS = 20_000
"""Events journaled in one transaction at most (a single bigger request goes alone)."""
MAX_QUEUED_REQUESTS = 2048
"""Requests waiting for their commit at most; more are refused (503, Retry-After)."""
MAX_QUEUED_EVENTS = 200_000
"""Events waiting at most (a request arriving at an empty queue is always taken)."""
RETRY_AFTER = 1
"""Seconds a refused sender is told to wait."""


class CommitObserver(Protocol):
    """What the writer reports (the daemon's metrics)."""

    def journal_committed(self, requests: int, events: int, seconds: float) -> None: ...


class IntakeFullError(Exception):
    """Too much is waiting for the journal already; ``str()`` says how much."""


class IntakeClosedError(JournalError):
    """The daemon is stopping: nothing more is taken."""


@dataclass(slots=True)
class Waiting:
    """A request's events, waiting for their commit; ``done`` is its answer."""

    t: float
    payloads: Payloads
    done: asyncio.Future[list[int]] = field(repr=False)


def take_batch(queue: list[Waiting], max_requests: int, max_events: int) -> list[Waiting]:
    """The oldest requests that fit in one transaction (always at least one), taken off
    ``queue``: a request is never split, so that it is journaled whole or not at all."""
    taken, events = 0, 0
    for request in queue:
        if taken and (taken == max_requests or events + len(request.payloads) > max_events):
            break
        taken += 1
        events += len(request.payloads)
    batch = queue[:taken]
    del queue[:taken]
    return batch


class Intake:
    """The webhook's writer. ``start()`` in the daemon's loop before the HTTP server serves;
    ``stop()`` after it stopped: what was accepted meanwhile is journaled first."""

    def __init__(self, journal: Journal, observer: CommitObserver | None = None, *,
                 max_batch_requests: int = MAX_BATCH_REQUESTS,
                 max_batch_events: int = MAX_BATCH_EVENTS,
                 max_queued_requests: int = MAX_QUEUED_REQUESTS,
                 max_queued_events: int = MAX_QUEUED_EVENTS) -> None:
        self.path = journal.path
        self._id = journal.id
        self._observer = observer
        self._max_batch = (max_batch_requests, max_batch_events)
        self._max_queued = (max_queued_requests, max_queued_events)
        self._queue: list[Waiting] = []
        self._queued_events = 0
        self._wake = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._journal: Journal | None = None
        """The writer thread's own connection; touched in that thread only."""
        self.log = get_logger().bind(component="intake")

    # -- the handlers' side ----------------------------------------------------------------

    async def record(self, t: float, payloads: Payloads) -> list[int]:
        """Journal ``payloads`` at ``t`` with whatever else is waiting; their ids once
        committed. Raises :class:`IntakeFullError` when too much waits already, and
        :class:`JournalError` when the batch could not be journaled."""
        if self._closed or self._task is None:
            raise IntakeClosedError(f"{self.path}: rollbackd is not taking events now (stopping)")
        queued_requests, queued_events = self._max_queued
        if self._queue and (len(self._queue) >= queued_requests
                            or self._queued_events + len(payloads) > queued_events):
            raise IntakeFullError(f"{len(self._queue)} requests ({self._queued_events} events) "
                             "already wait for the journal")
        done: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._queue.append(Waiting(t, payloads, done))
        self._queued_events += len(payloads)
        self._wake.set()
        return await done

    # -- lifetime --------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the writer's connection (in its thread) and start the writer. A journal that
        cannot be opened now is logged; each batch tries again (and fails with 503 meanwhile)."""
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal-intake")
        try:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._open)
        except JournalError as exc:
            self.log.error("the webhook's journal writer cannot open the journal",
                           error=str(exc))
        self._task = asyncio.create_task(self._write())

    async def stop(self) -> None:
        """Take nothing more, journal (and answer) everything queued, then close."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._close)
            self._thread.shutdown(wait=True)

    # -- the writer ------------------------------------------------------------------------

    async def _write(self) -> None:
        """Until stopped and drained: wait for requests, commit a batch, answer its requests."""
        loop = asyncio.get_running_loop()
        while self._queue or not self._closed:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = take_batch(self._queue, *self._max_batch)
            events = sum(len(r.payloads) for r in batch)
            self._queued_events -= events
            started = time.monotonic()
            try:
                ids = await loop.run_in_executor(self._thread, self._commit, batch)
            except BaseException as exc:
                error = exc if isinstance(exc, JournalError) else JournalError(
                    f"{self.path}: cannot write the journal: {type(exc).__name__}: {exc}")
                for request in batch:
                    if not request.done.done():
                        request.done.set_exception(error)
                if not isinstance(exc, Exception):
                    raise  # cancelled: the daemon is going down regardless
                continue
            if self._observer is not None:
                self._observer.journal_committed(len(batch), events,
                                                 time.monotonic() - started)
            for request, request_ids in zip(batch, ids, strict=True):
                # A request whose handler was cancelled has nobody left to answer.
                if not request.done.done():
                    request.done.set_result(request_ids)

    # -- in the writer's thread ------------------------------------------------------------

    def _open(self) -> Journal:
        journal = Journal(self.path)
        if journal.id != self._id:
            journal.close()
            raise JournalError(
                f"{self.path}: the journal's id changed from {self._id} to {journal.id} since "
                "rollbackd opened it: nothing is journaled; restart rollbackd")
        self._journal = journal
        return journal

    def _commit(self, batch: Sequence[Waiting]) -> list[list[int]]:
        journal = self._journal or self._open()
        return journal.add_event_batches([(r.t, r.payloads) for r in batch])

    def _close(self) -> None:
        if self._journal is not None:
            with contextlib.suppress(Exception):
                self._journal.close()
            self._journal = None
