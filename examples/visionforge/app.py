"""VisionForge, the example application that rollbackd watches, deploys, breaks and rolls back.

    python examples/visionforge/app.py --dsn DSN --port PORT [--host 127.0.0.1]
        [--pidfile FILE] [--release-version V] [--env-file FILE] [--no-access-log]

Every option can come from the environment instead (VF_DSN, VF_PORT, VF_HOST, VF_PIDFILE,
VF_RELEASE_VERSION), or from a KEY=VALUE file (``--env-file``, the app's config file in a
deployed site); VF_LATENCY_MS and VF_ERROR_RATIO set the injected faults at start. Without
a release version given, a RELEASE file beside app.py names it (a release directory of a
site that ``deploy.py`` switches between), else it is v1.

The schema (users, images, audit_log) comes from migrations (migrate.py), never from the app.
Each request opens its own short-lived connection with connect and statement timeouts: there is
no pool whose dead connections would have to be noticed, so while PostgreSQL is down /health
answers 503 and the process keeps serving, and the first request after PostgreSQL is back
succeeds.

Faults (POST/GET/DELETE /admin/faults, loopback clients only) apply to every route except
/admin/* and /metrics, so a broken app can always be repaired and observed:
``latency_ms`` delays each response, ``error_ratio`` makes exactly that share of requests
answer 500 (an accumulator, not a random draw: 0.5 fails every second request, 1.0 all of
them), ``health = "fail"`` makes /health answer 503 whatever the database says.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
import uvicorn
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from psycopg import errors
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

HEALTH_DB_BUDGET_S = 1.0
CONNECT_TIMEOUT_S = 2  # libpq floors connect_timeout to 2 s
STATEMENT_TIMEOUT_MS = 5000
LOCK_TIMEOUT_MS = 2000
FAULT_EXEMPT_PREFIXES = ("/admin/", "/metrics")
KNOWN_PATHS = frozenset({"/", "/health", "/api/users", "/api/images", "/api/stats",
                         "/admin/faults", "/metrics"})
HEALTH_STATES = ("ok", "fail")


@dataclass
class Faults:
    """Injected faults; the error accumulator makes ``error_ratio`` exact rather than random."""

    latency_ms: int = 0
    error_ratio: float = 0.0
    health: str = "ok"
    _owed: float = field(default=0.0, repr=False)

    def should_fail(self) -> bool:
        if self.error_ratio <= 0:
            return False
        self._owed += self.error_ratio
        if self._owed >= 1.0 - 1e-9:
            self._owed -= 1.0
            return True
        return False

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply a partial update; raises ValueError, leaving the faults unchanged, if invalid."""
        unknown = set(changes) - {"latency_ms", "error_ratio", "health"}
        if unknown:
            raise ValueError(f"unknown fault(s): {', '.join(sorted(unknown))}")
        latency = changes.get("latency_ms", self.latency_ms)
        ratio = changes.get("error_ratio", self.error_ratio)
        health = changes.get("health", self.health)
        if isinstance(latency, bool) or not isinstance(latency, int) or latency < 0:
            raise ValueError("latency_ms must be an integer >= 0")
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio <= 1:
            raise ValueError("error_ratio must be a number between 0 and 1")
        if health not in HEALTH_STATES:
            raise ValueError(f"health must be one of {', '.join(HEALTH_STATES)}")
        self.latency_ms, self.error_ratio, self.health = latency, float(ratio), health
        self._owed = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"latency_ms": self.latency_ms, "error_ratio": self.error_ratio,
                "health": self.health}


@dataclass(frozen=True)
class Settings:
    dsn: str
    release_version: str


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("visionforge_http_requests", "HTTP requests answered",
                                ["path", "status"], registry=self.registry)
        self.duration = Histogram("visionforge_http_request_duration_seconds",
                                  "Time to answer an HTTP request", ["path"],
                                  registry=self.registry)


@dataclass
class AppState:
    settings: Settings
    faults: Faults
    metrics: Metrics = field(default_factory=Metrics)


class FaultInjection:
    """Delays and fails requests as the faults say, before the route runs."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or str(scope["path"]).startswith(FAULT_EXEMPT_PREFIXES):
            await self.app(scope, receive, send)
            return
        faults = self.state.faults
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        if faults.should_fail():
            response = JSONResponse({"error": "injected fault"}, status_code=500)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class RequestMetrics:
    """Counts every answer, injected faults included, with a bounded path label."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.metrics = state.metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope["path"]) if scope["path"] in KNOWN_PATHS else "other"
        status = [500]
        started = time.perf_counter()

        async def send_and_note(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.metrics.duration.labels(path).observe(time.perf_counter() - started)
            self.metrics.requests.labels(path, str(status[0])).inc()


def is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


@contextlib.asynccontextmanager
async def connect(settings: Settings,
                  statement_timeout_ms: int = STATEMENT_TIMEOUT_MS,
                  ) -> AsyncIterator[psycopg.AsyncConnection[dict[str, Any]]]:
    conn = await psycopg.AsyncConnection.connect(
        settings.dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
        application_name="visionforge", row_factory=dict_row,
        options=f"-c statement_timeout={statement_timeout_ms} -c lock_timeout={LOCK_TIMEOUT_MS}",
    )
    try:
        yield conn
    finally:
        await conn.close()


async def database_error(settings: Settings) -> str | None:
    """None when the database answers SELECT 1 within the health budget, else why not."""
    try:
        async with asyncio.timeout(HEALTH_DB_BUDGET_S):
            async with connect(settings, int(HEALTH_DB_BUDGET_S * 1000)) as conn:
                await conn.execute("SELECT 1")
    except TimeoutError:
        return f"no answer within {HEALTH_DB_BUDGET_S:g} s"
    except (psycopg.Error, OSError) as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return None


def state_of(request: Request) -> AppState:
    state: AppState = request.app.state.vf
    return state


def jsonable(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


def bad_request(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=400)


async def json_object(request: Request) -> dict[str, Any] | None:
    try:
        body = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def query_int(request: Request, name: str, default: int | None, maximum: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    value = int(raw)  # ValueError is turned into a 400 by the handler
    if not 0 <= value <= maximum:
        raise ValueError(f"{name} must be between 0 and {maximum}")
    return value


async def index(request: Request) -> JSONResponse:
    return JSONResponse({"app": "visionforge",
                         "version": state_of(request).settings.release_version})


async def health(request: Request) -> JSONResponse:
    state = state_of(request)
    problem = await database_error(state.settings)
    body: dict[str, Any] = {"status": "ok", "version": state.settings.release_version,
                            "db": "ok" if problem is None else "error"}
    if problem is not None:
        body.update(status="error", error=problem)
    if state.faults.health == "fail":
        body["status"] = "fail"
    return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)


async def list_users(request: Request) -> JSONResponse:
    limit = query_int(request, "limit", 100, 1000)
    async with connect(state_of(request).settings) as conn:
        cur = await conn.execute(
            "SELECT id, email, name, created_at FROM users ORDER BY id LIMIT %s", (limit,))
        return JSONResponse([jsonable(row) for row in await cur.fetchall()])


async def create_user(request: Request) -> JSONResponse:
    body = await json_object(request)
    if body is None or not all(isinstance(body.get(k), str) and body[k] for k in ("email", "name")):
        return bad_request('expected a JSON object {"email": "...", "name": "..."}')
    try:
        async with connect(state_of(request).settings) as conn, conn.transaction():
            cur = await conn.execute(
                "INSERT INTO users (email, name) VALUES (%s, %s)"
                " RETURNING id, email, name, created_at", (body["email"], body["name"]))
            user = await cur.fetchone()
            assert user is not None
            await audit(conn, user["id"], "user.create", "user", user["id"],
                        {"email": user["email"]})
    except errors.UniqueViolation:
        return JSONResponse({"error": "email already registered"}, status_code=409)
    return JSONResponse(jsonable(user), status_code=201)


async def list_images(request: Request) -> JSONResponse:
    limit = query_int(request, "limit", 100, 1000)
    user_id = query_int(request, "user_id", None, 2**63 - 1)
    async with connect(state_of(request).settings) as conn:
        cur = await conn.execute(
            "SELECT id, user_id, filename, title, content_type, size_bytes, created_at"
            " FROM images WHERE %(user_id)s::bigint IS NULL OR user_id = %(user_id)s"
            " ORDER BY id LIMIT %(limit)s", {"user_id": user_id, "limit": limit})
        return JSONResponse([jsonable(row) for row in await cur.fetchall()])


def image_fields(body: dict[str, Any] | None) -> dict[str, Any] | None:
    if body is None:
        return None
    fields = {"user_id": body.get("user_id"), "filename": body.get("filename"),
              "title": body.get("title"), "content_type": body.get("content_type", "image/jpeg"),
              "size_bytes": body.get("size_bytes", 0)}
    valid = (isinstance(fields["user_id"], int) and isinstance(fields["filename"], str)
             and bool(fields["filename"]) and isinstance(fields["title"], str | None)
             and isinstance(fields["content_type"], str) and isinstance(fields["size_bytes"], int))
    return fields if valid else None


async def create_image(request: Request) -> JSONResponse:
    fields = image_fields(await json_object(request))
    if fields is None:
        return bad_request('expected a JSON object {"user_id": N, "filename": "...", '
                           '"title"?, "content_type"?, "size_bytes"?}')
    try:
        async with connect(state_of(request).settings) as conn, conn.transaction():
            cur = await conn.execute(
                "INSERT INTO images (user_id, filename, title, content_type, size_bytes)"
                " VALUES (%(user_id)s, %(filename)s, %(title)s, %(content_type)s,"
                " %(size_bytes)s)"
                " RETURNING id, user_id, filename, title, content_type, size_bytes, created_at",
                fields)
            image = await cur.fetchone()
            assert image is not None
            await audit(conn, image["user_id"], "image.create", "image", image["id"],
                        {"filename": image["filename"]})
    except errors.ForeignKeyViolation:
        return JSONResponse({"error": "no such user"}, status_code=404)
    except errors.CheckViolation:
        return bad_request("size_bytes must be >= 0")
    return JSONResponse(jsonable(image), status_code=201)


async def audit(conn: psycopg.AsyncConnection[dict[str, Any]], user_id: int, action: str,
                entity: str, entity_id: int, detail: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO audit_log (user_id, action, entity, entity_id, detail)"
        " VALUES (%s, %s, %s, %s, %s)", (user_id, action, entity, entity_id, Jsonb(detail)))


async def stats(request: Request) -> JSONResponse:
    async with connect(state_of(request).settings) as conn:
        cur = await conn.execute(
            "SELECT (SELECT count(*) FROM users) AS users, (SELECT count(*) FROM images) AS images,"
            " (SELECT count(*) FROM audit_log) AS audit_log")
        return JSONResponse(await cur.fetchone())


async def admin_faults(request: Request) -> JSONResponse:
    if not is_loopback(request.client.host if request.client else None):
        return JSONResponse({"error": "admin endpoints answer loopback clients only"},
                            status_code=403)
    faults = state_of(request).faults
    if request.method == "DELETE":
        faults.update({"latency_ms": 0, "error_ratio": 0.0, "health": "ok"})
    elif request.method == "POST":
        body = await json_object(request)
        if body is None:
            return bad_request('expected a JSON object such as {"error_ratio": 0.5}')
        try:
            faults.update(body)
        except ValueError as exc:
            return bad_request(str(exc))
    return JSONResponse(faults.as_dict())


async def metrics(request: Request) -> Response:
    registry = state_of(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


async def on_value_error(request: Request, exc: Exception) -> Response:
    return bad_request(str(exc))


async def on_database_down(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": "database unavailable", "detail": str(exc).strip()},
                        status_code=503)


async def on_database_error(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": "database error", "detail": str(exc).strip()},
                        status_code=500)


def create_app(settings: Settings, faults: Faults | None = None) -> Starlette:
    state = AppState(settings, faults or Faults())
    app = Starlette(
        routes=[
            Route("/", index),
            Route("/health", health),
            Route("/api/users", list_users, methods=["GET"]),
            Route("/api/users", create_user, methods=["POST"]),
            Route("/api/images", list_images, methods=["GET"]),
            Route("/api/images", create_image, methods=["POST"]),
            Route("/api/stats", stats),
            Route("/admin/faults", admin_faults, methods=["GET", "POST", "DELETE"]),
            Route("/metrics", metrics),
        ],
        middleware=[Middleware(RequestMetrics, state=state),
                    Middleware(FaultInjection, state=state)],
        exception_handlers={ValueError: on_value_error,
                            psycopg.OperationalError: on_database_down,
                            psycopg.Error: on_database_error},
    )
    app.state.vf = state
    return app


def write_pidfile(path: Path) -> None:
    # Write then rename, so a reader never sees a half-written pid.
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(f"{os.getpid()}\n")
    tmp.replace(path)


def remove_pidfile(path: Path) -> None:
    # Only our own: a successor started meanwhile may have written its pid there.
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text().strip()) == os.getpid():
            path.unlink()


RELEASE_FILE = "RELEASE"
"""Beside app.py in a release directory: the release's name, the version /health reports."""


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines, as in systemd's EnvironmentFile: blank lines and ``#`` comments
    are skipped, values are taken as written (no quotes, no expansion)."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{path}:{number}: expected KEY=VALUE")
        values[key.strip()] = value.strip()
    return values


def release_of_this_code() -> str | None:
    """The name in the RELEASE file beside this very file (symlinks resolved, so that
    ``current/app.py`` reports the release ``current`` points to), if there is one."""
    try:
        return (Path(__file__).resolve().parent / RELEASE_FILE).read_text().strip() or None
    except OSError:
        return None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--env-file", type=Path)
    given, _ = pre.parse_known_args(argv)
    from_file: dict[str, str] = {}
    if given.env_file is not None:
        try:
            from_file = read_env_file(given.env_file)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            pre.error(f"--env-file: {exc}")

    def env_default(name: str, fallback: str | None = None) -> str | None:
        # The environment wins over the file; the command line wins over both.
        return os.environ.get(name, from_file.get(name, fallback))

    parser = argparse.ArgumentParser(description="VisionForge example app (rollbackd demo).")
    parser.add_argument("--env-file", type=Path,
                        help="read VF_* settings from this KEY=VALUE file (the environment "
                             "wins over it)")
    parser.add_argument("--dsn", default=env_default("VF_DSN"),
                        help="libpq connection string (env VF_DSN)")
    parser.add_argument("--port", type=int, default=int(env_default("VF_PORT", "8080") or 8080),
                        help="TCP port (env VF_PORT, default 8080)")
    parser.add_argument("--host", default=env_default("VF_HOST", "127.0.0.1"),
                        help="address to listen on (env VF_HOST, default 127.0.0.1)")
    parser.add_argument("--pidfile", type=Path, default=env_default("VF_PIDFILE"),
                        help="write the pid here, removed on clean exit (env VF_PIDFILE)")
    parser.add_argument("--release-version",
                        default=env_default("VF_RELEASE_VERSION",
                                            release_of_this_code() or "v1"),
                        help="version reported by /health (env VF_RELEASE_VERSION, else the "
                             "RELEASE file beside app.py, else v1)")
    parser.add_argument("--no-access-log", dest="access_log", action="store_false",
                        help="do not log each request")
    args = parser.parse_args(argv)
    if not args.dsn:
        parser.error("--dsn (or VF_DSN) is required")
    try:
        args.faults = Faults()
        args.faults.update({"latency_ms": int(env_default("VF_LATENCY_MS", "0") or 0),
                            "error_ratio": float(env_default("VF_ERROR_RATIO", "0") or 0)})
    except ValueError as exc:
        parser.error(f"VF_LATENCY_MS / VF_ERROR_RATIO: {exc}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    app = create_app(Settings(args.dsn, args.release_version), args.faults)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port,
                                           access_log=args.access_log, lifespan="off"))
    received: list[int] = []

    def note_signal(signum: int, frame: FrameType | None) -> None:
        # uvicorn shuts down gracefully, restores these handlers and re-raises the signal:
        # noting it here (instead of dying by it) lets the pidfile be removed and exit be 0.
        received.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, note_signal)
    if args.pidfile:
        write_pidfile(args.pidfile)
    try:
        server.run()
    finally:
        if args.pidfile:
            remove_pidfile(args.pidfile)
    return 0 if server.started or received else 1


if __name__ == "__main__":
    sys.exit(main())
