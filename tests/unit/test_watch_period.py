"""DESIGN section 4, after the runbook: the watch period (`guards.watch_for`, the procedures'
"first hour"). A rule firing again inside it pages the next escalation level and never starts a
second automatic rollback in the same incident; a clean watch period resolves the incident; a
failed runbook leaves it open for a person. A run that put the database back ends the hold of a
journaled migration failure (DESIGN section 3).

The engine is driven directly, one step every 10 s, with the bundled policy (watch_for 1h), as
the daemon drives it: probe readings, then the journal's events, then a decision.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pytest

from policies.engine import Decision, Engine
from policies.policy import ROLLBACKS, Policy, PolicyError, parse_policy, resolve_ref

POLICY: Policy = parse_policy(resolve_ref("builtin:visionforge").read_text(encoding="utf-8"),
                              "builtin:visionforge")
WATCH = 3600.0  # the bundled watch_for
CLEAR_FOR = 300.0
HEALTHY: dict[str, float | None] = {"http.up": 1.0, "http.error_ratio": 0.01,
                                    "http.latency_p95": 0.2, "db.up": 1.0,
                                    "db.validation_failures": 0.0}
ERRORS = {**HEALTHY, "http.error_ratio": 0.6}
DEPLOY = {"type": "deploy", "phase": "begin", "version": "v42", "verified": True}
FAILED_MIGRATION = {"type": "migration", "status": "failed", "version": "v42"}
Step = tuple[float, dict[str, float | None], list[dict[str, Any]]]


def begin(incident: int | None = 1, runbook: str = "immediate_rollback") -> dict[str, Any]:
    return {"type": "runbook", "phase": "begin", "incident": incident, "runbook": runbook}


def end(status: str, restored: bool, incident: int | None = 1,
        runbook: str = "immediate_rollback") -> dict[str, Any]:
    return {"type": "runbook", "phase": "end", "incident": incident, "runbook": runbook,
            "status": status, "restored": restored}


def close(incident: int) -> dict[str, Any]:
    return {"type": "close", "incident": incident, "by": "alice"}


def steps(start: float, stop: float, samples: dict[str, float | None],
          at: dict[float, list[dict[str, Any]]] | None = None) -> list[Step]:
    """One step every 10 s from ``start`` up to (not including) ``stop``; ``at`` gives the
    events of some of them."""
    at = at or {}
    return [(float(t), samples, at.get(float(t), [])) for t in range(int(start), int(stop), 10)]


def drive(engine: Engine, script: Iterable[Step]) -> list[Decision]:
    decisions: list[Decision] = []
    for t, samples, events in script:
        decisions += engine.step(t, samples, events)
    return decisions


def kinds(decisions: Sequence[Decision]) -> list[tuple[float, str, int, str, str]]:
    return [(d.t, d.kind, d.incident, d.scenario, d.action) for d in decisions]


def automatic_rollbacks(decisions: Sequence[Decision]) -> list[Decision]:
    return [d for d in decisions
            if d.kind in ("open", "escalate") and d.action in ROLLBACKS and d.mode == "auto"]


def rolled_back_at_200(engine: Engine, status: str = "succeeded",
                       restored: bool = True) -> list[Decision]:
    """v42's migration fails at 10: an immediate rollback opens incident 1; its runbook runs
    from 20 to 200 and ends with ``status``."""
    return drive(engine, steps(0, 210, HEALTHY, {
        0.0: [DEPLOY], 10.0: [FAILED_MIGRATION], 20.0: [begin()],
        200.0: [end(status, restored)]}))


# -- the watch period ----------------------------------------------------------------------------

def test_a_clean_hour_after_the_rollback_resolves_the_incident() -> None:
    engine = Engine(POLICY)
    decisions = rolled_back_at_200(engine)
    assert engine.watch_until == 200.0 + WATCH
    decisions += drive(engine, steps(210, 200 + WATCH + 100, HEALTHY))
    assert kinds(decisions) == [
        (10.0, "open", 1, "migration_failed", "immediate_rollback"),
        (200.0 + WATCH, "resolve", 1, "migration_failed", "page"),
    ]
    assert "the watch period was clean" in decisions[-1].reason
    assert "1h" in decisions[-1].reason
    assert engine.incident is None and engine.watch_until is None


def test_inside_the_watch_period_clear_for_alone_does_not_resolve_the_incident() -> None:
    # Without the runbook's end, the cleared migration_failed would resolve at 200 + 5m.
    engine = Engine(POLICY)
    rolled_back_at_200(engine)
    assert drive(engine, steps(210, 200 + WATCH, HEALTHY)) == []
    assert engine.incident == (1, "critical")


def test_a_rule_firing_again_inside_the_watch_period_pages_and_never_rolls_back_twice() -> None:
    engine = Engine(POLICY)
    decisions = rolled_back_at_200(engine)
    # Errors again 10 minutes after the rollback, for 2 minutes (app_compromised's for): the
    # next escalation level is paged. The errors stop at 1000 and clear by 1300, but the
    # incident holds until the watch period is over.
    decisions += drive(engine, [*steps(210, 800, HEALTHY), *steps(800, 1000, ERRORS),
                                *steps(1000, 200 + WATCH + 100, HEALTHY)])
    assert kinds(decisions) == [
        (10.0, "open", 1, "migration_failed", "immediate_rollback"),
        (920.0, "escalate", 1, "app_compromised", "page"),
        (200.0 + WATCH, "resolve", 1, "migration_failed", "page"),
    ]
    again = decisions[1]
    assert again.requested_action == "planned_rollback"
    assert again.reason.startswith("fired again inside the watch period after the rollback; "
                                   "paging instead of a second automatic rollback")
    assert "the watch period is over" in decisions[-1].reason
    assert len(automatic_rollbacks(decisions)) == 1


def test_only_the_first_rule_firing_again_escalates_the_others_follow_the_precedence() -> None:
    engine = Engine(POLICY)
    rolled_back_at_200(engine)
    down = {**ERRORS, "db.up": 0.0}
    decisions = drive(engine, [*steps(210, 300, ERRORS), *steps(300, 500, down)])
    # app_compromised fires again at 330 (2 minutes of errors); the database outage, critical
    # like the incident's migration_failed but a page, ranks below it: attached.
    assert kinds(decisions) == [
        (330.0, "escalate", 1, "app_compromised", "page"),
        (360.0, "attach", 1, "database_unreachable", "page"),
    ]


def test_a_rule_that_never_stopped_firing_fires_again_after_the_rollback() -> None:
    # The rollback did not help: the errors go on, and after app_compromised's 2 minutes,
    # counted from the runbook's end, the next level is paged.
    engine = Engine(POLICY)
    decisions = drive(engine, [*steps(0, 10, HEALTHY, {0.0: [DEPLOY]}),
                               *steps(10, 140, ERRORS),
                               *steps(140, 800, ERRORS, {150.0: [begin()],
                                                        600.0: [end("succeeded", True)]})])
    assert kinds(decisions) == [
        (130.0, "open", 1, "app_compromised", "planned_rollback"),
        (720.0, "escalate", 1, "app_compromised", "page"),
    ]


def test_a_person_closes_the_incident_inside_the_watch_period() -> None:
    engine = Engine(POLICY)
    rolled_back_at_200(engine)
    decisions = drive(engine, steps(210, 600, HEALTHY, {500.0: [close(1)]}))
    assert kinds(decisions) == [(500.0, "resolve", 1, "migration_failed", "page")]
    assert decisions[0].reason == "closed by alice"


def test_a_rule_firing_as_the_clean_watch_period_ends_opens_a_new_incident_that_only_pages(
        ) -> None:
    # The watch period ends clean at 3800; errors from 3690 fire at 3810: a new incident. The
    # deploy the runbook rolled back has nothing left to roll back to.
    engine = Engine(POLICY)
    rolled_back_at_200(engine)
    decisions = drive(engine, [*steps(210, 3690, HEALTHY), *steps(3690, 3900, ERRORS)])
    assert kinds(decisions) == [
        (3800.0, "resolve", 1, "migration_failed", "page"),
        (3810.0, "open", 2, "app_compromised", "page"),
    ]
    assert "deploy v42 was already rolled back: nothing to roll back to" in decisions[1].reason


def test_the_next_deploy_can_be_rolled_back_again() -> None:
    engine = Engine(POLICY)
    rolled_back_at_200(engine)
    decisions = drive(engine, steps(210, 200 + WATCH + 7200, HEALTHY, {
        200.0 + WATCH + 3600: [{**DEPLOY, "version": "v43"}],
        200.0 + WATCH + 3610: [{**FAILED_MIGRATION, "version": "v43"}]}))
    assert kinds(decisions)[-1] == (200.0 + WATCH + 3610, "open", 2, "migration_failed",
                                    "immediate_rollback")


def test_a_paused_daemon_pages_in_dry_run_when_a_rule_fires_again() -> None:
    engine = Engine(POLICY)
    rolled_back_at_200(engine)
    decisions = drive(engine, steps(210, 400, ERRORS, {210.0: [{"type": "pause"}]}))
    [again] = decisions
    assert (again.kind, again.action, again.mode) == ("escalate", "page", "dry-run")
    assert again.reason.startswith("paused: nothing is executed; fired again inside the watch")


# -- a failed runbook, a runbook under way -------------------------------------------------------

def test_a_failed_runbook_leaves_the_incident_open_without_a_second_automatic_rollback() -> None:
    # Errors open a planned rollback; its runbook fails. Hours later (the rate limit's cooldown
    # long over) the migration of the same release fails: the incident escalates, and pages.
    engine = Engine(POLICY)
    decisions = drive(engine, [
        *steps(0, 10, HEALTHY, {0.0: [DEPLOY]}), *steps(10, 140, ERRORS),
        *steps(140, 9000, HEALTHY, {150.0: [begin(runbook="planned_rollback")],
                                    400.0: [end("failed", False, runbook="planned_rollback")],
                                    8000.0: [FAILED_MIGRATION]}),
        *steps(9000, 9100, HEALTHY, {9050.0: [close(1)]}),
    ])
    assert kinds(decisions) == [
        (130.0, "open", 1, "app_compromised", "planned_rollback"),
        (8000.0, "escalate", 1, "migration_failed", "page"),
        (9050.0, "resolve", 1, "migration_failed", "page"),
    ]
    assert decisions[1].requested_action == "immediate_rollback"
    assert ("the planned_rollback runbook of incident 1 failed; paging instead of a second "
            "automatic rollback") in decisions[1].reason
    assert engine.watch_until is None


def test_an_incident_never_resolves_under_a_running_runbook() -> None:
    # The runbook has begun and not ended: the cleared errors do not resolve the incident.
    engine = Engine(POLICY)
    decisions = drive(engine, [*steps(0, 10, HEALTHY, {0.0: [DEPLOY]}), *steps(10, 140, ERRORS),
                               *steps(140, 3000, HEALTHY, {150.0: [begin()]})])
    assert kinds(decisions) == [(130.0, "open", 1, "app_compromised", "planned_rollback")]


def test_a_rule_firing_while_the_runbook_runs_pages() -> None:
    engine = Engine(POLICY)
    decisions = drive(engine, [*steps(0, 10, HEALTHY, {0.0: [DEPLOY]}), *steps(10, 140, ERRORS),
                               *steps(140, 200, ERRORS, {150.0: [begin()],
                                                        160.0: [FAILED_MIGRATION]})])
    assert kinds(decisions)[1] == (160.0, "escalate", 1, "migration_failed", "page")
    assert "runbook of incident 1 is running" in decisions[1].reason


def test_a_second_automatic_rollback_in_one_incident_is_a_page_even_without_runbook_events(
        ) -> None:
    # No runbook is journaled (as in a replay): errors hold the incident open past the 1h
    # cooldown, then the migration fails. The incident already had its automatic rollback.
    engine = Engine(POLICY)
    decisions = drive(engine, [*steps(0, 10, HEALTHY, {0.0: [DEPLOY]}),
                               *steps(10, 5000, ERRORS, {4500.0: [FAILED_MIGRATION]})])
    assert kinds(decisions) == [
        (130.0, "open", 1, "app_compromised", "planned_rollback"),
        (4500.0, "escalate", 1, "migration_failed", "page"),
    ]
    assert "incident 1 already had its automatic rollback" in decisions[1].reason


# -- the journaled migration failure -------------------------------------------------------------

@pytest.mark.parametrize(("status", "restored", "held"), [
    ("succeeded", True, False),
    ("failed", True, False),  # the database is back even though a later step failed
    ("succeeded", False, False),  # code and config rolled back: the deploy is rolled back
    ("failed", False, True),
])
def test_a_restored_database_clears_the_journaled_migration_failure(
        status: str, restored: bool, held: bool) -> None:
    # Fed by probes (knex's table says 0), the wrapper's report holds migration.failed at 1.
    engine = Engine(POLICY)
    readings = {**HEALTHY, "migration.failed": 0.0}
    drive(engine, steps(0, 30, readings, {0.0: [DEPLOY], 10.0: [FAILED_MIGRATION]}))
    assert engine.value("migration.failed") == 1.0
    drive(engine, steps(30, 40, readings, {30.0: [end(status, restored)]}))
    assert engine.value("migration.failed") == (1.0 if held else 0.0)


def test_a_restored_database_clears_the_migration_failure_in_a_replay_too() -> None:
    engine = Engine(POLICY, recorded=True)
    drive(engine, steps(0, 30, HEALTHY, {0.0: [DEPLOY], 10.0: [FAILED_MIGRATION],
                                         20.0: [end("failed", True)]}))
    assert engine.value("migration.failed") == 0.0


def test_a_rollback_by_hand_clears_the_failure_but_leaves_the_open_incident_alone() -> None:
    engine = Engine(POLICY)
    decisions = drive(engine, steps(0, 1000, HEALTHY, {
        0.0: [DEPLOY], 10.0: [FAILED_MIGRATION], 20.0: [begin(None)],
        200.0: [end("succeeded", True, incident=None)]}))
    # migration_failed clears from 200: resolved by its clear_for, no watch period.
    assert kinds(decisions) == [(10.0, "open", 1, "migration_failed", "immediate_rollback"),
                                (200.0 + CLEAR_FOR, "resolve", 1, "migration_failed",
                                 "immediate_rollback")]
    assert decisions[-1].reason == "every rule of the incident has been clear for its clear_for"


# -- a restart -----------------------------------------------------------------------------------

def restarted(before: Sequence[Decision], events: Sequence[tuple[float, dict[str, Any]]]
              ) -> Engine:
    """A new engine as the daemon builds it after a restart: the journal's events recorded,
    then the open incident taken back from its decisions."""
    engine = Engine(POLICY, last_incident=max(d.incident for d in before))
    for t, event in events:
        engine.record(t, event)
    last = before[-1]
    assert engine.resume_incident(last.incident, last.scenario, last.action, last.mode,
                                  before[0].t, [d.scenario for d in before], decisions=before)
    return engine


JOURNAL = [(0.0, DEPLOY), (10.0, FAILED_MIGRATION), (20.0, begin()),
           (200.0, end("succeeded", True))]


def test_a_restart_inside_the_watch_period_keeps_it() -> None:
    before = rolled_back_at_200(Engine(POLICY))
    engine = restarted(before, JOURNAL)
    assert engine.watch_until == 200.0 + WATCH
    decisions = drive(engine, steps(1000, 200 + WATCH + 100, HEALTHY))
    assert kinds(decisions) == [(200.0 + WATCH, "resolve", 1, "migration_failed", "page")]
    assert "the watch period was clean" in decisions[0].reason


def test_a_restart_after_a_rule_fired_again_waits_for_it_to_clear_after_the_watch() -> None:
    first = Engine(POLICY)
    before = rolled_back_at_200(first) + drive(first, steps(210, 400, ERRORS))
    assert [d.kind for d in before] == ["open", "escalate"]
    engine = restarted(before, JOURNAL)
    assert engine.watch_until is None
    decisions = drive(engine, [*steps(1000, 5000, ERRORS), *steps(5000, 5500, HEALTHY)])
    assert kinds(decisions) == [(5000.0 + CLEAR_FOR, "resolve", 1, "app_compromised", "page")]


def test_a_restart_remembers_the_incident_had_its_automatic_rollback() -> None:
    first = Engine(POLICY)
    before = drive(first, [*steps(0, 10, HEALTHY, {0.0: [DEPLOY]}), *steps(10, 140, ERRORS)])
    engine = restarted(before, [(0.0, DEPLOY)])
    decisions = drive(engine, steps(4000, 4100, ERRORS, {4010.0: [FAILED_MIGRATION]}))
    assert kinds(decisions) == [(4010.0, "escalate", 1, "migration_failed", "page")]


# -- the setting ---------------------------------------------------------------------------------

def test_watch_for_defaults_to_the_procedures_first_hour_and_is_bounded() -> None:
    assert POLICY.guards.watch_for == 3600.0
    rule = ('[[rule]]\nscenario = "x"\nwhen = "http.up == 0"\nseverity = "high"\n'
            'action = "page"\ntimeline = "15m"\n')
    assert parse_policy(f'[guards]\nwatch_for = "10m"\n\n{rule}', "p.toml").guards.watch_for \
        == 600.0
    for bad in ('"31d"', "0", '"-1s"', "true"):
        with pytest.raises(PolicyError, match=r"^p\.toml: guards\.watch_for: "):
            parse_policy(f"[guards]\nwatch_for = {bad}\n\n{rule}", "p.toml")
