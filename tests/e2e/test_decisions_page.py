"""Decisions that need a person are recorded as pages: an `evaluate` decision asks for one
(the decision request), a `page` decision is one, and neither starts a runbook. With no
channel configured the journal is where the page stays (test_paging_e2e delivers them)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness.api import Rollbackd, alert, webhook
from tests.harness.servers import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def rollbackd(tmp_path: Path) -> Iterator[Callable[..., Rollbackd]]:
    started: list[Rollbackd] = []

    def start(api: str | None = None) -> Rollbackd:
        started.append(Rollbackd(tmp_path, api))
        return started[-1]

    yield start
    for daemon in started:
        daemon.close()


def test_an_evaluate_decision_records_a_decision_request_page_and_runs_nothing(
        rollbackd: Callable[..., Rollbackd]) -> None:
    daemon = rollbackd()
    posted = daemon.call("POST", "/api/v1/alertmanager", json=webhook(alert()))
    assert posted.status_code == 200, posted.text
    wait_for(lambda: daemon.journal.pages(incident=1) != [], 10, what="the decision's page")
    [page] = daemon.journal.pages(incident=1)
    assert page.template == "decision"
    assert "high_latency" in page.summary and "evaluate" in page.summary, page.summary
    assert "rollbackd decide 1" in page.summary, page.summary
    assert daemon.journal.runs() == []
    assert daemon.metric("rollbackd_pages_total", channel="journal", outcome="recorded") == 1
