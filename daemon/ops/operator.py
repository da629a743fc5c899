"""What an operator does by hand, shared by the CLI and the HTTP API: pause and resume, the
state, incidents and their decisions, answering an incident.

These write to and read the journal; the running daemon picks the events up at its next
cycle, so they work the same whether the daemon runs or not.
"""

from __future__ import annotations

import getpass
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from daemon.config import Config
from daemon.fmt import when
from daemon.journal import Deploy, Drill, IncidentSummary, Journal, Restore, Run
from daemon.ops.recovery import inspect_interrupted_restores
from policies.engine import Decision
from policies.policy import ROLLBACKS, Policy
from policies.runbooks import BUILTIN, Runbook, RunbookError, resolve, table_names, with_tables

if TYPE_CHECKING:
    from daemon.db.fleet import FleetStatus


class DecisionError(Exception):
    """An incident that cannot be decided; ``str()`` says why. ``missing``: no such incident;
    ``usage``: the decision itself is malformed (whatever the journal holds)."""

    def __init__(self, message: str, *, missing: bool, usage: bool = False) -> None:
        super().__init__(message)
        self.missing = missing
        self.usage = usage


def operator_name() -> str:
    """Who runs the command, as the journal and the pages will name them."""
    return os.environ.get("SUDO_USER") or getpass.getuser()


def _record(journal: Journal, payload: dict[str, Any]) -> None:
    journal.add_event(time.time(), payload)


def record_pause(journal: Journal, by: str, reason: str) -> None:
    """Journal a pause; the daemon applies it at its next cycle. Raises JournalError."""
    _record(journal, {"type": "pause", "by": by, "reason": reason})


def record_resume(journal: Journal, by: str) -> None:
    _record(journal, {"type": "resume", "by": by})


ROLLBACK_CHOICES = ("immediate_rollback", "planned_rollback", "selective_rollback")
CLOSING_CHOICES = ("fix_forward", "dismiss")
DECISIONS = (*ROLLBACK_CHOICES, *CLOSING_CHOICES, "rollback")
"""What a person may answer an incident with; ``rollback`` approves the incident's own action
(scripts written before the kinds could be chosen use it)."""


@dataclass(frozen=True, slots=True)
class RunGuards:
    """What the journal tells now of the executor's checks on a person's run: a pause, a run
    going on, the restore point of the latest deploy. The executor checks again when the
    daemon starts the run; this is the person's warning, not the gate."""

    paused: bool
    running: Run | None
    deploy: Deploy | None
    restores: bool
    """Whether the runbook restores the database (the restore point matters)."""

    def warnings(self) -> list[str]:
        found: list[str] = []
        if self.paused:
            found.append("rollbackd is paused: the daemon refuses this run (run `rollbackd "
                         "resume` first, then decide again)")
        if self.running is not None:
            found.append(f"run {self.running.id} ({self.running.runbook}) is going on: the "
                         "daemon refuses a second run (one at a time); decide again once it "
                         "has ended")
        if self.restores:
            deploy = self.deploy
            if deploy is None:
                found.append("no deploy is journaled: the restore step has no restore point "
                             "and fails")
            elif deploy.restore_point is None:
                found.append(f"deploy {deploy.id} ({deploy.version}) has no restore point: "
                             "the restore step fails")
            elif not deploy.restore_point_verified:
                found.append(f"restore point {deploy.restore_point} of deploy {deploy.id} is "
                             "NOT verified: the restore verifies it first and refuses it if "
                             "that fails")
        return found

    def describe(self) -> str:
        """``checked now: not paused, no run going on, restore point rp-1 verified``."""
        parts = ["PAUSED" if self.paused else "not paused",
                 "no run going on" if self.running is None
                 else f"run {self.running.id} going on"]
        deploy = self.deploy
        if self.restores:
            parts.append("no restore point" if deploy is None or deploy.restore_point is None
                         else f"restore point {deploy.restore_point} "
                         + ("verified" if deploy.restore_point_verified else "NOT verified"))
        return "checked now: " + ", ".join(parts) + " (the executor checks again)"

    def as_json(self) -> dict[str, Any]:
        deploy = self.deploy
        return {"paused": self.paused,
                "running_run": None if self.running is None else self.running.id,
                "restores_database": self.restores,
                "restore_point": None if deploy is None else deploy.restore_point,
                "restore_point_verified": None if deploy is None or deploy.restore_point is None
                else deploy.restore_point_verified,
                "warnings": self.warnings()}


def run_guards(journal: Journal, app: str | None, runbook: Runbook | None) -> RunGuards:
    pause_event = journal.latest_event(("pause", "resume"))
    running = journal.runs(status="running", limit=1)
    return RunGuards(
        paused=pause_event is not None and pause_event.payload["type"] == "pause",
        running=running[0] if running else None, deploy=journal.latest_deploy(app),
        restores=runbook is not None and runbook.restores_database)


@dataclass(frozen=True, slots=True)
class DecisionRecorded:
    """A decision journaled: a close, or an approval and the run the daemon is to start."""

    incident: int
    decision: str
    reason: str
    by: str
    action: str | None = None
    """The rollback action approved (None: a close, or a runbook named on an incident whose
    action runs none)."""
    runbook: str | None = None
    """The runbook the daemon is to start, as the policy stands now."""
    tables: tuple[str, ...] = ()
    guards: RunGuards | None = None

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"incident": self.incident, "decision": self.decision,
                                "reason": self.reason, "by": self.by}
        if self.guards is not None:
            data.update(action=self.action, runbook=self.runbook, tables=list(self.tables),
                        guards=self.guards.as_json())
        return data

    def describe(self) -> list[str]:
        line = f"incident {self.incident}: {self.decision} recorded"
        if self.runbook is not None:
            line += f"; the daemon starts {self.runbook} at its next cycle"
        return [line] if self.guards is None else [line, self.guards.describe()]

    def warnings(self) -> list[str]:
        return [] if self.guards is None else self.guards.warnings()


def approved_runbook(policy: Policy | None, scenario: str, action: str, named: str | None,
                     tables: Sequence[str] = ()) -> Runbook | None:
    """The runbook a person's approval of ``action`` runs: the one they named, else the
    incident's rule's own when that rule's action is the one chosen, else the action's bundled
    one; with ``tables``, made to restore those tables' data only (:func:`with_tables`)."""
    if named is None and policy is not None:
        rule = next((r for r in policy.rules if r.scenario == scenario), None)
        if rule is not None and rule.action == action:
            named = rule.runbook
    runbook = resolve(action, named, {} if policy is None else policy.runbooks)
    return with_tables(runbook, tables) if runbook is not None and tables else runbook


def approved_timeline(policy: Policy, scenario: str, action: str,
                      incident_timeline: float | None) -> float | None:
    """The budget of a person's run: the timeline of the chosen action in the policy (the
    incident's rule's when its action is that one, else the first rule with it), else the
    incident's own."""
    rules = sorted(policy.rules, key=lambda r: r.scenario != scenario)
    rule = next((r for r in rules if r.action == action), None)
    return incident_timeline if rule is None else rule.timeline


def record_decision(journal: Journal, incident: int, choice: str, reason: str, by: str,
                    runbook: str | None = None, *, tables: Sequence[str] = (),
                    policy: Policy | None = None, app: str | None = None) -> DecisionRecorded:
    """Journal a person's decision on an open incident: ``dismiss`` and ``fix_forward`` close
    it; a rollback kind approves that rollback (an ``approve`` event: the daemon starts its
    runbook, or ``runbook`` when named, at its next cycle); ``rollback`` approves the
    incident's own action. ``policy`` gives the runbooks and rules (None: the bundled runbooks
    only); ``app`` the deploy whose restore point is told. Raises DecisionError or
    JournalError."""
    if choice not in DECISIONS:
        raise DecisionError(f"no decision {choice!r} (known: {', '.join(DECISIONS)})",
                            missing=False, usage=True)
    summary = journal.incident(incident)
    if summary is None:
        raise DecisionError(f"no incident {incident} in the journal", missing=True)
    if summary.state != "open":
        raise DecisionError(f"incident {incident} is already resolved", missing=False)
    decision = choice if not reason else f"{choice} ({reason})"
    if choice in CLOSING_CHOICES:
        if runbook is not None or tables:
            raise DecisionError("a runbook or tables are named only with the decision rollback "
                                f"or {'|'.join(ROLLBACK_CHOICES)}, not {choice}", missing=False,
                                usage=True)
        _record(journal, {"type": "close", "incident": incident, "by": by,
                          "decision": decision})
        return DecisionRecorded(incident, choice, reason, by)
    action = choice if choice != "rollback" else (
        summary.action if summary.action in ROLLBACKS else None)
    names, event = _checked_approval(summary, choice, action, runbook, tables, policy)
    chosen = approved_runbook(policy, summary.scenario, action or summary.action, runbook,
                              names)
    guards = run_guards(journal, app, chosen)
    _record(journal, {"type": "approve", "incident": incident, "by": by, "decision": decision,
                      **event})
    return DecisionRecorded(incident, choice, reason, by, action,
                            None if chosen is None else chosen.name, names, guards)


def _checked_approval(summary: IncidentSummary, choice: str, action: str | None,
                      runbook: str | None, tables: Sequence[str], policy: Policy | None
                      ) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The tables checked and the approve event's own fields; DecisionError when the
    approval cannot be carried out as given."""
    known = policy.all_runbooks() if policy is not None else dict(BUILTIN)
    n = summary.incident
    if runbook is not None and runbook not in known:
        raise DecisionError(f"no runbook {runbook!r} (known: {', '.join(known)})",
                            missing=False)
    if action is None and runbook is None:
        raise DecisionError(
            f"incident {n}'s action is {summary.action}, which runs no runbook: name one "
            f"({', '.join(known)}) or decide {'|'.join(ROLLBACK_CHOICES)}",
            missing=False)
    names: tuple[str, ...] = ()
    if tables:
        if action != "selective_rollback":
            raise DecisionError("tables go with selective_rollback only", missing=False,
                                usage=True)
        try:
            names = table_names(tables)
        except RunbookError as exc:
            raise DecisionError(f"tables: {exc}", missing=False, usage=True) from None
    elif choice == "selective_rollback":
        chosen = approved_runbook(policy, summary.scenario, choice, runbook)
        if chosen is None or not chosen.tables:
            raise DecisionError(
                "selective_rollback restores the data of named tables: give them (--tables "
                "T, or \"tables\" in the API), or name a runbook that restores tables",
                missing=False, usage=True)
    event: dict[str, Any] = {}
    if action is not None:
        event["action"] = action
    if runbook is not None:
        event["runbook"] = runbook
    if names:
        event["tables"] = list(names)
    return names, event


@dataclass(frozen=True, slots=True)
class Notice:
    """A one-line outcome (``paused``, ``incident 3: dismiss recorded``)."""

    message: str
    data: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return self.data

    def describe(self) -> list[str]:
        return [self.message]


@dataclass(frozen=True, slots=True)
class Status:
    """The latest deploy, the open incident, pause and the last drill (``status``)."""

    app: str
    paused: bool
    deploy: Deploy | None
    incident: IncidentSummary | None
    """The latest incident, when it is open."""
    drill: Drill | None
    restore: Restore | None = None
    """The app's latest restore (by hand or by the executor)."""
    interrupted: tuple[str, ...] = ()
    """What a killed restore left behind (an interrupted swap or in-place restore)."""
    run: Run | None = None
    """The app's latest runbook run (on a host of a fleet, maybe its part in the fleet's
    rollback, with no incident of its own)."""
    fleet: FleetStatus | None = None
    """In fleet mode: the fleet's open incident and its hosts."""

    def as_json(self) -> dict[str, Any]:
        deploy, drill = self.deploy, self.drill
        return {
            "app": self.app, "paused": self.paused,
            "deploy": None if deploy is None else {
                "id": deploy.id, "version": deploy.version, "started_at": deploy.started_at,
                "status": deploy.status, "restore_point": deploy.restore_point,
                "restore_point_verified": deploy.restore_point_verified,
                "clone": deploy.clone},
            "incident": None if self.incident is None else self.incident.as_json(),
            "drill": None if drill is None else {
                "t": drill.t, "backup": drill.backup, "ok": drill.ok,
                "duration": drill.duration},
            "restore": None if self.restore is None else self.restore.as_json(),
            "interrupted": list(self.interrupted),
            "run": None if self.run is None else self.run.as_json(),
            "fleet": None if self.fleet is None else self.fleet.as_json(),
        }

    def describe(self) -> list[str]:
        lines = [f"app        {self.app}" + ("  [PAUSED]" if self.paused else "")]
        deploy, incident, drill = self.deploy, self.incident, self.drill
        if deploy is None:
            lines.append("deploy     none recorded")
        else:
            verified = "verified" if deploy.restore_point_verified else "NOT verified"
            lines.append(f"deploy     {deploy.version} ({deploy.status}) at "
                         f"{when(deploy.started_at)}, restore point "
                         f"{deploy.restore_point or 'none'} ({verified})"
                         + (f", clone {deploy.clone}" if deploy.clone else ""))
        if incident is None:
            lines.append("incident   none open")
        else:
            lines.append(f"incident   {incident.incident} open: {incident.scenario} "
                         f"({incident.severity}) -> {incident.action} "
                         f"[{incident.mode}] since {when(incident.opened_at)}")
        if drill is None:
            lines.append("drill      never run")
        else:
            lines.append(f"drill      {'passed' if drill.ok else 'FAILED'} at "
                         f"{when(drill.t)} ({drill.duration:.1f}s)")
        if self.restore is not None:
            lines.append(f"restore    {restore_line(self.restore)}")
        if self.run is not None:
            lines.append(f"run        {run_line(self.run)}")
        lines += [f"INTERRUPTED {line}" for line in self.interrupted]
        return lines + ([] if self.fleet is None else self.fleet.describe())


def run_line(run: Run) -> str:
    """``3 immediate_rollback@fleet succeeded at ... (migration_failed, by rollbackd); part
    of fleet vf incident 1 (...)``"""
    ended = "" if run.ended_at is None else f" at {when(run.ended_at)}"
    about = f"incident {run.incident}" if run.incident is not None else run.scenario
    fleet = f"; part of {run.fleet}" if run.fleet else ""
    return f"{run.id} {run.runbook} {run.status}{ended} ({about}, by {run.requested_by}){fleet}"


def restore_line(restore: Restore) -> str:
    """``restore 2 restored: swap of rp-1 by alice at ...; deploy 3, incident 1; kept in ...``"""
    links = [f"deploy {restore.deploy}" + (" rolled back" if restore.rolls_back_deploy else "")
             if restore.deploy is not None else "no deploy"]
    if restore.incident is not None:
        links.append(f"incident {restore.incident}")
    line = f"{restore.describe()} at {when(restore.started_at)}; {', '.join(links)}"
    if restore.kept is not None:
        line += f"; data before it kept in {restore.kept_kind} {restore.kept}"
    if restore.error is not None:
        line += f": {restore.error.splitlines()[0]}"
    return line


def gather_status(config: Config, journal: Journal, *, inspect: bool = False,
                  fleet: FleetStatus | None = None) -> Status:
    """``inspect``: also look at the database for what a killed restore left, and at the
    fleet (connections of up to ``database.connect_timeout``; the CLI does, the API's handler
    does not: it passes the daemon's last look at the ``fleet``)."""
    deploy = journal.latest_deploy(config.app_name)
    incidents = journal.incidents(limit=1)
    open_incident = incidents[0] if incidents and incidents[0].state == "open" else None
    pause_event = journal.latest_event(("pause", "resume"))
    paused = pause_event is not None and pause_event.payload["type"] == "pause"
    restores = journal.restores(app=config.app_name, limit=1)
    interrupted = tuple(inspect_interrupted_restores(config).describe()) if inspect else ()
    if fleet is None and inspect:
        fleet = glance_at_fleet(config)
    runs = journal.runs(limit=1)
    return Status(app=config.app_name, paused=paused, deploy=deploy, incident=open_incident,
                  drill=journal.latest_drill(), restore=restores[0] if restores else None,
                  interrupted=interrupted, run=runs[0] if runs else None, fleet=fleet)


def glance_at_fleet(config: Config) -> FleetStatus | None:
    """The fleet as the maintenance database has it, read without a heartbeat (this command
    is not the host's daemon); None outside fleet mode."""
    if config.fleet is None or config.database is None:
        return None
    from daemon.db.fleet import FleetDb, FleetError, FleetStatus

    fleet = config.fleet
    view = problem = None
    try:
        view = FleetDb.of(config.database, fleet).glance()
    except FleetError as exc:
        problem = str(exc)
    return FleetStatus(fleet.name, fleet.id, view, problem)


@dataclass(frozen=True, slots=True)
class IncidentList:
    rows: list[IncidentSummary]

    def as_json(self) -> list[dict[str, Any]]:
        return [row.as_json() for row in self.rows]

    def describe(self) -> list[str]:
        if not self.rows:
            return ["no incidents"]
        return [f"{row.incident:>5}  {row.state:<8}  {when(row.opened_at)}  "
                f"{row.scenario} ({row.severity}) -> {row.action} [{row.mode}]"
                for row in self.rows]


@dataclass(frozen=True, slots=True)
class IncidentDecisions:
    """Every decision of one incident, in order, and the restores linked to it. Its JSON is
    JSON Lines of the decisions only: the replay output format, which has no restores."""

    lines: list[Decision]
    restores: list[Restore] = field(default_factory=list)
    json_lines = True

    def as_json(self) -> list[dict[str, Any]]:
        return [line.as_json() for line in self.lines]

    def describe(self) -> list[str]:
        timed = [(line.t, f"{when(line.t)}  {line.kind:<8}  {line.scenario} "
                          f"({line.severity}) -> {line.action} [{line.mode}]: {line.reason}")
                 for line in self.lines]
        timed += [(r.started_at, f"{when(r.started_at)}  restore   {restore_line(r)}")
                  for r in self.restores]
        return [text for _, text in sorted(timed, key=lambda pair: pair[0])]


def incident_decisions(journal: Journal, incident: int) -> IncidentDecisions:
    """Raises DecisionError (missing) when the journal has no such incident."""
    lines = journal.decisions(limit=1000, incident=incident)
    if not lines:
        raise DecisionError(f"no incident {incident} in the journal", missing=True)
    return IncidentDecisions(lines, list(reversed(journal.restores(incident=incident))))


# -- annotations: a person's root cause and prevention for an incident's report ------------

ANNOTATION_CHARS = 4000
"""The most a root cause or a prevention may hold: a few paragraphs, not a log file."""


class AnnotationError(Exception):
    """An annotation that cannot be recorded; ``str()`` says why, ``missing`` tells an
    unknown incident (a failure) from text that cannot be used (a usage error)."""

    def __init__(self, message: str, *, missing: bool) -> None:
        super().__init__(message)
        self.missing = missing


def annotation_text(name: str, text: str) -> str:
    """``text`` as it is journaled: line ends made ``\\n``, trailing blanks dropped; raises
    AnnotationError when it is empty, too long, or holds control characters (an escape
    sequence must not reach the terminals and pages that show it)."""
    cleaned = "\n".join(line.rstrip() for line in text.replace("\r\n", "\n").split("\n"))
    cleaned = cleaned.strip("\n")
    if not cleaned.strip():
        raise AnnotationError(f"{name} is empty", missing=False)
    if len(cleaned) > ANNOTATION_CHARS:
        raise AnnotationError(f"{name} is {len(cleaned)} characters long; at most "
                              f"{ANNOTATION_CHARS} (link to a longer document instead)",
                              missing=False)
    bad = next((c for c in cleaned if (ord(c) < 32 and c not in "\n\t") or 127 <= ord(c) < 160),
               None)
    if bad is not None:
        raise AnnotationError(f"{name} holds the control character {bad!r}", missing=False)
    return cleaned


def record_annotation(journal: Journal, incident: int, root_cause: str | None,
                      prevention: str | None, by: str) -> dict[str, Any]:
    """Journal a person's root cause and/or prevention for an incident's report (an
    ``annotate`` event; the latest of each is the report's, and the reminders stop once both
    are there). Returns the event. Raises AnnotationError or JournalError."""
    if root_cause is None and prevention is None:
        raise AnnotationError("give --root-cause, --prevention or both", missing=False)
    event: dict[str, Any] = {"type": "annotate", "incident": incident, "by": by}
    if root_cause is not None:
        event["root_cause"] = annotation_text("the root cause", root_cause)
    if prevention is not None:
        event["prevention"] = annotation_text("the prevention", prevention)
    if not 0 < incident < 2**63 or journal.incident(incident) is None:
        raise AnnotationError(f"no incident {incident} in the journal", missing=True)
    _record(journal, event)
    return event
