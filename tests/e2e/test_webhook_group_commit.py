"""The Alertmanager webhook's group commit against a real `rollbackd run`: concurrent requests
share journal transactions, yet each is journaled exactly once; an answer 200 means on disk
(the daemon SIGKILLed right after it loses nothing answered); a journal that cannot be
written answers 503, never 200."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from daemon.journal import Journal
from tests.harness.api import Rollbackd, alert, webhook

pytestmark = pytest.mark.e2e

REQUESTS = 200


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Rollbackd]:
    started = Rollbackd(tmp_path)
    yield started
    started.close()


def notification(request: int) -> dict[str, object]:
    """Request ``request``'s two alerts; their fingerprints (not labels: the engine's alerts
    stay two) name the request."""
    return webhook(*(alert(alertname="HighLatency", instance=f"web-{k}")
                     | {"fingerprint": f"r{request}a{k}"} for k in (1, 2)))


def fingerprints(request: int) -> set[str]:
    return {f"r{request}a1", f"r{request}a2"}


def journaled(state: Path) -> list[str]:
    """The fingerprints of every alert event in the journal file, repeats included: read with
    a connection of its own, as anyone reading the file after the daemon would."""
    db = sqlite3.connect(state / Journal.FILE)
    try:
        rows = db.execute("SELECT payload FROM events WHERE type = 'alert'").fetchall()
    finally:
        db.close()
    return [json.loads(payload)["fingerprint"] for (payload,) in rows]


async def post_all(daemon: Rollbackd, requests: range,
                   on_answer: asyncio.Event | None = None,
                   answers_before_event: int = 0) -> dict[int, int | str]:
    """Every request at once; each one's status (or the error's name). ``on_answer`` is set
    once ``answers_before_event`` requests were answered 200."""
    statuses: dict[int, int | str] = {}
    limits = httpx.Limits(max_connections=50)
    headers = {"Authorization": f"Bearer {daemon.token}"}
    async with httpx.AsyncClient(base_url=daemon.url, headers=headers, limits=limits,
                                 timeout=30, trust_env=False) as client:

        async def post(i: int) -> None:
            try:
                answer = await client.post("/api/v1/alertmanager", json=notification(i))
            except httpx.HTTPError as exc:
                statuses[i] = type(exc).__name__
                return
            statuses[i] = answer.status_code
            ok = sum(s == 200 for s in statuses.values())
            if on_answer is not None and ok >= answers_before_event:
                on_answer.set()

        await asyncio.gather(*(post(i) for i in requests))
    return statuses


def test_concurrent_webhooks_are_each_journaled_exactly_once(daemon: Rollbackd,
                                                             tmp_path: Path) -> None:
    statuses = asyncio.run(post_all(daemon, range(REQUESTS)))

    assert set(statuses.values()) == {200}, statuses
    found = journaled(tmp_path / "state")
    assert sorted(found) == sorted(f for i in range(REQUESTS) for f in fingerprints(i))
    # Every request went through the writer once, whatever the batches were.
    assert daemon.metric("rollbackd_journal_commit_requests_sum") == REQUESTS
    assert daemon.metric("rollbackd_alertmanager_alerts_received_total",
                         status="firing") == 2 * REQUESTS


def test_every_webhook_answered_200_is_journaled_when_the_daemon_is_killed_right_after(
        daemon: Rollbackd, tmp_path: Path) -> None:

    async def kill_during_the_flood() -> dict[int, int | str]:
        answered = asyncio.Event()
        flood = asyncio.create_task(post_all(daemon, range(REQUESTS), answered, REQUESTS // 4))
        await answered.wait()
        os.kill(daemon.proc.pid, signal.SIGKILL)  # no shutdown: what is on disk is all there is
        return await flood

    statuses = asyncio.run(kill_during_the_flood())
    daemon.proc.popen.wait(10)

    accepted = {i for i, status in statuses.items() if status == 200}
    assert len(accepted) >= REQUESTS // 4
    assert all(status == 200 or isinstance(status, str) for status in statuses.values()), \
        statuses  # cut off by the kill: no answer, never an answer other than 200
    found = journaled(tmp_path / "state")
    missing = [i for i in sorted(accepted) if not fingerprints(i) <= set(found)]
    assert missing == [], f"answered 200 but not in the journal: {missing}"
    assert len(found) == len(set(found))


def test_webhooks_to_a_journal_replaced_under_the_daemon_are_answered_503_never_200(
        daemon: Rollbackd, tmp_path: Path) -> None:
    first = asyncio.run(post_all(daemon, range(1)))
    assert first == {0: 200}
    path = tmp_path / "state" / Journal.FILE
    other = Journal.in_state_dir(tmp_path / "elsewhere")
    other.close()
    os.replace(other.path, path)

    statuses = asyncio.run(post_all(daemon, range(1, 41)))

    assert set(statuses.values()) == {503}, statuses
    answer = daemon.call("POST", "/api/v1/alertmanager", json=notification(99))
    assert answer.status_code == 503
    assert answer.json()["error"].startswith(f"the journal is unavailable: {path}: ")
    refused = {f for i in [*range(1, 41), 99] for f in fingerprints(i)}
    # Nor into the file now in its place (reading it, SQLite also applies the old journal's
    # write-ahead log left beside it: the first request may show; none of the refused ones).
    assert refused.isdisjoint(journaled(tmp_path / "state"))
    assert daemon.proc.running()
