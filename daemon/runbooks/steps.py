"""Step adapters: one function per step kind, carrying out one attempt of a step.

Each takes the run's :class:`~daemon.runbooks.context.RunContext`, the step and its index and
returns a :class:`StepReport` (``ok``, ``failed`` or ``skipped``, one line, the output's last
lines, facts for the journal). Blocking work (subprocesses, PostgreSQL, files) runs in a
thread through :func:`blocking`, bounded by the step's timeout; the functions it calls bound
their own waits too. An adapter raises :class:`~daemon.runbooks.context.StepError` for what
it can tell before any side effect; the executor turns that, a timeout and any other error
into a failed attempt. The executor journals each attempt as begun before the adapter runs
and as ended after: adapters themselves never journal steps (a restore journals itself in
the ``restores`` table, linked to the incident).

Paging: ``notify`` and ``page`` record a page in the journal (channel ``journal``), once per
dedup key (app, incident, run, step); delivery to people is the paging room's (a later issue).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import httpx

from daemon.app.code import roll_back_code
from daemon.app.config_files import restore_config_files
from daemon.db.admin import RestoreError, RestoreOptions
from daemon.db.backups import BackupError, Manifest
from daemon.db.migrations import MigrationVersionError, live_version
from daemon.db.restore.clone import clone_problem
from daemon.db.restore.journaled import WholeStrategy, journaled_restore
from daemon.db.restore.schema import run_down_migration, schema_diff
from daemon.db.validate import CheckResult, failures, summary, validate_data, validate_database
from daemon.fmt import excerpt, when
from daemon.journal import Journal
from daemon.proc import run_command
from daemon.runbooks.context import (
    CHANNEL,
    RunContext,
    StepError,
    StepReport,
    build_controller,
    data_window,
    dedup_key,
    page_facts,
    record_page,
)
from policies.runbooks import (
    CommandArgs,
    NotifyArgs,
    PageArgs,
    RestoreArgs,
    RestoreStrategy,
    Step,
    StopArgs,
    ValidateArgs,
)
from policies.units import format_duration
from probes.base import one_line

T = TypeVar("T")

POLL = 0.5
"""Seconds between two looks at the app while waiting for it to answer."""

UNCHANGED = "database unchanged; code and configuration rolled back"


Adapter = Callable[[RunContext, Step, int], Awaitable[StepReport]]


async def blocking(work: Callable[[], T], seconds: float) -> T:
    """``work()`` in a thread, waited for at most ``seconds`` (``TimeoutError``).

    A thread cannot be stopped: the functions called here bound their own waits by the same
    timeout, so the thread ends about when the wait does.
    """
    return await asyncio.wait_for(asyncio.to_thread(work), timeout=max(seconds, 0.001))


# -- pages -----------------------------------------------------------------------------------


def render(ctx: RunContext, template: str) -> str:
    """A page's line from the incident's facts, per template."""
    r = ctx.request
    about = f"{ctx.app} incident {ctx.incident}" if ctx.incident is not None else ctx.app
    if template == "emergency":
        return (f"EMERGENCY {about} ({r.scenario}): {r.runbook.name} started by {r.by}; "
                f"{r.reason}")
    if template == "planned":
        return (f"{about} ({r.scenario}): planned rollback {r.runbook.name} starting; the app "
                f"will be stopped; {r.reason}")
    if template == "decision":
        return f"{about} ({r.scenario}) needs a decision: {r.reason}"
    if template == "completion":
        took = format_duration(round(time.time() - ctx.started_at))
        return (f"{about}: {r.runbook.name} completed in {took}; services affected: "
                f"{ctx.app}; {data_window(ctx)}; {ctx.left.describe()}")
    return f"{about}: {r.runbook.name} in progress: {ctx.left.describe()}"


async def notify(ctx: RunContext, step: Step, index: int) -> StepReport:
    args = step.args
    assert isinstance(args, NotifyArgs | PageArgs)
    line = render(ctx, args.template)
    page = record_page(ctx, args.template, line, page_facts(ctx), dedup_key(ctx, index))
    return StepReport("ok", f"{args.template} page {page.id} recorded (channel {CHANNEL})",
                      details={"page": page.id, "template": args.template, "channel": CHANNEL,
                               "summary": line})


# -- checklists ------------------------------------------------------------------------------


def _results(results: Sequence[CheckResult]) -> list[dict[str, Any]]:
    return [r.as_json() for r in results]


def _check_database(ctx: RunContext, timeout: float) -> list[CheckResult]:
    db = ctx.database
    return validate_database(db.dsn, expected_tables=db.expected_tables, checks=db.checks,
                             timeout=min(timeout, 60.0), connect_timeout=db.connect_timeout)


def _check_data(ctx: RunContext, manifest: Manifest, timeout: float, *,
                with_checks: bool = True) -> list[CheckResult]:
    """The data checklist: the configured SQL checks (unless ``with_checks`` is false: the
    database checklist ran them already) and the key tables' row counts."""
    db = ctx.database
    return validate_data(db.dsn, manifest, db.key_tables,
                         checks=db.checks if with_checks else (),
                         timeout=min(timeout, 60.0), connect_timeout=db.connect_timeout)


async def assess(ctx: RunContext, step: Step, index: int) -> StepReport:
    """Record what the validators say of the live database now; never fails the run."""
    details: dict[str, Any] = {}
    lines: list[str] = []
    deadline = time.monotonic() + step.timeout  # both checklists share the step's timeout
    try:
        database = await blocking(lambda: _check_database(ctx, step.timeout), step.timeout)
        details["database"] = _results(database)
        lines.append(f"database: {summary(database)}")
        if ctx.manifest is not None:
            manifest, left = ctx.manifest, max(deadline - time.monotonic(), 1.0)
            data = await blocking(lambda: _check_data(ctx, manifest, left), left)
            details["data"] = _results(data)
            lines.append(f"data: {summary(data)}")
    except (TimeoutError, StepError) as exc:
        lines.append(f"the assessment could not finish: {exc or 'timed out'}")
    return StepReport("ok", "; ".join(lines), "\n".join(lines), details)


async def validate(ctx: RunContext, step: Step, index: int) -> StepReport:
    args = step.args
    assert isinstance(args, ValidateArgs)
    if args.checklist == "application":
        return await _answering(ctx, step.timeout, "the application")
    if args.checklist == "database":
        results = await blocking(lambda: _check_database(ctx, step.timeout), step.timeout)
    else:
        manifest = ctx.restore_point()
        results = await blocking(lambda: _check_data(ctx, manifest, step.timeout),
                                 step.timeout)
    failed = failures(results)
    text = summary(results)
    return StepReport("failed" if failed else "ok", f"{args.checklist}: {text}", text,
                      {"checks": _results(results)})


async def _answering(ctx: RunContext, within: float, what: str,
                     running: Callable[[], bool | None] | None = None) -> StepReport:
    """Poll the ``[[probes.http]]`` URLs (and ``running``) until all answer 2xx (or the
    statuses the probe expects), at most ``within`` seconds."""
    probes = ctx.config.probes.http
    if not probes and running is None:
        return StepReport("skipped", f"no [[probes.http]] configured: {what} is not checked")
    deadline = time.monotonic() + within
    last: dict[str, str] = {}
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as client:
        while True:
            last = {}
            if running is not None:
                runs = await blocking(running, max(deadline - time.monotonic(), 1.0))
                if runs is False:
                    last["process"] = "not running"
            for probe in probes:
                url = str(probe.url)
                try:
                    answer = await client.request(
                        probe.method, url, headers=probe.header_values(), content=probe.body,
                        timeout=min(float(probe.timeout), max(deadline - time.monotonic(),
                                                               0.1)),
                        follow_redirects=probe.follow_redirects)
                    good = (200 <= answer.status_code < 300 if probe.expect_status is None
                            else probe.status_expected(answer.status_code))
                    if not good:
                        last[probe.name] = f"{url} answered {answer.status_code}"
                except httpx.HTTPError as exc:
                    last[probe.name] = f"{url}: {one_line(exc, with_type=True)}"
            if not last:
                names = ", ".join(p.name for p in probes) or "the process"
                return StepReport("ok", f"{what} answers ({names})",
                                  details={"probes": [p.name for p in probes]})
            if time.monotonic() + POLL >= deadline:
                problems = "; ".join(f"{k}: {v}" for k, v in last.items())
                return StepReport("failed", f"{what} did not answer within "
                                  f"{format_duration(within)}: {problems}",
                                  details={"problems": last})
            await asyncio.sleep(POLL)


async def wait_healthy(ctx: RunContext, step: Step, index: int) -> StepReport:
    """The app's process runs (when its adapter can tell) and its HTTP probes answer."""
    controller = ctx.controller()
    return await _answering(ctx, step.timeout, "the app", running=controller.is_running)


# -- the app ---------------------------------------------------------------------------------


async def stop_app(ctx: RunContext, step: Step, index: int) -> StepReport:
    args = step.args
    assert isinstance(args, StopArgs)
    # The step's own grace, when it gives one, replaces the process adapter's stop_timeout.
    grace = args.grace
    controller = (ctx.controller() if grace is None
                  else build_controller(ctx.config, grace=float(grace)))
    result = await blocking(lambda: controller.stop(args.force, step.timeout), step.timeout + 5)
    if result.ok:
        ctx.left.set("app", "app stopped")
    return StepReport.of(result)


async def start_app(ctx: RunContext, step: Step, index: int) -> StepReport:
    controller = ctx.controller()
    result = await blocking(lambda: controller.start(step.timeout), step.timeout + 5)
    if result.ok:
        ctx.left.set("app", "app running (started again)")
    return StepReport.of(result)


async def app_state(ctx: RunContext) -> str:
    """The app's state in words, asked of its adapter (after a stop or start failed)."""
    try:
        controller = ctx.controller()
        running = await blocking(controller.is_running, 20.0)
    except (StepError, TimeoutError):
        running = None
    if running is None:
        return "app state unknown (its adapter cannot tell)"
    return "app running" if running else "app stopped"


# -- code and configuration --------------------------------------------------------------------


async def rollback_code(ctx: RunContext, step: Step, index: int) -> StepReport:
    code = ctx.config.app.code if ctx.config.app is not None else None
    if code is None:
        ctx.left.set("code", "code left as it is (no [app].code)")
        return StepReport("skipped", "no [app].code configured: the code is left as it is")
    manifest = ctx.restore_point()
    target = manifest.code_version
    if target is None:
        raise StepError(f"the restore point {manifest.id} recorded no code version")
    result = await blocking(lambda: roll_back_code(code, target, timeout=step.timeout),
                            step.timeout + 5)
    ctx.left.set("code", f"code rolled back to {target[:12]}" if result.ok
                 else f"code rollback to {target[:12]} failed")
    return StepReport.of(result)


async def rollback_config(ctx: RunContext, step: Step, index: int) -> StepReport:
    manifest = ctx.restore_point()
    if not manifest.config:
        ctx.left.set("config", "config left as it is (the restore point holds none)")
        return StepReport("skipped", f"the restore point {manifest.id} holds no config files")
    backup_dir = ctx.store.path(manifest.id)
    result = await blocking(
        lambda: restore_config_files(backup_dir, manifest.id, manifest.config), step.timeout)
    ctx.left.set("config", "config rolled back" if result.ok else "config rollback failed "
                 "(see the step's message for the files changed)")
    return StepReport.of(result)


# -- the database ----------------------------------------------------------------------------


async def safety_backup(ctx: RunContext, step: Step, index: int) -> StepReport:
    db = ctx.database
    store = ctx.store

    def take() -> StepReport:
        try:
            manifest = store.create(db.dsn, "safety", migrations=db.migrations)
            verification = store.verify(manifest.id)
        except BackupError as exc:
            return StepReport("failed", f"safety backup failed: {exc}")
        details = {"backup": manifest.id, "verified": verification.ok, "size": manifest.size}
        if not verification.ok:
            return StepReport("failed", f"safety backup {manifest.id} failed verification: "
                              f"{verification.reason}", details=details)
        return StepReport("ok", f"safety backup {manifest.id} taken and verified",
                          details=details)

    report = await blocking(take, step.timeout)
    if report.outcome == "ok":
        ctx.left.note(f"safety backup {report.details['backup']} taken")
        ctx.facts["safety_backup"] = report.details["backup"]
    return report


def database_unchanged(ctx: RunContext, manifest: Manifest, timeout: float,
                       ) -> tuple[bool, str, dict[str, Any]]:
    """Whether the live database's schema and migration version equal the restore point's
    (a failed migration that PostgreSQL rolled back, DDL being transactional), and it passes
    the database and data checklists. Anything that cannot be told counts as changed: the
    restore then runs, keeping the current data."""
    db = ctx.database
    try:
        diff = schema_diff(db.dsn, manifest, ctx.store, timeout=timeout,
                           connect_timeout=db.connect_timeout)
    except RestoreError as exc:
        return False, f"the schema could not be compared ({exc})", {}
    if not diff.identical:
        changed = sum(1 for line in diff.diff if line[:1] in "+-"
                      and not line.startswith(("+++", "---")))
        return False, f"the schema differs from the restore point's ({changed} lines)", {
            "schema_diff": diff.diff[:200]}
    if db.migrations is None:
        return False, ("the schema is the restore point's, but no migration tool is "
                       "configured to compare versions with"), {"schema": "identical"}
    if manifest.migration_version is None:
        return False, (f"the schema is the restore point's, but {manifest.id} recorded no "
                       "migration version to compare with"), {"schema": "identical"}
    try:
        live = live_version(db.dsn, db.migrations, connect_timeout=db.connect_timeout,
                            timeout=min(timeout, 60.0))
    except MigrationVersionError as exc:
        return False, f"the migration version could not be read ({exc})", {"schema": "identical"}
    facts = {"schema": "identical", "migration_version": live,
             "restore_point_migration_version": manifest.migration_version}
    if live != manifest.migration_version:
        return False, (f"the migration version is {live}, the restore point's "
                       f"{manifest.migration_version}"), facts
    # pg_dump leaves out what a failed non-transactional migration may leave behind (an
    # invalid index of CREATE INDEX CONCURRENTLY): the database checklist sees it.
    failed = failures(_check_database(ctx, timeout))
    if failed:
        return False, f"the schema dump is the restore point's, but {summary(failed)}", facts
    # Nor does the schema see a data migration that failed after deleting rows: the key
    # tables must hold at least the restore point's rows, or the restore runs (what is left
    # is kept aside) instead of the loss going unnoticed.
    failed = failures(_check_data(ctx, manifest, timeout, with_checks=False)
                      ) if db.key_tables else []
    if failed:
        return False, (f"the schema and migration version are the restore point's, but "
                       f"{summary(failed)}"), facts
    return True, (f"schema and migration version {live} equal the restore point's, the "
                  "database passes its checks and the key tables hold the restore point's "
                  "rows"), facts


async def restore_database(ctx: RunContext, step: Step, index: int) -> StepReport:
    args = step.args
    assert isinstance(args, RestoreArgs)
    manifest = ctx.restore_point()
    if ctx.incident is not None:
        earlier = ctx.journal.restores(incident=ctx.incident)
        unfinished = [r for r in earlier if r.status in ("running", "interrupted")]
        if unfinished:
            r = unfinished[0]
            ctx.left.set("database", f"database state uncertain (restore {r.id} {r.status})")
            raise StepError(
                f"restore {r.id} of incident {ctx.incident} is {r.status}: look at the "
                f"database before anything restores it again ({r.describe()})")
        done = [r for r in earlier if r.completed]
        if done:
            r = done[0]
            ctx.left.set("database", f"database already restored (restore {r.id})")
            ctx.facts["restore"] = {"restore": r.id, "kept": r.kept, "kept_kind": r.kept_kind,
                                    "data_window_start": r.data_window_start,
                                    "data_window_end": r.data_window_end}
            return StepReport("skipped", f"the database was already restored for incident "
                              f"{ctx.incident} ({r.describe()}); never twice for one incident",
                              details={"restore": r.id})
    facts: dict[str, Any] = {}
    if args.skip_unchanged and not args.tables:
        unchanged, why, facts = await blocking(
            lambda: database_unchanged(ctx, manifest, step.timeout), step.timeout)
        if unchanged:
            ctx.left.set("database", "database unchanged (not restored)")
            ctx.facts["restore_skipped"] = why
            return StepReport("skipped", UNCHANGED, why, {**facts, "reason": why})
        facts["restore_because"] = why
    try:
        options = RestoreOptions.from_config(ctx.config)
    except RestoreError as exc:
        raise StepError(str(exc)) from None
    tables = list(args.tables)
    strategy, source = await _whole_strategy(ctx, args.strategy, options, manifest, facts,
                                             step.timeout) if not tables else ("swap", manifest.id)
    by = ctx.request.by if ctx.run_id is None else f"{ctx.request.by} (run {ctx.run_id})"
    state_dir, app, store, incident = ctx.state_dir, ctx.app, ctx.store, ctx.incident

    def restore() -> StepReport:
        # The journal's connection belongs to the event loop's thread: this one opens its own.
        journal = Journal.in_state_dir(state_dir)
        try:
            done = journaled_restore(journal, app, store, options, source, strategy,
                                     tables, by=by, incident=incident, close_incident=False)
        except RestoreError as exc:
            return StepReport("failed", f"restore of {source} failed: {exc}",
                              details={**facts, "strategy": strategy})
        finally:
            journal.close()
        report = done.report
        details = {**facts, "restore": done.record.id, **report.as_json()}
        if not report.ok:
            return StepReport("failed", f"restored {source} ({strategy}), but the database "
                              f"failed validation: {summary(report.validation)}",
                              excerpt("\n".join(report.describe())), details)
        return StepReport("ok", f"restored {source} by {report.strategy}; the data since "
                          f"{when(report.data_window_start, missing='unknown')} is kept in "
                          f"{report.kept_kind} {report.kept}",
                          excerpt("\n".join(report.describe())), details)

    ctx.left.set("database", f"database restore from {source} under way")
    result = await blocking(restore, step.timeout)
    if result.outcome == "ok" or "restore" in result.details:
        ctx.facts["restore"] = {k: result.details.get(k) for k in (
            "restore", "kept", "kept_kind", "data_window_start", "data_window_end")}
        ctx.left.set("database", f"database restored (the data it replaced kept in "
                     f"{result.details.get('kept_kind')} {result.details.get('kept')})"
                     + ("" if result.outcome == "ok" else " but failing validation"))
    else:
        ctx.left.set("database", "database not restored (the restore failed; see its "
                     "message for what it left)")
    return result


async def _whole_strategy(ctx: RunContext, given: RestoreStrategy, options: RestoreOptions,
                          manifest: Manifest, facts: dict[str, Any], bound: float,
                          ) -> tuple[WholeStrategy, str]:
    """How the whole database is restored, and from what: the deploy's clone (``clone``, and
    ``auto`` when the deploy has one that is still there: a rename, in seconds), else the
    restore point (``swap``, ``in_place``, ``auto`` without a usable clone)."""
    if given in ("swap", "in_place"):
        return ("swap" if given == "swap" else "in_place"), manifest.id
    clone = None if ctx.deploy is None else ctx.deploy.clone
    if clone is None:
        if given == "clone":
            deploy = None if ctx.deploy is None else ctx.deploy.id
            raise StepError(f"strategy clone: deploy {deploy} has no clone (rollbackd deploy "
                            "begin --clone takes one); use auto or swap")
        return "swap", manifest.id
    try:
        problem = await blocking(lambda: clone_problem(options, clone), bound)
    except RestoreError as exc:
        raise StepError(f"cannot look at the deploy's clone {clone}: {exc}") from None
    if problem is None:
        return "clone", clone
    if given == "clone":
        raise StepError(f"strategy clone: {problem}; use auto or swap")
    facts["clone_unusable"] = problem  # auto: the restore point instead, said in the report
    return "swap", manifest.id


async def down_migration(ctx: RunContext, step: Step, index: int) -> StepReport:
    args = step.args
    assert isinstance(args, CommandArgs)
    manifest = ctx.restore_point()
    db, store = ctx.database, ctx.store
    ctx.left.set("database", "down-migration under way")
    done = await blocking(lambda: run_down_migration(args.command, step.timeout, dsn=db.dsn,
                                                     manifest=manifest, store=store),
                          step.timeout + 30)
    details = {"exit_code": done.exit_code,
               "schema_identical": None if done.diff is None else done.diff.identical}
    if done.ok:
        ctx.left.set("database", "schema migrated down to the restore point's")
        return StepReport("ok", "down-migration done; the schema equals the restore point's",
                          done.output, details)
    ctx.left.set("database", "database schema uncertain (the down-migration failed)")
    why = (f"exited with {done.exit_code}" if done.exit_code not in (0, None)
           else "could not run" if done.exit_code is None
           else "left a schema that differs from the restore point's")
    return StepReport("failed", f"down-migration {why}", done.output, details)


async def exec_command(ctx: RunContext, step: Step, index: int) -> StepReport:
    args = step.args
    assert isinstance(args, CommandArgs)
    done = await blocking(lambda: run_command(args.command, timeout=step.timeout),
                          step.timeout + 5)
    name = args.command[0]
    if not done.ok:
        return StepReport("failed", done.failure(f"command {name}"), done.output,
                          {"argv": list(done.argv), "exit_code": done.returncode})
    return StepReport("ok", f"command {name} succeeded", done.output,
                      {"argv": list(done.argv), "exit_code": 0})


ADAPTERS: Mapping[str, Adapter] = {
    "notify": notify, "page": notify, "assess": assess, "stop_app": stop_app,
    "start_app": start_app, "safety_backup": safety_backup,
    "restore_database": restore_database, "rollback_code": rollback_code,
    "rollback_config": rollback_config, "run_down_migration": down_migration,
    "validate": validate, "wait_healthy": wait_healthy, "exec": exec_command,
}
