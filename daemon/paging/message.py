"""What every channel sends: one page, already rendered, with the key that deduplicates it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from daemon.journal import PageEvent

SEVERITIES = ("critical", "high", "medium", "low")


@dataclass(frozen=True, slots=True)
class Message:
    """One page as the channels see it.

    ``dedup_key`` (``app/incident-N/L2/decision``) identifies this page: a channel passes it
    on (PagerDuty's ``dedup_key``, an e-mail's Message-ID, the webhook's ``dedup_key``) so a
    re-send after a crash is recognised by the receiver, never a second page.
    ``alert_key`` (``app/incident-N/L2``) identifies what the page is about at that level:
    PagerDuty triggers, acknowledges and resolves under it, so a status update or a reminder
    at the same level joins the page already open instead of opening another.
    """

    dedup_key: str
    alert_key: str
    app: str
    incident: int | None
    level: int
    """1 for L1 and so on; 0 for pages outside escalation (tests, named contacts)."""
    recipient: str
    """Who the page is for, in words: ``L2 technical director``, ``database vendor``."""
    kind: str
    """The template: emergency, planned, decision, status, completion, reminder, test, contact."""
    severity: str
    """critical, high, medium or low (each channel maps it to its own scale)."""
    title: str
    """One line (an e-mail's subject, Slack's first line, PagerDuty's summary)."""
    text: str
    """The rendered body."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """The incident's facts as labels: scenario, action (Alertmanager's label set adds
    alertname, app, incident, severity and level to these)."""
    event: PageEvent = "trigger"
    sent_at: float = 0.0
    """When the page was journaled (epoch seconds): a re-send keeps it."""
