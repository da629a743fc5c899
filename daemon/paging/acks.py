"""Acknowledgements: a person answering a page stops its escalation. They come from
``rollbackd ack``, the API, or a silence in Alertmanager that matches the incident's alert
(the on-call who silences it in Alertmanager's UI or with ``amtool`` has seen it)."""

from __future__ import annotations

import time

from daemon.journal import Journal, JournalEvent
from daemon.logs import get_logger
from daemon.paging.channels.base import DeliveryError
from daemon.paging.outbox import ALERTNAME, Outbox

SILENCE_VIA = "alertmanager silence "


def record_ack(journal: Journal, incident: int, by: str, via: str, comment: str = "",
               t: float | None = None) -> int:
    """Journal an acknowledgement of ``incident`` (an ``ack`` event the pager reads)."""
    return journal.add_event(time.time() if t is None else t, {
        "type": "ack", "incident": incident, "by": by, "via": via, "comment": comment})


def acks_of(journal: Journal, incident: int) -> list[JournalEvent]:
    return journal.events_of_type("ack", incident=incident)


async def acks_from_silences(outbox: Outbox, journal: Journal, incident: int) -> list[int]:
    """Journal an ack for each silence in Alertmanager that matches the open incident's alert
    and was not seen before; returns the events journaled. An Alertmanager that cannot be
    asked is logged and asked again next time."""
    channel = outbox.alertmanager()
    if channel is None:
        return []
    seen = {str(e.payload.get("via", "")) for e in acks_of(journal, incident)}
    identities = outbox.standing_identities(incident) or [
        {"alertname": ALERTNAME, "app": outbox.app, "incident": str(incident)}]
    try:
        found = {s.id: s for labels in identities for s in await channel.silenced_by(labels)}
    except DeliveryError as exc:
        get_logger().bind(app=outbox.app).warning(
            "cannot read Alertmanager's silences", incident=incident, error=str(exc))
        return []
    finally:
        await channel.aclose()
    events = []
    for silence in found.values():
        via = f"{SILENCE_VIA}{silence.id}"
        if via in seen:
            continue
        events.append(record_ack(journal, incident, silence.created_by or "alertmanager", via,
                                 silence.comment))
        get_logger().bind(app=outbox.app).warning(
            "incident acknowledged by a silence in Alertmanager", incident=incident,
            silence=silence.id, by=silence.created_by)
    return events
