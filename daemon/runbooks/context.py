"""What one run of a runbook knows: the request (which runbook, for which incident, why), the
deploy and its restore point, the budget, and what the run has left behind so far; how an
attempt at a step ended (:class:`StepReport`) and the pages a run records."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from daemon.config import Config, DatabaseSettings, ProcessControl
from daemon.db.backups import BackupError, BackupStore, Manifest
from daemon.fmt import when
from daemon.journal import Deploy, Journal, JournalError, Page, Run, StepOutcome
from daemon.logs import get_logger
from policies.runbooks import Runbook
from policies.schema import replace
from policies.units import Duration

if TYPE_CHECKING:
    from daemon.app.control import AppController
    from daemon.app.result import StepResult

DEFAULT_BUDGET = 3600.0
"""Seconds a run may take when its decision has no timeline (``next release``) or it was
started by hand without an incident."""


class RunObserver(Protocol):
    """What the daemon's metrics hear of runs (the executor knows nothing of Prometheus)."""

    def run_started(self, runbook: str) -> None: ...

    def run_ended(self, runbook: str, status: str, duration: float) -> None: ...

    def step_ended(self, kind: str, outcome: str) -> None: ...

    def page_recorded(self, channel: str, outcome: str) -> None: ...


class NoObserver:
    def run_started(self, runbook: str) -> None:
        return None

    def run_ended(self, runbook: str, status: str, duration: float) -> None:
        return None

    def step_ended(self, kind: str, outcome: str) -> None:
        return None

    def page_recorded(self, channel: str, outcome: str) -> None:
        return None


@dataclass(frozen=True, slots=True)
class RunRequest:
    """Why a runbook runs: the arbiter's decision (or a person's), as the run records it."""

    runbook: Runbook
    incident: int | None
    scenario: str
    action: str
    reason: str
    by: str
    """``rollbackd`` for the daemon's own decision, else the person."""
    timeline_s: float | None = None
    """The decision's timeline: the run's budget (None: DEFAULT_BUDGET)."""

    @property
    def budget(self) -> float:
        return DEFAULT_BUDGET if self.timeline_s is None else float(self.timeline_s)


# The parts of the system a runbook changes, in the order the state is told.
_PARTS = ("app", "database", "code", "config")
_TOUCHES = {
    "stop_app": "app", "start_app": "app", "restore_database": "database",
    "run_down_migration": "database", "rollback_code": "code", "rollback_config": "config",
}
_UNTOUCHED = {"app": "app running (not stopped)", "database": "database not restored",
              "code": "code not rolled back", "config": "config not rolled back"}


@dataclass(slots=True)
class LeftBehind:
    """What the run has done to each part so far, in words: the "state left behind" that a
    failure page states (``app stopped, database restored, code not rolled back``)."""

    parts: dict[str, str] = field(default_factory=dict)
    extra: list[str] = field(default_factory=list)

    @classmethod
    def for_runbook(cls, runbook: Runbook) -> LeftBehind:
        touched = {_TOUCHES[s.kind] for s in runbook.steps if s.kind in _TOUCHES}
        return cls({part: _UNTOUCHED[part] for part in _PARTS if part in touched})

    def set(self, part: str, phrase: str) -> None:
        self.parts[part] = phrase

    def note(self, phrase: str) -> None:
        self.extra.append(phrase)

    def describe(self) -> str:
        phrases = [self.parts[p] for p in _PARTS if p in self.parts] + self.extra
        return ", ".join(phrases) if phrases else "nothing changed"

    @property
    def app_stopped(self) -> bool:
        return self.parts.get("app", "").startswith("app stopped")


@dataclass(slots=True)
class RunContext:
    """One run: the config in force when it began, the journal, the backups, the request, the
    deploy it rolls back and that deploy's restore point, its budget; ``run`` once journaled."""

    config: Config
    journal: Journal
    store: BackupStore
    request: RunRequest
    deploy: Deploy | None
    manifest: Manifest | None
    manifest_problem: str | None
    """Why there is no restore point to use (None when there is one)."""
    started_at: float
    deadline: float
    observer: RunObserver = field(default_factory=NoObserver)
    run: Run | None = None
    left: LeftBehind = field(default_factory=LeftBehind)
    facts: dict[str, Any] = field(default_factory=dict)
    """What steps found that later ones and the completion notice tell (the restore's data
    window and where its data is kept; the restore skipped)."""
    _controller: AppController | None = None

    @property
    def app(self) -> str:
        return self.config.app_name

    @property
    def incident(self) -> int | None:
        return self.request.incident

    @property
    def run_id(self) -> int | None:
        return None if self.run is None else self.run.id

    @property
    def state_dir(self) -> Path:
        return self.config.daemon.state_dir

    @property
    def database(self) -> DatabaseSettings:
        db = self.config.database
        if db is None:
            raise StepError("the config has no [database] section")
        return db

    def restore_point(self) -> Manifest:
        if self.manifest is None:
            raise StepError(self.manifest_problem or "no restore point")
        return self.manifest

    def controller(self) -> AppController:
        """The app's control adapter, one for the whole run (the process adapter reaps the
        children it started)."""
        if self._controller is None:
            self._controller = build_controller(self.config)
        return self._controller

    def remaining(self, now: float | None = None) -> float:
        return self.deadline - (time.time() if now is None else now)


class StepError(Exception):
    """A step that cannot be carried out; ``str()`` is the one line the journal and the page
    say (raised by adapters for what they can tell before any side effect)."""


@dataclass(frozen=True, slots=True)
class StepReport:
    """How one attempt at a step ended."""

    outcome: StepOutcome
    message: str
    output: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, result: StepResult) -> StepReport:
        return cls("ok" if result.ok else "failed", result.message, result.output,
                   dict(result.details))


# -- pages -----------------------------------------------------------------------------------

CHANNEL = "journal"
"""Pages are recorded in the journal until the paging room delivers them."""


def dedup_key(ctx: RunContext, index: int | str) -> str:
    """(app, incident, run, step): a page recorded twice (a retry, a recovered run) is one."""
    incident = "-" if ctx.incident is None else str(ctx.incident)
    return f"{ctx.app}/incident-{incident}/run-{ctx.run_id}/step-{index}"


def record_page(ctx: RunContext, template: str, summary_line: str,
                details: Mapping[str, Any], key: str, *, level: int = 1) -> Page:
    """Record a page in the journal (``JournalError`` when it cannot be) and log it."""
    try:
        page = ctx.journal.add_page(
            ctx.app, t=time.time(), incident=ctx.incident, run=ctx.run_id, level=level,
            template=template, summary=summary_line, details=details, dedup_key=key)
    except JournalError:
        ctx.observer.page_recorded(CHANNEL, "failed")
        raise
    ctx.observer.page_recorded(CHANNEL, "recorded")
    get_logger().bind(app=ctx.app).warning(
        "page", channel=CHANNEL, template=template, incident=ctx.incident, run=ctx.run_id,
        page=page.id, summary=summary_line)
    return page


def page_facts(ctx: RunContext) -> dict[str, Any]:
    """What every page of a run says besides its line: the incident's facts and the state."""
    request = ctx.request
    return {
        "app": ctx.app, "incident": ctx.incident, "scenario": request.scenario,
        "action": request.action, "runbook": request.runbook.name, "run": ctx.run_id,
        "reason": request.reason, "by": request.by,
        "deploy": None if ctx.deploy is None else ctx.deploy.id,
        "version": None if ctx.deploy is None else ctx.deploy.version,
        "restore_point": None if ctx.manifest is None else ctx.manifest.id,
        "state": ctx.left.describe(),
    }


def data_window(ctx: RunContext) -> str:
    """The data the run undid and where it is kept, or that it undid none."""
    restored = ctx.facts.get("restore")
    if restored is None:
        return "no data undone (the database was not restored)"
    return (f"data written from {when(restored['data_window_start'], missing='unknown')} to "
            f"{when(restored['data_window_end'])} undone, kept in {restored['kept_kind']} "
            f"{restored['kept']}")


# -- the run ---------------------------------------------------------------------------------


def build_controller(config: Config, *, grace: float | None = None) -> AppController:
    """``[app].control``'s adapter; ``grace`` replaces the process adapter's stop_timeout."""
    from daemon.app.control import AppController

    app = config.app
    if app is None or app.control is None:
        raise StepError("no [app].control configured: rollbackd cannot stop or start the app")
    control = app.control
    if grace is not None and isinstance(control, ProcessControl):
        control = replace(control, stop_timeout=Duration(grace))
    return AppController.build(control, state_dir=config.daemon.state_dir,
                               finder=config.probes.process)


def prepare(config: Config, journal: Journal, request: RunRequest, *,
            store: BackupStore | None = None, observer: RunObserver | None = None,
            now: float | None = None, run: Run | None = None) -> RunContext:
    """The context of a run about to begin: the app's latest deploy and its restore point
    (either may be missing: the steps that need them fail, naming why). With ``run`` (a run
    recovered after a crash): that run's own deploy, start and deadline."""
    now = time.time() if now is None else now
    if run is not None:
        now = run.started_at
    if store is None:
        db = config.database
        store = BackupStore(config.backups,
                            connect_timeout=db.connect_timeout if db is not None else 5.0)
    deploy: Deploy | None = None
    manifest: Manifest | None = None
    problem: str | None = None
    try:
        if run is None:
            deploy = journal.latest_deploy(config.app_name)
        elif run.deploy is not None:
            deploy = journal.deploy(run.deploy)
    except JournalError as exc:
        problem = f"cannot read the deploy: {exc}"
    if deploy is None:
        problem = problem or f"no deploy of {config.app_name} is journaled: no restore point"
    elif deploy.restore_point is None:
        problem = f"deploy {deploy.id} ({deploy.version}) has no restore point"
    else:
        try:
            manifest = store.get(deploy.restore_point)
        except (BackupError, OSError) as exc:
            problem = (f"the restore point {deploy.restore_point} of deploy {deploy.id} "
                       f"cannot be used: {exc}")
    return RunContext(
        config=config, journal=journal, store=store, request=request, deploy=deploy,
        manifest=manifest, manifest_problem=problem, started_at=now,
        deadline=now + request.budget if run is None else run.deadline,
        observer=observer or NoObserver(), left=LeftBehind.for_runbook(request.runbook),
        run=run)
