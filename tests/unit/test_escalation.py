"""Escalation as the procedures have it: L1 at once, L2 after 15 minutes unanswered, L3 after
30, the top level paged again until someone acknowledges."""

from __future__ import annotations

import pytest

from policies.escalation import (
    DEFAULT_LEVELS,
    Level,
    Waiting,
    acknowledged,
    due,
    level_reached,
    timeline_over,
)
from policies.policy import PolicyError, parse_policy

RULE = """
[[rule]]
scenario = "slow"
when = "http.latency_p95 > 2"
severity = "medium"
action = "evaluate"
timeline = "60m"
"""


def levels_paged(pages: list[object]) -> list[str]:
    return [p.level.name for p in pages]  # type: ignore[attr-defined]


def test_an_incident_waiting_for_a_person_pages_the_development_lead_at_once() -> None:
    state = Waiting(since=1000.0, acked_at=None)
    assert levels_paged(due(DEFAULT_LEVELS, state, 1000.0)) == ["L1"]
    assert DEFAULT_LEVELS[0].recipient == "L1 development lead"


def test_unanswered_for_15_minutes_it_pages_the_technical_director_then_the_cto() -> None:
    paged_l1 = Waiting(since=0.0, acked_at=None, paged={1: (0.0, 1)})
    assert levels_paged(due(DEFAULT_LEVELS, paged_l1, 899.0)) == []
    assert levels_paged(due(DEFAULT_LEVELS, paged_l1, 900.0)) == ["L2"]
    paged_l2 = Waiting(since=0.0, acked_at=None, paged={1: (0.0, 1), 2: (900.0, 1)})
    assert levels_paged(due(DEFAULT_LEVELS, paged_l2, 1800.0)) == ["L3"]


def test_a_daemon_that_was_down_pages_every_level_it_missed_in_order() -> None:
    assert levels_paged(due(DEFAULT_LEVELS, Waiting(since=0.0, acked_at=None), 2000.0)) == [
        "L1", "L2", "L3"]


def test_the_top_level_is_paged_again_until_acknowledged() -> None:
    state = Waiting(since=0.0, acked_at=None,
                    paged={1: (0.0, 1), 2: (900.0, 1), 3: (1800.0, 1)})
    assert due(DEFAULT_LEVELS, state, 1800.0 + 899.0) == []
    again = due(DEFAULT_LEVELS, state, 1800.0 + 900.0)
    assert levels_paged(again) == ["L3"] and again[0].repeat == 1


def test_an_acknowledgement_stops_the_escalation() -> None:
    state = Waiting(since=0.0, acked_at=60.0, paged={1: (0.0, 1)})
    assert acknowledged(state)
    assert due(DEFAULT_LEVELS, state, 5000.0) == []
    assert level_reached(DEFAULT_LEVELS, state, 5000.0) == 1


def test_a_failure_after_the_acknowledgement_pages_the_next_level_at_once() -> None:
    state = Waiting(since=0.0, acked_at=60.0, forced=[120.0], paged={1: (0.0, 1)})
    assert not acknowledged(state)
    pages = due(DEFAULT_LEVELS, state, 121.0)
    assert levels_paged(pages) == ["L2"] and pages[0].forced


def test_forcing_never_goes_past_the_top_level() -> None:
    state = Waiting(since=0.0, acked_at=None, forced=[1.0, 2.0, 3.0, 4.0])
    assert level_reached(DEFAULT_LEVELS, state, 5.0) == 3


def test_at_the_timeline_s_end_the_top_level_is_paged() -> None:
    state = Waiting(since=0.0, acked_at=None, paged={1: (0.0, 1)})
    assert timeline_over(0.0, 600.0, 600.0) and not timeline_over(0.0, None, 1e9)
    assert levels_paged(due(DEFAULT_LEVELS, state, 600.0, top=True)) == ["L2", "L3"]


def test_a_policy_names_its_own_levels_with_their_channels() -> None:
    policy = parse_policy(RULE + """
[[escalation]]
who = "on-call engineer"
after = "0s"
channels = ["slack"]
[[escalation]]
who = "engineering manager"
after = "5m"
repeat = "2m"
""", "p.toml")
    assert policy.escalation == (
        Level(1, "on-call engineer", 0.0, 900.0, ("slack",)),
        Level(2, "engineering manager", 300.0, 120.0, ()),
    )
    assert policy.rules[0].on_timeout == "page"


def test_a_policy_without_escalation_tables_has_the_procedures_three_levels() -> None:
    assert parse_policy(RULE, "p.toml").escalation == DEFAULT_LEVELS


@pytest.mark.parametrize(("tables", "message"), [
    ('[[escalation]]\nwho = "a"\nafter = "5m"\n',
     "p.toml: escalation L1: after: must be 0s"),
    ('[[escalation]]\nwho = "a"\nafter = "0s"\n[[escalation]]\nwho = "b"\nafter = "0s"\n',
     "p.toml: escalation L2: after: must be later than L1's (0s)"),
    ('[[escalation]]\nwho = "a"\nafter = "0s"\nchannels = ["pigeon"]\n',
     "p.toml: escalation L1: channels"),
    ('[[escalation]]\nafter = "0s"\n', "p.toml: escalation L1: who: required key is missing"),
    ('[[escalation]]\nwho = "a"\nafter = "0s"\nwhom = "b"\n',
     "p.toml: escalation L1: whom: unknown key"),
])
def test_a_bad_escalation_table_is_rejected_naming_the_level_and_key(tables: str,
                                                                     message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(RULE + tables, "p.toml")
    assert str(caught.value).startswith(message)


def test_a_rule_s_on_timeout_may_close_the_incident_but_never_roll_back() -> None:
    policy = parse_policy(RULE.replace('timeline = "60m"',
                                       'timeline = "60m"\non_timeout = "dismiss"'), "p.toml")
    assert policy.rules[0].on_timeout == "dismiss"
    with pytest.raises(PolicyError, match="on_timeout"):
        parse_policy(RULE.replace('timeline = "60m"',
                                  'timeline = "60m"\non_timeout = "immediate_rollback"'),
                     "p.toml")
