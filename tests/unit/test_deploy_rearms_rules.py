"""DESIGN section 3: each deploy re-arms the rules. A `deploy` begin ends every `for` and
`clear_for` timer, so a failure of the next release is a decision of its own, never hidden
behind the last release's `clear_for`.

The engine is driven directly, one step per call, with the bundled policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from policies.engine import Decision, Engine
from policies.policy import Policy, parse_policy, resolve_ref

POLICY: Policy = parse_policy(resolve_ref("builtin:visionforge").read_text(encoding="utf-8"),
                              "builtin:visionforge")
HEALTHY: dict[str, float | None] = {"http.up": 1.0, "http.error_ratio": 0.01,
                                    "http.latency_p95": 0.2, "db.up": 1.0,
                                    "db.validation_failures": 0.0}
ERRORS = {**HEALTHY, "http.error_ratio": 0.5}
CLEAR_FOR = 300.0  # the bundled rules' clear_for (5m)


def deploy(version: str) -> dict[str, Any]:
    return {"type": "deploy", "phase": "begin", "version": version, "verified": True}


def failed_migration(version: str) -> dict[str, Any]:
    return {"type": "migration", "status": "failed", "version": version}


def dismiss(incident: int) -> dict[str, Any]:
    return {"type": "close", "incident": incident, "by": "alice", "decision": "dismiss"}


def kinds(decisions: Sequence[Decision]) -> list[tuple[float, str, int, str]]:
    return [(d.t, d.kind, d.incident, d.scenario) for d in decisions]


def run_steps(engine: Engine, steps: Sequence[tuple[float, dict[str, float | None],
                                                    list[dict[str, Any]]]]) -> list[Decision]:
    decisions: list[Decision] = []
    for t, samples, events in steps:
        decisions += engine.step(t, samples, events)
    return decisions


def test_a_deploy_rearms_a_rule_held_by_clear_for() -> None:
    # Incident 1 is dismissed; v2's deploy resets migration.failed to 0, which would leave
    # migration_failed firing for its 5 minute clear_for; v2's migration fails inside them.
    decisions = run_steps(Engine(POLICY), [
        (0, HEALTHY, [deploy("v1")]),
        (10, HEALTHY, [failed_migration("v1")]),
        (20, HEALTHY, [dismiss(1)]),
        (30, HEALTHY, [deploy("v2")]),
        (40, HEALTHY, [failed_migration("v2")]),
    ])
    assert kinds(decisions) == [
        (10.0, "open", 1, "migration_failed"),
        (20.0, "resolve", 1, "migration_failed"),
        (40.0, "open", 2, "migration_failed"),
    ]


def test_a_deploy_restarts_the_for_timer_so_errors_before_it_do_not_count() -> None:
    # app_compromised needs 2 minutes of errors: 90 s of them come before v2's deploy.
    steps: list[tuple[float, dict[str, float | None], list[dict[str, Any]]]] = [
        (0, HEALTHY, [deploy("v1")])]
    steps += [(t, ERRORS, [deploy("v2")] if t == 100 else []) for t in range(10, 240, 10)]
    decisions = run_steps(Engine(POLICY), steps)
    assert kinds(decisions) == [(220.0, "open", 1, "app_compromised")]


def test_a_deploy_restarts_the_clear_for_wait_of_the_open_incident() -> None:
    # The errors stop at 200; without the deploy at 400 the incident would resolve at 500.
    steps: list[tuple[float, dict[str, float | None], list[dict[str, Any]]]] = [
        (0, HEALTHY, [deploy("v1")])]
    steps += [(t, ERRORS if t < 200 else HEALTHY, [deploy("v2")] if t == 400 else [])
              for t in range(10, 800, 10)]
    decisions = run_steps(Engine(POLICY), steps)
    assert kinds(decisions) == [(130.0, "open", 1, "app_compromised"),
                                (400.0 + CLEAR_FOR, "resolve", 1, "app_compromised")]


def test_while_the_previous_incident_is_open_the_next_failure_is_its_evidence() -> None:
    # One incident per application: v2's failed migration does not open a second one while
    # nobody has closed the first, and the first stays open until the rule clears again.
    decisions = run_steps(Engine(POLICY), [
        (0, HEALTHY, [deploy("v1")]),
        (10, HEALTHY, [failed_migration("v1")]),
        (30, HEALTHY, [deploy("v2")]),
        (40, HEALTHY, [failed_migration("v2")]),
        (50, HEALTHY, [dismiss(1)]),
        (60, HEALTHY, [deploy("v3")]),
        (70, HEALTHY, [failed_migration("v3")]),
    ])
    assert kinds(decisions) == [
        (10.0, "open", 1, "migration_failed"),
        (50.0, "resolve", 1, "migration_failed"),
        (70.0, "open", 2, "migration_failed"),
    ]


def test_monitoring_blind_is_not_re_armed_by_a_deploy() -> None:
    # Blindness is about the probes, not the release: a deploy during it pages no second time.
    blind = {**HEALTHY, "http.up": None, "http.error_ratio": None}
    steps: list[tuple[float, dict[str, float | None], list[dict[str, Any]]]] = [
        (0, HEALTHY, [deploy("v1")])]
    steps += [(t, blind, [dismiss(1)] if t == 200 else [deploy("v2")] if t == 300 else [])
              for t in range(10, 400, 10)]
    decisions = run_steps(Engine(POLICY), steps)
    assert kinds(decisions) == [(140.0, "open", 1, "monitoring_blind"),
                                (200.0, "resolve", 1, "monitoring_blind")]
