"""Prometheus probe: one PromQL instant query mapped to one named signal.

This is how fleet-wide and application-internal metrics reach the policy. The query must come
down to one number: no data is unknown (``None``); several series, a query error or an
unreachable server make the probe fail, so that it is counted and logged, never guessed.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import httpx

from policies.samples import Reading
from probes.base import NO_NOTES, Notes, redact_url, tls_context_for
from probes.settings import PrometheusProbeSettings

# The query's own evaluation deadline is set a little under ours so that Prometheus reports a
# slow query as such rather than the request timing out without a reason.
EVALUATION_SHARE = 0.8


class PrometheusQueryError(RuntimeError):
    """The query did not yield a single number (or nothing); the probe cannot measure."""


def value_of(payload: Any) -> float | None:
    """The single number in an instant-query response body, ``None`` for no data.

    ``NaN`` and infinities count as no data: they come from divisions by zero over empty
    rates, and comparing them would only make rules misfire.
    """
    if not isinstance(payload, dict):
        raise PrometheusQueryError("response is not a JSON object")
    if payload.get("status") != "success":
        kind = payload.get("errorType", "unknown")
        raise PrometheusQueryError(f"query failed ({kind}): {payload.get('error', payload)}")
    data = payload.get("data")
    if not isinstance(data, dict):
        raise PrometheusQueryError("response has no data object")
    result_type, result = data.get("resultType"), data.get("result")
    if result_type == "scalar":
        return _number(result)
    if result_type != "vector":
        raise PrometheusQueryError(
            f"query returned a {result_type}; an instant vector or a scalar is needed"
        )
    if not isinstance(result, list):
        raise PrometheusQueryError("vector result is not a list")
    if not result:
        return None
    if len(result) > 1:
        raise PrometheusQueryError(
            f"query returned {len(result)} series; aggregate it to one (e.g. with max or sum)"
        )
    sample = result[0]
    if not isinstance(sample, dict):
        raise PrometheusQueryError("vector sample is not an object")
    return _number(sample.get("value"))


def _number(pair: Any) -> float | None:
    """The value of a ``[timestamp, "value"]`` pair."""
    if not isinstance(pair, list) or len(pair) != 2:
        raise PrometheusQueryError(f"malformed sample value {pair!r}")
    try:
        value = float(pair[1])
    except (TypeError, ValueError):
        raise PrometheusQueryError(f"sample value {pair[1]!r} is not a number") from None
    return value if math.isfinite(value) else None


class PrometheusProbe:
    """Runs ``settings.query`` each tick; its value becomes ``settings.signal``."""

    kind: ClassVar[str] = "prometheus"

    def __init__(self, settings: PrometheusProbeSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self.timeout = float(settings.timeout)
        self.endpoint = str(settings.url).rstrip("/") + "/api/v1/query"
        self._client = httpx.AsyncClient(
            timeout=settings.timeout, trust_env=False, follow_redirects=False,
            verify=tls_context_for(self.endpoint, follow_redirects=False))

    def signals(self) -> list[str]:
        return [self.settings.signal]

    async def measure(self) -> Reading:
        return {self.settings.signal: await self.query()}

    async def query(self) -> float | None:
        """The query's value now; :class:`PrometheusQueryError` when there is none to trust."""
        params = {
            "query": self.settings.query,
            # Prometheus durations take whole numbers only ("1.6s" is rejected).
            "timeout": f"{max(1, int(self.settings.timeout * EVALUATION_SHARE * 1000))}ms",
        }
        try:
            response = await self._client.get(self.endpoint, params=params)
        except httpx.HTTPError as exc:
            raise PrometheusQueryError(
                f"cannot query {redact_url(self.endpoint)}: {type(exc).__name__}: {exc}"
            ) from exc
        try:
            payload = response.json()
        except ValueError:
            raise PrometheusQueryError(
                f"{redact_url(self.endpoint)} answered HTTP {response.status_code} without JSON"
            ) from None
        return value_of(payload)

    def notes(self) -> Notes:
        # Every failure of this probe raises, so the outcome's error says it all.
        return NO_NOTES

    async def aclose(self) -> None:
        await self._client.aclose()
