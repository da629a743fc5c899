"""Properties of the decision engine over random signal streams, with the bundled policy.

Streams are written as replay JSON Lines and go through parse_replay and run, the code path of
`rollbackd simulate`. Time steps range from a second to a few hours so that timers, the 6 h
deploy window and the 1 h cooldown are all crossed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

from policies.engine import Decision
from policies.policy import ACTION_RANK, ROLLBACKS, SEVERITY_RANK, Policy, parse_policy, resolve_ref
from policies.replay import parse_replay, run, to_jsonl

POLICY: Policy = parse_policy(resolve_ref("builtin:visionforge").read_text(encoding="utf-8"),
                              "builtin:visionforge")
SIGNALS = ("http.up", "http.error_ratio", "http.latency_p95", "db.up", "db.validation_failures",
           "migration.failed")
VALUES: dict[str, st.SearchStrategy[float]] = {
    "http.up": st.sampled_from([1.0, 1.0, 1.0, 0.0]),
    "http.error_ratio": st.floats(0.0, 1.0),
    "http.latency_p95": st.floats(0.01, 5.0),
    # Mostly up: a down database turns every rollback into a page, hiding the other guards.
    "db.up": st.sampled_from([1.0, 1.0, 1.0, 0.0]),
    "db.validation_failures": st.sampled_from([0.0, 0.0, 1.0, 5.0]),
    "migration.failed": st.sampled_from([0.0, 0.0, 1.0]),
}
STEPS = st.sampled_from([1, 5, 10, 10, 10, 30, 60])
# Mostly none; sometimes a silence that crosses the cooldown, the deploy window, or both.
GAPS = st.sampled_from([0, 0, 0, 0, 0, 0, 600, 1800, 3600, 7200, 21600])
MODES = st.sampled_from(["auto", "auto", "auto", "approve", "dry-run"])
WINDOW = POLICY.guards.rollback_window
COOLDOWN = POLICY.guards.cooldown
LIMIT = POLICY.guards.max_auto_rollbacks

ALERT_LABELS = st.fixed_dictionaries({
    "alertname": st.sampled_from(["HighLatency", "ErrorBudgetBurn"]),
    "severity": st.sampled_from(["warning", "critical"]),
})
BEGINS = st.builds(lambda v, ok: {"type": "deploy", "phase": "begin", "version": f"v{v}",
                                  "verified": ok},
                   st.integers(1, 99), st.sampled_from([True, True, True, False]))
DEPLOYS = st.one_of(
    BEGINS,
    st.builds(lambda v: {"type": "deploy", "phase": "end", "status": "succeeded",
                         "version": f"v{v}"}, st.integers(1, 99)),
)
PAUSES = st.sampled_from([{"type": "pause"}, {"type": "resume"}, {"type": "resume"}])
MIGRATIONS = st.builds(lambda s: {"type": "migration", "status": s, "version": "v1"},
                       st.sampled_from(["failed", "failed", "succeeded"]))
# Failed migrations are the quickest way to a rollback (for = 0s), so they come often.
EVENTS = st.one_of(
    DEPLOYS,
    PAUSES,
    MIGRATIONS,
    MIGRATIONS,
    st.builds(lambda s, labels: {"type": "alert", "status": s, "labels": labels},
              st.sampled_from(["firing", "resolved", "resolved"]), ALERT_LABELS),
)


HEALTHY: dict[str, float | None] = {
    "http.up": 1.0, "http.error_ratio": 0.01, "http.latency_p95": 0.2, "db.up": 1.0,
    "db.validation_failures": 0.0, "migration.failed": 0.0,
}


def readings(known: bool) -> st.SearchStrategy[dict[str, float | None]]:
    """Some of the six signals, each a value or (less often) unknown, or all of them healthy
    (so that incidents get to resolve); always unknown when not ``known``."""
    if not known:
        return st.fixed_dictionaries({}, optional={s: st.none() for s in SIGNALS})
    value = {s: st.one_of(VALUES[s], VALUES[s], VALUES[s], st.none()) for s in SIGNALS}
    some = st.fixed_dictionaries({}, optional=value)
    return st.one_of(some, st.just(HEALTHY))


@dataclass(frozen=True)
class Segment:
    """After ``gap`` seconds of silence, ``count`` steps ``dt`` apart with the same readings,
    the events on the first: a state that lasts long enough for ``for`` and ``clear_for``
    timers to run out."""

    gap: int
    dt: int
    count: int
    signals: dict[str, float | None]
    events: list[dict[str, Any]]
    events_first: bool


def streams(known: bool = True, events: st.SearchStrategy[dict[str, Any]] = EVENTS,
            max_size: int = 25) -> st.SearchStrategy[list[Segment]]:
    # A deploy begins with every other segment or so: without deploys every rollback is a
    # page and the other guards go untested.
    happening = st.lists(events, max_size=2) | st.builds(lambda b, e: [b, *e], BEGINS,
                                                         st.lists(events, max_size=1))
    segment = st.builds(Segment, GAPS, STEPS, st.integers(1, 60), readings(known), happening,
                        st.booleans())
    return st.lists(segment, min_size=3, max_size=max_size)


FAILED_MIGRATION = {"type": "migration", "status": "failed", "version": "v1"}
VERIFIED_DEPLOY = {"type": "deploy", "phase": "begin", "version": "v2", "verified": True}
ERRORS = {**HEALTHY, "http.error_ratio": 0.6}
DB_DOWN = {**HEALTHY, "db.up": 0.0, "db.validation_failures": None}
# Realistic episodes, each long enough for its rule's timers (10 s probes).
EPISODES: list[tuple[int, dict[str, float | None], list[dict[str, Any]]]] = [
    (31, HEALTHY, []),  # clear_for runs out
    (13, ERRORS, []),  # app_compromised fires
    (7, DB_DOWN, []),  # database_unreachable fires
    (1, HEALTHY, [FAILED_MIGRATION]),
    (1, HEALTHY, [VERIFIED_DEPLOY]),
    (1, HEALTHY, [VERIFIED_DEPLOY]),
    (1, HEALTHY, [{"type": "deploy", "phase": "begin", "version": "v3", "verified": False}]),
    (1, HEALTHY, [{"type": "pause"}]),
    (1, HEALTHY, [{"type": "resume"}]),
    (1, HEALTHY, [{"type": "resume"}]),
]
EPISODE_GAPS = st.sampled_from([0] * 8 + [600, 3600, 21600])


def episodes() -> st.SearchStrategy[list[Segment]]:
    """Streams made of realistic episodes in random order and spacing, after a deploy: denser
    in incidents, repeated rollbacks and rate-limited ones than fully random streams."""
    episode = st.builds(lambda gap, e: Segment(gap, 10, e[0], e[1], e[2], False), EPISODE_GAPS,
                        st.sampled_from(EPISODES))
    deploy = Segment(0, 10, 1, HEALTHY, [VERIFIED_DEPLOY], False)
    return st.lists(episode, min_size=3, max_size=30).map(lambda rest: [deploy, *rest])


ANY_STREAM = streams() | episodes()


def replay_text(segments: Sequence[Segment]) -> list[str]:
    t = 0
    lines: list[str] = []
    for segment in segments:
        t += segment.gap
        for step in range(segment.count):
            t += segment.dt
            signals = [json.dumps({"t": t, "signals": segment.signals})] if segment.signals else []
            events = [json.dumps({"t": t, "event": e}) for e in segment.events] if not step else []
            lines += events + signals if segment.events_first else signals + events
    return lines


def simulate(lines: Sequence[str], mode: str) -> list[Decision]:
    return list(run(POLICY, parse_replay(lines), mode))


def deploy_times(lines: Sequence[str]) -> list[float]:
    times = []
    for line in lines:
        data = json.loads(line)
        event = data.get("event") or {}
        if event.get("type") == "deploy" and event.get("phase") == "begin":
            times.append(float(data["t"]))
    return times


def automatic_rollbacks(decisions: Sequence[Decision]) -> list[Decision]:
    """Rollbacks the engine decided to run itself. Attach lines only repeat the incident's
    action, so only open and escalate lines take a rollback."""
    return [d for d in decisions
            if d.kind in ("open", "escalate") and d.action in ROLLBACKS and d.mode == "auto"]


PROPERTY = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@PROPERTY
@given(streams(known=False, events=st.one_of(DEPLOYS, PAUSES)), MODES)
def test_unknown_values_alone_never_cause_a_rollback(steps: list[Segment], mode: str) -> None:
    decisions = simulate(replay_text(steps), mode)
    assert [d for d in decisions if d.action in ROLLBACKS] == []
    assert {d.scenario for d in decisions} <= {"monitoring_blind"}


@PROPERTY
@given(ANY_STREAM, MODES)
def test_no_automatic_rollback_without_a_deploy_within_the_window(steps: list[Segment],
                                                                  mode: str) -> None:
    lines = replay_text(steps)
    deploys = deploy_times(lines)
    for decision in automatic_rollbacks(simulate(lines, mode)):
        assert any(decision.t - WINDOW <= t <= decision.t for t in deploys), decision


@PROPERTY
@given(ANY_STREAM, MODES)
def test_never_more_automatic_rollbacks_than_the_rate_limit_per_cooldown(steps: list[Segment],
                                                                         mode: str) -> None:
    times = [d.t for d in automatic_rollbacks(simulate(replay_text(steps), mode))]
    for t in times:
        assert len([u for u in times if t - COOLDOWN < u <= t]) <= LIMIT, times


@PROPERTY
@given(ANY_STREAM, MODES)
def test_the_same_stream_twice_gives_the_same_decisions(steps: list[Segment], mode: str) -> None:
    lines = replay_text(steps)
    first = [to_jsonl(d) for d in simulate(lines, mode)]
    assert [to_jsonl(d) for d in simulate(lines, mode)] == first


def rank(d: Decision) -> tuple[int, int]:
    return SEVERITY_RANK[d.severity], ACTION_RANK[d.requested_action]


@PROPERTY
@given(ANY_STREAM, MODES)
def test_incidents_open_once_and_every_later_line_refers_to_the_open_one(
        steps: list[Segment], mode: str) -> None:
    current: Decision | None = None  # the open incident's latest open or escalate line
    attached: set[str] = set()
    opened: list[int] = []
    for d in simulate(replay_text(steps), mode):
        if d.kind == "open":
            assert current is None, f"incident {d.incident} opened while {current} is open"
            assert d.incident not in opened
            opened.append(d.incident)
            current, attached = d, {d.scenario}
            continue
        assert current is not None and d.incident == current.incident, d
        if d.kind == "resolve":
            assert d.scenario == current.scenario
            current = None
        elif d.kind == "escalate":
            assert rank(d) > rank(current), f"{d} does not rank above {current}"
            assert d.scenario not in attached
            current = d
            attached.add(d.scenario)
        else:
            assert d.kind == "attach"
            assert d.scenario not in attached
            assert rank(d) <= rank(current)
            assert (d.action, d.mode) == (current.action, current.mode)
            attached.add(d.scenario)
    assert opened == list(range(1, len(opened) + 1))


@PROPERTY
@given(ANY_STREAM, MODES)
def test_decisions_come_out_in_time_order_and_a_changed_action_is_a_guarded_page(
        steps: list[Segment], mode: str) -> None:
    decisions = simulate(replay_text(steps), mode)
    times = [d.t for d in decisions]
    assert times == sorted(times)
    for d in decisions:
        if d.kind in ("open", "escalate") and d.action != d.requested_action:
            assert d.action == "page" and d.requested_action in ROLLBACKS, d
            assert d.reason


def test_the_random_streams_do_reach_the_guards_the_properties_are_about() -> None:
    """Properties over streams that never roll back would hold vacuously: the generator must
    produce repeated automatic rollbacks, rate-limited ones and ones outside the window."""
    search = settings(max_examples=500, deadline=None, database=None, phases=[Phase.generate],
                      derandomize=True,
                      suppress_health_check=list(HealthCheck))

    def witness(condition: Any) -> None:
        find(st.tuples(ANY_STREAM, MODES),
             lambda case: condition(simulate(replay_text(case[0]), case[1])), settings=search)

    witness(lambda ds: len(automatic_rollbacks(ds)) >= 2)
    witness(lambda ds: any("rate limit" in d.reason for d in ds))
    witness(lambda ds: any("no deploy recorded" in d.reason for d in ds))
