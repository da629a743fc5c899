"""Slack incoming webhook: the URL itself is the credential, so nothing here ever prints it."""

from __future__ import annotations

import re
from typing import Any

import httpx

from daemon.paging.channels.base import http_client, status_error, transport_error
from daemon.paging.message import Message

_SLACK_ERROR = re.compile(r"[a-z_]{1,60}")
"""Slack's error answers are one word (``invalid_payload``, ``channel_is_archived``)."""


def escape(text: str) -> str:
    """Slack's mrkdwn treats &, < and > as markup (links, mentions): a page quotes them."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_body(message: Message) -> dict[str, Any]:
    title = escape(message.title)
    if message.event == "trigger":
        text = f"*{title}*\n{escape(message.text)}"
    else:
        done = "acknowledged" if message.event == "acknowledge" else "resolved"
        text = f"*{done}*: {title}"
    return {"text": f"{text}\n_dedup key: {escape(message.dedup_key)}_"}


class SlackChannel:
    def __init__(self, webhook_url: str, *, timeout: float, name: str = "slack") -> None:
        self.name = name
        self._webhook_url = webhook_url
        self.timeout = timeout
        self._client = http_client(timeout)

    def __repr__(self) -> str:
        return f"SlackChannel(name={self.name!r})"

    async def send(self, message: Message) -> str:
        try:
            response = await self._client.post(self._webhook_url, json=slack_body(message))
        except httpx.HTTPError as exc:
            raise transport_error(self.name, exc, self.timeout) from None
        if not response.is_success:
            answer = response.text.strip()
            raise status_error(self.name, response,
                               answer if _SLACK_ERROR.fullmatch(answer) else "")
        return "Slack accepted the message"

    async def aclose(self) -> None:
        await self._client.aclose()

