"""How long delivery waits before another try: what the receiver asked for (Retry-After in
seconds or as a date), else backoff from about half a second; never more than the cap."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

from daemon.paging.channels.base import DeliveryError, parse_retry_after
from daemon.paging.deliver import deliver
from tests.harness.paging import RecordedSleeps, page

NOW = 1_800_000_000.0


def test_retry_after_is_read_as_seconds_or_as_an_http_date() -> None:
    in_90s = format_datetime(datetime.fromtimestamp(NOW + 90, UTC), usegmt=True)
    assert parse_retry_after("7", NOW) == 7.0
    assert parse_retry_after(in_90s, NOW) == 90.0
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT", NOW) == 0.0
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after(None, NOW) is None


class Failing:
    """A channel that fails with the given errors, then delivers."""

    def __init__(self, *errors: DeliveryError) -> None:
        self.name = "scripted"
        self.errors = list(errors)
        self.tries = 0

    async def send(self, message: object) -> str:
        self.tries += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"

    async def aclose(self) -> None:
        return None


async def test_backoff_doubles_from_half_a_second_and_stops_at_the_cap() -> None:
    waits = RecordedSleeps()
    channel = Failing(*[DeliveryError("scripted: HTTP 500")] * 5)
    [attempt] = await deliver(page(), [channel], attempts=6, max_wait=3.0, sleep=waits)
    assert attempt.ok and attempt.tries == 6
    for wait, low in zip(waits, (0.5, 1.0, 2.0, 3.0, 3.0), strict=True):
        assert low <= wait <= min(low + 0.5, 3.0)


async def test_the_receivers_retry_after_wins_over_backoff_up_to_the_cap() -> None:
    waits = RecordedSleeps()
    channel = Failing(DeliveryError("x", retry_after=0.0), DeliveryError("x", retry_after=12),
                      DeliveryError("x", retry_after=99))
    [attempt] = await deliver(page(), [channel], attempts=4, max_wait=30.0, sleep=waits)
    assert attempt.ok and waits == [0.0, 12.0, 30.0]


async def test_after_the_last_try_there_is_no_wait_and_the_last_error_is_kept() -> None:
    waits = RecordedSleeps()
    channel = Failing(DeliveryError("scripted: HTTP 500"), DeliveryError("scripted: HTTP 502"))
    [attempt] = await deliver(page(), [channel], attempts=2, max_wait=30.0, sleep=waits)
    assert (attempt.ok, attempt.tries, attempt.error) == (False, 2, "scripted: HTTP 502")
    assert len(waits) == 1
