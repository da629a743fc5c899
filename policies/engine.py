"""The decision engine: rules evaluated over samples and events, arbitrated into incidents.

Pure: time, samples and events come in as arguments; decisions come out. The daemon and
``rollbackd simulate`` drive the same object the same way, so a replay of what the daemon saw
gives the decisions the daemon took.
"""

from __future__ import annotations

import bisect
import re
import statistics
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar, get_args

from policies import catalogue
from policies.events import parse_event
from policies.expr import baseline_signals, evaluate, longest_window
from policies.policy import (
    MONITORING_BLIND,
    ROLLBACKS,
    Action,
    Mode,
    Policy,
    Rule,
    Severity,
    blind_rule,
)
from policies.runbooks import Runbook
from policies.units import format_duration

Event = Mapping[str, Any]
DecisionKind = Literal["open", "escalate", "attach", "resolve"]
DECISION_KINDS: tuple[DecisionKind, ...] = get_args(DecisionKind)
_SEVERITIES: tuple[Severity, ...] = get_args(Severity)
_ACTIONS: tuple[Action, ...] = get_args(Action)
_MODES: tuple[Mode, ...] = get_args(Mode)
_Choice = TypeVar("_Choice", bound=str)


def _one_of(name: str, value: object, allowed: tuple[_Choice, ...]) -> _Choice:
    for choice in allowed:
        if value == choice:
            return choice
    raise ValueError(f"decision {name} {value!r} is not one of {', '.join(allowed)}")


@dataclass(frozen=True, slots=True, init=False)
class Decision:
    """One decision of the arbiter: a line of the replay contract's output, a journal row.

    ``kind``, ``severity``, ``action``, ``requested_action`` and ``mode`` hold only the
    contract's values: the constructor takes plain strings (rules carry the policy's values as
    ``str``) and raises ``ValueError`` for any other, as :meth:`from_json` does for a record.
    """

    t: float
    kind: DecisionKind
    incident: int
    scenario: str
    severity: Severity
    action: Action
    requested_action: Action
    timeline_s: int | None
    mode: Mode
    reason: str

    def __init__(self, t: float, kind: str, incident: int, scenario: str, severity: str,
                 action: str, requested_action: str, timeline_s: int | None, mode: str,
                 reason: str) -> None:
        fields: dict[str, object] = {
            "t": t, "kind": _one_of("kind", kind, DECISION_KINDS), "incident": incident,
            "scenario": scenario, "severity": _one_of("severity", severity, _SEVERITIES),
            "action": _one_of("action", action, _ACTIONS),
            "requested_action": _one_of("requested_action", requested_action, _ACTIONS),
            "timeline_s": timeline_s, "mode": _one_of("mode", mode, _MODES), "reason": reason,
        }
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Decision:
        """A decision from its :meth:`as_json` object (a journal row); ``ValueError`` naming
        the first key that is missing or of the wrong type."""
        def typed(key: str, kinds: type | tuple[type, ...]) -> Any:
            if key not in data:
                raise ValueError(f"decision: {key} is missing")
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise ValueError(f"decision: {key} {value!r} has the wrong type")
            return value

        return cls(t=float(typed("t", (int, float))), kind=typed("kind", str),
                   incident=typed("incident", int), scenario=typed("scenario", str),
                   severity=typed("severity", str), action=typed("action", str),
                   requested_action=typed("requested_action", str),
                   timeline_s=typed("timeline_s", (int, type(None))), mode=typed("mode", str),
                   reason=typed("reason", str))

    def as_json(self) -> dict[str, Any]:
        """The replay contract's object, keys in the contract's order."""
        return {
            "t": self.t, "kind": self.kind, "incident": self.incident, "scenario": self.scenario,
            "severity": self.severity, "action": self.action,
            "requested_action": self.requested_action, "timeline_s": self.timeline_s,
            "mode": self.mode, "reason": self.reason,
        }

    def as_dict(self) -> dict[str, Any]:
        """Same as :meth:`as_json` (the name callers used first)."""
        return self.as_json()


@dataclass(slots=True)
class _RuleState:
    rule: Rule
    last: bool | None = False
    last_t: float | None = None
    true_for: float = 0.0
    false_for: float = 0.0
    firing: bool = False

    def advance(self, t: float, value: bool | None) -> None:
        """Move the ``for`` and ``clear_for`` timers to ``t``.

        The time since the previous step counts towards the value seen at that step; a
        definite value resets the opposite timer; an unknown value holds both.
        """
        elapsed = 0.0 if self.last_t is None else t - self.last_t
        if self.last is True:
            self.true_for += elapsed
        elif self.last is False:
            self.false_for += elapsed
        if value is True:
            self.false_for = 0.0
        elif value is False:
            self.true_for = 0.0
        self.last, self.last_t = value, t

    def rearm(self, t: float, holds_incident: bool) -> None:
        """A deploy began at ``t``: what the rule saw before it says nothing about the new
        release. A rule that holds the open incident keeps holding it, but must again be clear
        for its clear_for, counted from the deploy, before the incident resolves."""
        self.true_for = self.false_for = 0.0
        self.last_t = t
        self.firing = self.firing and holds_incident


@dataclass(frozen=True, slots=True)
class _Run:
    """A runbook run's latest event: ``phase`` begin, or end with ``status`` and ``restored``."""

    incident: int | None
    runbook: str
    phase: str
    t: float
    status: str | None
    restored: bool

    @property
    def succeeded(self) -> bool:
        return self.phase == "end" and self.status == "succeeded"

    @property
    def rolls_back(self) -> bool:
        """The run rolled the deploy back, or at least put its database back: the failed
        migration's hold ends and the deploy has nothing left to roll back to."""
        return self.phase == "end" and (self.status == "succeeded" or self.restored)


@dataclass(slots=True)
class _Incident:
    id: int
    rule: Rule
    action: str
    mode: str
    opened_at: float
    attached: list[str] = field(default_factory=list)
    auto_rollback: bool = False
    """An automatic rollback was decided in it: never a second one."""
    run: _Run | None = None
    """The latest runbook run recorded for it: from then on it only pages."""
    fired_again: bool = False
    """A rule fired after the run ended (the watch period was not clean)."""


@dataclass(frozen=True, slots=True)
class _Deploy:
    t: float
    version: str
    verified: bool
    rolled_back: bool = False


def _word(label: str) -> str:
    """An Alertmanager label value as a signal name part (``High-Latency`` -> ``High_Latency``,
    ``5xxRate`` -> ``_5xxRate``): what a condition can name."""
    word = re.sub(r"[^A-Za-z0-9_]", "_", label) or "_"
    return f"_{word}" if word[0].isdigit() else word


def _alert_signals(labels: Mapping[str, str]) -> tuple[str, str]:
    """The two signals an alert counts towards: its name's and its severity's."""
    return (f"alert.{_word(labels.get('alertname', ''))}",
            f"alert.severity_{_word(labels.get('severity', '').lower())}")


class Engine:
    """One application's decision engine. Feed it with :meth:`observe` and :meth:`record`, then
    call :meth:`decide` once per time step; :meth:`step` does all three."""

    def __init__(self, policy: Policy, mode: str = "auto", last_incident: int = 0, *,
                 recorded: bool = False) -> None:
        """``last_incident``: the highest incident number already used (a restarted daemon
        continues the journal's numbering instead of reusing numbers).

        ``recorded``: the samples are a replay's record of the values the daemon used, not
        probe readings, so a sample and an event setting ``migration.failed`` simply
        supersede each other, the later one winning. Fed by probes, a reported failure holds
        the signal at 1 over the readings until a deploy begins: knex and most tools record
        only successes, and their reading of 0 would hide the failure.
        """
        self._recorded = recorded
        self.policy = policy
        self.mode = mode
        self._states = [_RuleState(r) for r in policy.rules]
        self._blind = _RuleState(blind_rule(policy.guards))
        self._now = 0.0
        self._probe_values: dict[str, float | None] = {}
        self._probed: set[str] = set()
        self._unknown_since: dict[str, float] = {}
        self._last_change: dict[str, float] = {}
        # What the latest migration or deploy event says, in force over the readings.
        self._migration_report: float | None = None
        self._alerts: dict[tuple[tuple[str, str], ...], Mapping[str, str]] = {}
        self._alert_counts: dict[str, float] = {}
        self._deploy: _Deploy | None = None
        self._at_deploy: dict[str, float | None] = {}
        self._deploy_baselines: dict[str, float | None] = {}
        self._rule_signals = policy.signals()
        self._baselined = frozenset().union(
            *(baseline_signals(r.condition) for r in policy.rules if r.condition is not None)
        )
        windows = [longest_window(r.condition) for r in policy.rules if r.condition is not None]
        self._windowed = frozenset(
            s for r in policy.rules if r.condition is not None and longest_window(r.condition) > 0
            for s in r.signals
        ) | self._baselined
        b = policy.baseline
        self._retention = max([*windows, b.window + b.gap, 0.0]) + 1.0
        self._history: dict[str, deque[tuple[float, float]]] = {s: deque() for s in self._windowed}
        self._incident: _Incident | None = None
        self._incidents = last_incident
        self._auto_rollbacks: deque[float] = deque()
        self._paused = False
        self._close_requested: tuple[int, str] | None = None
        # The latest runbook event, kept for resume_incident: a restarted daemon reads the
        # journal's events before it takes back the open incident.
        self._last_run: _Run | None = None

    # -- inputs ------------------------------------------------------------------------------

    def observe(self, t: float, samples: Mapping[str, float | None]) -> None:
        """Probe readings at ``t``; ``None`` means the probe could not measure."""
        self._now = t
        for name, value in samples.items():
            before = self.value(name)
            self._probed.add(name)
            self._probe_values[name] = value
            if self._recorded and name == catalogue.MIGRATION_FAILED:
                self._migration_report = None
            self._track_change(name, before, t)

    def record(self, t: float, raw: Event) -> None:
        """An event at ``t`` (the replay contract's, see :mod:`policies.events`); an event that
        does not check raises :class:`~policies.events.EventError` and changes nothing."""
        event = parse_event(raw)
        self._now = t
        kind = event["type"]
        if kind == "deploy":
            self._record_deploy(t, event)
        elif kind == "migration":
            self._report_migration(t, failed=event.get("status") == "failed")
        elif kind == "alert":
            self._record_alert(t, event)
        elif kind == "pause":
            self._paused = True
        elif kind == "resume":
            self._paused = False
        elif kind == "close":
            by = event.get("by", "a person")
            decision = event.get("decision")
            why = f"{by} decided: {decision}" if decision else f"closed by {by}"
            self._close_requested = (event["incident"], why)
        elif kind == "runbook":
            self._record_run(t, event)
        elif kind == "baseline":
            # Baselines frozen at the deploy, journaled so that a restart does not lose them.
            self._deploy_baselines.update(
                {s: None if v is None else float(v) for s, v in event["values"].items()
                 if s in self._baselined})

    def _record_deploy(self, t: float, event: Event) -> None:
        if event.get("phase") != "begin":
            return
        # The baseline is anchored before the deploy: freeze it now, from what came before.
        self._deploy_baselines = {s: self._median(s, t - self.policy.baseline.window, t)
                                  for s in self._baselined}
        self._at_deploy = {s: self.value(s) for s in self._rule_signals}
        # No "verified" means no verified restore point: rollbacks then page instead.
        self._deploy = _Deploy(t, event.get("version", ""), event.get("verified", False))
        self._report_migration(t, failed=False)
        self._rearm(t)

    def _report_migration(self, t: float, failed: bool) -> None:
        """A migration outcome, or a deploy's reset: a failure holds ``migration.failed`` at
        1; anything else sets 0 in a replay and, fed by probes, ends the hold."""
        before = self.value(catalogue.MIGRATION_FAILED)
        self._migration_report = 1.0 if failed else 0.0 if self._recorded else None
        self._track_change(catalogue.MIGRATION_FAILED, before, t)

    def _record_run(self, t: float, event: Event) -> None:
        """A runbook run began or ended. Whatever its incident, a run that rolled the deploy
        back (or restored its database) ends a failed migration's hold and leaves the deploy
        nothing to roll back to. For the open incident: it only pages from now on, and a
        successful end starts its watch period."""
        run = _Run(incident=event.get("incident"), runbook=event["runbook"],
                   phase=event["phase"], t=t, status=event.get("status"),
                   restored=event.get("restored", False))
        self._last_run = run
        if run.rolls_back:
            self._report_migration(t, failed=False)
            if self._deploy is not None:
                self._deploy = replace(self._deploy, rolled_back=True)
        incident = self._incident
        if incident is not None and run.incident == incident.id:
            self._take_run(incident, run)
            if run.succeeded:
                self._restart_rules(t)

    @staticmethod
    def _take_run(incident: _Incident, run: _Run) -> None:
        incident.run = run
        incident.action = "page"
        incident.fired_again = False  # each successful run has a watch period of its own

    def _restart_rules(self, t: float) -> None:
        """A rollback ended: what the rules saw before it says nothing about the release
        running now. Every rule, monitoring_blind too, starts again from ``t`` as not firing,
        so that any rule firing in the watch period is seen as firing again."""
        for state in [*self._states, self._blind]:
            state.true_for = state.false_for = 0.0
            state.last_t = t
            state.firing = False

    def _watch_until(self, incident: _Incident) -> float | None:
        run = incident.run
        if run is None or not run.succeeded:
            return None
        return run.t + self.policy.guards.watch_for

    def _rearm(self, t: float) -> None:
        """Each deploy re-arms the rules, so that a failure of the new release is a decision
        of its own and never waits behind the last release's clear_for (a dismissed failed
        migration once hid the next one for 5 minutes). monitoring_blind is left alone: it is
        about the probes, not the release."""
        held = set(self._incident.attached) if self._incident is not None else set()
        for state in self._states:
            state.rearm(t, holds_incident=state.rule.scenario in held)

    def _record_alert(self, t: float, event: Event) -> None:
        """Counts move by one per alert that starts or stops firing: one webhook can carry
        thousands of alerts, and recounting them all per alert blocked the loop for a minute."""
        labels = dict(event["labels"])
        key = tuple(sorted(labels.items()))
        if event.get("status") == "firing":
            if key in self._alerts:
                return
            self._alerts[key] = labels
            step = 1.0
        elif self._alerts.pop(key, None) is not None:
            step = -1.0
        else:
            return
        for name in _alert_signals(labels):
            count = self._alert_counts.get(name, 0.0) + step
            if count:
                self._alert_counts[name] = count
            else:
                del self._alert_counts[name]
            self._last_change[name] = t

    def _track_change(self, name: str, before: float | None, t: float) -> None:
        after = self.value(name)
        if after != before and after is not None:
            self._last_change[name] = t
        if after is None:
            self._unknown_since.setdefault(name, t)
        else:
            self._unknown_since.pop(name, None)

    # -- the expression context --------------------------------------------------------------

    def value(self, signal: str) -> float | None:
        if signal.startswith(catalogue.EVENT_FED_PREFIX):
            return self._alert_counts.get(signal, 0.0)
        if signal == catalogue.MIGRATION_FAILED:
            # The deploy wrapper's failure report stands even when the tool's table says nothing.
            if self._migration_report is not None:
                return self._migration_report
            if signal not in self._probed:
                return 0.0
        return self._probe_values.get(signal)

    def window(self, signal: str, seconds: float) -> Sequence[float]:
        history = self._history.get(signal)
        if not history:
            return ()
        horizon = self._now - seconds
        return [v for t, v in history if t > horizon]

    def baseline(self, signal: str) -> float | None:
        if self._deploy is not None:
            return self._deploy_baselines.get(signal)
        end = self._now - self.policy.baseline.gap
        return self._median(signal, end - self.policy.baseline.window, end, inclusive=True)

    def changed(self, signal: str) -> bool | None:
        if self._deploy is None:
            return None
        now, then = self.value(signal), self._at_deploy.get(signal)
        if now is None or then is None:
            return None
        return now != then

    def age(self, signal: str) -> float | None:
        """Seconds since the signal last changed; unknown while the signal itself is unknown
        (otherwise blindness would make a signal look steadily old)."""
        since = self._last_change.get(signal)
        if since is None or self.value(signal) is None:
            return None
        return self._now - since

    def _median(self, signal: str, start: float, end: float,
                inclusive: bool = False) -> float | None:
        history = self._history.get(signal)
        if not history:
            return None
        times = [t for t, _ in history]
        lo = bisect.bisect_left(times, start)
        hi = bisect.bisect_right(times, end) if inclusive else bisect.bisect_left(times, end)
        points = [v for _, v in list(history)[lo:hi]]
        if len(points) < self.policy.baseline.min_points:
            return None
        return float(statistics.median(points))

    # -- deciding ----------------------------------------------------------------------------

    def step(self, t: float, samples: Mapping[str, float | None],
             events: Sequence[Event] = ()) -> list[Decision]:
        self.observe(t, samples)
        for event in events:
            self.record(t, event)
        return self.decide(t)

    def decide(self, t: float) -> list[Decision]:
        """Evaluate every rule at ``t`` and arbitrate; returns the decisions taken, in order."""
        self._now = t
        self._remember(t)
        newly: list[Rule] = []
        for state in [*self._states, self._blind]:
            value = self._blindness(t) if state is self._blind else self._evaluate(state.rule)
            state.advance(t, value)
            if not state.firing and value is True and state.true_for >= state.rule.for_:
                state.firing = True
                newly.append(state.rule)
            elif state.firing and value is False and state.false_for >= state.rule.clear_for:
                state.firing = False
        newly.sort(key=lambda r: r.rank, reverse=True)  # stable: policy order breaks ties
        # A person's close applies first: what starts firing in the same step opens anew.
        closed = self._close(t)
        decisions = [closed] if closed is not None else []
        # So does the end of a clean watch period: nothing fired inside it.
        watched = self._end_clean_watch(t)
        if watched is not None:
            decisions.append(watched)
        decisions += [d for rule in newly if (d := self._arbitrate(t, rule)) is not None]
        resolved = self._maybe_resolve(t)
        if resolved is not None:
            decisions.append(resolved)
        return decisions

    def _evaluate(self, rule: Rule) -> bool | None:
        assert rule.condition is not None
        result = evaluate(rule.condition, self)
        return result if isinstance(result, bool) or result is None else bool(result)

    def _blind_signals(self, t: float) -> list[str]:
        """Probed signals a rule needs that have been unknown for longer than blind_after."""
        limit = self.policy.guards.blind_after
        return sorted(
            signal for signal, since in self._unknown_since.items()
            if signal in self._rule_signals and signal in self._probed and t - since > limit
        )

    def _blindness(self, t: float) -> bool:
        return bool(self._blind_signals(t))

    def _remember(self, t: float) -> None:
        horizon = t - self._retention
        for signal, history in self._history.items():
            value = self.value(signal)
            if value is not None:
                history.append((t, value))
            while history and history[0][0] < horizon:
                history.popleft()

    def _arbitrate(self, t: float, rule: Rule) -> Decision | None:
        incident = self._incident
        if incident is None:
            self._incidents += 1
            action, mode, reason = self._guard(t, rule)
            self._incident = _Incident(self._incidents, rule, action, mode, t, [rule.scenario],
                                       auto_rollback=_is_auto_rollback(action, mode))
            return self._decision(t, "open", self._incidents, rule, action, mode, reason)
        if self._fires_again(incident, t):
            # The procedures' first hour: whatever fires again after the rollback pages the
            # next escalation level, whatever its rank; a person takes it from here.
            action, mode, reason = self._guard(t, rule, incident)
            incident.fired_again = True
            if rule.scenario not in incident.attached:
                incident.attached.append(rule.scenario)
            if rule.rank > incident.rule.rank:
                incident.rule, incident.mode = rule, mode
            return self._decision(t, "escalate", incident.id, rule, action, mode, reason)
        if rule.scenario in incident.attached:
            return None  # already evidence of this incident
        incident.attached.append(rule.scenario)
        if rule.rank > incident.rule.rank:
            action, mode, reason = self._guard(t, rule, incident)
            reason = f"escalated from {incident.rule.scenario}: {reason}"
            incident.rule, incident.action, incident.mode = rule, action, mode
            incident.auto_rollback |= _is_auto_rollback(action, mode)
            return self._decision(t, "escalate", incident.id, rule, action, mode, reason)
        reason = (f"attached to incident {incident.id} as evidence; it ranks below "
                  f"{incident.rule.scenario}")
        return self._decision(t, "attach", incident.id, rule, incident.action, incident.mode,
                              reason)

    def _guard(self, t: float, rule: Rule,
               incident: _Incident | None = None) -> tuple[str, str, str]:
        """The action actually taken for ``rule`` (opening an incident, or escalating
        ``incident``), its mode, and why."""
        why = f"{rule.when} held for {format_duration(rule.for_)}"
        if rule.scenario == MONITORING_BLIND:
            why = ("no measurement for " + ", ".join(self._blind_signals(t))
                   + "; rollbackd never rolls back blind")
        after_run = None if incident is None else self._after_run(incident, t)
        if after_run is not None:
            # Once a runbook ran for the incident, a person decides what comes next.
            why = f"{after_run}; {why}"
            if not self._paused:
                return "page", self.policy.mode_for(rule.action, self.mode), why
        if self._paused:
            mode = "dry-run"
            action = "page" if rule.action in ROLLBACKS or after_run else rule.action
            return action, mode, f"paused: nothing is executed; {why}"
        mode = self.policy.mode_for(rule.action, self.mode)
        if rule.action not in ROLLBACKS:
            return rule.action, mode, why
        refusal = self._rollback_refusal(t, mode, self.policy.runbook_for(rule))
        if refusal is not None:
            return "page", mode, f"{refusal}; {why}"
        if incident is not None and incident.auto_rollback and mode == "auto":
            # Checked last: a guard above that refuses says so as it always did.
            return "page", mode, (f"incident {incident.id} already had its automatic rollback; "
                                  f"paging instead of a second one; {why}")
        if mode == "auto":
            self._auto_rollbacks.append(t)
        return rule.action, mode, why

    def _rollback_refusal(self, t: float, mode: str, runbook: Runbook | None) -> str | None:
        guards = self.policy.guards
        deploy = self._deploy
        if deploy is None or t - deploy.t > guards.rollback_window:
            return (f"no deploy recorded within {format_duration(guards.rollback_window)}: "
                    "nothing to roll back to")
        if deploy.rolled_back:
            return f"deploy {deploy.version} was already rolled back: nothing to roll back to"
        if not deploy.verified:
            return f"deploy {deploy.version} has no verified restore point"
        if (runbook is None or runbook.needs_database) and (
                "db.up" in self._probed and self.value("db.up") != 1):
            # A runbook that only rolls back code or configuration can run without it.
            state = "unreachable" if self.value("db.up") == 0 else "not measured"
            return f"database {state}: a restore cannot run"
        while self._auto_rollbacks and t - self._auto_rollbacks[0] >= guards.cooldown:
            self._auto_rollbacks.popleft()
        if mode == "auto" and len(self._auto_rollbacks) >= guards.max_auto_rollbacks:
            return (f"rate limit: {guards.max_auto_rollbacks} automatic rollback(s) per "
                    f"{format_duration(guards.cooldown)} already used")
        return None

    def _fires_again(self, incident: _Incident, t: float) -> bool:
        """A rule firing at ``t`` is the first to fire inside the watch period."""
        until = self._watch_until(incident)
        return until is not None and t < until and not incident.fired_again

    def _after_run(self, incident: _Incident, t: float) -> str | None:
        """Why a decision for ``incident`` only pages once a runbook ran for it; None before."""
        run = incident.run
        if run is None:
            return None
        instead = "paging instead of a second automatic rollback"
        if self._fires_again(incident, t):
            return f"fired again inside the watch period after the rollback; {instead}"
        if run.phase == "begin":
            return f"the {run.runbook} runbook of incident {incident.id} is running; {instead}"
        return (f"the {run.runbook} runbook of incident {incident.id} {run.status}; "
                f"{instead}")

    def _end_clean_watch(self, t: float) -> Decision | None:
        """The incident's watch period is over and no rule fired inside it: resolved."""
        incident = self._incident
        if incident is None or incident.fired_again:
            return None
        until = self._watch_until(incident)
        if until is None or t < until:
            return None
        assert incident.run is not None
        self._incident = None
        watch = format_duration(self.policy.guards.watch_for)
        return self._decision(t, "resolve", incident.id, incident.rule, incident.action,
                              incident.mode,
                              f"the watch period was clean: no rule fired again in the {watch} "
                              f"after the {incident.run.runbook} runbook succeeded")

    def _close(self, t: float) -> Decision | None:
        """A person closed the open incident: its rules still firing stay silent until they
        clear and fire anew (the person has seen them)."""
        incident, close = self._incident, self._close_requested
        self._close_requested = None
        if incident is None or close is None or close[0] != incident.id:
            return None
        self._incident = None
        return self._decision(t, "resolve", incident.id, incident.rule, incident.action,
                              incident.mode, close[1])

    def _maybe_resolve(self, t: float) -> Decision | None:
        incident = self._incident
        if incident is None:
            return None
        run = incident.run
        if run is not None and not run.succeeded:
            return None  # a run under way or failed: only a person closes the incident
        until = self._watch_until(incident)
        if until is not None and t < until:
            return None  # inside the watch period only a clean one resolves, or a person
        states = {s.rule.scenario: s for s in [*self._states, self._blind]}
        if any(states[name].firing for name in incident.attached):
            return None
        self._incident = None
        reason = "every rule of the incident has been clear for its clear_for"
        if until is not None:
            reason = f"the watch period is over and {reason}"
        return self._decision(t, "resolve", incident.id, incident.rule, incident.action,
                              incident.mode, reason)

    @staticmethod
    def _decision(t: float, kind: str, incident: int, rule: Rule, action: str, mode: str,
                  reason: str) -> Decision:
        return Decision(
            t=float(t), kind=kind, incident=incident,
            scenario=rule.scenario, severity=rule.severity, action=action,
            requested_action=rule.action,
            timeline_s=None if rule.timeline is None else int(rule.timeline), mode=mode,
            reason=reason,
        )

    # -- what a restarted daemon gives back ------------------------------------------------------

    def baselines(self) -> dict[str, float | None]:
        """The baselines frozen at the latest deploy (the daemon journals them)."""
        return dict(self._deploy_baselines)

    def remember_auto_rollbacks(self, times: Iterable[float]) -> None:
        """Automatic rollbacks decided before a restart still count towards the rate limit."""
        self._auto_rollbacks = deque(sorted({*self._auto_rollbacks, *times}))

    def resume_incident(self, incident: int, scenario: str, action: str, mode: str,
                        opened_at: float, attached: Sequence[str], *,
                        decisions: Sequence[Decision] = ()) -> bool:
        """Take back the incident a previous run left open, its rules firing until they clear
        for their clear_for; False when the policy no longer has its rule.

        Call it after the journal's recent events have been recorded: a runbook run of the
        incident among them is taken back too (it only pages; a successful end's watch period
        goes on). ``decisions``, the incident's journaled decisions, tell whether it had its
        automatic rollback and which rules fired again since the run ended: only those are
        firing in a watch period.
        """
        states = {s.rule.scenario: s for s in [*self._states, self._blind]}
        if scenario not in states:
            return False
        kept = [name for name in dict.fromkeys([scenario, *attached]) if name in states]
        resumed = _Incident(incident, states[scenario].rule, action, mode, opened_at, kept,
                            auto_rollback=any(d.kind in ("open", "escalate")
                                              and _is_auto_rollback(d.action, d.mode)
                                              for d in decisions))
        run = self._last_run
        if run is not None and run.incident == incident:
            self._take_run(resumed, run)
        firing = set(kept)
        if run is not None and resumed.run is run and run.succeeded:
            firing = {d.scenario for d in decisions if d.t >= run.t and d.kind != "resolve"}
            resumed.fired_again = bool(firing)
        for name in kept:
            state = states[name]
            state.firing, state.last, state.last_t = name in firing, None, None
        self._incident = resumed
        self._incidents = max(self._incidents, incident)
        return True

    # -- what the daemon exports -------------------------------------------------------------

    def firing(self) -> dict[str, bool]:
        return {s.rule.scenario: s.firing for s in [*self._states, self._blind]}

    @property
    def incident(self) -> tuple[int, str] | None:
        """The open incident's id and severity."""
        i = self._incident
        return None if i is None else (i.id, i.rule.severity)

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def watch_until(self) -> float | None:
        """When the open incident's watch period ends (its rollback runbook succeeded and
        nothing fired again yet); None outside one."""
        incident = self._incident
        if incident is None or incident.fired_again:
            return None
        return self._watch_until(incident)


def _is_auto_rollback(action: str, mode: str) -> bool:
    return action in ROLLBACKS and mode == "auto"
