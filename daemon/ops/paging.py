"""What a person does about pages, shared by the CLI and the API: acknowledge an incident,
send a test page through each channel, page a named external contact."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from daemon.config import Config
from daemon.journal import Journal, Page
from daemon.ops.common import OpsError
from daemon.paging.acks import record_ack
from daemon.paging.channels import build_channels
from daemon.paging.deliver import Attempt, send_each
from daemon.paging.facts import general_facts
from daemon.paging.message import Message
from daemon.paging.outbox import CONTACT_PREFIX, NoPageObserver, Outbox, alert_key
from daemon.paging.templates import render


class AckError(OpsError):
    """An incident that cannot be acknowledged; ``missing``: there is no such incident."""

    def __init__(self, message: str, *, missing: bool) -> None:
        super().__init__(message)
        self.missing = missing


@dataclass(frozen=True, slots=True)
class Acknowledged:
    incident: int
    by: str
    via: str

    def as_json(self) -> dict[str, Any]:
        return {"incident": self.incident, "acknowledged_by": self.by, "via": self.via}

    def describe(self) -> list[str]:
        return [f"incident {self.incident} acknowledged by {self.by} ({self.via}): "
                "escalation stops"]


def acknowledge(journal: Journal, incident: int, by: str, via: str,
                comment: str = "") -> Acknowledged:
    """Journal that ``by`` has seen ``incident``'s pages; the running daemon stops escalating
    it at its next cycle and tells the channels that hold it open (PagerDuty)."""
    summary = journal.incident(incident)
    if summary is None:
        raise AckError(f"no incident {incident} in the journal", missing=True)
    if summary.state != "open":
        raise AckError(f"incident {incident} is already resolved", missing=False)
    record_ack(journal, incident, by, via, comment)
    return Acknowledged(incident, by, via)


@dataclass(frozen=True, slots=True)
class ChannelReport:
    """Each channel's answer to a page sent through all of them."""

    attempts: list[Attempt]
    what: str

    @property
    def ok(self) -> bool:
        return bool(self.attempts) and all(a.ok for a in self.attempts)

    def as_json(self) -> dict[str, Any]:
        return {"what": self.what, "ok": self.ok, "channels": [
            {"channel": a.channel, "ok": a.ok, "tries": a.tries, "receipt": a.receipt,
             "error": a.error} for a in self.attempts]}

    def describe(self) -> list[str]:
        if not self.attempts:
            return [f"{self.what}: no channel is configured ([paging] in the config)"]
        return [f"{a.channel:<14} {'ok' if a.ok else 'FAILED':<7} "
                f"{a.receipt if a.ok else a.error} ({a.tries} tr{'y' if a.tries == 1 else 'ies'})"
                for a in self.attempts]


async def send_test_page(config: Config, only: str | None, by: str) -> ChannelReport:
    """A test page through every configured channel (or ``only``), each reporting alone."""
    settings = config.paging
    if only is not None and only not in settings.order:
        configured = ", ".join(settings.order) or "none"
        raise OpsError(f"channel {only!r} is not configured (configured: {configured})")
    now = time.time()
    rendered = render("test", {**general_facts(config.app_name, now=now), "summary":
                               f"a test page sent by {by}"}, settings.templates_dir)
    message = Message(
        dedup_key=f"{config.app_name}/test/{now:.6f}", alert_key=alert_key(
            config.app_name, None, 0), app=config.app_name, incident=None, level=0,
        recipient="whoever is on call", kind="test", severity="low", title=rendered.title,
        text=rendered.text, labels={"scenario": "test", "action": "none"}, sent_at=now)
    channels = build_channels(settings, None if only is None else [only])
    try:
        attempts = await send_each(message, channels, attempts=settings.attempts,
                                   max_wait=settings.max_retry_wait)
    finally:
        for channel in channels:
            await channel.aclose()
    return ChannelReport(attempts, "test page")


SENDING_CLAIM = 300.0
"""Seconds the running daemon leaves a contact page to the ``page --to`` that journaled it
(which sends it at once): without it the daemon's outbox could send it too. The command
records the outcome; if it dies first, the daemon sends the page when the claim ends."""


@dataclass(frozen=True, slots=True)
class ContactPaged:
    page: Page

    def as_json(self) -> dict[str, Any]:
        return self.page.as_json()

    def describe(self) -> list[str]:
        page = self.page
        if page.status == "delivered":
            return [f"page {page.id} to {page.recipient} delivered ({page.delivered_by})"]
        return [f"page {page.id} to {page.recipient} NOT delivered yet: {page.last_error}; "
                "the running daemon keeps trying"]


async def page_contact(config: Config, journal: Journal, name: str, incident: int,
                       message: str, by: str) -> ContactPaged:
    """Page a named external contact about ``incident``: journaled first, then sent now; when
    it cannot be delivered the running daemon's outbox keeps trying."""
    contact = config.paging.contacts.get(name)
    if contact is None:
        known = ", ".join(sorted(config.paging.contacts)) or "none"
        raise OpsError(f"no contact {name!r} in [paging.contacts] (known: {known})")
    summary = journal.incident(incident)
    if summary is None:
        raise AckError(f"no incident {incident} in the journal", missing=True)
    now = time.time()
    line = f"incident {incident}: {by} pages {contact.who}"
    if message:
        line += f": {message}"
    page = journal.add_page(
        config.app_name, t=now, incident=incident, run=None, level=0, template="contact",
        summary=line, details={"contact": name, "by": by, "message": message},
        dedup_key=f"{config.app_name}/incident-{incident}/contact-{name}/{now:.6f}",
        recipient=contact.who, channels=[f"{CONTACT_PREFIX}{name}"],
        next_at=now + SENDING_CLAIM)
    outbox = Outbox(journal, config.app_name, config.paging, NoPageObserver())
    return ContactPaged(await outbox.send_one(page))
