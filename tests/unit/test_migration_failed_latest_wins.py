"""`migration.failed` from two sources. In a replay a `signals` line records the value the
daemon used, so whichever of it and a `migration` event comes later wins (DESIGN section 3,
replay contract). Fed by probes, a failed migration the deploy wrapper reported holds the
signal at 1 over the probe's readings (knex records only successes) until a deploy begins.
"""

from __future__ import annotations

import json
from typing import Any

from policies.engine import Engine
from policies.policy import Policy, parse_policy, resolve_ref
from policies.replay import parse_replay, run

POLICY: Policy = parse_policy(resolve_ref("builtin:visionforge").read_text(encoding="utf-8"),
                              "builtin:visionforge")
CLEAR_FOR = 300.0
DEPLOY = {"type": "deploy", "phase": "begin", "version": "v1"}
FAILED = {"type": "migration", "status": "failed", "version": "v1"}
SUCCEEDED = {"type": "migration", "status": "succeeded", "version": "v1"}


def signals(t: float, **values: float) -> str:
    return json.dumps({"t": t, "signals": {k.replace("_", "."): v for k, v in values.items()}})


def event(t: float, body: dict[str, Any]) -> str:
    return json.dumps({"t": t, "event": body})


def simulate(*lines: str) -> list[tuple[float, str, str]]:
    return [(d.t, d.kind, d.scenario) for d in run(POLICY, parse_replay(lines))]


def test_a_later_signals_line_of_0_supersedes_a_failed_migration_event() -> None:
    assert simulate(
        event(0, DEPLOY), event(10, FAILED), signals(20, migration_failed=0),
        signals(320, migration_failed=0),
    ) == [(10.0, "open", "migration_failed"), (20.0 + CLEAR_FOR, "resolve", "migration_failed")]


def test_a_signals_line_of_0_in_the_same_second_after_the_event_wins() -> None:
    assert simulate(event(0, DEPLOY), event(10, FAILED), signals(10, migration_failed=0),
                    signals(400, migration_failed=0)) == []


def test_a_later_succeeded_migration_event_supersedes_a_signals_line_of_1() -> None:
    assert simulate(
        event(0, DEPLOY), signals(10, migration_failed=1), event(20, SUCCEEDED),
        signals(320, http_up=1),
    ) == [(10.0, "open", "migration_failed"), (20.0 + CLEAR_FOR, "resolve", "migration_failed")]


def test_a_later_failed_migration_event_supersedes_a_signals_line_of_0() -> None:
    assert simulate(event(0, DEPLOY), signals(10, migration_failed=0), event(20, FAILED)) == [
        (20.0, "open", "migration_failed")]


def test_a_later_deploy_begin_resets_a_signals_line_of_1() -> None:
    assert simulate(
        event(0, DEPLOY), signals(10, migration_failed=1), event(20, DEPLOY),
        signals(320, http_up=1),
    ) == [(10.0, "open", "migration_failed"), (20.0 + CLEAR_FOR, "resolve", "migration_failed")]


def test_fed_by_probes_a_reading_of_0_does_not_hide_a_reported_failure_until_a_deploy() -> None:
    engine = Engine(POLICY)
    engine.step(0, {"migration.failed": 0.0}, [{**DEPLOY, "verified": True}])
    opened = engine.step(10, {"migration.failed": 0.0}, [FAILED])
    assert [(d.kind, d.scenario) for d in opened] == [("open", "migration_failed")]
    for t in range(20, 1000, 10):
        assert engine.step(t, {"migration.failed": 0.0}) == []
        assert engine.value("migration.failed") == 1.0
    engine.step(1000, {"migration.failed": 0.0}, [{**DEPLOY, "version": "v2"}])
    assert engine.value("migration.failed") == 0.0
