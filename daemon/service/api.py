"""The HTTP API: Alertmanager's webhook and the operator's verbs, behind bearer tokens.

Handlers run in the daemon's event loop and write the very journal events the CLI writes;
the main loop hands them to the decision engine at its next cycle, so an answer here means
"recorded", not "acted upon". The operator's verbs import their code (:mod:`daemon.ops`) at
their first request: the daemon goes without it until someone asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, TypeVar

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from daemon.config import Config
from daemon.journal import Journal, JournalError
from daemon.logs import get_logger
from daemon.service.intake import RETRY_AFTER, Intake, IntakeFullError
from daemon.service.metrics import Metrics
from policies.policy import Policy
from policies.schema import Model, SchemaError, convert, where
from policies.units import format_duration

if TYPE_CHECKING:
    from daemon.db.fleet import FleetStatus

Handler = Callable[[Request], Awaitable[Response]]
Body = TypeVar("Body", bound=Model)

DISABLED = ("the API is disabled: list bearer token files in api.token_files "
            "(in the [api] section of the config) to enable it")


class ApiHost(Protocol):
    """What the API needs from the daemon; read per request, so a reload takes effect."""

    config_path: Path
    config: Config
    policy: Policy
    journal: Journal
    metrics: Metrics
    intake: Intake

    @property
    def stopping(self) -> asyncio.Event:
        """Set once the daemon is asked to stop."""
        ...

    def fleet_status(self) -> FleetStatus | None: ...


class ApiError(Exception):
    """A request refused with ``status``; ``reason`` labels rollbackd_api_requests_rejected."""

    def __init__(self, status: int, message: str, reason: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.headers = dict(headers or {})

    def response(self) -> Response:
        return JSONResponse({"error": str(self)}, self.status, headers=self.headers)


# -- request bodies ------------------------------------------------------------------------


class WebhookAlert(Model, forbid_unknown_fields=False):
    """One alert of an Alertmanager notification; fields Alertmanager may add are ignored."""

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    fingerprint: str = ""
    starts_at: str = msgspec.field(default="", name="startsAt")

    def check(self) -> None:
        if not self.labels.get("alertname"):
            raise ValueError("`labels`: alertname is missing")

    def event(self) -> dict[str, Any]:
        """The journal event the decision engine reads (the replay contract's alert event)."""
        return {"type": "alert", "status": self.status, "labels": self.labels,
                "fingerprint": self.fingerprint, "startsAt": self.starts_at}


class AlertmanagerWebhook(Model, forbid_unknown_fields=False):
    """A ``webhook_config`` notification, payload version 4."""

    version: Literal["4"]
    alerts: list[WebhookAlert]
    receiver: str = ""
    truncated_alerts: int = msgspec.field(default=0, name="truncatedAlerts")


_Line = Annotated[str, msgspec.Meta(max_length=1000)]
_Who = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
_RUNBOOK_NAME = re.compile(r"[a-z][a-z0-9_]{0,59}")


def _single_line(**values: str) -> None:
    """A reason or a name goes into one line of the journal, a log and a page."""
    for key, value in values.items():
        if "\r" in value or "\n" in value:
            raise ValueError(f"`{key}`: must be a single line")


# Our own endpoints refuse unknown keys (Model's default): a misspelt key is an error, as in
# the config file.
class PauseBody(Model):
    reason: _Line = ""
    by: _Who = "api"

    def check(self) -> None:
        _single_line(reason=self.reason, by=self.by)


class ResumeBody(Model):
    by: _Who = "api"

    def check(self) -> None:
        _single_line(by=self.by)


class DecisionBody(Model, kw_only=True):
    decision: Literal["immediate_rollback", "planned_rollback", "selective_rollback",
                      "fix_forward", "dismiss", "rollback"]
    """dismiss, fix_forward: close the incident; a rollback kind: start its runbook;
    rollback: the incident's own action's."""
    reason: _Line = ""
    by: _Who  # a decision closes an incident: the record names a person, not "api"
    runbook: str | None = None
    tables: Annotated[list[Annotated[str, msgspec.Meta(max_length=200)]],
                      msgspec.Meta(max_length=100)] = msgspec.field(default_factory=list)
    """With selective_rollback: the tables whose data is restored (checked as names)."""

    def check(self) -> None:
        _single_line(reason=self.reason, by=self.by)
        if self.runbook is not None and not _RUNBOOK_NAME.fullmatch(self.runbook):
            raise ValueError("`runbook`: must be a runbook name: a lowercase letter, then up "
                             "to 59 lowercase letters, digits and _")


class DeployBody(Model):
    """``POST /api/v1/deploys``: a deploy's begin (``version``) or end (``status``)."""

    phase: Literal["begin", "end"]
    version: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    status: Literal["succeeded", "failed"] | None = None
    deploy: Annotated[int, msgspec.Meta(ge=1)] | None = None
    """The deploy to end; by default the app's latest running one."""
    migration: bool = False
    """``status`` is the deploy's migration's: the engine reads a failed one as
    ``migration.failed``, as `rollbackd deploy run` journals it."""
    clone: bool = False
    """A begin's: clone the live database too (`rollbackd deploy begin --clone`)."""

    def check(self) -> None:
        given = {key for key in ("version", "status", "deploy") if getattr(self, key) is not None}
        given |= {key for key in ("migration", "clone") if getattr(self, key)}
        needed, others = (("version", "a deploy's end") if self.phase == "begin"
                          else ("status", "a deploy's begin"))
        if needed not in given:
            raise ValueError(f"`{needed}`: required key is missing")
        begin_only = {"version", "clone"}
        wrong = sorted(given - begin_only if self.phase == "begin" else given & begin_only)
        if wrong:
            raise ValueError(f"`{wrong[0]}`: only {others} has one")
        if self.version is not None:
            _single_line(version=self.version)


def describe_validation(error: SchemaError) -> str:
    """One line naming the first offending field, e.g. ``alerts[0].labels.team: ...``."""
    message = error.message
    # A table is the config file's word; a request's body is JSON.
    if message.startswith("expected a table"):
        message = "must be a JSON object"
    elif message.endswith(", not a table"):
        message = message.removesuffix("a table") + "a JSON object"
    return f"{where(error.keys) or 'body'}: {message}"


# -- the endpoints -------------------------------------------------------------------------


class Api:
    def __init__(self, host: ApiHost) -> None:
        self.host = host
        self.log = get_logger().bind(component="api")
        self._deploying = asyncio.Lock()  # one restore point at a time

    def guarded(self, handler: Handler) -> Handler:
        """Token check first, then the handler; refusals become one-line JSON errors."""

        async def endpoint(request: Request) -> Response:
            try:
                self._authorize(request)
                return await handler(request)
            except ApiError as exc:
                return self._refused(request, exc)
            except JournalError as exc:
                # 5xx: Alertmanager retries, which is what a batch not journaled needs.
                self.log.error("journal unavailable to the API", path=request.url.path,
                               error=str(exc))
                return ApiError(503, f"the journal is unavailable: {exc}").response()

        return endpoint

    def _refused(self, request: Request, exc: ApiError) -> Response:
        if exc.reason is not None:
            self.host.metrics.api_rejected.labels(exc.reason).inc()
            # Per request in a flood (busy): the counter says it; the log stays readable.
            quiet = exc.reason in ("disconnected", "busy")
            log = self.log.debug if quiet else self.log.warning
            log("API request refused", path=request.url.path, status=exc.status,
                             reason=exc.reason, error=str(exc),
                             client=request.client.host if request.client else None)
        return exc.response()

    def _authorize(self, request: Request) -> None:
        tokens = self.host.config.api.tokens
        if not tokens:
            raise ApiError(403, DISABLED, "disabled")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not _matches(given.strip(), tokens):
            raise ApiError(401, "a valid bearer token is required", "unauthorized",
                           {"WWW-Authenticate": "Bearer"})

    async def _read_body(self, request: Request) -> bytes:
        limit = self.host.config.api.max_body
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"body of {declared} bytes is over api.max_body ({limit} bytes)",
                           "too_large")
        # Without a Content-Length (chunked), count while reading: never buffer past the limit.
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise ApiError(413, f"body is over api.max_body ({limit} bytes)",
                                   "too_large")
        except ClientDisconnect:
            # Nobody is left to answer; nothing was recorded. Not an error of ours.
            raise ApiError(400, "the client went away before sending the whole body",
                           "disconnected") from None
        return bytes(body)

    async def _parse(self, request: Request, model: type[Body]) -> Body:
        raw = await self._read_body(request)
        try:
            data = json.loads(raw) if raw.strip() else {}
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
            raise ApiError(400, f"body is not JSON: {exc}", "invalid") from None
        except RecursionError:
            raise ApiError(400, "body is nested too deeply", "invalid") from None
        try:
            return convert(data, model)
        except RecursionError:
            raise ApiError(400, "body is nested too deeply", "invalid") from None
        except SchemaError as exc:
            raise ApiError(400, describe_validation(exc), "invalid") from None

    async def alertmanager(self, request: Request) -> Response:
        hook = await self._parse(request, AlertmanagerWebhook)
        try:
            # 200 only once journaled; the commit is shared with the requests waiting with it.
            await self.host.intake.record(time.time(), [alert.event() for alert in hook.alerts])
        except IntakeFullError as exc:
            raise ApiError(503, f"too many notifications wait for the journal: {exc}; retry",
                           "busy", {"Retry-After": str(RETRY_AFTER)}) from None
        for alert in hook.alerts:
            self.host.metrics.alerts_received.labels(alert.status).inc()
        if hook.truncated_alerts:
            self.log.warning("Alertmanager left alerts out of a notification; raise max_alerts",
                             receiver=hook.receiver, truncated=hook.truncated_alerts)
        self.log.info("alerts received", receiver=hook.receiver, alerts=len(hook.alerts),
                      firing=sum(a.status == "firing" for a in hook.alerts))
        return JSONResponse({"accepted": len(hook.alerts)})

    async def status(self, _: Request) -> Response:
        from daemon.ops.operator import gather_status

        return JSONResponse(gather_status(self.host.config, self.host.journal,
                                          fleet=self.host.fleet_status()).as_json())

    async def incidents(self, _: Request) -> Response:
        return JSONResponse([row.as_json() for row in self.host.journal.incidents()])

    async def incident(self, request: Request) -> Response:
        number = _incident_number(request)
        decisions = self.host.journal.decisions(limit=1000, incident=number)
        if not decisions:
            raise ApiError(404, f"no incident {number} in the journal")
        state = "resolved" if decisions[-1].kind == "resolve" else "open"
        restores = reversed(self.host.journal.restores(incident=number))
        return JSONResponse({"incident": number, "state": state,
                             "decisions": [d.as_json() for d in decisions],
                             "restores": [r.as_json() for r in restores]})

    async def report(self, request: Request) -> Response:
        """The incident's report (``?format=json``, the default, or ``md``), made again first
        when missing or stale: the journal is read here, in the loop; the rest (databases
        compared for the data window, files written) in a worker thread."""
        # Imported on the first request: reports are asked for after an incident, and the daemon
        # should not carry their code (about 1.5 MB) until then.
        from daemon.ops.operator import DecisionError
        from daemon.ops.reports import report_facts
        from daemon.runbooks.reports import current_report

        number = _incident_number(request)
        form = request.query_params.get("format", "json")
        if form not in ("json", "md"):
            raise ApiError(400, "format: must be json or md", "invalid")
        try:
            facts = report_facts(self.host.journal, number)
        except DecisionError as exc:
            raise ApiError(404, str(exc)) from None
        current = await run_in_threadpool(current_report, self.host.config, facts)
        if current.write_error is not None:
            self.log.warning("incident report made but not saved", incident=number,
                             error=current.write_error)
        if form == "md":
            return PlainTextResponse(current.report.markdown(),
                                     media_type="text/markdown; charset=utf-8")
        return JSONResponse(current.report.data)

    async def pause(self, request: Request) -> Response:
        from daemon.ops.operator import record_pause

        body = await self._parse(request, PauseBody)
        record_pause(self.host.journal, body.by, body.reason)
        self.log.warning("pause requested through the API", by=body.by, reason=body.reason)
        return _accepted({"paused": True, "by": body.by, "reason": body.reason})

    async def resume(self, request: Request) -> Response:
        from daemon.ops.operator import record_resume

        body = await self._parse(request, ResumeBody)
        record_resume(self.host.journal, body.by)
        self.log.warning("resume requested through the API", by=body.by)
        return _accepted({"paused": False, "by": body.by})

    async def decide(self, request: Request) -> Response:
        """202 with what the journal tells now of the executor's checks (``guards``): the
        decision is recorded whatever they say; the executor checks again and journals a
        refusal as a page."""
        from daemon.ops.operator import DecisionError, record_decision

        number = _incident_number(request)
        body = await self._parse(request, DecisionBody)
        try:
            recorded = record_decision(
                self.host.journal, number, body.decision, body.reason, body.by, body.runbook,
                tables=body.tables, policy=self.host.policy, app=self.host.config.app_name)
        except DecisionError as exc:
            status = 400 if exc.usage else 404 if exc.missing else 409
            raise ApiError(status, str(exc), "invalid" if exc.usage else None) from None
        self.log.warning("decision recorded through the API", incident=number,
                         decision=body.decision, by=body.by, reason=body.reason,
                         runbook=recorded.runbook, tables=list(recorded.tables),
                         warnings=recorded.warnings())
        return _accepted(recorded.as_json())


    async def deploys(self, request: Request) -> Response:
        """A deploy's begin answers once its restore point is taken and verified (as long as
        `rollbackd deploy begin` takes: the pipeline must not go on before), one at a time;
        its end at once."""
        from daemon.ops.common import OpsError
        from daemon.ops.deploys import end_deploy

        body = await self._parse(request, DeployBody)
        config = self.host.config
        if config.database is None:
            raise ApiError(409, "no [database] in the config: a deploy's restore point is a "
                                "backup of it")
        if body.phase == "end":
            assert body.status is not None  # DeployBody.check
            try:
                ended = await run_in_threadpool(lambda: end_deploy(
                    config, str(body.status), body.deploy, migration=body.migration))
            except OpsError as exc:
                raise ApiError(409, str(exc)) from None
            self.log.info("deploy ended through the API", deploy=ended.deploy.id,
                          status=ended.deploy.status, migration=body.migration)
            return JSONResponse(ended.as_json())
        if self._deploying.locked():
            raise ApiError(409, "a deploy is being begun already: its restore point is being "
                                "taken; retry when it answers")
        async with self._deploying:
            started, warnings = await self._begin_deploy(str(body.version), body.clone)
        self.log.info("deploy begun through the API", deploy=started["deploy"],
                      version=started["version"], restore_point=started["restore_point"],
                      warnings=warnings)
        return JSONResponse({**started, "warnings": warnings}, 201)

    async def _begin_deploy(self, version: str, clone: bool) -> tuple[dict[str, Any], list[str]]:
        """`rollbackd deploy begin --json` as a child in its own process group: what it says,
        and its warnings. A child, not a thread: a stop of the daemon ends it, pg_dump
        included, where a thread would hold the daemon until the backup is done."""
        argv = [sys.executable, "-m", "daemon", "--config", str(self.host.config_path),
                "deploy", "begin", "--version", version, "--json",
                *(["--clone"] if clone else [])]
        child = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
        # A backup and its verification, each bounded by backups.timeout, then the clone.
        bound = 2 * self.host.config.backups.timeout + 300
        talk = asyncio.ensure_future(child.communicate())
        stop = asyncio.ensure_future(self.host.stopping.wait())
        cut = True
        try:
            await asyncio.wait({talk, stop}, timeout=bound,
                               return_when=asyncio.FIRST_COMPLETED)
            cut = not talk.done()
        finally:  # cut short, or cancelled: nothing may outlive the request
            stop.cancel()
            if cut:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                await child.wait()
                talk.cancel()
        if cut and self.host.stopping.is_set():
            raise ApiError(503, "rollbackd is stopping: the restore point was not taken and no "
                                "deploy was recorded; begin again once it runs")
        if cut:
            raise ApiError(500, f"rollbackd deploy begin took longer than "
                                f"{format_duration(bound)}: stopped; no deploy was recorded")
        out, err = talk.result()
        lines = [line.removeprefix("rollbackd: ") for line in
                 err.decode("utf-8", "replace").splitlines() if line.strip()]
        if child.returncode != 0:
            raise ApiError(500, lines[-1] if lines else
                           f"rollbackd deploy begin exited with {child.returncode}")
        return json.loads(out), [line.removeprefix("warning: ") for line in lines
                                 if line.startswith("warning: ")]


class AckBody(Model):
    by: _Who  # an acknowledgement stops escalation: the record names a person
    comment: _Line = ""

    def check(self) -> None:
        _single_line(by=self.by, comment=self.comment)


class AckEndpoint:
    """``POST /api/v1/incidents/{id}/ack``: a person has seen the incident's pages."""

    def __init__(self, api: Api) -> None:
        self.api = api

    async def __call__(self, request: Request) -> Response:
        from daemon.ops.paging import AckError, acknowledge

        number = _incident_number(request)
        body = await self.api._parse(request, AckBody)
        try:
            done = acknowledge(self.api.host.journal, number, body.by, "api", body.comment)
        except AckError as exc:
            raise ApiError(404 if exc.missing else 409, str(exc)) from None
        self.api.log.warning("incident acknowledged through the API", incident=number,
                             by=body.by)
        return _accepted(done.as_json())


def _incident_number(request: Request) -> int:
    number: int = request.path_params["incident"]
    # SQLite integers are 64-bit: a bigger number cannot name an incident.
    if not 0 < number < 2**63:
        raise ApiError(404, f"no incident {number} in the journal")
    return number


def _accepted(content: dict[str, Any]) -> Response:
    # Recorded now, applied by the main loop at its next cycle.
    return JSONResponse({**content, "applies": "at the next cycle"}, 202)


def _matches(given: str, tokens: tuple[str, ...]) -> bool:
    """Constant-time comparison against every token, without stopping at the first match."""
    offered = given.encode("latin-1", "replace")
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(offered, token.encode("ascii"))
    return matched


def api_routes(host: ApiHost) -> list[BaseRoute]:
    api = Api(host)
    guarded = api.guarded
    return [
        Route("/api/v1/alertmanager", guarded(api.alertmanager), methods=["POST"]),
        Route("/api/v1/status", guarded(api.status), methods=["GET"]),
        Route("/api/v1/incidents", guarded(api.incidents), methods=["GET"]),
        Route("/api/v1/incidents/{incident:int}", guarded(api.incident), methods=["GET"]),
        Route("/api/v1/incidents/{incident:int}/report", guarded(api.report), methods=["GET"]),
        Route("/api/v1/incidents/{incident:int}/decision", guarded(api.decide),
              methods=["POST"]),
        Route("/api/v1/incidents/{incident:int}/ack", guarded(AckEndpoint(api)),
              methods=["POST"]),
        Route("/api/v1/deploys", guarded(api.deploys), methods=["POST"]),
        Route("/api/v1/pause", guarded(api.pause), methods=["POST"]),
        Route("/api/v1/resume", guarded(api.resume), methods=["POST"]),
    ]
