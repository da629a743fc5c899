"""The live page at ``/``: what rollbackd sees and does, for a person at 3 a.m.

``/live.json`` is one document built per request from the running daemon (the state in words,
the open or latest incident's timeline, an hour of each signal a rule reads with the rule's
threshold, the latest deploy, restore points and the last drill); ``/`` is a static page whose
script polls it. Both are open without a token, so the document holds nothing secret: no
DSN, no channel URL or key, no token, no command output; only what rollbackd itself wrote.
"""

from __future__ import annotations

import html
import json
import math
import time
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from daemon import __version__
from daemon.config import Config
from daemon.db.backups import BackupInfo
from daemon.journal import Drill, Journal, JournalError, Run, RunStep
from policies.engine import Engine
from policies.expr import Binary, Call, Context, Expr, Num, Signal, Unary, evaluate, render
from policies.policy import Policy, Rule

if TYPE_CHECKING:
    from daemon.db.fleet import FleetStatus

HOUR = 3600.0
POINTS = 360
"""At most this many points per signal and hour: one per ``HOUR / POINTS`` seconds, the
latest reading in each slot, whatever the daemon's interval."""
SLOT = HOUR / POINTS
RESTORE_POINTS_SHOWN = 10
TIMELINE_LIMIT = 500
"""Decisions, pages and runs read per incident: a page, not an archive."""
CACHE_FOR = 1.0
"""Seconds one built document answers every poll: many open pages cost one build."""
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
       "form-action 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}


# -- what the daemon keeps for the page (one call per cycle) ----------------------------------


def _finite(value: float | None) -> float | None:
    """JSON has no NaN or infinity; an unmeasurable value is a gap in the chart."""
    return value if value is not None and math.isfinite(value) else None


class SignalHistory:
    """The last hour of each signal, bounded: one point per slot (the latest reading in it),
    so a 500 ms interval keeps as many points as a 10 s one.

    Times and values are kept in arrays of doubles (NaN for no reading), 16 bytes a point:
    as tuples of floats, every signal's hour cost about 40 kB, a megabyte of the daemon's
    memory for the two dozen signals of a usual config."""

    def __init__(self) -> None:
        self._times: dict[str, array[float]] = {}
        self._values: dict[str, array[float]] = {}

    def record(self, t: float, values: Mapping[str, float | None]) -> None:
        for name, value in values.items():
            times = self._times.setdefault(name, array("d"))
            kept = self._values.setdefault(name, array("d"))
            reading = _finite(value)
            stored = math.nan if reading is None else reading
            if times and int(times[-1] // SLOT) == int(t // SLOT):
                times[-1], kept[-1] = t, stored
                continue
            times.append(t)
            kept.append(stored)
            if len(times) > POINTS + 1:  # a few kB moved: cheaper than a ring's bookkeeping
                del times[0], kept[0]

    def points(self, name: str, now: float) -> list[tuple[float, float | None]]:
        pairs = zip(self._times.get(name, ()), self._values.get(name, ()), strict=True)
        return [(t, None if math.isnan(v) else v) for t, v in pairs if now - t <= HOUR]


@dataclass
class LiveRecord:
    """What the live page needs beyond the journal: the signal history the cycles feed, and
    the backups and drill the daemon's data-safety read found (not listed again per request:
    a hung backup mount must not hang the page)."""

    history: SignalHistory = field(default_factory=SignalHistory)
    backups: list[BackupInfo] = field(default_factory=list)
    drill: Drill | None = None

    def record(self, t: float, values: Mapping[str, float | None]) -> None:
        self.history.record(t, values)

    def data_safety(self, backups: Iterable[BackupInfo], drill: Drill | None) -> None:
        self.backups, self.drill = list(backups), drill


class LiveHost(Protocol):
    """What the page reads from the daemon, per request (a reload takes effect)."""

    config: Config
    policy: Policy
    journal: Journal
    engine: Engine
    live: LiveRecord

    @property
    def status_line(self) -> str: ...

    def fleet_status(self) -> FleetStatus | None: ...


# -- thresholds: the number a rule compares a signal with, where the condition says one -------

_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
_WINDOWED = frozenset({"avg", "max", "min", "quantile"})


@dataclass(frozen=True, slots=True)
class Threshold:
    signal: str
    subject: str
    """What the rule compares: the signal itself or a window of it, e.g. ``avg(x, 5m)``."""
    op: str
    value: float
    rule: str

    def as_json(self) -> dict[str, Any]:
        return {"signal": self.signal, "subject": self.subject, "op": self.op,
                "value": self.value, "rule": self.rule}


def _subject(expr: Expr) -> str | None:
    """The signal a comparison's side is about: the signal, or a window function of it."""
    if isinstance(expr, Signal):
        return expr.name
    if isinstance(expr, Call) and expr.name in _WINDOWED:
        named = [a for a in expr.args if isinstance(a, Signal)]
        return named[0].name if named else None
    return None


def _fixed(expr: Expr) -> bool:
    """Whether the side is a number now: literals, arithmetic, baselines (frozen or medians)."""
    if isinstance(expr, Num):
        return True
    if isinstance(expr, Unary):
        return expr.op == "-" and _fixed(expr.operand)
    if isinstance(expr, Binary):
        return expr.op in "+-*/" and _fixed(expr.left) and _fixed(expr.right)
    return isinstance(expr, Call) and expr.name == "baseline"


def _comparisons(expr: Expr) -> Iterable[Binary]:
    if isinstance(expr, Binary):
        if expr.op in _FLIP:
            yield expr
        else:
            yield from _comparisons(expr.left)
            yield from _comparisons(expr.right)
    elif isinstance(expr, Unary):
        yield from _comparisons(expr.operand)


def thresholds(rule: Rule, ctx: Context) -> list[Threshold]:
    """Each ``signal OP number`` of the rule's condition (either way round), with the number
    as it stands now (``1.5 * baseline(x)`` moves with the baseline); a comparison of
    anything else has no line to draw."""
    if rule.condition is None:
        return []
    found = []
    for node in _comparisons(rule.condition):
        for subject, other, op in ((node.left, node.right, node.op),
                                   (node.right, node.left, _FLIP[node.op])):
            signal = _subject(subject)
            if signal is None or not _fixed(other):
                continue
            value = evaluate(other, ctx)
            if (isinstance(value, float | int) and not isinstance(value, bool)
                    and math.isfinite(value)):
                found.append(Threshold(signal, render(subject), op, float(value), rule.scenario))
            break
    return found


# -- the document -----------------------------------------------------------------------------


def _headline(host: LiveHost, incident: Mapping[str, Any] | None,
              fleet: FleetStatus | None) -> tuple[str, str]:
    """The state in words and its level (incident, paused, ok), for the top of the page: a
    fleet incident this host follows is an incident here too, whoever opened it."""
    engine = host.engine
    if engine.incident is not None and incident is not None and incident["state"] == "open":
        text = (f"Incident {incident['incident']} open: {incident['scenario']} "
                f"({incident['severity']}), {incident['action']}")
        return text + (" — PAUSED" if engine.paused else ""), "incident"
    if engine.incident is not None:
        return f"Incident {engine.incident[0]} open ({engine.incident[1]})", "incident"
    shared = None if fleet is None or fleet.view is None else fleet.view.incident
    if shared is not None:
        return (f"Fleet incident {shared.id} open: {shared.scenario}, {shared.action} "
                f"(database {shared.db_state})"), "incident"
    if engine.paused:
        return "Paused: rollbackd watches and decides nothing", "paused"
    if host.status_line.endswith(": starting"):
        return "Starting: no cycle yet", "starting"
    return "All clear: no incident", "ok"


def _step_entry(step: RunStep, now: float) -> dict[str, Any]:
    ended = step.ended_at
    return {"t": step.started_at, "kind": "step", "step": step.idx, "name": step.kind,
            "attempt": step.attempt, "outcome": step.outcome or ("running" if ended is None
                                                                 else None),
            "duration": (ended if ended is not None else now) - step.started_at,
            "ended_at": ended, "message": step.message}


def _run_entries(journal: Journal, run: Run, now: float) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = [{
        "t": run.started_at, "kind": "run", "run": run.id, "runbook": run.runbook,
        "action": run.action, "by": run.requested_by, "status": run.status,
        "plan": list(run.plan), "deadline": run.deadline}]
    entries += [{**_step_entry(s, now), "run": run.id} for s in journal.steps(run.id)]
    if run.ended_at is not None:
        entries.append({"t": run.ended_at, "kind": "run_end", "run": run.id,
                        "runbook": run.runbook, "status": run.status,
                        "duration": run.ended_at - run.started_at, "summary": run.summary})
    return entries


def _page_title(title: str | None, summary: str) -> str:
    """The rendered title, or the summary's first line while the page is not rendered yet."""
    if title:
        return title
    return summary.splitlines()[0][:200] if summary.strip() else ""


def _timeline(journal: Journal, number: int, since: float, now: float) -> list[dict[str, Any]]:
    """Decisions, runs and their steps, pages and acknowledgements, in time order."""
    entries: list[dict[str, Any]] = [
        {"t": d.t, "kind": "decision", "decision": d.kind, "scenario": d.scenario,
         "severity": d.severity, "action": d.action, "mode": d.mode, "reason": d.reason}
        for d in journal.decisions(limit=TIMELINE_LIMIT, incident=number)]
    for run in journal.runs(incident=number, limit=20):
        entries += _run_entries(journal, run, now)
    entries += [
        # Our own rendering and where it went; never the channels' addresses or errors.
        {"t": p.t, "kind": "page", "page": p.id, "level": p.level, "template": p.template,
         "event": p.event, "recipient": p.recipient, "status": p.status,
         "delivered_by": p.delivered_by, "delivered_at": p.delivered_at,
         "title": _page_title(p.title, p.summary)}
        for p in journal.pages(incident=number, limit=TIMELINE_LIMIT)]
    entries += [
        {"t": e.t, "kind": "ack", "by": str(e.payload.get("by", "")),
         "via": str(e.payload.get("via", "")), "comment": str(e.payload.get("comment", ""))}
        for e in journal.events_of_type("ack", since=since, incident=number)]
    return sorted(entries, key=lambda e: e["t"])


def _incident(journal: Journal, now: float) -> dict[str, Any] | None:
    latest = journal.incidents(limit=1)
    if not latest:
        return None
    summary = latest[0]
    return {**summary.as_json(),
            "timeline": _timeline(journal, summary.incident, summary.opened_at, now)}


def _signals(host: LiveHost, now: float) -> list[dict[str, Any]]:
    lines: dict[str, list[Threshold]] = {}
    for rule in host.policy.rules:
        for threshold in thresholds(rule, host.engine):
            lines.setdefault(threshold.signal, []).append(threshold)
    return [{"name": name, "value": _finite(host.engine.value(name)),
             "points": [[t, v] for t, v in host.live.history.points(name, now)],
             "thresholds": [t.as_json() for t in lines.get(name, [])],
             "rules": sorted(r.scenario for r in host.policy.rules if name in r.signals)}
            for name in sorted(host.policy.signals())]


def _backup(info: BackupInfo) -> dict[str, Any]:
    return {"id": info.id, "kind": info.kind, "created_at": info.created_at,
            "state": info.state, "verified": info.verified, "size": info.size,
            "version": info.version, "deploy": info.deploy}


def live_data(host: LiveHost, now: float) -> dict[str, Any]:
    """The page's document; the journal's parts are left out (and said so) when it cannot
    be read, the rest still shows."""
    journal, problems = host.journal, []
    incident = deploy = None
    try:
        incident = _incident(journal, now)
        latest = journal.latest_deploy(host.config.app_name)
        if latest is not None:
            deploy = {"id": latest.id, "version": latest.version,
                      "started_at": latest.started_at, "ended_at": latest.ended_at,
                      "status": latest.status}
    except JournalError as exc:
        problems.append(str(exc))
    fleet = host.fleet_status()
    headline, level = _headline(host, incident, fleet)
    drill = host.live.drill
    backups = sorted(host.live.backups, key=lambda b: b.created_at or 0.0, reverse=True)
    return {
        "app": host.config.app_name, "version": __version__, "now": now,
        "headline": headline, "level": level, "status_line": host.status_line,
        "mode": host.config.daemon.mode, "paused": host.engine.paused,
        "watch_until": host.engine.watch_until, "problems": problems,
        "incident": incident, "deploy": deploy, "signals": _signals(host, now),
        "window": HOUR,
        "restore_points": [_backup(b) for b in backups[:RESTORE_POINTS_SHOWN]],
        "backups_total": len(backups),
        "drill": None if drill is None else {"t": drill.t, "ok": drill.ok,
                                             "duration": drill.duration,
                                             "backup": drill.backup},
        "fleet": None if fleet is None else fleet.as_json(),
    }


# -- the routes -------------------------------------------------------------------------------


def _asset(name: str) -> str:
    return (resources.files("daemon.service") / "static" / name).read_text(encoding="utf-8")


def render_page(template: str, host: LiveHost) -> str:
    """The page with the state already in it: it reads without script, and the script
    replaces it within a poll."""
    return (template.replace("{{app}}", html.escape(host.config.app_name))
            .replace("{{status_line}}", html.escape(host.status_line))
            .replace("{{version}}", html.escape(__version__)))


def live_routes(host: LiveHost, clock: Callable[[], float] = time.time) -> Sequence[BaseRoute]:
    """``/`` (the page), ``/live.js``, ``/live.css`` and ``/live.json``: read-only, no token."""
    page, script, style = _asset("live.html"), _asset("live.js"), _asset("live.css")
    cached: list[tuple[float, bytes]] = []

    async def index(_: Request) -> Response:
        return Response(render_page(page, host), media_type="text/html; charset=utf-8",
                        headers=HEADERS)

    async def js(_: Request) -> Response:
        return Response(script, media_type="text/javascript; charset=utf-8", headers=HEADERS)

    async def css(_: Request) -> Response:
        return Response(style, media_type="text/css; charset=utf-8", headers=HEADERS)

    async def document(_: Request) -> Response:
        stamp = time.monotonic()
        if not cached or stamp - cached[0][0] >= CACHE_FOR:
            body = json.dumps(live_data(host, clock()), default=str,
                              allow_nan=False).encode()
            cached[:] = [(stamp, body)]
        return Response(cached[0][1], media_type="application/json", headers=HEADERS)

    return [Route("/", index), Route("/live.js", js), Route("/live.css", css),
            Route("/live.json", document)]
