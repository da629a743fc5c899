"""A generic JSON webhook: every fact of the page, for a receiver of the site's own."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from daemon.paging.channels.base import http_client, post_json, rfc3339, sent_at
from daemon.paging.message import Message

VERSION = "1"


def webhook_body(message: Message, *, now: float) -> dict[str, Any]:
    return {
        "version": VERSION,
        "dedup_key": message.dedup_key,
        "alert_key": message.alert_key,
        "event": message.event,
        "app": message.app,
        "incident": message.incident,
        "level": message.level,
        "recipient": message.recipient,
        "kind": message.kind,
        "severity": message.severity,
        "title": message.title,
        "text": message.text,
        "labels": dict(message.labels),
        "sent_at": rfc3339(sent_at(message, now)),
    }


class WebhookChannel:
    def __init__(self, url: str, *, timeout: float, token: str = "", name: str = "webhook",
                 clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self._url = url
        self.timeout = timeout
        self._clock = clock
        # The URL's path or query may hold a secret of its own: errors name the host only.
        self._where = urlsplit(url).hostname or ""
        self._client = http_client(timeout,
                                   {"Authorization": f"Bearer {token}"} if token else None)

    def __repr__(self) -> str:
        return f"WebhookChannel(name={self.name!r}, host={self._where!r})"

    async def send(self, message: Message) -> str:
        await post_json(self._client, self.name, self._url,
                        webhook_body(message, now=self._clock()), self.timeout,
                        where=self._where)
        return f"{self._where} accepted the page"

    async def aclose(self) -> None:
        await self._client.aclose()
