"""A rollback started by hand (``rollbackd rollback``): its plan, shown before anything
happens, and its run through the very executor the daemon uses (same journaling, same lock:
a person's run and the daemon's never overlap)."""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass
from typing import Any

from daemon.config import Config
from daemon.db.backups import Manifest
from daemon.fmt import iso, when
from daemon.journal import Deploy, Drill, IncidentSummary, Journal, JournalError
from daemon.ops.common import FLEET_BY_HAND, OpsError, open_journal, refused_in_fleet
from daemon.runbooks.context import RunRequest, prepare
from daemon.runbooks.executor import Executor, RunRefusedError, RunResult
from policies.policy import Policy
from policies.runbooks import BUILTIN, RestoreArgs, Runbook, resolve
from policies.units import format_duration


@dataclass(frozen=True, slots=True)
class RollbackPlan:
    """What ``rollbackd rollback`` would do: the runbook, for which incident, against which
    deploy and restore point, the data window it would undo and the downtime to expect."""

    request: RunRequest
    incident: IncidentSummary | None
    deploy: Deploy | None
    restore_point: Manifest | None
    problem: str | None
    """Why no restore point can be used (the steps that need one would fail)."""
    drill: Drill | None
    """The latest successful restore drill: its duration is the downtime to expect."""
    at: float
    fleet: str | None = None
    """The fleet whose shared database its steps change (fleet mode, a database step)."""

    @property
    def runbook(self) -> Runbook:
        return self.request.runbook

    @property
    def restores(self) -> bool:
        return self.runbook.restores_database

    @property
    def clone(self) -> str | None:
        """The deploy's clone, when a restore step of the runbook would swap it in."""
        whole = any(isinstance(s.args, RestoreArgs) and not s.args.tables
                    and s.args.strategy in ("auto", "clone") for s in self.runbook.steps)
        return self.deploy.clone if whole and self.deploy is not None else None

    def as_json(self) -> dict[str, Any]:
        rp = self.restore_point
        window = None
        if self.restores and rp is not None:
            window = {"start": rp.created_at, "end": self.at, "start_iso": iso(rp.created_at),
                      "end_iso": iso(self.at), "seconds": round(self.at - rp.created_at, 3)}
        return {
            "runbook": self.runbook.name, "steps": [s.describe() for s in self.runbook.steps],
            "incident": self.request.incident, "scenario": self.request.scenario,
            "action": self.request.action, "budget": self.request.budget,
            "deploy": None if self.deploy is None else self.deploy.as_json(),
            "restore_point": None if rp is None else {
                "id": rp.id, "created_at": rp.created_at, "code_version": rp.code_version,
                "migration_version": rp.migration_version, "database": rp.database},
            "problem": self.problem, "data_window": window, "fleet": self.fleet,
            "clone": self.clone,
            "expected_downtime": None if self.drill is None or not self.restores
            else self.drill.duration,
        }

    def describe(self) -> list[str]:
        r = self.request
        about = (f"incident {r.incident} ({r.scenario}, {self.incident.state})"
                 if self.incident is not None and r.incident is not None
                 else "no incident")
        lines = [f"runbook {self.runbook.name} for {about}, budget "
                 f"{format_duration(r.budget)}:", *self.runbook.describe()]
        if self.deploy is not None:
            d = self.deploy
            lines.append(f"deploy {d.id} of {d.version}, begun {when(d.started_at)} "
                         f"({d.status})")
        rp = self.restore_point
        if rp is not None:
            extras = [f"code {rp.code_version[:12]}" if rp.code_version else "",
                      f"migration version {rp.migration_version}"
                      if rp.migration_version is not None else ""]
            extra = ", ".join(e for e in extras if e)
            lines.append(f"restore point {rp.id}, taken {when(rp.created_at)}"
                         + (f" ({extra})" if extra else ""))
        if self.problem is not None:
            lines.append(f"warning: {self.problem}")
        if self.fleet is not None:
            lines.append(f"warning: {FLEET_BY_HAND.format(fleet=self.fleet)}")
        if self.clone is not None:
            lines.append(f"clone {self.clone}: swapped in by renaming, in seconds (the restore "
                         "point only if the clone is gone)")
        if self.restores:
            if rp is not None:
                lines.append(
                    f"data window it would undo: {when(rp.created_at)} to now "
                    f"({format_duration(round(self.at - rp.created_at))}); that data is kept "
                    "(the replaced database is renamed aside), and nothing is undone if the "
                    "database turns out unchanged since the restore point")
            if self.drill is not None:
                lines.append(f"expected downtime: about {self.drill.duration:.1f}s of restore "
                             f"(the restore drill of {when(self.drill.t)}) plus the app's stop "
                             "and start")
            else:
                lines.append("expected downtime: unknown (no successful restore drill "
                             "journaled: `rollbackd drill`)")
        return lines


def plan_rollback(config: Config, policy: Policy | None, runbook: str | None = None,
                  incident: int | None = None, *, by: str) -> RollbackPlan:
    """The plan for ``runbook`` (default: the incident's action's) for ``incident``
    (default: the open incident, if any); ``OpsError`` when there is nothing to run."""
    journal = open_journal(config)
    try:
        summary = _incident(journal, incident)
        number = None if summary is None else summary.incident
        chosen = _runbook(policy, summary, runbook)
        timeline: float | None = None
        if number is not None:
            decisions = journal.decisions(limit=1, incident=number)
            if decisions:
                timeline = decisions[-1].timeline_s
        request = RunRequest(
            chosen, number, summary.scenario if summary is not None else "manual",
            summary.action if summary is not None else "manual",
            f"rollback by hand ({by})" + (f": {summary.reason}" if summary else ""), by,
            timeline)
        ctx = prepare(config, journal, request)
        drill = journal.latest_drill(ok=True)
    except JournalError as exc:
        raise OpsError(str(exc)) from None
    finally:
        journal.close()
    shared = config.fleet is not None and chosen.needs_database
    return RollbackPlan(request, summary, ctx.deploy, ctx.manifest, ctx.manifest_problem,
                        drill, time.time(), config.fleet.name if shared and config.fleet else None)


def _incident(journal: Journal, incident: int | None) -> IncidentSummary | None:
    if incident is not None:
        found = journal.incident(incident)
        if found is None:
            raise OpsError(f"no incident {incident} in the journal")
        return found
    latest = journal.incidents(limit=1)
    return latest[0] if latest and latest[0].state == "open" else None


def _runbook(policy: Policy | None, summary: IncidentSummary | None,
             named: str | None) -> Runbook:
    known = BUILTIN if policy is None else policy.all_runbooks()
    if named is not None:
        found = known.get(named)
        if found is None:
            raise OpsError(f"no runbook {named!r} (known: {', '.join(known)})")
        return found
    if summary is None:
        raise OpsError("no incident is open: name the runbook (--runbook, one of "
                       f"{', '.join(BUILTIN)})")
    rule = None if policy is None else next(
        (r for r in policy.rules if r.scenario == summary.scenario), None)
    chosen = resolve(summary.action, None if rule is None else rule.runbook,
                     {} if policy is None else policy.runbooks)
    if chosen is None:
        raise OpsError(f"incident {summary.incident}'s action is {summary.action}, which runs "
                       f"no runbook: name one (--runbook, one of {', '.join(BUILTIN)})")
    return chosen


def execute_rollback(config: Config, plan: RollbackPlan, *,
                     without_fleet: bool = False) -> RunResult:
    """Run the plan's runbook in this process, through the executor; SIGINT or SIGTERM
    interrupts it (journaled and paged as interrupted). ``OpsError`` when it cannot begin,
    and for a plan that changes a fleet's shared database unless ``without_fleet``."""
    if plan.fleet is not None and not without_fleet:
        raise refused_in_fleet(plan.fleet)
    return asyncio.run(_execute(config, plan))


async def _execute(config: Config, plan: RollbackPlan) -> RunResult:
    journal = open_journal(config)
    try:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            return await Executor(config, journal).run(plan.request)
        except RunRefusedError as exc:
            raise OpsError(str(exc)) from None
        finally:
            loop.remove_signal_handler(signal.SIGTERM)
    finally:
        journal.close()
