"""What every channel is, how it fails, and the HTTP plumbing the HTTP channels share."""

from __future__ import annotations

import email.utils
import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx

from daemon.paging.message import Message
from probes.base import tls_context

USER_AGENT = "rollbackd-pager"

RETRY_AFTER_STATUSES = frozenset({429, 503})
"""The answers whose Retry-After is honoured (RFC 9110 gives it to 503 and 3xx, RFC 6585 to
429; a redirect is not followed, so only these two)."""


class DeliveryError(Exception):
    """A send that failed. ``str()`` is one line without secrets. ``retry_after``: seconds the
    receiver asked to wait (Retry-After on 429/503), None otherwise. ``permanent``: retrying
    cannot help (a 4xx but 429, a refused login)."""

    def __init__(self, message: str, *, retry_after: float | None = None,
                 permanent: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.permanent = permanent


class Channel(Protocol):
    name: str
    """``alertmanager``, ``pagerduty``, ... or ``contact:NAME``."""

    async def send(self, message: Message) -> str:
        """Deliver ``message``; a short receipt (``2 of 2 Alertmanagers accepted``), or
        :class:`DeliveryError`."""
        ...

    async def aclose(self) -> None: ...


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def sent_at(message: Message, now: float) -> float:
    """When the page was journaled, or now for a message built without that time."""
    return message.sent_at if message.sent_at > 0 else now


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or an HTTP date), or None
    when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def _seconds(value: float) -> str:
    return f"{value:g}s"


def status_error(channel: str, response: httpx.Response, detail: str = "") -> DeliveryError:
    """The error for a non-2xx answer: 429 and 5xx may be retried (after Retry-After when
    given), any other status is permanent (the request itself is wrong)."""
    code = response.status_code
    retry_after = (parse_retry_after(response.headers.get("retry-after"))
                   if code in RETRY_AFTER_STATUSES else None)
    retryable = code == 429 or code >= 500
    text = f"{channel}: HTTP {code}"
    if retry_after is not None:
        text += f" (retry after {_seconds(retry_after)})"
    if 300 <= code < 400:
        text += " (redirects are not followed)"
    if detail:
        text += f": {detail}"
    return DeliveryError(text, retry_after=retry_after, permanent=not retryable)


def transport_error(channel: str, exc: httpx.HTTPError, timeout: float, where: str = "") -> \
        DeliveryError:
    """The error for a request that got no answer, in words that never repeat the URL
    (``where`` names the receiver when its address is no secret)."""
    at = f" {where}" if where else ""
    if isinstance(exc, httpx.TimeoutException):
        return DeliveryError(f"{channel}:{at} timed out after {_seconds(timeout)}")
    reason = _os_reason(exc)
    return DeliveryError(f"{channel}: cannot reach{at or ' the receiver'}: {reason}")


def _os_reason(exc: BaseException) -> str:
    """The operating system's words for a failed connection (``Connection refused``), found
    in the exception chain; else the exception's class name, never its text (which may
    quote the URL)."""
    seen: BaseException | None = exc
    while seen is not None:
        # asyncio words its own strerror ("Connect call failed (addr)"): the errno's is plainer
        if isinstance(seen, OSError) and seen.errno:
            return os.strerror(seen.errno)
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__


def http_client(timeout: float, headers: Mapping[str, str] | None = None) -> httpx.AsyncClient:
    """One client per channel: its own timeout, no redirects (a page is not re-posted
    elsewhere), no proxies from the environment, the daemon's one TLS context."""
    return httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False,
                             verify=tls_context(),
                             headers={"User-Agent": USER_AGENT, **(headers or {})})


async def post_json(client: httpx.AsyncClient, channel: str, url: str, body: Any,
                    timeout_s: float, *, where: str = "",
                    headers: Mapping[str, str] | None = None) -> httpx.Response:
    """POST ``body`` as JSON; the response when the receiver answered 2xx, else a
    :class:`DeliveryError` naming the channel and what happened (``timeout_s`` is the
    client's timeout, for that message)."""
    try:
        response = await client.post(url, json=body, headers=headers)
    except httpx.HTTPError as exc:
        raise transport_error(channel, exc, timeout_s, where) from None
    if not response.is_success:
        raise status_error(channel, response)
    return response
