"""Policy files: the decision matrix as TOML rules, validated and parsed once at load.

A policy is rejected as a whole when anything in it is wrong; every error names the file,
the rule and, for conditions, the column.
"""

from __future__ import annotations

import tomllib
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from policies import catalogue
from policies.escalation import (
    DEFAULT_LEVELS,
    EscalationError,
    Level,
    OnTimeout,
    parse_levels,
)
from policies.expr import Expr, ExprError, parse_condition, render, signals_of
from policies.runbooks import BUILTIN as BUILTIN_RUNBOOKS
from policies.runbooks import Runbook, RunbookError, parse_runbooks
from policies.runbooks import resolve as resolve_runbook
from policies.samples import SIGNAL_NAME
from policies.schema import Model, Positive, SchemaError, convert, dotted
from policies.units import Duration, check_duration, parse_duration

BUILTIN_DIR = Path(__file__).resolve().parent
BUILTIN_PREFIX = "builtin:"

Severity = Literal["critical", "high", "medium", "low"]
Action = Literal[
    "immediate_rollback", "planned_rollback", "selective_rollback", "evaluate", "fix_forward",
    "page",
]
Mode = Literal["auto", "approve", "dry-run"]

SEVERITY_RANK: Mapping[str, int] = {"critical": 3, "high": 2, "medium": 1, "low": 0}
ACTION_RANK: Mapping[str, int] = {
    "immediate_rollback": 5, "planned_rollback": 4, "selective_rollback": 3, "evaluate": 2,
    "page": 1, "fix_forward": 0,
}
MODE_STRICTNESS: Mapping[str, int] = {"auto": 0, "approve": 1, "dry-run": 2}
ROLLBACKS = frozenset({"immediate_rollback", "planned_rollback", "selective_rollback"})
NEXT_RELEASE = "next release"


class PolicyError(Exception):
    """A policy that cannot be used; ``str()`` is one line naming file, rule and column."""


class BaselineSettings(Model):
    window: Positive = Duration(1800.0)
    """History the median is taken over; up to 30d."""
    gap: Duration = Duration(600.0)
    """With no deploy, the window ends this long ago; 0 to 30d."""
    min_points: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 10
    """Fewer points make the baseline unknown; 1 to 100,000."""


class GuardSettings(Model):
    rollback_window: Positive = Duration(6 * 3600.0)
    """A rollback needs a deploy at most this long ago; up to 30d."""
    max_auto_rollbacks: Annotated[int, msgspec.Meta(ge=0, le=100)] = 1
    """Automatic rollbacks per cooldown; 0 to 100."""
    cooldown: Positive = Duration(3600.0)
    """Up to 30d."""
    blind_after: Positive = Duration(120.0)
    """A needed signal unknown longer pages; up to 30d."""
    watch_for: Positive = Duration(3600.0)
    """After a rollback runbook succeeds, its incident is watched this long: a rule firing
    again pages, a clean watch resolves it; up to 30d."""


class _RuleFile(Model):
    scenario: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]*$", max_length=60)]
    when: Annotated[str, msgspec.Meta(min_length=1)]
    severity: Severity
    action: Action
    timeline: str
    """A duration up to 30d, or "next release"."""
    for_: Duration = msgspec.field(default=Duration(0.0), name="for")
    """0 to 30d."""
    clear_for: Duration = Duration(300.0)
    """0 to 30d."""
    runbook: str | None = None
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    on_timeout: OnTimeout = "page"

    def check(self) -> None:
        if self.timeline != NEXT_RELEASE:
            try:
                check_duration(parse_duration(self.timeline))
            except ValueError as exc:
                raise ValueError(f"`timeline`: {exc}") from None


class _PolicyFile(Model):
    rule: Annotated[list[dict[str, Any]], msgspec.Meta(min_length=1)]
    baseline: BaselineSettings = msgspec.field(default_factory=BaselineSettings)
    guards: GuardSettings = msgspec.field(default_factory=GuardSettings)
    # Its keys are checked in check(): an error in a dictionary's key is one convert cannot
    # place, and the message would not name the key.
    modes: dict[str, Mode] = msgspec.field(default_factory=dict)
    # Extra signal names a rule may use, e.g. those of Prometheus query probes.
    signals: list[str] = msgspec.field(default_factory=list)
    runbook: list[dict[str, Any]] = msgspec.field(default_factory=list)
    escalation: list[dict[str, Any]] = msgspec.field(default_factory=list)

    def check(self) -> None:
        actions = typing.get_args(Action)
        for action in self.modes:
            if action not in actions:
                raise ValueError(f"`modes`: {action!r} is not an action (expected one of "
                                 f"{', '.join(map(repr, actions))})")


@dataclass(frozen=True, slots=True)
class Rule:
    scenario: str
    when: str
    condition: Expr | None  # None only for built-in rules evaluated by the engine itself
    for_: float
    clear_for: float
    severity: str
    action: str
    timeline: float | None  # None = "next release"
    runbook: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    on_timeout: OnTimeout = "page"
    """For an incident waiting for a person at its timeline's end (policies.escalation)."""

    @property
    def rank(self) -> tuple[int, int]:
        return SEVERITY_RANK[self.severity], ACTION_RANK[self.action]

    @property
    def signals(self) -> frozenset[str]:
        return signals_of(self.condition) if self.condition is not None else frozenset()


MONITORING_BLIND = "monitoring_blind"


def blind_rule(guards: GuardSettings) -> Rule:
    """The built-in rule that pages when signals the policy needs have been unknown too long."""
    return Rule(
        scenario=MONITORING_BLIND, when=f"a probed signal unknown for more than "
        f"{guards.blind_after:g}s", condition=None, for_=0.0, clear_for=0.0, severity="high",
        action="page", timeline=None,
    )


@dataclass(frozen=True, slots=True)
class Policy:
    path: str
    rules: tuple[Rule, ...]
    baseline: BaselineSettings
    guards: GuardSettings
    modes: Mapping[str, str]
    extra_signals: frozenset[str]
    runbooks: Mapping[str, Runbook] = field(default_factory=dict)
    """The policy's own ``[[runbook]]`` tables (the bundled ones are in
    :data:`policies.runbooks.BUILTIN`)."""
    escalation: tuple[Level, ...] = DEFAULT_LEVELS
    """Who is paged, in order (``[[escalation]]``; the procedures' three levels by default)."""

    def rule(self, scenario: str) -> Rule | None:
        return next((r for r in self.rules if r.scenario == scenario), None)

    def mode_for(self, action: str, global_mode: str) -> str:
        """The stricter of the daemon's mode and the policy's mode for this action."""
        local = self.modes.get(action, "auto")
        return max(global_mode, local, key=lambda m: MODE_STRICTNESS[m])

    def signals(self) -> frozenset[str]:
        return frozenset().union(*(r.signals for r in self.rules))

    def runbook_for(self, rule: Rule) -> Runbook | None:
        """What a decision of ``rule`` runs: its ``runbook``, else its action's bundled one;
        None for actions that run none (evaluate, page, fix_forward)."""
        return resolve_runbook(rule.action, rule.runbook, self.runbooks)

    def all_runbooks(self) -> dict[str, Runbook]:
        """The bundled runbooks and the policy's own, by name."""
        return {**BUILTIN_RUNBOOKS, **self.runbooks}


def resolve_ref(ref: str) -> Path:
    """``builtin:NAME`` is a bundled policy; anything else is a path."""
    if ref.startswith(BUILTIN_PREFIX):
        return BUILTIN_DIR / f"{ref.removeprefix(BUILTIN_PREFIX)}.toml"
    return Path(ref)


def _error(exc: SchemaError) -> str:
    return f"{dotted(exc.keys) or '(top level)'}: {exc.message}"


def _rule(data: Mapping[str, Any], index: int, path: str, extra: frozenset[str]) -> Rule:
    name = data.get("scenario")
    label = f"rule {name!r}" if isinstance(name, str) else f"rule #{index + 1}"
    try:
        spec = convert(data, _RuleFile)
    except SchemaError as exc:
        raise PolicyError(f"{path}: {label}: {_error(exc)}") from None
    try:
        condition = parse_condition(spec.when, lambda s: catalogue.is_known(s, extra))
    except ExprError as exc:
        raise PolicyError(
            f"{path}: {label} (when, column {exc.column}): {exc.message}"
        ) from None
    timeline = None if spec.timeline == NEXT_RELEASE else parse_duration(spec.timeline)
    return Rule(
        scenario=spec.scenario, when=render(condition), condition=condition, for_=spec.for_,
        clear_for=spec.clear_for, severity=spec.severity, action=spec.action,
        timeline=timeline, runbook=spec.runbook, labels=dict(spec.labels),
        on_timeout=spec.on_timeout,
    )


def load_toml(text: str) -> dict[str, Any]:
    """``text`` as TOML; a :class:`ValueError` whose message is one line otherwise."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"not valid TOML: {exc}") from None
    except RecursionError:
        # tomllib recurses once per level: 10,000 nested arrays are a 3,000-line traceback.
        raise ValueError("not valid TOML: nested too deeply") from None
    except ValueError as exc:
        # An integer of thousands of digits: Python's own message ends in advice for coders.
        raise ValueError(f"not valid TOML: {str(exc).split(':')[0]}") from None


def parse_policy(text: str, path: str, extra_signals: Iterable[str] = ()) -> Policy:
    """Parse and check a policy; ``extra_signals`` are names the configuration feeds (e.g. its
    Prometheus query probes) that a rule may use besides the catalogue's."""
    try:
        data = load_toml(text)
    except ValueError as exc:
        raise PolicyError(f"{path}: {exc}") from None
    try:
        spec = convert(data, _PolicyFile)
    except SchemaError as exc:
        raise PolicyError(f"{path}: {_error(exc)}") from None
    bad = [s for s in spec.signals if not SIGNAL_NAME.fullmatch(s)]
    if bad:
        raise PolicyError(f"{path}: signals: {bad[0]!r} is not a dotted lowercase signal name")
    extra = frozenset(spec.signals) | frozenset(extra_signals)
    rules = tuple(_rule(r, i, path, extra) for i, r in enumerate(spec.rule))
    seen: set[str] = set()
    for rule in rules:
        if rule.scenario in seen or rule.scenario == MONITORING_BLIND:
            raise PolicyError(f"{path}: rule {rule.scenario!r}: scenario is not unique")
        seen.add(rule.scenario)
    try:
        runbooks = parse_runbooks(spec.runbook, path)
    except RunbookError as exc:
        raise PolicyError(str(exc)) from None
    for rule in rules:
        if rule.runbook is not None and rule.runbook not in {**BUILTIN_RUNBOOKS, **runbooks}:
            raise PolicyError(f"{path}: rule {rule.scenario!r}: runbook: no runbook named "
                              f"{rule.runbook!r} (bundled: {', '.join(BUILTIN_RUNBOOKS)})")
        if rule.runbook is not None and rule.action not in ROLLBACKS:
            raise PolicyError(f"{path}: rule {rule.scenario!r}: runbook: action {rule.action} "
                              "runs no runbook (only the rollback actions do)")
    try:
        levels = parse_levels(spec.escalation, path)
    except EscalationError as exc:
        raise PolicyError(str(exc)) from None
    return Policy(path=path, rules=rules, baseline=spec.baseline, guards=spec.guards,
                  modes={str(k): str(v) for k, v in spec.modes.items()}, extra_signals=extra,
                  runbooks=runbooks, escalation=levels)
