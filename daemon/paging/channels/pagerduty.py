"""PagerDuty Events API v2: trigger, acknowledge and resolve under the alert key, so a status
update or a reminder at the same level joins the incident already open in PagerDuty."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from daemon.paging.channels.base import http_client, post_json, rfc3339, sent_at
from daemon.paging.message import Message

SEVERITY = {"critical": "critical", "high": "error", "medium": "warning", "low": "info"}
MAX_SUMMARY = 1024
MAX_DEDUP_KEY = 255


def event_body(message: Message, routing_key: str, *, now: float) -> dict[str, Any]:
    """The Events v2 body; acknowledge and resolve carry only what identifies the event."""
    body: dict[str, Any] = {"routing_key": routing_key, "event_action": message.event,
                            "dedup_key": message.alert_key[:MAX_DEDUP_KEY]}
    if message.event != "trigger":
        return body
    body["payload"] = {
        "summary": message.title[:MAX_SUMMARY],
        "source": message.app,
        "severity": SEVERITY.get(message.severity, "critical"),
        "timestamp": rfc3339(sent_at(message, now)),
        "component": message.app,
        "group": "rollbackd",
        "class": message.kind,
        "custom_details": {"text": message.text, "dedup_key": message.dedup_key,
                           "incident": message.incident, "level": f"L{message.level}",
                           "recipient": message.recipient},
    }
    return body


class PagerDutyChannel:
    def __init__(self, url: str, routing_key: str, *, timeout: float, name: str = "pagerduty",
                 clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self._url = url
        self._routing_key = routing_key
        self.timeout = timeout
        self._clock = clock
        self._client = http_client(timeout)

    def __repr__(self) -> str:
        return f"PagerDutyChannel(name={self.name!r})"

    async def send(self, message: Message) -> str:
        body = event_body(message, self._routing_key, now=self._clock())
        # PagerDuty's host is no secret (the routing key is), so errors may name it.
        await post_json(self._client, self.name, self._url, body, self.timeout)
        return f"PagerDuty accepted the {message.event}"

    async def aclose(self) -> None:
        await self._client.aclose()
