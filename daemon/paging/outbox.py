"""The outbox: every page is journaled before it is sent and delivered at least once.

Anything that pages (the main loop's decisions, the escalation timer, the executor's failed
steps, a person's ``rollbackd page``) only journals it (``Journal.add_page``, once per dedup
key). The running daemon's outbox then renders each pending page, keeps the text in the
journal (a re-send says the same), and tries the channels in order until one takes it; a page
no channel took stays pending and is tried again later, across restarts. A crash between the
send and the journal's "delivered" re-sends it under the same dedup key, which every channel
passes on, so the receiver sees one page.

Alertmanager holds alerts, not messages: an incident level's alert is posted again every
``resend`` while the incident is open (Alertmanager drops alerts past ``endsAt``), and
resolved with ``endsAt`` = now when it closes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from daemon.config import PagingSettings
from daemon.durable import hold_point, holds_at
from daemon.journal import IncidentSummary, Journal, JournalError, Page, PageAttempt
from daemon.logs import get_logger
from daemon.paging.channels import build_channels, build_contact
from daemon.paging.channels.alertmanager import AlertmanagerChannel
from daemon.paging.channels.base import Channel
from daemon.paging.deliver import Attempt, deliver, send_each
from daemon.paging.facts import general_facts, incident_facts, plain, quote
from daemon.paging.message import SEVERITIES, Message
from daemon.paging.templates import Rendered, render

RETRY_DELAYS = (15.0, 30.0, 60.0, 120.0, 300.0)
"""Seconds before a page no channel took is tried again (the last one repeats)."""

STATE_CHANNELS = ("alertmanager", "pagerduty")
"""Channels that hold a page open (an alert, an incident) and so are told it was
acknowledged or resolved; the others get messages only."""

ALERTNAME = "RollbackdIncident"


class PageObserver(Protocol):
    """What the daemon's metrics hear of pages."""

    def page_recorded(self, channel: str, outcome: str) -> None: ...

    def page_queue(self, length: int, oldest_age: float) -> None: ...


class NoPageObserver:
    """For the CLI: nobody scrapes its metrics."""

    def page_recorded(self, channel: str, outcome: str) -> None:
        return None

    def page_queue(self, length: int, oldest_age: float) -> None:
        return None


def alert_key(app: str, incident: int | None, level: int) -> str:
    """What a page is about at its level: PagerDuty triggers, acknowledges and resolves under
    it; Alertmanager's label set says the same (app, incident, level)."""
    return f"{app}/incident-{incident}/L{level}" if incident is not None else f"{app}/L{level}"


def page_key(app: str, incident: int | None, level: int, kind: str) -> str:
    """The outbox's dedup key: (app, incident, level, kind); ``kind`` may carry a suffix
    (``status-3``, ``repage-2``) for pages meant to go out more than once."""
    return f"{alert_key(app, incident, level)}/{kind}"


def retry_delay(tries: int) -> float:
    return RETRY_DELAYS[min(tries, len(RETRY_DELAYS) - 1)]


Sending = tuple[Literal["send", "hold", "leave"], str]
"""What becomes of one of this host's pages in a fleet: ``send`` it; ``hold`` it back a moment
(why); ``leave`` it to another host (which one): journaled as recorded, not sent."""


class FleetPages(Protocol):
    """Fleet mode's say in this host's pages (:class:`daemon.service.fleet.Fleet`)."""

    name: str
    """The fleet's name."""
    host: str
    """This host's id in the fleet: where a page tells the person to answer."""

    def alias(self, page: Page) -> tuple[str, int] | None:
        """The (app, incident) a fleet incident's page goes out under, the same from every
        host, so Alertmanager and PagerDuty see one alert; None for this host's own."""

    def sending(self, page: Page) -> Sending:
        """Whether this host sends the page, holds it back a moment, or leaves it to
        another host."""


@dataclass(frozen=True, slots=True)
class Standing:
    """An incident level's alert that Alertmanager holds: re-posted until resolved."""

    message: Message
    posted_at: float
    incident: int | None = None
    """The local incident the alert is about (the message's may be a fleet incident's)."""


class Outbox:
    """Renders and delivers the journal's pending pages. One ``flush`` at a time; the daemon
    runs it beside the main loop so a slow channel never holds up a cycle."""

    def __init__(self, journal: Journal, app: str, settings: PagingSettings,
                 observer: PageObserver,
                 channels: Callable[[Sequence[str] | None], list[Channel]] | None = None
                 ) -> None:
        self.journal = journal
        self.app = app
        self.settings = settings
        self.observer = observer
        self._channels = channels or (lambda only: build_channels(self.settings, only))
        self.log = get_logger().bind(app=app)
        self._standing: dict[str, Standing] = {}
        self._lock = asyncio.Lock()
        self._restored = False
        self.fleet: FleetPages | None = None
        """Fleet mode: the fleet's say in this host's pages."""

    @property
    def configured(self) -> tuple[str, ...]:
        return tuple(self.settings.order)

    # -- what a page says ----------------------------------------------------------------

    def rendered(self, page: Page, now: float) -> Rendered:
        """The page's title and text: the journal's when it was rendered before (a re-send
        says the same), else rendered now from the incident's facts."""
        if page.title is not None and page.text is not None:
            return Rendered(page.title, page.text)
        if page.incident is None:
            facts = general_facts(self.app, now=now, level=page.level,
                                  recipient=page.recipient)
        else:
            facts = incident_facts(self.journal, self.app, page.incident, now=now,
                                   level=page.level, recipient=page.recipient)
            if self.fleet is not None:  # where to answer: a decision there is the fleet's
                facts["host"] = plain(f"{self.fleet.host} (a host of fleet {self.fleet.name}: "
                                      "what is decided there is decided for every host)")
        facts.setdefault("summary", page.summary)
        if isinstance(page.details.get("by"), str):
            facts["sender"] = plain(page.details["by"])
        if isinstance(page.details.get("message"), str) and page.details["message"]:
            facts["note"] = quote(page.details["message"])
        result = render(page.template, facts, self.settings.templates_dir)
        self.journal.render_page(page.id, result.title, result.text)
        return result

    def message(self, page: Page, rendered: Rendered) -> Message:
        incident = (None if page.incident is None
                    else self.journal.incident(page.incident))
        alias = None if self.fleet is None else self.fleet.alias(page)
        app, number = (self.app, page.incident) if alias is None else alias
        return Message(
            dedup_key=page.dedup_key, alert_key=alert_key(app, number, page.level),
            app=app, incident=number, level=page.level,
            recipient=page.recipient or ("" if page.level == 0 else f"L{page.level}"),
            kind=page.template, severity=_severity(page, incident), title=rendered.title,
            text=rendered.text, labels=_labels(incident), event=page.event, sent_at=page.t)

    # -- delivery ------------------------------------------------------------------------

    async def flush(self, now: float | None = None) -> int:
        """Deliver what is due; returns how many pages were delivered."""
        async with self._lock:
            if not self._restored:
                self._restore_standing()
            delivered = 0
            for page in self.journal.pending_pages(now or time.time()):
                if await self._send(page):
                    delivered += 1
            self._report_queue()
            return delivered

    async def send_one(self, page: Page) -> Page:
        """Deliver one page now (``rollbackd page --to``: the person waits for the answer);
        the page as the journal has it afterwards."""
        async with self._lock:
            await self._send(page)
        return self.journal.page(page.id) or page

    async def _send(self, page: Page) -> bool:
        now = time.time()
        contact = _contact_of(page)
        if not self.configured and contact is None:
            self.journal.page_recorded(page.id)
            self.log.warning("page", channel="journal", page=page.id, template=page.template,
                             incident=page.incident, summary=page.summary)
            return True
        sending, who = ("send", "") if self.fleet is None else self.fleet.sending(page)
        if sending == "hold":
            return False
        if sending == "leave":
            self.journal.page_recorded(page.id)
            self.log.warning("page left to the host that pages for the fleet", host=who,
                             page=page.id, template=page.template, incident=page.incident)
            return True
        message = self.message(page, self.rendered(page, now))
        point = f"page:{page.template}:before_send"
        if holds_at(point):  # a test kills the daemon here: journaled, not yet sent
            await asyncio.to_thread(hold_point, point)
        channels = self._channels_for(page)
        if not channels:
            self.journal.page_recorded(page.id)
            return True
        send = deliver if page.event == "trigger" else send_each
        attempts = await send(message, channels, attempts=self.settings.attempts,
                              max_wait=self.settings.max_retry_wait)
        await _close(channels)
        point = f"page:{page.template}:after_send"
        if holds_at(point):  # a test kills the daemon here: sent, not yet journaled as such
            await asyncio.to_thread(hold_point, point)
        by = next((a.channel for a in attempts if a.ok), None)
        done = time.time()
        self.journal.page_attempted(
            page.id, done, [_journaled(page.id, done, a) for a in attempts], delivered_by=by,
            next_at=None if by else done + retry_delay(page.tries))
        for attempt in attempts:
            self.observer.page_recorded(attempt.channel, "delivered" if attempt.ok else "failed")
        self._remember(message, attempts, done, page.incident)
        log = self.log.bind(page=page.id, template=page.template, incident=page.incident,
                            level=page.level, page_event=page.event, dedup_key=page.dedup_key)
        if by is None:
            log.error("page not delivered; trying again later",
                      errors=[f"{a.channel}: {a.error}" for a in attempts],
                      retry_in=retry_delay(page.tries))
            return False
        log.warning("page delivered", channel=by, receipt=next(a.receipt for a in attempts
                                                                if a.ok))
        return True

    def _channels_for(self, page: Page) -> list[Channel]:
        """The page's own channels (its level's) or the configured order; an acknowledgement
        or resolution goes to the channels that hold what it updates."""
        contact = _contact_of(page)
        if contact is not None:
            return [build_contact(self.settings, contact)]
        names = [n for n in (page.channels or self.configured) if n in self.configured]
        if page.event != "trigger":
            held = self._holders(page)
            names = [n for n in self.configured if n in held]
        return self._channels(names) if names else []

    def _holders(self, page: Page) -> set[str]:
        """The stateful channels that delivered a trigger under the page's alert key."""
        key = alert_key(self.app, page.incident, page.level)
        holders: set[str] = set()
        for other in self.journal.pages(incident=page.incident, limit=10_000):
            if (other.event == "trigger" and other.level == page.level
                    and alert_key(self.app, other.incident, other.level) == key):
                holders |= {a.channel for a in self.journal.page_attempts(other.id)
                            if a.ok and a.channel in STATE_CHANNELS}
        return holders

    # -- Alertmanager's standing alerts --------------------------------------------------

    def _remember(self, message: Message, attempts: Sequence[Attempt], t: float,
                  incident: int | None) -> None:
        if not any(a.ok and a.channel == "alertmanager" for a in attempts):
            return
        if message.event == "resolve":
            self._standing.pop(message.alert_key, None)
        else:
            self._standing[message.alert_key] = Standing(message, t, incident)

    def _restore_standing(self) -> None:
        """After a restart: the open incident's alerts Alertmanager took, to keep them up."""
        self._restored = True
        incidents = self.journal.incidents(limit=1)
        if not incidents or incidents[0].state != "open":
            return
        number = incidents[0].incident
        for page in self.journal.pages(incident=number, limit=10_000):
            if page.status != "delivered" or page.title is None or page.text is None:
                continue
            if not any(a.ok and a.channel == "alertmanager"
                       for a in self.journal.page_attempts(page.id)):
                continue
            message = self.message(page, Rendered(page.title, page.text))
            if page.event == "resolve":
                self._standing.pop(message.alert_key, None)
            else:
                self._standing[message.alert_key] = Standing(message, 0.0, page.incident)

    async def refresh_alerts(self, now: float) -> None:
        """Post the standing alerts again before Alertmanager lets them expire."""
        settings = self.settings.alertmanager
        if settings is None or "alertmanager" not in self.configured:
            return
        due = [s for s in self._standing.values() if now - s.posted_at >= settings.resend]
        if not due:
            return
        channels = self._channels(["alertmanager"])
        try:
            for standing in due:
                attempts = await send_each(standing.message, channels, attempts=1,
                                           max_wait=self.settings.max_retry_wait)
                if attempts and attempts[0].ok:
                    self._standing[standing.message.alert_key] = Standing(
                        standing.message, now, standing.incident)
                else:
                    self.log.warning("cannot post an open page's alert again",
                                     alert_key=standing.message.alert_key,
                                     error=attempts[0].error if attempts else "no channel")
        finally:
            await _close(channels)

    def standing_incidents(self) -> set[int]:
        """The (local) incidents whose alerts Alertmanager holds for us (to look for
        silences)."""
        return {s.incident for s in self._standing.values() if s.incident is not None}

    def standing_identities(self, incident: int) -> list[dict[str, str]]:
        """The labels that name ``incident``'s alerts in Alertmanager (in fleet mode, the
        fleet's name and incident), the way a silence matches them."""
        seen = {(s.message.app, s.message.incident) for s in self._standing.values()
                if s.incident == incident}
        return [{"alertname": ALERTNAME, "app": app, "incident": str(number)}
                for app, number in sorted(seen, key=str)]

    def alertmanager(self) -> AlertmanagerChannel | None:
        """The Alertmanager channel (for reading silences), when one is configured."""
        if self.settings.alertmanager is None:
            return None
        channel = self._channels(["alertmanager"])[0]
        return channel if isinstance(channel, AlertmanagerChannel) else None

    def _report_queue(self) -> None:
        try:
            length, oldest = self.journal.undelivered()
        except JournalError:
            return
        self.observer.page_queue(length, 0.0 if oldest is None else time.time() - oldest)


def alert_labels(message: Message) -> dict[str, str]:
    """The label set Alertmanager knows the page's alert by (as the channel posts it)."""
    return {**message.labels, "alertname": ALERTNAME, "app": message.app,
            "incident": "none" if message.incident is None else str(message.incident),
            "severity": message.severity, "level": f"L{message.level}"}


CONTACT_PREFIX = "contact:"


def _contact_of(page: Page) -> str | None:
    """The named contact a page is for (its one channel ``contact:NAME``), else None."""
    if page.channels and len(page.channels) == 1 and page.channels[0].startswith(CONTACT_PREFIX):
        return page.channels[0].removeprefix(CONTACT_PREFIX)
    return None


def _severity(page: Page, incident: IncidentSummary | None) -> str:
    if incident is not None:
        return incident.severity
    value = page.details.get("severity")
    return value if isinstance(value, str) and value in SEVERITIES else "high"


def _labels(incident: IncidentSummary | None) -> dict[str, str]:
    if incident is None:
        return {}
    return {"scenario": incident.scenario, "action": incident.action}


def _journaled(page: int, t: float, attempt: Attempt) -> PageAttempt:
    return PageAttempt(page, t, attempt.channel, attempt.ok, attempt.tries, attempt.receipt,
                       attempt.error)


async def _close(channels: Sequence[Channel]) -> None:
    for channel in channels:
        await channel.aclose()
