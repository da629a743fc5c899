"""The executor: runs a runbook's steps in order, one journaled step at a time, within the
decision's budget; one run at a time.

Invariants:

* One run at a time: an asyncio lock in the process and ``<state_dir>/runbook.lock`` (flock)
  across processes (the daemon and ``rollbackd rollback``). A second run is refused at once
  (:class:`RunRefusedError`), never queued. The restore step takes the rollback lock
  (``rollback.lock`` and the fleet's advisory lock) itself, as every restore does.
* Every attempt at a step is journaled as begun before its side effect and as ended after it
  (outcome, duration, output excerpt, facts); a step that cannot be journaled as begun is not
  run. A step that would start past the budget's deadline is journaled as failed, not run.
* Bounded retries with backoff (tenacity) for idempotent steps only (``step.retries``).
* A failed step stops the run; a page (template emergency) names the step, its output and
  the state left behind; the run ends ``failed``. A run that ends with the app stopped pages
  too: the app is never left stopped without a page.
* A run cancelled (the daemon stopping) journals the interrupted step and the run as failed,
  and pages, before the cancellation goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from daemon.config import Config
from daemon.db.backups import BackupStore
from daemon.db.restore import SwapRecovery
from daemon.durable import hold_point, holds_at
from daemon.fmt import excerpt
from daemon.journal import Journal, JournalError, Page, Run, RunStatus, RunStep
from daemon.locks import LockError, host_lock
from daemon.logs import get_logger
from daemon.runbooks.context import (
    RunContext,
    RunObserver,
    RunRequest,
    StepError,
    StepReport,
    data_window,
    dedup_key,
    page_facts,
    prepare,
    record_page,
)
from daemon.runbooks.recovery import assess, rebuilt_state, restore_facts
from policies.runbooks import BUILTIN, NoArgs, Runbook, Step
from policies.units import format_duration
from probes.base import one_line

if TYPE_CHECKING:
    from daemon.runbooks.steps import Adapter

RUN_LOCK_FILE = "runbook.lock"
"""Held for a whole run; distinct from ``rollback.lock``, which the restore step takes."""

STEP_GRACE = 15.0
"""Seconds an adapter may take beyond its step's timeout before the executor gives up on it
(its blocking calls are bounded by the timeout themselves; this only catches a hang)."""

BACKOFF = 2.0
MAX_BACKOFF = 30.0


class RunRefusedError(Exception):
    """A run that cannot begin (another one holds the lock, the journal cannot record it)."""


@dataclass(frozen=True, slots=True)
class RunResult:
    """A finished run as the journal has it, its steps, and what it left behind."""

    run: Run
    steps: list[RunStep]
    state: str
    failed_step: int | None
    page: Page | None
    """The failure page (or the page for an app left stopped)."""

    @property
    def ok(self) -> bool:
        return self.run.status == "succeeded"

    def as_json(self) -> dict[str, Any]:
        return {**self.run.as_json(), "state": self.state, "failed_step": self.failed_step,
                "page": None if self.page is None else self.page.as_json(),
                "steps": [s.as_json() for s in self.steps]}

    def describe(self) -> list[str]:
        run = self.run
        lines = [f"run {run.id} of {run.runbook} {run.status}: {run.summary}"]
        for s in self.steps:
            took = "" if s.ended_at is None else f" in {s.ended_at - s.started_at:.1f}s"
            attempt = f" (attempt {s.attempt})" if s.attempt > 1 else ""
            lines.append(f"{s.idx:>3}. {s.kind}{attempt}: {s.outcome or 'unfinished'}{took}"
                         f" - {s.message or ''}")
        if self.page is not None:
            lines.append(f"paged ({self.page.template}): {self.page.summary}")
        return lines


class Executor:
    """Runs runbooks for one app host; see the module docstring for its invariants.

    ``journal`` is used from the event loop's thread only (adapters that need the journal in
    a thread open their own). ``observer`` hears of runs, steps and pages (the metrics).
    ``backoff``: seconds before the first retry (doubling, at most MAX_BACKOFF).
    ``adapters``: the step kinds' adapters (default :data:`daemon.runbooks.steps.ADAPTERS`,
    imported when a run first carries out a step: the daemon goes without them until then).
    """

    def __init__(self, config: Config, journal: Journal, *,
                 observer: RunObserver | None = None, store: BackupStore | None = None,
                 backoff: float = BACKOFF, adapters: Mapping[str, Adapter] | None = None,
                 runbooks: Mapping[str, Runbook] = BUILTIN) -> None:
        self.config = config
        self.runbooks = runbooks
        """What a recovered run may be continued with: the bundled and the policy's own."""
        self.journal = journal
        self.observer = observer
        self.store = store
        self.backoff = backoff
        self.adapters = adapters
        self.log = get_logger().bind(app=config.app_name)
        self._lock = asyncio.Lock()
        self.current: RunContext | None = None

    @property
    def busy(self) -> bool:
        """A run is going on in this process."""
        return self._lock.locked()

    async def run(self, request: RunRequest) -> RunResult:
        """Run ``request``'s runbook to its end; :class:`RunRefusedError` when it cannot begin."""
        if self._lock.locked():
            raise RunRefusedError("another runbook run is going on in this process"
                                  + ("" if self.current is None or self.current.run is None
                                     else f" (run {self.current.run.id})"))
        async with self._lock:
            what = (f"runbook {request.runbook.name}"
                    + ("" if request.incident is None else f" for incident {request.incident}"))
            with self._host_lock(what):
                return await self._run(request)
        raise AssertionError("unreachable")  # pragma: no cover (mypy: the with may swallow)

    def _host_lock(self, what: str) -> contextlib.AbstractContextManager[Any]:
        """``runbook.lock``, or RunRefusedError naming its holder."""
        try:
            held = contextlib.ExitStack()
            held.enter_context(host_lock(self.config.daemon.state_dir, what,
                                         name=RUN_LOCK_FILE, held_by="another runbook run"))
        except LockError as exc:
            raise RunRefusedError(str(exc)) from None
        return held

    async def recover(self, swap: SwapRecovery | None = None) -> list[RunResult]:
        """At start-up: every run the journal has as ``running`` was cut short (this process
        holds the run lock, so no other has it): continue it or abandon it with a page, as
        :mod:`daemon.runbooks.recovery` decides (``swap``: what the start-up recovery of an
        interrupted swap did). Nothing when another process holds the lock (its run is
        live)."""
        if self._lock.locked():
            return []
        async with self._lock:
            try:
                held = self._host_lock("recovery of unfinished runs")
            except RunRefusedError as exc:
                self.log.warning("unfinished runs not recovered: another process runs a "
                                 "runbook", error=str(exc))
                return []
            with held:
                try:
                    unfinished = list(reversed(self.journal.runs(status="running")))
                except JournalError as exc:
                    self.log.error("cannot look for unfinished runs", error=str(exc))
                    return []
                return [await self._recover(run, swap) for run in unfinished]
        raise AssertionError("unreachable")  # pragma: no cover (mypy: the with may swallow)

    def record_refusal(self, request: RunRequest, why: str) -> Page | None:
        """Page that a decision's run could not begin (the lock, a pause, the journal)."""
        t = time.time()
        incident = "-" if request.incident is None else str(request.incident)
        line = (f"{self.config.app_name} incident {incident} ({request.scenario}): "
                f"{request.runbook.name} NOT started: {why}")
        try:
            page = self.journal.add_page(
                self.config.app_name, t=t, incident=request.incident, run=None, level=1,
                template="emergency", summary=line,
                details={"runbook": request.runbook.name, "reason": request.reason,
                         "by": request.by, "refused": why},
                dedup_key=f"{self.config.app_name}/incident-{incident}/refused-{t:.6f}")
        except JournalError as exc:
            self._page_failed(line, exc)
            return None
        if self.observer is not None:
            self.observer.page_recorded("journal", "recorded")
        self.log.warning("page", channel="journal", template="emergency",
                         incident=request.incident, page=page.id, summary=line)
        return page

    # -- one run -----------------------------------------------------------------------------

    async def _run(self, request: RunRequest) -> RunResult:
        ctx = prepare(self.config, self.journal, request, store=self.store,
                      observer=self.observer)
        runbook = request.runbook
        try:
            ctx.run = self.journal.begin_run(
                ctx.app, incident=request.incident, runbook=runbook.name,
                action=request.action, scenario=request.scenario, by=request.by,
                t=ctx.started_at, deadline=ctx.deadline,
                deploy=None if ctx.deploy is None else ctx.deploy.id,
                restore_point=(ctx.manifest.id if ctx.manifest is not None
                               else None if ctx.deploy is None else ctx.deploy.restore_point),
                plan=[s.kind for s in runbook.steps])
        except JournalError as exc:
            raise RunRefusedError(f"cannot journal the run, so it does not begin: {exc}") from None
        self.current = ctx
        run_id = ctx.run.id
        log = self.log.bind(run=run_id, runbook=runbook.name, incident=request.incident)
        log.warning("run started", by=request.by, scenario=request.scenario,
                    deadline=ctx.deadline, deploy=ctx.run.deploy,
                    restore_point=ctx.run.restore_point, plan=list(ctx.run.plan))
        ctx.observer.run_started(runbook.name)
        try:
            return await self._steps(ctx, log)
        finally:
            self.current = None
            ctx.observer.run_ended(runbook.name, self._status(run_id),
                                   time.time() - ctx.started_at)

    async def _recover(self, run: Run, swap: SwapRecovery | None) -> RunResult:
        found = assess(self.journal, run, self.runbooks, swap)
        runbook = found.runbook or Runbook(run.runbook, ())
        request = RunRequest(runbook, run.incident, run.scenario, run.action,
                             f"resumed after a restart: {found.observed}", run.requested_by,
                             run.deadline - run.started_at)
        ctx = prepare(self.config, self.journal, request, store=self.store,
                      observer=self.observer, run=run)
        for part, phrase in rebuilt_state(found):
            ctx.left.set(part, phrase)
        restored = restore_facts(found.restore) or self._completed_restore(run)
        if restored is not None:
            ctx.facts["restore"] = restored
        log = self.log.bind(run=run.id, runbook=run.runbook, incident=run.incident)
        log.warning("recovering an unfinished run", verdict=found.verdict,
                    observed=found.observed, resume_at=found.resume_at)
        cut = found.interrupted
        if cut is not None:
            word = "observed" if found.interrupted_outcome == "ok" else "interrupted"
            report = StepReport(found.interrupted_outcome,
                                f"{word} at start-up after a crash: {found.observed}",
                                details={} if found.restore is None
                                else {"restore": found.restore.id})
            self._end_step(ctx, cut.id, cut.idx, cut.kind, report, time.monotonic())
        if found.verdict == "abandon":
            state = ctx.left.describe()
            line = (f"{_about(ctx)}: {run.runbook} (run {run.id}) was cut short by a crash "
                    f"and is NOT continued: {found.observed}; state left behind: {state}")
            page = self._page(ctx, "emergency", line, {**page_facts(ctx),
                              "observed": found.observed}, dedup_key(ctx, "recovery"))
            ended = self._finish(ctx, "abandoned", f"abandoned at start-up: {found.observed}; "
                                 f"state left behind: {state}")
            log.error("run abandoned", observed=found.observed, state=state)
            return RunResult(ended, self._journal_steps(ctx), state, found.resume_at, page)
        self.current = ctx
        ctx.observer.run_started(run.runbook)
        try:
            return await self._steps(ctx, log, start=found.resume_at,
                                     first_attempt=found.next_attempt)
        finally:
            self.current = None
            ctx.observer.run_ended(run.runbook, self._status(run.id),
                                   time.time() - run.started_at)

    def _completed_restore(self, run: Run) -> dict[str, Any] | None:
        try:
            restores = self.journal.restores(app=run.app, limit=20)
        except JournalError:
            return None
        for r in reversed(restores):
            if r.started_at >= run.started_at and r.completed and (
                    run.incident is None or r.incident == run.incident):
                return restore_facts(r)
        return None

    def _status(self, run_id: int) -> str:
        try:
            run = self.journal.run(run_id)
        except JournalError:
            return "failed"
        return "failed" if run is None or run.status == "running" else run.status

    async def _steps(self, ctx: RunContext, log: Any, *, start: int = 1,
                     first_attempt: int = 1) -> RunResult:
        """Steps ``start``.. of the run (a recovered run carries on where it stopped; its
        first step's attempts are numbered from ``first_attempt``)."""
        assert ctx.run is not None
        failed: tuple[int, Step, StepReport] | None = None
        try:
            for index, step in enumerate(ctx.request.runbook.steps, 1):
                if index < start:
                    continue
                report = await self._step(ctx, index, step,
                                          first_attempt if index == start else 1)
                if report.outcome == "failed":
                    failed = (index, step, report)
                    break
        except asyncio.CancelledError:
            self._interrupted(ctx, log)
            raise
        except Exception as exc:  # a bug in the executor: the run must still end with a page
            log.error("the executor failed", error=one_line(exc, with_type=True),
                      exc_info=(type(exc), exc, exc.__traceback__))
            failed = (0, Step("exec", NoArgs(), 0, 0, False),
                      StepReport("failed", f"the executor failed: {one_line(exc, with_type=True)}"))
        if failed is not None:
            index, step, report = failed
            if step.kind in ("stop_app", "start_app", "wait_healthy"):
                from daemon.runbooks.steps import app_state

                # What a failed stop or start left is for the adapter to tell.
                ctx.left.set("app", await app_state(ctx))
            return self._fail(ctx, log, index, step, report)
        return self._succeed(ctx, log)

    def _fail(self, ctx: RunContext, log: Any, index: int, step: Step,
              report: StepReport) -> RunResult:
        assert ctx.run is not None
        state = ctx.left.describe()
        where = f"step {index} ({step.kind})" if index else "the executor"
        line = (f"{_about(ctx)}: {ctx.request.runbook.name} FAILED at {where}: "
                f"{report.message}; state left behind: {state}")
        page = self._page(ctx, "emergency", line, {
            **page_facts(ctx), "step": index, "kind": step.kind, "message": report.message,
            "output": excerpt(report.output)}, dedup_key(ctx, f"{index}-failed"))
        summary = f"failed at {where}: {report.message}; state left behind: {state}"
        run = self._finish(ctx, "failed", summary)
        log.error("run failed", step=index, kind=step.kind, message=report.message,
                  state=state)
        return RunResult(run, self._journal_steps(ctx), state, index, page)

    def _succeed(self, ctx: RunContext, log: Any) -> RunResult:
        assert ctx.run is not None
        state = ctx.left.describe()
        page = None
        if ctx.left.app_stopped:
            page = self._page(ctx, "emergency", f"{_about(ctx)}: {ctx.request.runbook.name} "
                              f"ended with the app stopped: {state}", page_facts(ctx),
                              dedup_key(ctx, "app-stopped"))
        steps = len(ctx.request.runbook.steps)
        run = self._finish(ctx, "succeeded",
                           f"all {steps} steps done: {state}; {data_window(ctx)}")
        log.warning("run succeeded", state=state, took=round(time.time() - ctx.started_at, 3))
        return RunResult(run, self._journal_steps(ctx), state, None, page)

    def _interrupted(self, ctx: RunContext, log: Any) -> None:
        """Cancelled (the daemon stops): journal it and page, without awaiting anything."""
        state = ctx.left.describe()
        line = (f"{_about(ctx)}: {ctx.request.runbook.name} INTERRUPTED (rollbackd stopped "
                f"during the run); state left behind: {state}")
        self._page(ctx, "emergency", line, page_facts(ctx), dedup_key(ctx, "interrupted"))
        self._finish(ctx, "failed", f"interrupted: rollbackd stopped during the run; state "
                     f"left behind: {state}")
        log.error("run interrupted", state=state)

    def _finish(self, ctx: RunContext, status: RunStatus, summary: str) -> Run:
        assert ctx.run is not None
        try:
            return self.journal.finish_run(ctx.run.id, status, summary, time.time())
        except JournalError as exc:
            self.log.error("cannot journal the end of the run", run=ctx.run.id,
                           status=status, summary=summary, error=str(exc))
            return ctx.run

    def _journal_steps(self, ctx: RunContext) -> list[RunStep]:
        assert ctx.run is not None
        try:
            return self.journal.steps(ctx.run.id)
        except JournalError:
            return []

    def _page(self, ctx: RunContext, template: str, line: str, details: dict[str, Any],
              key: str) -> Page | None:
        try:
            return record_page(ctx, template, line, details, key)
        except JournalError as exc:
            self._page_failed(line, exc)
            return None

    def _page_failed(self, line: str, exc: JournalError) -> None:
        # The last resort: the log line is all a person can find.
        self.log.critical("CANNOT RECORD A PAGE", summary=line, error=str(exc))

    # -- one step ----------------------------------------------------------------------------

    async def _step(self, ctx: RunContext, index: int, step: Step,
                    first_attempt: int = 1) -> StepReport:
        """The step's attempts: retried with backoff while it fails, if it is idempotent."""
        from tenacity import (
            AsyncRetrying,
            RetryCallState,
            retry_if_result,
            stop_after_attempt,
            wait_exponential,
        )

        attempts = first_attempt - 1

        async def attempt() -> StepReport:
            nonlocal attempts
            attempts += 1
            return await self._attempt(ctx, index, step, attempts)

        out_of_attempts = stop_after_attempt(1 + (step.retries if step.idempotent else 0))

        def stop(state: RetryCallState) -> bool:
            return out_of_attempts(state) or time.time() >= ctx.deadline

        def last_report(state: RetryCallState) -> StepReport:
            assert state.outcome is not None
            result: StepReport = state.outcome.result()
            return result

        retrying = AsyncRetrying(
            stop=stop,
            wait=wait_exponential(multiplier=self.backoff, max=MAX_BACKOFF),
            retry=retry_if_result(lambda report: report.outcome == "failed"),
            retry_error_callback=last_report, reraise=True)
        result: StepReport = await retrying(attempt)
        return result

    async def _attempt(self, ctx: RunContext, index: int, step: Step,
                       attempt: int) -> StepReport:
        assert ctx.run is not None
        run_id = ctx.run.id
        now = time.time()
        try:
            step_id = self.journal.begin_step(run_id, index, step.kind, attempt, now)
        except JournalError as exc:
            self.log.error("cannot journal a step as begun; not running it", run=run_id,
                           step=index, kind=step.kind, error=str(exc))
            ctx.observer.step_ended(step.kind, "failed")
            return StepReport("failed", f"not run: it could not be journaled as begun ({exc})")
        started = time.monotonic()
        if now >= ctx.deadline:
            report = StepReport("failed", f"not started: the run's budget of "
                                f"{format_duration(ctx.request.budget)} ran out")
        else:
            try:
                await _hold(f"runbook:{index}:{step.kind}:before")
                report = await self._carry_out(ctx, index, step)
                await _hold(f"runbook:{index}:{step.kind}:after")
            except asyncio.CancelledError:
                self._end_step(ctx, step_id, index, step.kind, StepReport(
                    "failed", "interrupted: rollbackd stopped during the step"), started)
                raise
        self._end_step(ctx, step_id, index, step.kind, report, started)
        return report

    async def _carry_out(self, ctx: RunContext, index: int, step: Step) -> StepReport:
        if self.adapters is None:
            from daemon.runbooks.steps import ADAPTERS

            self.adapters = ADAPTERS
        adapter = self.adapters[step.kind]
        try:
            async with asyncio.timeout(step.timeout + STEP_GRACE):
                return await adapter(ctx, step, index)
        except TimeoutError:
            return StepReport("failed", f"timed out after {format_duration(step.timeout)} "
                              "(work in a thread may still be finishing)")
        except StepError as exc:
            return StepReport("failed", str(exc))
        except JournalError as exc:
            return StepReport("failed", f"the journal failed: {exc}")
        except Exception as exc:
            self.log.error("step failed with an error", step=index, kind=step.kind,
                           error=one_line(exc, with_type=True),
                           exc_info=(type(exc), exc, exc.__traceback__))
            return StepReport("failed", one_line(exc, with_type=True))

    def _end_step(self, ctx: RunContext, step_id: int, index: int, kind: str,
                  report: StepReport, started: float) -> None:
        assert ctx.run is not None
        took = time.monotonic() - started
        details = {**report.details, "duration": round(took, 3)}
        try:
            self.journal.end_step(step_id, report.outcome, report.message,
                                  excerpt(report.output), details, time.time())
        except JournalError as exc:
            self.log.error("cannot journal the end of a step", run=ctx.run.id, step=index,
                           kind=kind, outcome=report.outcome, error=str(exc))
        ctx.observer.step_ended(kind, report.outcome)
        log = self.log.bind(run=ctx.run.id, step=index, kind=kind)
        if report.outcome == "failed":
            log.error("step", outcome=report.outcome, message=report.message,
                      duration=round(took, 3))
        else:
            log.info("step", outcome=report.outcome, message=report.message,
                     duration=round(took, 3))


async def _hold(point: str) -> None:
    """A test's hold point (:func:`daemon.durable.hold_point`), waited for in a thread so that
    the event loop goes on; nothing unless ``ROLLBACKD_TEST_HOLD`` names it."""
    if holds_at(point):
        await asyncio.to_thread(hold_point, point)


def _about(ctx: RunContext) -> str:
    return f"{ctx.app} incident {ctx.incident}" if ctx.incident is not None else ctx.app
