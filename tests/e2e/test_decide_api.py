"""A person's decision through the API: POST /api/v1/incidents/N/decision names the rollback
chosen (or fix_forward, dismiss) and answers 202 with what the journal tells now of the
executor's checks; a malformed decision is 400, an unknown incident 404, one that cannot be
decided 409."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.api import Rollbackd, alert, webhook
from tests.harness.servers import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Rollbackd]:
    started = Rollbackd(tmp_path)
    yield started
    started.close()


def decide(daemon: Rollbackd, number: int, **body: object) -> tuple[int, dict[str, object]]:
    answer = daemon.call("POST", f"/api/v1/incidents/{number}/decision",
                         json={"by": "alice", **body})
    return answer.status_code, answer.json()


def test_a_decision_through_the_api_is_checked_then_starts_the_chosen_runbook(
        daemon: Rollbackd) -> None:
    posted = daemon.call("POST", "/api/v1/alertmanager", json=webhook(alert()))
    assert posted.status_code == 200, posted.text
    wait_for(lambda: daemon.metric("rollbackd_incident_open", severity="medium") == 1, 10,
             what="an evaluate incident opened by the alert")

    for body, error in [
        ({"decision": "selective_rollback"}, "selective_rollback restores the data of named"),
        ({"decision": "selective_rollback", "tables": ["users; DROP TABLE users"]},
         "tables: table 'users; DROP TABLE users' is not a table name"),
        ({"decision": "selective_rollback", "tables": "users"}, "tables: "),
        ({"decision": "dismiss", "runbook": "code_only"}, "a runbook or tables are named only"),
        ({"decision": "planned_rollback", "tables": ["users"]}, "tables go with selective"),
    ]:
        status, answer = decide(daemon, 1, **body)
        assert status == 400 and str(answer["error"]).startswith(error), (body, answer)
    status, answer = decide(daemon, 9, decision="planned_rollback")
    assert status == 404 and answer["error"] == "no incident 9 in the journal"
    status, answer = decide(daemon, 1, decision="rollback")
    assert status == 409 and "runs no runbook" in str(answer["error"])
    assert daemon.journal.latest_event(("approve", "close")) is None

    status, answer = decide(daemon, 1, decision="planned_rollback", reason="bad rows")
    assert status == 202, answer
    assert answer == {
        "incident": 1, "decision": "planned_rollback", "reason": "bad rows", "by": "alice",
        "action": "planned_rollback", "runbook": "planned_rollback", "tables": [],
        "guards": {"paused": False, "running_run": None, "restores_database": True,
                   "restore_point": None, "restore_point_verified": None,
                   "warnings": ["no deploy is journaled: the restore step has no restore "
                                "point and fails"]},
        "applies": "at the next cycle"}

    # The executor runs it for alice (and, with no app to stop here, fails and pages).
    wait_for(lambda: [r.status for r in daemon.journal.runs()] in (["failed"], ["succeeded"]),
             15, what="alice's run to end")
    [run] = daemon.journal.runs()
    assert (run.runbook, run.action, run.requested_by) == (
        "planned_rollback", "planned_rollback", "alice")

    status, answer = decide(daemon, 1, decision="dismiss", reason="handled by hand")
    assert status == 202 and answer["decision"] == "dismiss" and "guards" not in answer
    wait_for(lambda: daemon.call("GET", "/api/v1/incidents/1").json()["state"] == "resolved",
             10, what="incident 1 to resolve")
    status, answer = decide(daemon, 1, decision="immediate_rollback")
    assert status == 409 and answer["error"] == "incident 1 is already resolved"
