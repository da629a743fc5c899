"""The executor's runbook events, checked like every other event: a malformed one is refused
naming the field, by the engine and in a replay line."""

from __future__ import annotations

from typing import Any

import pytest

from policies.engine import Engine
from policies.events import EventError, parse_event
from policies.policy import parse_policy, resolve_ref
from policies.replay import ReplayError, parse_line

POLICY = parse_policy(resolve_ref("builtin:visionforge").read_text(encoding="utf-8"),
                      "builtin:visionforge")
BEGIN: dict[str, Any] = {"type": "runbook", "phase": "begin", "incident": 3,
                         "runbook": "immediate_rollback"}
END: dict[str, Any] = {**BEGIN, "phase": "end", "status": "succeeded", "restored": True}


@pytest.mark.parametrize("event", [
    BEGIN,
    END,
    {**END, "status": "failed", "restored": False},
    {**END, "incident": None},  # a run by hand, outside any incident
    {k: v for k, v in END.items() if k != "incident"},
    {**END, "run": 17, "version": "v42"},  # the daemon may say more
])
def test_a_runbook_begin_or_end_is_accepted(event: dict[str, Any]) -> None:
    assert parse_event(event) == event


@pytest.mark.parametrize(("event", "complaint"), [
    ({**BEGIN, "phase": "middle"}, "phase must be one of begin, end"),
    ({**END, "status": "abandoned"}, "status must be one of succeeded, failed"),
    ({k: v for k, v in END.items() if k != "status"}, "status must be one of"),
    ({k: v for k, v in END.items() if k != "restored"}, "restored must be true or false"),
    ({**END, "restored": 1}, "restored must be true or false"),
    ({**BEGIN, "status": "succeeded"}, "a begin has no status or restored"),
    ({**BEGIN, "restored": False}, "a begin has no status or restored"),
    ({**END, "incident": 0}, "incident must be the incident's number"),
    ({**END, "incident": True}, "incident must be the incident's number"),
    ({**END, "incident": "3"}, "incident must be the incident's number"),
    ({**END, "runbook": ""}, "runbook must be the runbook's name"),
    ({k: v for k, v in END.items() if k != "runbook"}, "runbook must be the runbook's name"),
    ({**END, "version": 42}, "version must be a string"),
])
def test_a_malformed_runbook_event_is_refused_naming_the_field(
        event: dict[str, Any], complaint: str) -> None:
    with pytest.raises(EventError, match=complaint):
        parse_event(event)
    engine = Engine(POLICY)
    engine.record(0.0, {"type": "migration", "status": "failed"})
    with pytest.raises(EventError):
        engine.record(1.0, event)
    assert engine.value("migration.failed") == 1.0  # nothing changed


def test_a_replay_line_with_a_bad_runbook_event_names_its_line() -> None:
    with pytest.raises(ReplayError, match=r"line 4: runbook event: restored"):
        parse_line('{"t": 9, "event": {"type": "runbook", "phase": "end", "incident": 1, '
                   '"runbook": "immediate_rollback", "status": "succeeded"}}', 4)
