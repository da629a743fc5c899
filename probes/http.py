"""HTTP probe: requests to one URL, kept in a sliding window for error ratio and latency quantiles.

A failed request (refused, reset, timed out) and a 5xx are errors: they are measurements of a
broken application, not a blind probe. So is an answer the configuration does not expect: a
status outside ``expect_status`` (unset: a 3xx, since a redirect is not followed unless
``follow_redirects`` says so; a login page is not the app answering), or a body that fails a
``fail_if_body_*`` check. A 4xx is the application answering, so by default it is not an error.
``http.up`` is whether the application answered at all (below 500) in the latest tick.

Each tick presents exactly what the configuration says: cookies the app sets are not kept.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import re
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import httpx

from policies.samples import Reading
from policies.stats import quantile
from probes.base import (
    DescriptorStarvationError,
    Notes,
    one_line,
    starved_of_descriptors,
    tls_context_for,
)
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
# Bodies are read up to this much (enough for any health page); the rest is not looked at.
MAX_BODY_BYTES = 1024 * 1024


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


Attempt = tuple[RequestRecord, str | None]
"""A request made: its record, and why it counts as an error (``None`` when it does not)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What the app answered: the status, where a redirect points, and the body's start
    (``None`` when no ``fail_if_body_*`` check needs it)."""

    status: int
    location: str | None
    body: str | None


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
        self._reads_body = bool(settings.fail_if_body_matches or settings.fail_if_body_not_matches)
        self._client = httpx.AsyncClient(
            timeout=settings.timeout,
            follow_redirects=settings.follow_redirects,
            max_redirects=MAX_REDIRECTS,
            # Proxy variables of the daemon's environment must not reroute health checks.
            trust_env=False,
            verify=tls_context_for(self._url, settings.follow_redirects),
            headers={"User-Agent": "rollbackd-http-probe", **settings.header_values()},
            cookies=_cookie_jar_keeping_nothing(),
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
        made, starved = _sorted(await asyncio.gather(
            *(self._request() for _ in range(self.settings.requests)), return_exceptions=True))
        if not made:
            raise starved[0]
        self._problems = self._explain(made, starved)
        records = [record for record, _ in made]
        self._records.extend(records)
        # The tick's verdict on reachability: did the application answer at all (below 500)?
        self._up = 1.0 if any(r.responded_ok for r in records) else 0.0
        return self.reading()

    def _explain(self, made: Sequence[Attempt],
                 starved: Sequence[DescriptorStarvationError]) -> dict[str, str]:
        problems: dict[str, str] = {}
        if starved:
            problems["connection"] = (
                f"{len(starved)} of {self.settings.requests} requests not made: {starved[0]}")
        failures = [why for _, why in made if why is not None]
        if failures:
            problems[self._signal("error_ratio")] = _failure_summary(failures, len(made))
        return problems

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

    async def _request(self) -> Attempt:
        """The request's record, and why it counts as an error (``None`` when it does not).

        Raises :class:`DescriptorStarvationError` when rollbackd could not even open a socket:
        that says nothing about the app.
        """
        started = time.monotonic()
        try:
            # httpx's timeout is per phase (connect, each read); this bounds the whole request
            # so that a server dripping bytes slowly still counts as too slow.
            async with asyncio.timeout(self.settings.timeout):
                answer = await self._exchange()
        except TimeoutError:
            return _no_response(), f"no answer within {self.settings.timeout:g}s"
        except (httpx.HTTPError, OSError) as exc:
            if (starved := starved_of_descriptors(exc)) is not None:
                raise starved from exc
            return _no_response(), one_line(exc, with_type=True)
        finished = time.monotonic()
        why = await self._judge(answer)
        record = RequestRecord(at=finished, error=why is not None, latency=finished - started,
                               responded_ok=answer.status < 500)
        return record, why

    async def _exchange(self) -> Answer:
        response = await self._client.send(
            self._client.build_request(self.settings.method, self._url,
                                       content=self.settings.body),
            stream=True)
        try:
            # Read even when unchecked: a connection is only reused once its body is consumed.
            data = await _read_start(response, MAX_BODY_BYTES)
        finally:
            await response.aclose()
        body = None
        if self._reads_body:
            body = data.decode(response.encoding or "utf-8", errors="replace")
        return Answer(status=response.status_code, location=response.headers.get("Location"),
                      body=body)

    async def _judge(self, answer: Answer) -> str | None:
        """Why ``answer`` is not the app answering as configured, or ``None``."""
        if not self.settings.status_expected(answer.status):
            return _unexpected_status(answer, self._url)
        if answer.body is None:
            return None
        # A regex can take its time over a large body: off the event loop, which must go on.
        return await asyncio.to_thread(
            _body_problem, answer.body, self.settings.fail_if_body_matches,
            self.settings.fail_if_body_not_matches)

    def notes(self) -> Notes:
        return Notes(problems=dict(self._problems))

    async def aclose(self) -> None:
        await self._client.aclose()


def _sorted(
    outcomes: Sequence[Attempt | BaseException],
) -> tuple[list[Attempt], list[DescriptorStarvationError]]:
    """The requests made, and those rollbackd was too starved to make; any other exception
    is raised (it is a bug, or the probe being cancelled)."""
    made: list[Attempt] = []
    starved: list[DescriptorStarvationError] = []
    for outcome in outcomes:
        if isinstance(outcome, DescriptorStarvationError):
            starved.append(outcome)
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            made.append(outcome)
    return made, starved


def _no_response() -> RequestRecord:
    return RequestRecord(at=time.monotonic(), error=True, latency=None, responded_ok=False)


def _cookie_jar_keeping_nothing() -> http.cookiejar.CookieJar:
    """A jar that refuses every cookie: one tick's answer must not change the next request."""
    return http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))


async def _read_start(response: httpx.Response, limit: int) -> bytes:
    """The first ``limit`` bytes of the body (all of it when shorter)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]


def _unexpected_status(answer: Answer, url: str) -> str:
    """E.g. ``HTTP 500``, or ``HTTP 302 to /login, not an expected status``."""
    text = f"HTTP {answer.status}"
    if answer.location is not None:
        text += f" to {_redirect_target(answer.location, url)}"
    if answer.status >= 500:
        return text
    return text + ", not an expected status"


def _redirect_target(location: str, url: str) -> str:
    """Where a redirect points, without its query (it may carry a token): the path when it
    stays on the probed origin, else the origin and path."""
    try:
        base = httpx.URL(url)
        target = base.join(location)
    except (httpx.InvalidURL, ValueError):
        return "an unparsable location"
    if (target.scheme, target.host, target.port) == (base.scheme, base.host, base.port):
        return target.path
    port = f":{target.port}" if target.port is not None else ""
    return f"{target.scheme}://{target.host}{port}{target.path}"


def _body_problem(body: str, matches: Sequence[re.Pattern[str]],
                  not_matches: Sequence[re.Pattern[str]]) -> str | None:
    """Which ``fail_if_body_*`` check ``body`` fails (naming the pattern, not quoting the
    body), or ``None``."""
    for index, pattern in enumerate(matches):
        if pattern.search(body):
            return f"the body matches fail_if_body_matches[{index}] {pattern.pattern!r}"
    for index, pattern in enumerate(not_matches):
        if not pattern.search(body):
            return (f"the body does not match fail_if_body_not_matches[{index}] "
                    f"{pattern.pattern!r}")
    return None


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
