"""Escalation's timer and the procedures' notices: what to page, decided each cycle from the
journal (decisions, runs, acknowledgements, pages already sent), journaled in the outbox.

Everything here writes pages with dedup keys, so a cycle that runs twice, or a restart, never
pages twice. Who is paged next is :mod:`policies.escalation`'s pure answer.

An incident *waits for a person* when its action asks for one (``evaluate``, ``page``, a
rollback in ``approve`` or ``dry-run`` mode) or when something was forced up after a
rollback (a failed run or validation, a rule firing during the watch period). Only those
escalate; an automatic rollback tells L1 (emergency or planned notice, status updates every
``status_every`` while it runs, the completion notice) and escalates only when it fails.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from daemon.config import PagingSettings
from daemon.journal import IncidentSummary, Journal, Page, PageEvent, Run
from daemon.logs import get_logger
from daemon.paging.acks import acks_of
from daemon.paging.facts import needs_annotation
from daemon.paging.outbox import STATE_CHANNELS, page_key
from policies.engine import Decision
from policies.escalation import Waiting, due, timeline_over
from policies.policy import ROLLBACKS, Policy

REMINDERS = (("reminder-24h", 24 * 3600.0), ("reminder-1w", 7 * 24 * 3600.0))
"""The procedures' short-term (24 h) and long-term (1 week) actions after an incident."""

ESCALATING = ("emergency", "decision", "planned")
"""The templates that page a level (the others inform)."""

RECENT = 20
"""Resolved incidents looked at for completion notices and reminders."""

COMPLETION_WITHIN = 3600.0
"""A completion notice goes out for an incident resolved at most this long ago: the engine
resolves incidents in the running daemon, so an older one was settled before paging existed
(or was told already) and is not announced again."""


def asks_for_decision(action: str, mode: str) -> bool:
    """The incident waits for a person to choose: ``evaluate``, or a rollback the daemon
    does not run itself (``approve`` or ``dry-run`` mode)."""
    return action == "evaluate" or (action in ROLLBACKS and mode != "auto")


def waits_for_person(action: str, mode: str) -> bool:
    """A decision is asked for, or the action is to page (a person must act)."""
    return action == "page" or asks_for_decision(action, mode)


def initial_template(decision: Decision, paused: bool) -> str | None:
    """The page a decision that opens or escalates an incident sends to L1, or None. A
    rollback the daemon runs tells people through its runbook's own page and notify steps
    (the emergency or planned notice, the completion notice); paused, it runs none."""
    if decision.kind not in ("open", "escalate"):
        return None
    if asks_for_decision(decision.action, decision.mode) or (
            decision.action in ROLLBACKS and paused):
        return "decision"
    return "emergency" if decision.action == "page" else None


@dataclass(frozen=True, slots=True)
class PageRequest:
    """What the pager journals: the outbox's row, before rendering."""

    incident: int
    level: int
    template: str
    key: str
    summary: str
    recipient: str = ""
    channels: tuple[str, ...] | None = None
    event: PageEvent = "trigger"


class Pager:
    """Journals the pages that are due; the outbox sends them."""

    def __init__(self, journal: Journal, app: str, settings: PagingSettings) -> None:
        self.journal = journal
        self.app = app
        self.settings = settings
        self.log = get_logger().bind(app=app)

    # -- a decision's first page ---------------------------------------------------------

    def page_decision(self, decision: Decision, policy: Policy, paused: bool,
                      waiting: str = "") -> Page | None:
        template = initial_template(decision, paused)
        if template is None:
            return None
        n = decision.incident
        summary = (f"incident {n}: {decision.scenario} ({decision.severity}) -> "
                   f"{decision.action}: {decision.reason}")
        if paused:
            summary += " [rollbackd is PAUSED: nothing is executed]"
        if waiting:
            summary += f"; {waiting}"
        elif template == "decision":
            summary += (f"; decide with: rollbackd decide {n} immediate_rollback|"
                        "planned_rollback|selective_rollback|fix_forward|dismiss")
        level = policy.escalation[0]
        return self._journal(PageRequest(
            n, level.number, template, page_key(self.app, n, level.number, template), summary,
            level.recipient, level.channels or None), decision.t, decision.as_json())

    # -- each cycle ----------------------------------------------------------------------

    def tick(self, policy: Policy, now: float | None = None) -> list[Page]:
        """Journal what is due now; returns the pages journaled (new or not)."""
        now = time.time() if now is None else now
        pages: list[Page] = []
        incidents = self.journal.incidents(limit=RECENT)
        for summary in incidents:
            if summary.state == "open":
                pages += self._open(summary, policy, now)
            else:
                pages += self._resolved(summary, policy, now)
        return pages

    def _open(self, incident: IncidentSummary, policy: Policy, now: float) -> list[Page]:
        n = incident.incident
        sent = self.journal.pages(incident=n, limit=10_000)
        acks = [e.t for e in acks_of(self.journal, n)]
        runs = self.journal.runs(incident=n, limit=100)
        decisions = self.journal.decisions(limit=1000, incident=n)
        forced = forced_up(runs, decisions)
        pages = self._status(incident, sent, now)
        if not (waits_for_person(incident.action, incident.mode) or forced):
            return pages + self._acknowledged(incident, sent, acks)
        since = _waiting_since(decisions, forced)
        state = Waiting(since=since, acked_at=max(acks, default=None), forced=forced,
                        paged=_paged(sent))
        rule = policy.rule(incident.scenario)
        timeline = decisions[-1].timeline_s if decisions else None
        over = timeline_over(since, timeline, now)
        if over and rule is not None and rule.on_timeout != "page":
            return [*pages, self._close_on_timeout(incident, rule.on_timeout, now)]
        asks = asks_for_decision(incident.action, incident.mode)
        template = "decision" if asks and not forced else "emergency"
        for page in due(policy.escalation, state, now, top=over):
            kind = template if page.repeat == 0 else f"{template}-repeat-{page.repeat}"
            summary = (f"incident {n}: {incident.scenario} ({incident.severity}) -> "
                       f"{incident.action}: unanswered, paging {page.level.recipient}")
            if over:
                summary += " (the timeline ran out)"
            pages.append(self._journal(PageRequest(
                n, page.level.number, template, page_key(self.app, n, page.level.number, kind),
                summary, page.level.recipient, page.level.channels or None), now, {}))
        return pages + self._acknowledged(incident, sent, acks)

    def _status(self, incident: IncidentSummary, sent: Sequence[Page],
                now: float) -> list[Page]:
        """Every ``status_every`` while a run of the incident goes: a status update to L1."""
        every = self.settings.status_every
        pages: list[Page] = []
        for run in self.journal.runs(status="running", incident=incident.incident, limit=5):
            count = int((now - run.started_at) // every)
            if count < 1:
                continue
            key = page_key(self.app, incident.incident, 1, f"status-run-{run.id}-{count}")
            if any(p.dedup_key == key for p in sent):
                continue
            pages.append(self._journal(PageRequest(
                incident.incident, 1, "status", key,
                f"incident {incident.incident}: {run.runbook} running for "
                f"{(now - run.started_at) / 60:.0f} min"), now, {"run": run.id}))
        return pages

    def _acknowledged(self, incident: IncidentSummary, sent: Sequence[Page],
                      acks: Sequence[float]) -> list[Page]:
        """Once acknowledged, the channels holding the incident's pages open are told."""
        if not acks or not self._holding():
            return []
        return [self._journal(PageRequest(
            incident.incident, level, "status",
            page_key(self.app, incident.incident, level, f"ack-{len(acks)}"),
            f"incident {incident.incident} acknowledged", event="acknowledge"), max(acks), {})
            for level in sorted(_paged(sent))]

    def _close_on_timeout(self, incident: IncidentSummary, choice: str, now: float) -> Page:
        """``on_timeout`` = fix_forward or dismiss: close the incident as a person would."""
        n = incident.incident
        closing = self.journal.events_of_type("close", since=incident.opened_at, incident=n)
        if not closing:  # the engine closes it at its next step; journal the close once
            self.journal.add_event(now, {"type": "close", "incident": n,
                                         "by": "rollbackd (on_timeout)",
                                         "decision": f"{choice} (the timeline ran out "
                                                     "unanswered)"})
            self.log.warning("incident closed at the end of its timeline", incident=n,
                             on_timeout=choice)
        return self._journal(PageRequest(
            n, 1, "status", page_key(self.app, n, 1, "timeout"),
            f"incident {n}: unanswered at the end of its timeline; closed as {choice}"),
            now, {})

    def _resolved(self, incident: IncidentSummary, policy: Policy, now: float) -> list[Page]:
        n = incident.incident
        sent = self.journal.pages(incident=n, limit=10_000)
        if not sent:
            return []  # nobody was told of it (fix forward, dry runs): nothing to complete
        keys = {p.dedup_key for p in sent}
        pages: list[Page] = []
        completion = page_key(self.app, n, 1, "completion")
        told = any(p.template == "completion" and p.event == "trigger" for p in sent)
        recent = now - incident.updated_at <= COMPLETION_WITHIN
        if completion not in keys and not told and recent:
            pages.append(self._journal(PageRequest(
                n, 1, "completion", completion, f"incident {n} resolved"),
                incident.updated_at, {}))
        resolve = page_key(self.app, n, 1, "resolve")
        if self._holding() and resolve not in keys and recent:
            pages += [self._journal(PageRequest(
                n, level, "completion", page_key(self.app, n, level, "resolve"),
                f"incident {n} resolved", event="resolve"), incident.updated_at, {})
                for level in sorted(_paged(sent))]
        for kind, after in REMINDERS:
            key = page_key(self.app, n, 1, kind)
            if key in keys or now < incident.updated_at + after:
                continue
            if not needs_annotation(self.journal, n):
                continue
            pages.append(self._journal(PageRequest(
                n, 1, "reminder", key,
                f"incident {n}: the report's root cause and prevention are still empty"),
                now, {"after": kind}))
        return pages

    def _holding(self) -> bool:
        """A configured channel holds pages open (an alert, an incident) to acknowledge or
        resolve; without one there is nothing to update."""
        return any(name in STATE_CHANNELS for name in self.settings.order)

    def _journal(self, request: PageRequest, t: float, details: dict[str, object]) -> Page:
        return self.journal.add_page(
            self.app, t=t, incident=request.incident, run=None, level=request.level,
            template=request.template, summary=request.summary, details=details,
            dedup_key=request.key, event=request.event,
            recipient=request.recipient, channels=request.channels)


def _paged(sent: Sequence[Page]) -> dict[int, tuple[float, int]]:
    """Per level: when it was last paged and how often (pages that page, not notices)."""
    paged: dict[int, tuple[float, int]] = {}
    for page in sent:
        if page.event != "trigger" or page.template not in ESCALATING or page.level < 1:
            continue
        last, count = paged.get(page.level, (0.0, 0))
        paged[page.level] = (max(last, page.t), count + 1)
    return paged


def _waiting_since(decisions: Sequence[Decision], forced: Sequence[float]) -> float:
    """When the incident began to wait for a person: its first decision that asked for one
    (its opening, or an escalation to such an action), else the first forcing."""
    for decision in decisions:
        if decision.kind in ("open", "escalate") and waits_for_person(decision.action,
                                                                      decision.mode):
            return decision.t
    return min(forced, default=decisions[0].t if decisions else time.time())


def forced_up(runs: Sequence[Run], decisions: Sequence[Decision]) -> list[float]:
    """When something went wrong after a rollback began, each forcing the next level at once:
    a run that failed (a failed post-rollback validation fails its run) or was abandoned, and
    a rule that fired again after a run ended (the engine pages instead of rolling back
    twice)."""
    times = [run.ended_at for run in runs
             if run.status in ("failed", "abandoned") and run.ended_at is not None]
    ended = [run.ended_at for run in runs if run.ended_at is not None]
    first_end = min(ended, default=None)
    if first_end is not None:
        times += [d.t for d in decisions
                  if d.t > first_end and d.kind in ("open", "escalate", "attach")
                  and d.action == "page" and d.requested_action != "page"]
    return sorted(times)
