"""The webhook's group-commit writer (daemon.service.intake) on a real journal file: batches
are bounded and never split a request, a full queue refuses, stopping journals what was
accepted, and a batch the journal refuses fails every request in it."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from daemon.journal import Journal, JournalError
from daemon.service.intake import (
    Intake,
    IntakeClosedError,
    IntakeFullError,
    Waiting,
    take_batch,
)


class Commits:
    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def journal_committed(self, requests: int, events: int, seconds: float) -> None:
        self.seen.append((requests, events))


def events(n: int, tag: str) -> list[dict[str, Any]]:
    return [{"type": "alert", "status": "firing", "labels": {"alertname": tag, "i": str(i)}}
            for i in range(n)]


def alert_names(journal: Journal) -> list[str]:
    return [e.payload["labels"]["alertname"] for e in journal.events_after(0)]


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal.in_state_dir(tmp_path / "state")


async def test_a_batch_takes_the_oldest_requests_that_fit_and_never_splits_one() -> None:
    loop = asyncio.get_running_loop()
    queue = [Waiting(0.0, events(n, "x"), loop.create_future()) for n in (4, 4, 4, 1, 25, 1)]
    taken = []
    while queue:
        taken.append([len(r.payloads) for r in take_batch(queue, 3, 10)])

    assert taken == [[4, 4], [4, 1], [25], [1]]


async def test_concurrent_records_share_commits_and_each_gets_its_own_ids(
        journal: Journal) -> None:
    commits = Commits()
    intake = Intake(journal, commits)
    await intake.start()
    ids = await asyncio.gather(*(intake.record(float(i), events(2, f"r{i}")) for i in range(50)))
    await intake.stop()

    assert [len(i) for i in ids] == [2] * 50
    assert len({i for pair in ids for i in pair}) == 100
    assert sum(r for r, _ in commits.seen) == 50 and sum(e for _, e in commits.seen) == 100
    assert len(commits.seen) < 50  # queued while the first commit ran: they shared the rest
    by_id = {e.id: e.payload["labels"]["alertname"] for e in journal.events_after(0)}
    assert all(by_id[a] == by_id[b] == f"r{i}" for i, (a, b) in enumerate(ids))


async def test_a_full_queue_refuses_and_stopping_journals_everything_accepted(
        journal: Journal) -> None:
    intake = Intake(journal, max_queued_requests=2)
    await intake.start()
    # Three at once, before the writer runs: two queue, the third finds the queue full.
    tasks = [asyncio.create_task(intake.record(1.0, events(1, f"r{i}"))) for i in range(3)]
    await asyncio.sleep(0)
    await intake.stop()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)

    assert isinstance(outcomes[2], IntakeFullError)
    assert [len(o) for o in outcomes[:2] if isinstance(o, list)] == [1, 1]
    assert alert_names(journal) == ["r0", "r1"]
    with pytest.raises(IntakeClosedError):
        await intake.record(2.0, events(1, "late"))


async def test_a_batch_the_journal_refuses_fails_every_request_in_it(
        journal: Journal, tmp_path: Path) -> None:
    intake = Intake(journal)
    await intake.start()
    other = Journal.in_state_dir(tmp_path / "elsewhere")
    other.close()
    os.replace(other.path, journal.path)

    outcomes = await asyncio.gather(*(intake.record(1.0, events(1, f"r{i}")) for i in range(5)),
                                    return_exceptions=True)
    await intake.stop()

    assert all(isinstance(o, JournalError) and str(o).startswith(f"{journal.path}: ")
               for o in outcomes), outcomes
