"""Alertmanager (API v2): the page is an alert posted to every member of an HA pair, kept up
by re-posting and resolved with ``endsAt``; Alertmanager routes it with the site's own
receivers, grouping, inhibitions and silences. A silence on the alert is how on-call people
answer it, so this channel also reads silences back."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from daemon.paging.channels.base import (
    DeliveryError,
    http_client,
    post_json,
    rfc3339,
    sent_at,
    status_error,
    transport_error,
)
from daemon.paging.message import Message
from probes.base import redact_url

ALERTNAME = "RollbackdIncident"
KEEP_UP_RESENDS = 5
"""An open page's ``endsAt`` is this many re-post intervals ahead: a missed re-post or two
must not let Alertmanager resolve it."""

_LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NOT_LABEL_CHAR = re.compile(r"[^A-Za-z0-9_]")


@dataclass(frozen=True, slots=True)
class Silence:
    id: str
    created_by: str
    comment: str


def _label_name(name: str) -> str:
    """A name Alertmanager accepts (Prometheus' label name syntax)."""
    if _LABEL_NAME.fullmatch(name):
        return name
    fixed = _NOT_LABEL_CHAR.sub("_", name)
    return fixed if _LABEL_NAME.fullmatch(fixed) else f"_{fixed}"


def alert_labels(message: Message) -> dict[str, str]:
    """The alert's label set: the incident's facts, then the six that identify the page
    (a fact never overrides those). Empty values are dropped: Alertmanager treats an empty
    label as absent."""
    own = {
        "alertname": ALERTNAME,
        "app": message.app,
        "incident": "none" if message.incident is None else str(message.incident),
        "severity": message.severity,
        "level": f"L{message.level}",
    }
    facts = {_label_name(k): v for k, v in message.labels.items() if v}
    return {**facts, **{k: v for k, v in own.items() if v}}


def alert_body(message: Message, *, now: float, resend: float) -> list[dict[str, Any]]:
    """The JSON array ``POST /api/v2/alerts`` takes, with the one alert of this page."""
    starts = sent_at(message, now)
    ends = now if message.event == "resolve" else now + KEEP_UP_RESENDS * resend
    return [{
        "labels": alert_labels(message),
        "annotations": {"summary": message.title, "description": message.text,
                        "dedup_key": message.dedup_key},
        "startsAt": rfc3339(starts),
        # Alertmanager refuses an alert that ends before it starts.
        "endsAt": rfc3339(max(ends, starts)),
    }]


def matcher(name: str, value: str) -> str:
    """One ``filter`` matcher, ``name="value"`` with the value quoted as Alertmanager's
    matcher parser unquotes it."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'{name}="{escaped}"'


class AlertmanagerChannel:
    def __init__(self, urls: Sequence[str], *, timeout: float, resend: float,
                 name: str = "alertmanager", clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.urls = [u.rstrip("/") for u in urls]
        self.timeout = timeout
        self.resend = resend
        self._clock = clock
        self._client = http_client(timeout)

    async def _post(self, url: str, body: list[dict[str, Any]]) -> None:
        await post_json(self._client, f"{self.name}: {redact_url(url)}",
                        f"{url}/api/v2/alerts", body, self.timeout)

    async def send(self, message: Message) -> str:
        body = alert_body(message, now=self._clock(), resend=self.resend)
        results = await asyncio.gather(*(self._post(url, body) for url in self.urls),
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        for error in errors:
            if not isinstance(error, DeliveryError):
                raise error
        failed = [e for e in errors if isinstance(e, DeliveryError)]
        accepted = len(self.urls) - len(failed)
        if accepted == 0:
            raise _none_accepted(self.name, failed)
        receipt = f"{accepted} of {len(self.urls)} Alertmanagers accepted"
        if failed:
            receipt += " (" + "; ".join(str(e) for e in failed) + ")"
        return receipt

    async def silenced_by(self, labels: Mapping[str, str]) -> list[Silence]:
        """The silences that mute the alert with these labels, from every Alertmanager that
        answers (union by id); DeliveryError only when none does."""
        results = await asyncio.gather(*(self._silences(url, labels) for url in self.urls),
                                       return_exceptions=True)
        found: dict[str, Silence] = {}
        failed: list[DeliveryError] = []
        for result in results:
            if isinstance(result, DeliveryError):
                failed.append(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                found.update((s.id, s) for s in result)
        if len(failed) == len(self.urls):
            raise _none_accepted(self.name, failed, verb="answered")
        return sorted(found.values(), key=lambda s: s.id)

    async def _silences(self, url: str, labels: Mapping[str, str]) -> list[Silence]:
        params = [("filter", matcher(k, v)) for k, v in labels.items()]
        params += [("silenced", "true"), ("inhibited", "true"), ("active", "true")]
        alerts = await self._get_json(url, "/api/v2/alerts", params)
        ids: list[str] = []
        for alert in alerts if isinstance(alerts, list) else []:
            status = alert.get("status") if isinstance(alert, dict) else None
            silenced = status.get("silencedBy") if isinstance(status, dict) else None
            ids += [i for i in silenced or [] if isinstance(i, str) and i not in ids]
        silences = []
        for silence_id in ids:
            data = await self._get_json(url, f"/api/v2/silence/{silence_id}", [])
            if isinstance(data, dict):
                silences.append(Silence(id=silence_id, created_by=str(data.get("createdBy", "")),
                                        comment=str(data.get("comment", ""))))
        return silences

    async def _get_json(self, url: str, path: str, params: list[tuple[str, str]]) -> Any:
        where = f"{self.name}: {redact_url(url)}"
        try:
            response = await self._client.get(f"{url}{path}",
                                              params=tuple(params))
        except httpx.HTTPError as exc:
            raise transport_error(where, exc, self.timeout) from None
        if not response.is_success:
            raise status_error(where, response)
        try:
            return response.json()
        except ValueError:
            raise DeliveryError(f"{where}: {path} answered with something not JSON") from None

    async def aclose(self) -> None:
        await self._client.aclose()


def _none_accepted(name: str, failed: list[DeliveryError], verb: str = "accepted") -> \
        DeliveryError:
    waits = [e.retry_after for e in failed if e.retry_after is not None]
    reasons = "; ".join(str(e).removeprefix(f"{name}: ") for e in failed)
    return DeliveryError(f"{name}: none of {len(failed)} {verb}: {reasons}",
                         retry_after=min(waits) if waits else None,
                         permanent=all(e.permanent for e in failed))
