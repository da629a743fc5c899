"""What an operator does by hand, shared by the CLI and the HTTP API: pause and resume, the
state, incidents and their decisions, answering an incident.

These write to and read the journal; the running daemon picks the events up at its next
cycle, so they work the same whether the daemon runs or not.
"""

from __future__ import annotations

import getpass
import os
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from daemon.config import Config
from daemon.fmt import when
from daemon.journal import Deploy, Drill, IncidentSummary, Journal, Restore
from daemon.ops.recovery import inspect_interrupted_restores
from policies.engine import Decision
from policies.policy import ROLLBACKS
from policies.runbooks import BUILTIN


class DecisionError(Exception):
    """An incident that cannot be decided; ``str()`` says why, ``missing`` tells which case."""

    def __init__(self, message: str, *, missing: bool) -> None:
        super().__init__(message)
        self.missing = missing


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


DECISIONS = ("dismiss", "fix_forward", "rollback")


def record_decision(journal: Journal, incident: int, choice: str, reason: str, by: str,
                    runbook: str | None = None,
                    known: Collection[str] = tuple(BUILTIN)) -> None:
    """Journal a human decision on an open incident: ``dismiss`` and ``fix_forward`` close
    it; ``rollback`` approves its rollback (an ``approve`` event: the daemon starts the
    incident's runbook, or ``runbook`` when named). Raises DecisionError or JournalError."""
    summary = journal.incident(incident)
    if summary is None:
        raise DecisionError(f"no incident {incident} in the journal", missing=True)
    if summary.state != "open":
        raise DecisionError(f"incident {incident} is already resolved", missing=False)
    decision = choice if not reason else f"{choice} ({reason})"
    if choice != "rollback":
        if runbook is not None:
            raise DecisionError("a runbook is named only with the decision rollback",
                                missing=False)
        _record(journal, {"type": "close", "incident": incident, "by": by,
                          "decision": decision})
        return
    if runbook is not None and runbook not in known:
        raise DecisionError(f"no runbook {runbook!r} (known: {', '.join(known)})",
                            missing=False)
    if runbook is None and summary.action not in ROLLBACKS:
        raise DecisionError(
            f"incident {incident}'s action is {summary.action}, which runs no runbook: name "
            f"one ({', '.join(known)})", missing=False)
    event: dict[str, Any] = {"type": "approve", "incident": incident, "by": by,
                             "decision": decision}
    if runbook is not None:
        event["runbook"] = runbook
    _record(journal, event)


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

    def as_json(self) -> dict[str, Any]:
        deploy, drill = self.deploy, self.drill
        return {
            "app": self.app, "paused": self.paused,
            "deploy": None if deploy is None else {
                "id": deploy.id, "version": deploy.version, "started_at": deploy.started_at,
                "status": deploy.status, "restore_point": deploy.restore_point,
                "restore_point_verified": deploy.restore_point_verified},
            "incident": None if self.incident is None else self.incident.as_json(),
            "drill": None if drill is None else {
                "t": drill.t, "backup": drill.backup, "ok": drill.ok,
                "duration": drill.duration},
            "restore": None if self.restore is None else self.restore.as_json(),
            "interrupted": list(self.interrupted),
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
                         f"{deploy.restore_point or 'none'} ({verified})")
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
        lines += [f"INTERRUPTED {line}" for line in self.interrupted]
        return lines


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


def gather_status(config: Config, journal: Journal, *, inspect: bool = False) -> Status:
    """``inspect``: also look at the database for what a killed restore left (a connection
    of up to ``database.connect_timeout``; the CLI does, the API's handler does not)."""
    deploy = journal.latest_deploy(config.app_name)
    incidents = journal.incidents(limit=1)
    open_incident = incidents[0] if incidents and incidents[0].state == "open" else None
    pause_event = journal.latest_event(("pause", "resume"))
    paused = pause_event is not None and pause_event.payload["type"] == "pause"
    restores = journal.restores(app=config.app_name, limit=1)
    interrupted = tuple(inspect_interrupted_restores(config).describe()) if inspect else ()
    return Status(app=config.app_name, paused=paused, deploy=deploy, incident=open_incident,
                  drill=journal.latest_drill(), restore=restores[0] if restores else None,
                  interrupted=interrupted)


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
