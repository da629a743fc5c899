"""Journal rows are typed values whose JSON is the contract's: decisions read back, incident
summaries (one query for all of them), deploys."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from daemon.journal import IncidentSummary, Journal, JournalError
from policies.engine import Decision


def decision(t: float, kind: str, incident: int, scenario: str = "app_compromised",
             action: str = "planned_rollback") -> Decision:
    return Decision(t=t, kind=kind, incident=incident, scenario=scenario, severity="high",
                    action=action, requested_action="planned_rollback", timeline_s=1800,
                    mode="auto", reason=f"{kind} at {t}")


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "journal.sqlite3")


def test_decisions_read_back_equal_the_ones_written(journal: Journal) -> None:
    written = [decision(10.0, "open", 1), decision(20.0, "attach", 1, "performance_degraded",
                                                   "evaluate"),
               decision(30.0, "resolve", 1), decision(40.0, "open", 2)]
    for d in written:
        journal.add_decision(d)
    assert journal.decisions() == written
    assert journal.decisions(incident=1) == written[:3]
    assert journal.decisions(limit=2) == written[2:]
    assert [d.as_json() for d in journal.decisions()] == [d.as_dict() for d in written]


def test_incident_summaries_come_from_one_query(journal: Journal) -> None:
    for n in range(1, 6):
        journal.add_decision(decision(n * 100.0, "open", n))
        journal.add_decision(decision(n * 100.0 + 1, "attach", n, "performance_degraded"))
        if n % 2:
            journal.add_decision(decision(n * 100.0 + 2, "resolve", n))
    statements: list[str] = []
    journal._db.set_trace_callback(statements.append)
    summaries = journal.incidents()
    assert len(statements) == 1
    assert [(s.incident, s.state) for s in summaries] == [
        (5, "resolved"), (4, "open"), (3, "resolved"), (2, "open"), (1, "resolved")]

    statements.clear()
    one = journal.incident(4)
    assert len(statements) == 1
    assert one == summaries[1] == IncidentSummary(
        incident=4, opened_at=400.0, opened_by="app_compromised",
        scenario="performance_degraded", severity="high", action="planned_rollback",
        mode="auto", state="open", updated_at=401.0, reason="attach at 401.0")
    assert journal.incident(99) is None
    assert one.as_json() == {
        "incident": 4, "opened_at": 400.0, "opened_by": "app_compromised",
        "scenario": "performance_degraded", "severity": "high", "action": "planned_rollback",
        "mode": "auto", "state": "open", "updated_at": 401.0, "reason": "attach at 401.0"}


def test_a_malformed_decision_row_is_a_journal_error_naming_the_file(journal: Journal) -> None:
    journal._db.execute("INSERT INTO decisions (t, incident, kind, scenario, action, payload)"
                        " VALUES (1, 1, 'open', 'x', 'page', '{\"t\": 1}')")
    where = re.escape(str(journal.path))
    with pytest.raises(JournalError, match=f"^{where}: decision 1 is malformed"):
        journal.decisions()


def test_a_decision_outside_the_contract_is_refused() -> None:
    with pytest.raises(ValueError, match="decision severity 'urgent'"):
        Decision(t=1.0, kind="open", incident=1, scenario="x", severity="urgent",
                 action="page", requested_action="page", timeline_s=None, mode="auto",
                 reason="")
    good = decision(1.0, "open", 1).as_json()
    with pytest.raises(ValueError, match="decision: incident"):
        Decision.from_json({**good, "incident": "1"})
    assert Decision.from_json(good) == decision(1.0, "open", 1)


def test_an_incident_number_beyond_64_bits_is_simply_not_in_the_journal(tmp_path: Path) -> None:
    journal = Journal.in_state_dir(tmp_path)
    try:
        assert journal.incident(2**64) is None
        assert journal.decisions(incident=99999999999999999999) == []
    finally:
        journal.close()
