"""Every source of events (replays, the journal, Alertmanager, operators) is checked alike."""

from __future__ import annotations

import pytest

from policies.engine import Engine
from policies.events import EventError, parse_event
from policies.policy import parse_policy
from policies.replay import ReplayError, parse_line
from tests.harness.paths import REPLAYS

POLICY = parse_policy((REPLAYS.parent.parent / "policies" / "visionforge.toml").read_text(),
                      "visionforge.toml")


@pytest.mark.parametrize(
    ("event", "complaint"),
    [
        ({"type": "deploy", "phase": "begin", "verified": "false"}, "verified must be true"),
        ({"type": "deploy", "phase": "middle"}, "phase must be one of"),
        ({"type": "migration"}, "status must be one of"),
        ({"type": "alert", "status": "firing", "labels": {"alertname": "X", "n": 5}},
         "labels must map strings to strings"),
        ({"type": "alert", "status": "firing", "labels": {"severity": "warning"}},
         "with an alertname"),
        ({"type": "close", "incident": True}, "incident must be"),
        ({"type": "close", "incident": 0}, "incident must be"),
        ({"type": "baseline", "values": {"http.latency_p95": "fast"}}, "numbers or null"),
        ({"type": "reboot"}, "is not one of"),
        (["deploy"], "must be an object"),
    ],
)
def test_a_malformed_event_is_refused_naming_the_field(event: object, complaint: str) -> None:
    with pytest.raises(EventError, match=complaint):
        parse_event(event)
    engine = Engine(POLICY)
    with pytest.raises(EventError):
        engine.record(0.0, event)  # type: ignore[arg-type]
    assert engine.decide(0.0) == []


def test_the_engine_never_assumes_a_verified_restore_point_but_a_replay_does() -> None:
    engine = Engine(POLICY)
    engine.observe(0.0, {"db.up": 1.0})
    engine.record(0.0, {"type": "deploy", "phase": "begin", "version": "v1"})
    engine.record(1.0, {"type": "migration", "status": "failed"})
    [opened] = engine.decide(1.0)
    assert opened.action == "page" and "no verified restore point" in opened.reason
    line = parse_line('{"t": 0, "event": {"type": "deploy", "phase": "begin"}}', 1)
    assert line is not None and line.event is not None and line.event["verified"] is True


def test_a_rollback_waits_for_the_database_to_be_measured_up() -> None:
    engine = Engine(POLICY)
    engine.observe(0.0, {"db.up": None})
    engine.record(0.0, {"type": "deploy", "phase": "begin", "verified": True})
    engine.record(1.0, {"type": "migration", "status": "failed"})
    [opened] = engine.decide(1.0)
    assert opened.action == "page" and "database not measured" in opened.reason


def test_alert_names_and_severities_map_to_names_a_policy_can_use() -> None:
    engine = Engine(POLICY)
    engine.record(0.0, {"type": "alert", "status": "firing",
                        "labels": {"alertname": "5xx-Rate", "severity": "Warning"}})
    assert engine.value("alert._5xx_Rate") == 1
    assert engine.value("alert.severity_warning") == 1


def test_a_replay_line_with_a_bad_event_names_its_line() -> None:
    with pytest.raises(ReplayError, match=r"line 7: deploy event: verified"):
        parse_line('{"t": 1, "event": {"type": "deploy", "phase": "begin", "verified": 1}}', 7)


def test_a_replay_cannot_set_alert_signals_directly() -> None:
    with pytest.raises(ReplayError, match="alert signals come from alert events"):
        parse_line('{"t": 0, "signals": {"alert.severity_warning": 1}}', 3)
