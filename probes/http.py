"""HTTP probe: requests to one URL, kept in a sliding window for error ratio and latency quantiles.

A failed request (refused, reset, timed out) and a 5xx are errors: they are measurements of a
broken application, not a blind probe. A 4xx is the application answering, so it is not an error.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import httpx

from policies.samples import Reading
from policies.stats import quantile
from probes.base import Notes, one_line, tls_context
from probes.settings import HttpProbeSettings

QUANTILES: tuple[tuple[str, float], ...] = (
    ("latency_p50", 0.50),
    ("latency_p95", 0.95),
    ("latency_p99", 0.99),
)
HTTP_AGGREGATE_SIGNALS: tuple[str, ...] = (
    "http.up",
    "http.error_ratio",
    *(f"http.{suffix}" for suffix, _ in QUANTILES),
)

MAX_REDIRECTS = 3
# The runner cancels a probe at its ``timeout``; the requests' own timeout must fire first so
# that a slow server is recorded as an error (a measurement) rather than as a failed probe.
RUNNER_GRACE = 0.5
# Hard cap on remembered requests, whatever window and rate the config asks for.
MAX_RECORDS = 20_000


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request: when it finished (monotonic), whether it was an error, and its latency.

    ``latency`` is ``None`` when no response arrived: a refused connection has no latency
    worth putting into the quantiles.
    """

    at: float
    error: bool
    latency: float | None
    responded_ok: bool


class HttpProbe:
    """Requests ``settings.url`` ``settings.requests`` times per tick with one shared client."""

    kind: ClassVar[str] = "http"

    def __init__(self, settings: HttpProbeSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self.timeout = settings.timeout + RUNNER_GRACE
        self._url = str(settings.url)
        self._records: deque[RequestRecord] = deque(maxlen=MAX_RECORDS)
        self._up: float | None = None
        self._problems: dict[str, str] = {}
        self._client = httpx.AsyncClient(
            timeout=settings.timeout,
            follow_redirects=True,
            max_redirects=MAX_REDIRECTS,
            # Proxy variables of the daemon's environment must not reroute health checks.
            trust_env=False,
            verify=tls_context(),
            headers={"User-Agent": "rollbackd-http-probe"},
        )

    def _signal(self, suffix: str) -> str:
        return f"http.{self.name}.{suffix}"

    def signals(self) -> list[str]:
        return [self._signal("up"), self._signal("error_ratio"),
                *(self._signal(suffix) for suffix, _ in QUANTILES)]

    async def measure(self) -> Reading:
        # Unknown until this tick answers: a tick cut short must not leave last tick's verdict
        # standing in the aggregate http.up.
        self._up = None
        self._problems = {}
        results = await asyncio.gather(
            *(self._request() for _ in range(self.settings.requests))
        )
        records = [record for record, _ in results]
        self._records.extend(records)
        failures = [why for _, why in results if why is not None]
        if failures:
            self._problems[self._signal("error_ratio")] = _failure_summary(failures, len(results))
        # The tick's verdict on reachability: did the application answer at all (below 500)?
        self._up = 1.0 if any(r.responded_ok for r in records) else 0.0
        return self.reading()

    def reading(self, now: float | None = None) -> Reading:
        """Per-probe signals from the current window, without making a request."""
        window = self.window(now)
        values = _window_values(window)
        return {
            self._signal("up"): self._up,
            self._signal("error_ratio"): values["error_ratio"],
            **{self._signal(suffix): values[suffix] for suffix, _ in QUANTILES},
        }

    @property
    def up(self) -> float | None:
        """Reachability as of the latest tick; ``None`` before the first one."""
        return self._up

    def window(self, now: float | None = None) -> list[RequestRecord]:
        """The requests that finished within the last ``settings.window`` seconds."""
        horizon = (time.monotonic() if now is None else now) - self.settings.window
        while self._records and self._records[0].at < horizon:
            self._records.popleft()
        return list(self._records)

    async def _request(self) -> tuple[RequestRecord, str | None]:
        """The request's record, and why it counts as an error (``None`` when it does not)."""
        started = time.monotonic()
        try:
            # httpx's timeout is per phase (connect, each read); this bounds the whole request
            # so that a server dripping bytes slowly still counts as too slow.
            async with asyncio.timeout(self.settings.timeout):
                response = await self._client.request(self.settings.method, self._url)
        except TimeoutError:
            return _no_response(), f"no answer within {self.settings.timeout:g}s"
        except (httpx.HTTPError, OSError) as exc:
            return _no_response(), one_line(exc, with_type=True)
        finished = time.monotonic()
        server_error = response.status_code >= 500
        record = RequestRecord(at=finished, error=server_error, latency=finished - started,
                               responded_ok=not server_error)
        return record, f"HTTP {response.status_code}" if server_error else None

    def notes(self) -> Notes:
        return Notes(problems=dict(self._problems))

    async def aclose(self) -> None:
        await self._client.aclose()


def _no_response() -> RequestRecord:
    return RequestRecord(at=time.monotonic(), error=True, latency=None, responded_ok=False)


def _failure_summary(reasons: Sequence[str], total: int) -> str:
    """E.g. ``2 of 3 requests failed: HTTP 503 (x2)``; each distinct reason once."""
    counted = Counter(reasons)
    listed = "; ".join(why if n == 1 else f"{why} (x{n})" for why, n in counted.items())
    return f"{len(reasons)} of {total} requests failed: {listed}"


def _window_values(records: Sequence[RequestRecord]) -> dict[str, float | None]:
    """Error ratio and latency quantiles over ``records``; unknown when there are none."""
    latencies = [r.latency for r in records if r.latency is not None]
    values: dict[str, float | None] = {
        "error_ratio": sum(r.error for r in records) / len(records) if records else None,
    }
    for suffix, q in QUANTILES:
        values[suffix] = quantile(latencies, q)
    return values


def aggregate_http(
    probes: Sequence[HttpProbe], now: float | None = None
) -> dict[str, float | None]:
    """``http.*`` over all probes: the worst ``up``, and ratios/quantiles over all their windows.

    ``http.up`` is the minimum of the probes' known values (one URL down makes the app down)
    and unknown only when no probe knows; the rest pool every request in every window.
    """
    known_up = [p.up for p in probes if p.up is not None]
    pooled = [record for probe in probes for record in probe.window(now)]
    values = _window_values(pooled)
    return {
        "http.up": min(known_up) if known_up else None,
        "http.error_ratio": values["error_ratio"],
        **{f"http.{suffix}": values[suffix] for suffix, _ in QUANTILES},
    }
