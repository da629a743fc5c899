"""Properties of the engine after a rollback, over random signal streams and random runbook
outcomes: never two automatic rollbacks in one incident, whatever the signals, the runbooks'
outcomes or the guards; once a runbook ran for an incident, it only pages; it resolves inside
its watch period, or after a run that is under way or failed, only by a person's close.

An executor is modelled as the daemon's will be: each automatic rollback the engine decides
is run (its begin and end journaled a little later, succeeded or failed, the database restored
or not), and the stream also holds runs by hand and runs of other incidents. Every stream is
written down as a replay and must give the same decisions through parse_replay and run (the
path of `rollbackd simulate`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

from policies.engine import Decision, Engine
from policies.policy import ROLLBACKS, Policy, parse_policy, resolve_ref
from policies.replay import parse_replay, run, to_jsonl

BUNDLED_TEXT = resolve_ref("builtin:visionforge").read_text(encoding="utf-8")
BUNDLED: Policy = parse_policy(BUNDLED_TEXT, "builtin:visionforge")
# A rate limit that allows several rollbacks within minutes, and a short watch period: the
# rule of one automatic rollback per incident must hold without the rate limit's help.
LENIENT: Policy = parse_policy(
    '[guards]\nmax_auto_rollbacks = 3\ncooldown = "10m"\nwatch_for = "10m"\n\n' + BUNDLED_TEXT,
    "lenient")
POLICIES = st.sampled_from([BUNDLED, LENIENT, LENIENT])
MODES = st.sampled_from(["auto", "auto", "auto", "approve", "dry-run"])

HEALTHY: dict[str, float | None] = {
    "http.up": 1.0, "http.error_ratio": 0.01, "http.latency_p95": 0.2, "db.up": 1.0,
    "db.validation_failures": 0.0, "migration.failed": 0.0,
}
ERRORS = {**HEALTHY, "http.error_ratio": 0.6}
SLOW = {**HEALTHY, "http.latency_p95": 2.0}
DB_DOWN = {**HEALTHY, "db.up": 0.0, "db.validation_failures": None}
BLIND = {**HEALTHY, "http.up": None, "http.error_ratio": None}
BAD_DATA = {**HEALTHY, "db.validation_failures": 3.0}
# Which incident a "close" closes is only known while the stream runs: the open one.
CLOSE_THE_OPEN_ONE = {"type": "close", "incident": 0, "by": "alice"}


def deploy(version: int, verified: bool = True) -> dict[str, Any]:
    return {"type": "deploy", "phase": "begin", "version": f"v{version}", "verified": verified}


def runbook(phase: str, incident: int | None, status: str = "succeeded",
            restored: bool = True) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "runbook", "phase": phase, "incident": incident,
                             "runbook": "immediate_rollback"}
    if phase == "end":
        event.update(status=status, restored=restored)
    return event


WARNING = st.builds(lambda status: {"type": "alert", "status": status,
                                    "labels": {"alertname": "HighLatency", "severity": "warning"}},
                    st.sampled_from(["firing", "firing", "resolved"]))
FAILED_MIGRATION = {"type": "migration", "status": "failed", "version": "v1"}
OTHER_RUNS = st.builds(runbook, st.sampled_from(["begin", "end", "end"]),
                       st.sampled_from([None, 1, 2, 3]), st.sampled_from(["succeeded", "failed"]),
                       st.booleans())
EVENTS = st.one_of(
    st.builds(deploy, st.integers(1, 9), st.sampled_from([True, True, True, False])),
    st.just(FAILED_MIGRATION),
    st.just(FAILED_MIGRATION),
    st.just({"type": "migration", "status": "succeeded", "version": "v1"}),
    st.sampled_from([{"type": "pause"}, {"type": "resume"}, {"type": "resume"}]),
    WARNING,
    st.just(CLOSE_THE_OPEN_ONE),
    OTHER_RUNS,
)
# (steps of 10 s, readings): long enough for each rule's timers (SLOW is 10 times the
# baseline, so evaluate; a warning alert must fire for 10 minutes, so fix_forward).
EPISODES = st.sampled_from([(31, HEALTHY), (13, ERRORS), (7, DB_DOWN), (32, SLOW), (14, BLIND),
                            (8, BAD_DATA), (1, HEALTHY), (3, HEALTHY), (3, ERRORS),
                            (62, HEALTHY)])
# Mostly none; sometimes past a short watch period, the cooldown, the hour, the deploy window.
GAPS = st.sampled_from([0] * 8 + [300, 900, 3600, 7200, 21600])


@dataclass(frozen=True)
class Segment:
    gap: int
    steps: int
    signals: dict[str, float | None]
    events: list[dict[str, Any]]


@dataclass(frozen=True)
class Outcome:
    """What the executor makes of one automatic rollback: journaled as begun after ``starts``
    seconds, as ended ``lasts`` seconds later (never, when None)."""

    starts: int
    lasts: int | None
    status: str
    restored: bool


OUTCOMES = st.builds(Outcome, st.sampled_from([1, 10, 30]),
                     st.sampled_from([30, 120, 600, 600, 2400, None]),
                     st.sampled_from(["succeeded", "succeeded", "failed"]), st.booleans())
HISTORY = [Segment(0, 31, HEALTHY, []), Segment(0, 1, HEALTHY, [deploy(1)])]
REST = st.lists(
    st.builds(lambda gap, episode, events: Segment(gap, episode[0], episode[1], events),
              GAPS, EPISODES, st.lists(EVENTS, max_size=2)),
    min_size=3, max_size=30,
)
# A baseline's worth of history and a deploy, then anything.
SEGMENTS = REST.map(lambda rest: [*HISTORY, *rest])
# ... or a failed migration's immediate rollback first, so that most of the stream comes
# after a runbook.
AFTER_A_ROLLBACK = REST.map(lambda rest: [*HISTORY, Segment(0, 1, HEALTHY, [FAILED_MIGRATION]),
                                          *rest])
# ... or that, and then only what makes rules fire: no pause, close or deploy hides them.
QUIET_AFTER_A_ROLLBACK = st.lists(
    st.builds(lambda gap, episode, events: Segment(gap, episode[0], episode[1], events),
              st.sampled_from([0, 0, 0, 300]), EPISODES,
              st.lists(WARNING | st.just(FAILED_MIGRATION), max_size=1)),
    min_size=1, max_size=12,
).map(lambda rest: [*HISTORY, Segment(0, 1, HEALTHY, [FAILED_MIGRATION]), *rest])
FINISHED = st.builds(Outcome, st.sampled_from([1, 10]), st.sampled_from([30, 120, 600]),
                     st.sampled_from(["succeeded", "succeeded", "failed"]), st.booleans())


@dataclass
class Stream:
    """A stream as it ran: its replay lines, the engine's decisions, and the runbook events
    the engine recorded for the incident that was open at the time (t, incident, event)."""

    lines: list[str] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    runs: list[tuple[float, int, dict[str, Any]]] = field(default_factory=list)
    closes: set[tuple[float, int]] = field(default_factory=set)
    rollbacks_undone: list[float] = field(default_factory=list)
    deploys: list[float] = field(default_factory=list)


def drive(policy: Policy, mode: str, segments: Sequence[Segment],
          outcomes: Sequence[Outcome]) -> Stream:
    """Run the engine as the daemon does (readings, then events, then a decision, every 10 s),
    with an executor that runs each automatic rollback as ``outcomes`` say, in turn."""
    engine = Engine(policy, mode, recorded=True)
    stream = Stream()
    scheduled: list[tuple[float, dict[str, Any]]] = []
    plans: Iterator[Outcome] = iter(outcomes)
    open_incident: int | None = None
    t = 0
    for segment in segments:
        t += segment.gap
        for step in range(segment.steps):
            t += 10
            due = [event for when, event in scheduled if when <= t]
            scheduled = [(when, event) for when, event in scheduled if when > t]
            events = due + (segment.events if step == 0 else [])
            if open_incident is None:
                events = [e for e in events if e is not CLOSE_THE_OPEN_ONE]
            events = [{**e, "incident": open_incident} if e is CLOSE_THE_OPEN_ONE else e
                      for e in events]
            stream.lines.append(json.dumps({"t": t, "signals": segment.signals}))
            engine.observe(t, segment.signals)
            for event in events:
                stream.lines.append(json.dumps({"t": t, "event": event}))
                engine.record(t, event)
                note(stream, float(t), event, open_incident)
            for decision in engine.decide(t):
                stream.decisions.append(decision)
                open_incident = None if decision.kind == "resolve" else decision.incident
                if automatic(decision) and (plan := next(plans, None)) is not None:
                    scheduled.append((t + plan.starts, runbook("begin", decision.incident)))
                    if plan.lasts is not None:
                        scheduled.append((t + plan.starts + plan.lasts,
                                          runbook("end", decision.incident, plan.status,
                                                  plan.restored)))
    return stream


def note(stream: Stream, t: float, event: dict[str, Any], open_incident: int | None) -> None:
    kind = event["type"]
    if kind == "runbook" and event["incident"] is not None and event["incident"] == open_incident:
        stream.runs.append((t, event["incident"], event))
    if kind == "runbook" and event["phase"] == "end" and (
            event["status"] == "succeeded" or event["restored"]):
        stream.rollbacks_undone.append(t)
    if kind == "close":
        stream.closes.add((t, event["incident"]))
    if kind == "deploy":
        stream.deploys.append(t)


def automatic(d: Decision) -> bool:
    return d.kind in ("open", "escalate") and d.action in ROLLBACKS and d.mode == "auto"


PROPERTY = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CASES = (st.tuples(POLICIES, MODES, SEGMENTS, st.lists(OUTCOMES, max_size=6))
         | st.tuples(POLICIES, st.just("auto"), AFTER_A_ROLLBACK,
                     st.lists(OUTCOMES, min_size=1, max_size=6)))


@PROPERTY
@given(CASES)
def test_never_two_automatic_rollbacks_in_one_incident_whatever_the_signal_sequence(
        case: tuple[Policy, str, list[Segment], list[Outcome]]) -> None:
    stream = drive(*case)
    incidents = [d.incident for d in stream.decisions if automatic(d)]
    assert len(incidents) == len(set(incidents)), [to_jsonl(d) for d in stream.decisions]


def assert_only_pages_after_a_run(stream: Stream) -> None:
    for t, incident, _ in stream.runs:
        later = [d for d in stream.decisions if d.incident == incident and d.t >= t]
        assert all(d.action == "page" for d in later), [to_jsonl(d) for d in later]


@PROPERTY
@given(CASES)
def test_once_a_runbook_ran_for_an_incident_every_decision_for_it_pages(
        case: tuple[Policy, str, list[Segment], list[Outcome]]) -> None:
    assert_only_pages_after_a_run(drive(*case))


@PROPERTY
@given(POLICIES, QUIET_AFTER_A_ROLLBACK, FINISHED)
def test_whatever_rule_fires_after_the_rollback_ran_it_pages(
        policy: Policy, segments: list[Segment], outcome: Outcome) -> None:
    # Evaluate (latency), fix_forward (a warning alert), page (the database, blindness) or a
    # rollback (errors, data, a failed migration): the incident's runbook ran, a person decides.
    assert_only_pages_after_a_run(drive(policy, "auto", segments, [outcome]))


@PROPERTY
@given(CASES)
def test_a_ran_incident_resolves_only_after_a_clean_or_finished_watch_or_by_a_person(
        case: tuple[Policy, str, list[Segment], list[Outcome]]) -> None:
    policy = case[0]
    stream = drive(*case)
    for resolve in [d for d in stream.decisions if d.kind == "resolve"]:
        runs = [(t, event) for t, incident, event in stream.runs
                if incident == resolve.incident and t <= resolve.t]
        if not runs or (resolve.t, resolve.incident) in stream.closes:
            continue
        t, last = runs[-1]
        assert last["phase"] == "end" and last["status"] == "succeeded", to_jsonl(resolve)
        assert resolve.t >= t + policy.guards.watch_for, to_jsonl(resolve)


@PROPERTY
@given(CASES)
def test_a_rolled_back_deploy_is_never_rolled_back_automatically_again(
        case: tuple[Policy, str, list[Segment], list[Outcome]]) -> None:
    stream = drive(*case)
    for decision in filter(automatic, stream.decisions):
        undone = [t for t in stream.rollbacks_undone if t <= decision.t]
        if undone:
            assert any(undone[-1] <= t <= decision.t for t in stream.deploys), \
                to_jsonl(decision)


@PROPERTY
@given(CASES)
def test_the_rate_limit_holds_and_the_replay_of_the_stream_gives_the_same_decisions(
        case: tuple[Policy, str, list[Segment], list[Outcome]]) -> None:
    policy, mode = case[0], case[1]
    stream = drive(*case)
    times = [d.t for d in stream.decisions if automatic(d)]
    for t in times:
        assert len([u for u in times if t - policy.guards.cooldown < u <= t]) \
            <= policy.guards.max_auto_rollbacks
    replayed = [to_jsonl(d) for d in run(policy, parse_replay(stream.lines), mode)]
    assert replayed == [to_jsonl(d) for d in stream.decisions]


def test_the_random_streams_do_reach_the_states_the_properties_are_about() -> None:
    """Properties over streams that never run a runbook would hold vacuously. Derandomized:
    the same examples every time, so the witnesses cannot come and go."""
    search = settings(max_examples=1000, deadline=None, database=None, derandomize=True,
                      phases=[Phase.generate], suppress_health_check=list(HealthCheck))

    def witness(*said: str) -> None:
        find(CASES, lambda case: all(any(s in d.reason for d in drive(*case).decisions)
                                     for s in said), settings=search)

    def paged_instead_of(d: Decision) -> bool:
        """A rule that asks for no rollback, paging because a runbook ran."""
        return (d.action == "page" and d.requested_action in ("evaluate", "fix_forward")
                and "paging instead of a second automatic rollback" in d.reason)

    find(CASES, lambda case: any(map(paged_instead_of, drive(*case).decisions)),
         settings=search)
    witness("fired again inside the watch period")
    witness("the watch period was clean")
    witness("the watch period is over")
    witness("runbook of incident", "failed; paging instead")
    witness("is running; paging instead")
    witness("already had its automatic rollback")
    witness("was already rolled back: nothing to roll back to")
