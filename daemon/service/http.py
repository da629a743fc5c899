"""The daemon's HTTP face: landing page, /metrics, /healthz, /readyz, and the API's routes."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from daemon import __version__


class Health(Protocol):
    """What the HTTP endpoints need to know about the main loop."""

    @property
    def status_line(self) -> str: ...

    def is_alive(self) -> bool: ...

    def is_ready(self) -> bool: ...


def build_app(health: Health, registry: CollectorRegistry,
              api: Sequence[BaseRoute] = ()) -> Starlette:
    """``api``: the token-guarded /api/v1 routes (daemon.service.api); the others stay open."""

    async def landing(_: Request) -> Response:
        status = html.escape(health.status_line)
        return HTMLResponse(
            "<!doctype html><html><head><title>rollbackd</title></head><body>"
            f"<h1>rollbackd {html.escape(__version__)}</h1><p>{status}</p><ul>"
            '<li><a href="/metrics">/metrics</a></li>'
            '<li><a href="/healthz">/healthz</a> (the main loop is alive)</li>'
            '<li><a href="/readyz">/readyz</a> (a first cycle completed)</li>'
            "<li>/api/v1/ (bearer token: Alertmanager webhook, status, incidents, pause)</li>"
            "</ul></body></html>"
        )

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
        Route("/", landing),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        *api,
    ])
