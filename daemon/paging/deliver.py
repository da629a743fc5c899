"""Delivery: each channel tried a few times with backoff (Retry-After honoured), then the
next channel in the fallback order, until one delivers. Tenacity is imported by the first
delivery, not with the daemon's outbox."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from daemon.paging.channels.base import Channel, DeliveryError
from daemon.paging.message import Message

if TYPE_CHECKING:
    from tenacity import RetryCallState

Sleep = Callable[[float], Awaitable[None]]

FIRST_WAIT = 0.5
JITTER = 0.5


@dataclass(frozen=True, slots=True)
class Attempt:
    """What became of one channel: delivered or not, after how many tries."""

    channel: str
    ok: bool
    tries: int
    receipt: str
    error: str
    """The last try's error, one line without secrets; "" when ok."""


class _RetryAfterOrBackoff:
    """Tenacity's wait: what the receiver asked for (Retry-After), else exponential backoff
    with jitter from ~0.5s; both capped, so a receiver asking for an hour does not hold the
    fallback back."""

    def __init__(self, max_wait: float) -> None:
        from tenacity import wait_exponential, wait_random

        self.max_wait = max_wait
        self.backoff = (wait_exponential(multiplier=FIRST_WAIT, max=max_wait)
                        + wait_random(0, JITTER))

    def __call__(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, DeliveryError) and error.retry_after is not None:
            return min(error.retry_after, self.max_wait)
        return min(self.backoff(state), self.max_wait)


def _retryable(error: BaseException) -> bool:
    return isinstance(error, DeliveryError) and not error.permanent


async def try_channel(message: Message, channel: Channel, *, attempts: int, max_wait: float,
                      sleep: Sleep = asyncio.sleep) -> Attempt:
    """Up to ``attempts`` tries of one channel; permanent errors end it at once."""
    from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

    tries = 0
    retrying = AsyncRetrying(stop=stop_after_attempt(attempts), wait=_RetryAfterOrBackoff(max_wait),
                             retry=retry_if_exception(_retryable), sleep=sleep, reraise=True)
    try:
        async for attempt in retrying:
            with attempt:
                tries += 1
                receipt = await channel.send(message)
    except DeliveryError as exc:
        return Attempt(channel.name, ok=False, tries=tries, receipt="", error=str(exc))
    except Exception as exc:
        # A bug in a channel must not stop the fallback; its text may quote a secret (an
        # exception about the Slack URL), so only its kind is told.
        return Attempt(channel.name, ok=False, tries=tries, receipt="",
                       error=f"{channel.name}: failed with {type(exc).__name__}")
    return Attempt(channel.name, ok=True, tries=tries, receipt=receipt, error="")


async def deliver(message: Message, channels: Sequence[Channel], *, attempts: int,
                  max_wait: float, sleep: Sleep = asyncio.sleep) -> list[Attempt]:
    """Each channel in order until one delivers; one Attempt per channel tried."""
    results: list[Attempt] = []
    for channel in channels:
        result = await try_channel(message, channel, attempts=attempts, max_wait=max_wait,
                                   sleep=sleep)
        results.append(result)
        if result.ok:
            break
    return results


async def send_each(message: Message, channels: Sequence[Channel], *, attempts: int,
                    max_wait: float, sleep: Sleep = asyncio.sleep) -> list[Attempt]:
    """Every channel, at once, not stopping at the first success (``rollbackd page
    test``); the Attempts are in the channels' order."""
    return list(await asyncio.gather(*(
        try_channel(message, channel, attempts=attempts, max_wait=max_wait, sleep=sleep)
        for channel in channels)))
