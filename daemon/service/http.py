"""The daemon's HTTP face: /metrics, /healthz, /readyz, the live page's and the API's routes."""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Sequence
from typing import Any, Protocol

import h11
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from uvicorn.protocols.http.h11_impl import H11Protocol


class Health(Protocol):
    """What the HTTP endpoints need to know about the main loop."""

    @property
    def status_line(self) -> str: ...

    def is_alive(self) -> bool: ...

    def is_ready(self) -> bool: ...


def build_app(health: Health, registry: CollectorRegistry,
              api: Sequence[BaseRoute] = (), pages: Sequence[BaseRoute] = ()) -> Starlette:
    """``api``: the token-guarded /api/v1 routes (daemon.service.api); ``pages``: the live
    page at ``/`` and its data (daemon.service.live); the others stay open."""

    async def healthz(_: Request) -> Response:
        if health.is_alive():
            return PlainTextResponse("ok\n")
        return PlainTextResponse("main loop stalled\n", status_code=503)

    async def readyz(_: Request) -> Response:
        if health.is_ready():
            return PlainTextResponse("ready\n")
        return PlainTextResponse("not ready: no cycle completed yet\n", status_code=503)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[
        *pages,
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        *api,
    ])


REQUEST_TIMEOUT = 10.0
"""Seconds a client has to send a whole request (headers and body) once connected."""
FD_SHARE = 4
"""At most a quarter of the file descriptors may be HTTP connections: the rest are the probes',
the journal's and the restores'."""
MAX_CONNECTIONS = 256


def connection_cap() -> int:
    """How many HTTP connections may be open at once, from this process's descriptor limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(8, min(MAX_CONNECTIONS, soft // FD_SHARE))


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with two bounds uvicorn lacks: connections over the cap are
    closed as soon as they are accepted, and a client that has not sent its whole request
    within ``REQUEST_TIMEOUT`` is cut off (slowloris). Without them, a flood of idle
    connections takes every file descriptor and rollbackd can no longer probe anything.

    ``refused`` and ``timed_out`` count what was cut since the main loop last collected them
    (:func:`collect_refusals`), so that it logs one line per cycle, not one per connection.
    """

    cap = MAX_CONNECTIONS
    refused = 0
    timed_out = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._receive_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > type(self).cap:
            type(self).refused += 1
            transport.abort()
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._receive_deadline = self.loop.call_later(REQUEST_TIMEOUT, self._receive_expired)

    def _disarm(self) -> None:
        if self._receive_deadline is not None:
            self._receive_deadline.cancel()
            self._receive_deadline = None

    def _receive_expired(self) -> None:
        # IDLE: the request line or headers are incomplete; SEND_BODY: the body is.
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not (
                self.transport.is_closing()):
            type(self).timed_out += 1
            self.transport.abort()


def collect_refusals() -> tuple[int, int]:
    """Connections refused over the cap and cut off for slowness since the last call."""
    counts = (GuardedH11Protocol.refused, GuardedH11Protocol.timed_out)
    GuardedH11Protocol.refused = GuardedH11Protocol.timed_out = 0
    return counts
