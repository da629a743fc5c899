"""An incident's execution log and report, from the journal (and the databases).

Under ``state_dir/incidents/<id>/`` (mode 0700), each file replaced atomically:

* ``execution.jsonl``: JSON Lines in time order: the incident, each run's start (rollback
  type and scope, steps planned, restore point), every attempt at every step (begun, ended,
  outcome, message, output excerpt), validation results, issues (failed or interrupted
  attempts, pages), restores, the run's end and its resolution steps.
* ``report.json``: the report as one object (summary, impact, timeline, root cause,
  resolution, prevention, data window per restore and table). The ``journal`` key is a digest
  of the journal rows it was made from: the report is stale when they differ.
* ``report.md``: the same report for people, rendered from that very object (so the two never
  disagree): Summary, Impact, Timeline, Root cause, Resolution, Prevention, Data window.

The data window of a restore is compared row by row when the data it replaced is in a
database (a swap's or clone's ``<db>_rolledback_<ts>``) or in a table restore's copies; a
safety backup is named with where it is (comparing it needs a restore into a scratch
database). Once computed, a restore's data window is kept in ``report.json`` and reused while
the restore's record is unchanged: rows written to the restored database afterwards (new rows
may reuse the kept rows' keys) do not blur it, and it survives the kept copy being dropped.

:func:`write_incident_report` is what the executor calls when a run ends; the CLI and the API
use :func:`gather_facts` (journal reads only) then :func:`current_report` (blocking: it may
connect to the databases and writes files).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.config import Config
from daemon.db.data_window import (
    EXAMPLES,
    KEY_CAP,
    DataWindowError,
    compare_databases,
    compare_kept_tables,
)
from daemon.durable import fsync_dir, replace_atomically
from daemon.fmt import excerpt, iso, when
from daemon.journal import (
    Annotation,
    Deploy,
    IncidentSummary,
    Journal,
    Page,
    Restore,
    Run,
    RunStep,
)
from policies.engine import Decision
from policies.runbooks import DATABASE_STEPS
from policies.units import format_duration
from probes.pg import with_dbname

REPORT_FORMAT = 1
"""Bumped when the report's content changes: a report of another format is stale."""

INCIDENTS_DIR = "incidents"
EXECUTION_LOG = "execution.jsonl"
REPORT_MD = "report.md"
REPORT_JSON = "report.json"

OUTPUT_LINES = 20
"""Lines of a step's output kept in the execution log and the report."""

VALIDATION_STEPS = frozenset({"validate", "wait_healthy"})
EVIDENCE_STEPS = frozenset({"assess", "validate", "wait_healthy"})


class ReportError(Exception):
    """No report for this incident: the journal has none by that number."""


class ReportWriteError(Exception):
    """The report's files cannot be written; ``str()`` names the path."""


@dataclass(frozen=True, slots=True)
class ReportPaths:
    """Where an incident's report lives."""

    directory: Path
    execution_log: Path
    markdown: Path
    json: Path

    @classmethod
    def of(cls, state_dir: Path, incident: int) -> ReportPaths:
        directory = state_dir / INCIDENTS_DIR / str(incident)
        return cls(directory, directory / EXECUTION_LOG, directory / REPORT_MD,
                   directory / REPORT_JSON)

    def complete(self) -> bool:
        return all(p.is_file() for p in (self.execution_log, self.markdown, self.json))


# -- what the journal holds about an incident ---------------------------------------------


@dataclass(frozen=True, slots=True)
class IncidentFacts:
    """Every journal row of one incident, oldest first: read in one go (in the thread that
    owns the journal), then turned into a report anywhere."""

    incident: int
    summary: IncidentSummary
    decisions: list[Decision]
    runs: list[Run]
    steps: dict[int, list[RunStep]]
    pages: list[Page]
    restores: list[Restore]
    deploys: dict[int, Deploy] = field(default_factory=dict)
    annotation: Annotation = field(default_factory=Annotation)
    """What people wrote as the root cause and the prevention (``incidents annotate``)."""

    @property
    def fingerprint(self) -> str:
        """A digest of every row the report is made from (and of its format)."""
        rows = {"format": REPORT_FORMAT,
                "decisions": [d.as_json() for d in self.decisions],
                # A run's fleet only when it has one: the reports written before runs named
                # their fleet stay current.
                "runs": [{k: v for k, v in r.as_json().items() if k != "fleet" or v is not None}
                         for r in self.runs],
                "steps": {str(k): [s.as_json() for s in v] for k, v in self.steps.items()},
                "pages": [p.as_json() for p in self.pages],
                "restores": [r.as_json() for r in self.restores],
                "deploys": {str(k): d.as_json() for k, d in self.deploys.items()}}
        if self.annotation != Annotation():
            # Only when there is one: the reports written before annotations stay current.
            rows["annotation"] = self.annotation.as_json()
        text = json.dumps(rows, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def deploy(self) -> Deploy | None:
        """The deploy the incident is about: the one its runs or restores name."""
        for ref in [*(r.deploy for r in self.runs), *(r.deploy for r in self.restores)]:
            if ref is not None and ref in self.deploys:
                return self.deploys[ref]
        return None


def gather_facts(journal: Journal, incident: int) -> IncidentFacts | None:
    """The incident's rows, or None when the journal has no such incident. Journal reads
    only: call it where the journal is used (the daemon's event loop, for the API)."""
    summary = journal.incident(incident)
    if summary is None:
        return None
    decisions = journal.decisions(limit=10_000, incident=incident)
    runs = list(reversed(journal.runs(incident=incident, limit=1000)))
    restores = list(reversed(journal.restores(incident=incident, limit=1000)))
    deploys: dict[int, Deploy] = {}
    refs = [r.deploy for r in runs] + [r.deploy for r in restores]
    for ref in dict.fromkeys(r for r in refs if r is not None):
        found = journal.deploy(ref)
        if found is not None:
            deploys[ref] = found
    return IncidentFacts(
        incident=incident, summary=summary, decisions=decisions, runs=runs,
        steps={run.id: journal.steps(run.id) for run in runs},
        pages=journal.pages(incident=incident, limit=10_000), restores=restores,
        deploys=deploys, annotation=journal.annotation(incident))


# -- the report ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IncidentReport:
    """The report as data (``data``: report.json), its Markdown, and the execution log."""

    data: dict[str, Any]
    execution: list[dict[str, Any]]

    @property
    def incident(self) -> int:
        return int(self.data["incident"])

    @property
    def fingerprint(self) -> str:
        return str(self.data["journal"])

    def markdown(self) -> str:
        return render_markdown(self.data)


def build_report(config: Config, facts: IncidentFacts, *,
                 previous: Mapping[str, Any] | None = None,
                 now: float | None = None) -> IncidentReport:
    """The report of ``facts``. Blocking: a restore's data window is compared in the
    databases unless ``previous`` (the last report.json) holds it for the same restore
    record."""
    now = time.time() if now is None else now
    windows = [_data_window(config, restore, _previous_window(previous, restore))
               for restore in facts.restores]
    apps = [r.app for r in facts.runs] + [r.app for r in facts.restores]
    app = apps[0] if apps else config.app_name
    data: dict[str, Any] = {
        "format": REPORT_FORMAT, "incident": facts.incident, "app": app,
        "generated_at": now, "journal": facts.fingerprint,
        "summary": _summary(facts, now),
        "impact": _impact(facts, windows, now),
        "timeline": _timeline(facts),
        "root_cause": _root_cause(facts),
        "resolution": _resolution(facts),
        "prevention": _prevention(facts, windows),
        "data_window": windows,
        "annotations": facts.annotation.as_json(),
    }
    return IncidentReport(data=data, execution=execution_log(facts, windows))


def _span(start: float, end: float | None) -> str:
    return "still going" if end is None else format_duration(round(max(0.0, end - start)))


def _summary(facts: IncidentFacts, now: float) -> dict[str, Any]:
    s = facts.summary
    resolved_at = s.updated_at if s.state == "resolved" else None
    deploy = facts.deploy
    runs = [f"run {r.id} {r.runbook}: {r.status}" + (f" ({r.summary})" if r.summary else "")
            + (f"; part of {r.fleet}" if r.fleet else "") for r in facts.runs]
    if not facts.runs:
        outcome = f"{s.action} decided ({s.mode}); no runbook ran"
    else:
        last = facts.runs[-1]
        outcome = f"{last.runbook} {last.status}" + (f": {last.summary}" if last.summary else "")
    outcome += "; the incident is " + ("resolved" if resolved_at is not None else "still open")
    return {
        "incident": facts.incident, "state": s.state, "opened_by": s.opened_by,
        "scenario": s.scenario, "severity": s.severity, "action": s.action, "mode": s.mode,
        "opened_at": s.opened_at, "resolved_at": resolved_at,
        "duration_s": round((resolved_at if resolved_at is not None else now) - s.opened_at, 3),
        "deploy": None if deploy is None else {
            "id": deploy.id, "version": deploy.version, "status": deploy.status,
            "restore_point": deploy.restore_point},
        "runs": runs, "restores": [r.describe() for r in facts.restores],
        "outcome": outcome,
    }


def _downtime(facts: IncidentFacts) -> list[dict[str, Any]]:
    """When the app was down by rollbackd's hand: a stop that ended ok until the next start
    that ended ok."""
    spans: list[dict[str, Any]] = []
    stopped: float | None = None
    for run in facts.runs:
        for step in facts.steps.get(run.id, []):
            if step.outcome != "ok" or step.ended_at is None:
                continue
            if step.kind == "stop_app" and stopped is None:
                stopped = step.ended_at
            elif step.kind == "start_app" and stopped is not None:
                spans.append({"from": stopped, "to": step.ended_at,
                              "seconds": round(step.ended_at - stopped, 3)})
                stopped = None
    if stopped is not None:
        spans.append({"from": stopped, "to": None, "seconds": None})
    return spans


def _impact(facts: IncidentFacts, windows: list[dict[str, Any]],
            now: float) -> dict[str, Any]:
    s = facts.summary
    resolved_at = s.updated_at if s.state == "resolved" else None
    statements = [
        f"{s.scenario} ({s.severity}) affected the app from {when(s.opened_at)} "
        + (f"to {when(resolved_at)} ({_span(s.opened_at, resolved_at)})" if resolved_at
           else f"and is still open ({_span(s.opened_at, now)} so far)")]
    downtime = _downtime(facts)
    for span in downtime:
        statements.append(
            f"the app was stopped from {when(span['from'])} to {when(span['to'])} "
            f"({_span(span['from'], span['to'])})" if span["to"] is not None else
            f"the app was stopped at {when(span['from'])} and not started again by rollbackd")
    deploy = facts.deploy
    if deploy is not None:
        statements.append(f"deploy {deploy.id} (version {deploy.version}) is "
                          f"{deploy.status.replace('_', ' ')}")
    for window in windows:
        if window["undone"]:
            statements.append(
                f"restore {window['restore']} undid the data written from "
                f"{when(window['start'], missing='an unknown time')} to "
                f"{when(window['end'], missing='an unknown time')}; "
                + _rows_sentence(window))
    if facts.pages:
        statements.append(f"{len(facts.pages)} page(s) sent, up to level "
                          f"{max(p.level for p in facts.pages)}")
    if not facts.runs:
        statements.append("no runbook ran: nothing was stopped, restored or rolled back "
                          "by rollbackd")
    return {"app_stopped": downtime,
            "data_undone": [{"restore": w["restore"], "start": w["start"], "end": w["end"],
                             "rows_missing": w["rows_missing"], "kept": w["location"]}
                            for w in windows if w["undone"]],
            "pages": len(facts.pages),
            "highest_level": max((p.level for p in facts.pages), default=None),
            "statements": statements}


def _rows_sentence(window: Mapping[str, Any]) -> str:
    rows = window["rows_missing"]
    where = window["location"]
    if rows is None:
        return f"the data it replaced is kept in {where} (rows not compared)"
    tables = sum(1 for t in window["tables"] if t["missing"])
    return (f"{rows} row(s) of {tables} table(s) in the kept copy are not in the restored "
            f"database; they are kept in {where}")


def _step_text(step: RunStep) -> str:
    attempt = f" (attempt {step.attempt})" if step.attempt > 1 else ""
    head = f"step {step.idx} {step.kind}{attempt}"
    if step.ended_at is None:
        return f"{head}: began, never ended (interrupted)"
    text = f"{head}: {step.outcome} after {_span(step.started_at, step.ended_at)}"
    return text + (f": {_one_line(step.message)}" if step.message else "")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _timeline(facts: IncidentFacts) -> list[dict[str, Any]]:
    entries: list[tuple[float, int, dict[str, Any]]] = []

    def add(t: float, kind: str, text: str, **refs: Any) -> None:
        entries.append((t, len(entries), {"t": t, "kind": kind, "text": text, **refs}))

    for d in facts.decisions:
        asked = f" (asked for {d.requested_action})" if d.requested_action != d.action else ""
        add(d.t, "decision", f"decision {d.kind}: {d.scenario} ({d.severity}) -> {d.action}"
            f"{asked} [{d.mode}]: {_one_line(d.reason)}")
    for run in facts.runs:
        where = f"; restore point {run.restore_point}" if run.restore_point else ""
        add(run.started_at, "run", f"run {run.id} began: {run.runbook} ({run.action}) by "
            f"{run.requested_by}; plan: {', '.join(run.plan) or 'empty'}{where}", run=run.id)
        for step in facts.steps.get(run.id, []):
            add(step.started_at, "step", _step_text(step), run=run.id, step=step.idx,
                attempt=step.attempt)
        if run.ended_at is not None:
            add(run.ended_at, "run", f"run {run.id} ended {run.status} after "
                f"{_span(run.started_at, run.ended_at)}"
                + (f": {_one_line(run.summary)}" if run.summary else ""), run=run.id)
    for page in facts.pages:
        add(page.t, "page", f"page level {page.level} ({page.template}): "
            f"{_one_line(page.summary)}", page=page.id)
    for r in facts.restores:
        add(r.started_at, "restore", f"restore {r.id} began: {r.strategy} of {r.source} into "
            f"{r.database} by {r.requested_by}", restore=r.id)
        if r.finished_at is not None:
            kept = f"; the data before it is kept in {r.kept_kind} {r.kept}" if r.kept else ""
            error = f": {_one_line(r.error)}" if r.error else ""
            add(r.finished_at, "restore", f"restore {r.id} {r.status}{kept}{error}",
                restore=r.id)
    return [entry for _, _, entry in sorted(entries, key=lambda e: (e[0], e[1]))]


_SIGNAL = re.compile(r"\b([a-z][a-z0-9_]*(?:\.[a-z0-9_]+)+)\s*(?<![=<>!])=(?!=)\s*"
                     r"(-?\d+(?:\.\d+)?(?:e-?\d+)?)")


def signal_values(text: str) -> list[tuple[str, str]]:
    """``name=value`` pairs in a text (``http.error_ratio=0.31``); conditions such as
    ``migration.failed == 1`` are not values."""
    return [(m.group(1), m.group(2)) for m in _SIGNAL.finditer(text)]


def _root_cause(facts: IncidentFacts) -> dict[str, Any]:
    scenarios: list[dict[str, Any]] = []
    seen: set[str] = set()
    signals: list[dict[str, Any]] = []
    for d in facts.decisions:
        for name, value in signal_values(d.reason):
            signals.append({"signal": name, "value": value, "t": d.t,
                            "source": f"decision {d.kind} {d.scenario}"})
        if d.kind == "resolve" or d.scenario in seen:
            continue
        seen.add(d.scenario)
        scenarios.append({"scenario": d.scenario, "severity": d.severity,
                          "requested_action": d.requested_action, "decision": d.kind,
                          "t": d.t, "reason": _one_line(d.reason)})
    evidence: list[dict[str, Any]] = []
    for run in facts.runs:
        for step in facts.steps.get(run.id, []):
            if step.kind not in EVIDENCE_STEPS and step.outcome != "failed":
                continue
            values = step.details.get("signals")
            if isinstance(values, Mapping):
                for name, value in sorted(values.items()):
                    signals.append({"signal": str(name), "value": str(value),
                                    "t": step.started_at,
                                    "source": f"run {run.id} step {step.idx} {step.kind}"})
            evidence.append({"run": run.id, "step": step.idx, "kind": step.kind,
                             "attempt": step.attempt, "outcome": step.outcome,
                             "message": step.message,
                             "output": _excerpt(step.output)})
    deploy = facts.deploy
    return {"scenarios": scenarios, "signals": signals, "evidence": evidence,
            "deploy": None if deploy is None else {
                "id": deploy.id, "version": deploy.version, "started_at": deploy.started_at,
                "code_version": deploy.code_version}}


def _excerpt(output: str | None) -> str:
    return excerpt(output or "", lines=OUTPUT_LINES)


def run_scope(plan: Sequence[str]) -> dict[str, bool]:
    """What a run's plan touches: the database, the code, the config, the app's process."""
    return {"database": any(k in DATABASE_STEPS for k in plan),
            "code": "rollback_code" in plan, "config": "rollback_config" in plan,
            "app": any(k in ("stop_app", "start_app") for k in plan)}


def _resolution(facts: IncidentFacts) -> dict[str, Any]:
    runs = []
    statements = []
    for run in facts.runs:
        steps = facts.steps.get(run.id, [])
        runs.append({
            "run": run.id, "runbook": run.runbook, "action": run.action, "status": run.status,
            "by": run.requested_by, "started_at": run.started_at, "ended_at": run.ended_at,
            "restore_point": run.restore_point, "scope": run_scope(run.plan),
            "plan": list(run.plan), "summary": run.summary,
            "steps": [{"step": s.idx, "kind": s.kind, "attempt": s.attempt,
                       "outcome": s.outcome, "message": s.message,
                       "started_at": s.started_at, "ended_at": s.ended_at} for s in steps]})
        done = [s.kind for s in steps if s.outcome == "ok"]
        not_run = [k for i, k in enumerate(run.plan, start=1)
                   if not any(s.idx == i for s in steps)]
        statements.append(
            f"run {run.id} ({run.runbook}) {run.status}"
            + (f" after {_span(run.started_at, run.ended_at)}" if run.ended_at else "")
            + f": {len(done)} of {len(run.plan)} planned steps done"
            + (f" ({', '.join(done)})" if done else "")
            + (f"; not reached: {', '.join(not_run)}" if not_run and run.ended_at else ""))
    for r in facts.restores:
        statements.append(r.describe() + (f"; the data before it is kept in {r.kept_kind} "
                                          f"{r.kept}" if r.kept else ""))
    s = facts.summary
    resolved = None
    if s.state == "resolved":
        resolved = {"t": s.updated_at, "reason": _one_line(s.reason)}
        statements.append(f"resolved at {when(s.updated_at)}: {_one_line(s.reason)}")
    else:
        statements.append("the incident is still open")
    return {"runs": runs, "restores": [r.as_json() for r in facts.restores],
            "resolved": resolved, "statements": statements}


PREVENTION: Mapping[str, tuple[str, ...]] = {
    "migration_failed": (
        "Test every migration against a copy of production data before the release "
        "(restore the latest backup into a scratch database, as `rollbackd drill` does, and "
        "run the migrations there).",
        "Keep each migration in one transaction and give it a tested down-migration, so a "
        "failure leaves the schema as it was.",
        "Run the release's migrations through `rollbackd deploy run` so a failure is "
        "journaled at once, with its verified restore point."),
    "data_validation_failed": (
        "Add the check that failed to the pre-release tests, run against a restored copy of "
        "production data.",
        "Make the database reject such data when it is written (NOT NULL, CHECK, foreign "
        "keys) and review the migration or job that wrote it."),
    "app_compromised": (
        "Gate releases on a smoke test of the health endpoint and the main pages in "
        "staging.",
        "Roll out gradually (a canary first) and watch http.up and the error ratio before "
        "all traffic moves.",
        "Find the failing code path in the application's logs of the incident window and "
        "add a regression test for it."),
    "performance_degraded": (
        "Load-test the release on production-sized data and compare its p95 latency with "
        "the previous release's.",
        "Check the plans (EXPLAIN ANALYZE) of new and changed queries; add the indexes they "
        "need in the release's migration."),
    "minor_issue": (
        "Fix forward in the next release, with a regression test for the warning that "
        "fired.",),
    "database_unreachable": (
        "Watch the database server's capacity (connections, disk, memory) and alert before "
        "it runs out.",
        "Consider a standby with failover: a database that cannot be reached cannot be "
        "restored, only paged about."),
    "monitoring_blind": (
        "Make the probes reliable and alert on rollbackd_probe_up: a blind rollbackd pages "
        "instead of acting.",),
}
GENERIC_PREVENTION = (
    "Add a test that reproduces this failure before the next release.",
    "Rehearse the rollback: run `rollbackd drill` on a schedule so the restore points are "
    "known to restore.",
)


def _prevention(facts: IncidentFacts, windows: list[dict[str, Any]]) -> list[str]:
    items: list[str] = []
    for scenario in dict.fromkeys(d.scenario for d in facts.decisions):
        items += PREVENTION.get(scenario, ())
    for d in facts.decisions:
        if d.action != d.requested_action and "restore point" in d.reason:
            items.append("Take and verify a restore point at every deploy (`rollbackd deploy "
                         "begin`), so a rollback is possible when it is needed.")
            break
    failed = {(s.kind, _one_line(s.message or "")) for run in facts.runs
              for s in facts.steps.get(run.id, []) if s.outcome == "failed"}
    for kind, message in sorted(failed):
        items.append(f"Find why step {kind} failed" + (f" ({message})" if message else "")
                     + " and rehearse the runbook until it passes.")
    for window in windows:
        if window["rows_missing"]:
            items.append(f"Reconcile the {window['rows_missing']} row(s) kept in "
                         f"{window['location']} with the restored database, then drop the "
                         "kept copy.")
        elif window["undone"] and window["rows_missing"] is None:
            items.append(f"Check {window['location']} for data written during the window "
                         "the restore undid, then remove it once reconciled.")
    items += GENERIC_PREVENTION
    return list(dict.fromkeys(items))


# -- the data window ------------------------------------------------------------------------


def _restore_state(restore: Restore) -> list[Any]:
    """What a computed data window depends on: while it is the same, it is reused."""
    return [restore.status, restore.finished_at, restore.kept, restore.kept_kind]


def _previous_window(previous: Mapping[str, Any] | None,
                     restore: Restore) -> Mapping[str, Any] | None:
    if previous is None or previous.get("format") != REPORT_FORMAT:
        return None
    for window in previous.get("data_window", []):
        if (isinstance(window, Mapping) and window.get("restore") == restore.id
                and window.get("state") == _restore_state(restore)
                and window.get("compared") and window.get("error") is None):
            return window
    return None


def _location(config: Config, restore: Restore) -> str:
    kept = restore.kept
    if kept is None:
        return "nowhere recorded"
    if restore.kept_kind == "database":
        return f"database {kept} (on the server of {restore.database})"
    if restore.kept_kind == "backup":
        return f"safety backup {kept} ({config.backups.dir / kept})"
    return f"tables {kept} (in database {restore.database})"


def _data_window(config: Config, restore: Restore,
                 previous: Mapping[str, Any] | None) -> dict[str, Any]:
    if previous is not None:
        return dict(previous)
    window: dict[str, Any] = {
        "restore": restore.id, "strategy": restore.strategy, "source": restore.source,
        "status": restore.status, "database": restore.database, "kept": restore.kept,
        "kept_kind": restore.kept_kind, "safety_backup": restore.safety_backup,
        "start": restore.data_window_start, "end": restore.data_window_end,
        "location": _location(config, restore), "undone": restore.completed,
        "state": _restore_state(restore), "compared": False, "computed_at": time.time(),
        "key_cap": KEY_CAP, "tables": [], "rows_missing": None, "error": None, "note": None}
    if not restore.completed:
        window["note"] = {
            "failed": "the restore failed: nothing was replaced, so no data was undone",
            "running": "the restore has not ended (or its process was killed): look at the "
                       "database before trusting it",
            "interrupted": "the restore was interrupted: look at the database before "
                           "trusting it"}.get(restore.status, "the restore did not complete")
        return window
    if restore.kept is None or restore.kept_kind is None:
        window["note"] = "the restore recorded no copy of the data it replaced"
        return window
    if restore.kept_kind == "backup":
        window["note"] = (
            f"the data it replaced is in safety backup {restore.kept}: comparing its rows "
            "with the restored database needs it restored into a scratch database first "
            f"(pg_restore -d <scratch> on the archive in {config.backups.dir / restore.kept})")
        return window
    if config.database is None:
        window["error"] = "the config has no [database] section: the copies were not compared"
        return window
    db = config.database
    live_dsn = with_dbname(db.dsn, restore.database)
    try:
        if restore.kept_kind == "database":
            diffs = compare_databases(live_dsn, with_dbname(db.dsn, restore.kept),
                                      connect_timeout=float(db.connect_timeout),
                                      examples=EXAMPLES)
        else:
            diffs = compare_kept_tables(live_dsn, [c.strip() for c in restore.kept.split(",")],
                                        connect_timeout=float(db.connect_timeout),
                                        examples=EXAMPLES)
    except DataWindowError as exc:
        window["error"] = f"cannot compare the kept copy with the restored database: {exc}"
        return window
    tables = [d.as_json() for d in diffs]
    window.update(compared=True, tables=tables,
                  rows_missing=sum(t["missing"] or 0 for t in tables),
                  computed_at=time.time())
    if any(t["missing"] is None for t in tables):
        window["note"] = ("some tables could not be compared by key (see their notes): the "
                          "count covers the others")
    return window


# -- the execution log ----------------------------------------------------------------------


def execution_log(facts: IncidentFacts, windows: Sequence[Mapping[str, Any]] = ()
                  ) -> list[dict[str, Any]]:
    """The execution log's lines, in time order; each has ``event``, ``t`` and ``time``."""
    lines: list[tuple[float, int, dict[str, Any]]] = []

    def add(t: float, event: str, **fields: Any) -> None:
        lines.append((t, len(lines), {"event": event, "t": t, "time": iso(t),
                                      "incident": facts.incident, **fields}))

    s = facts.summary
    add(s.opened_at, "incident", scenario=s.opened_by, severity=facts.decisions[0].severity
        if facts.decisions else s.severity, action=facts.decisions[0].action
        if facts.decisions else s.action, mode=s.mode)
    for run in facts.runs:
        add(run.started_at, "run_start", run=run.id, runbook=run.runbook,
            rollback_type=run.action, scope=run_scope(run.plan), steps_planned=list(run.plan),
            restore_point=run.restore_point, deploy=run.deploy, scenario=run.scenario,
            by=run.requested_by, deadline=run.deadline)
        steps = facts.steps.get(run.id, [])
        for step in steps:
            add(step.started_at, "step", run=run.id, step=step.idx, kind=step.kind,
                attempt=step.attempt, begun=step.started_at, ended=step.ended_at,
                outcome=step.outcome, message=step.message, output=_excerpt(step.output))
            end = step.ended_at if step.ended_at is not None else step.started_at
            if step.kind in VALIDATION_STEPS and step.ended_at is not None:
                add(end, "validation", run=run.id, step=step.idx, kind=step.kind,
                    outcome=step.outcome, details=dict(step.details))
            if step.outcome == "failed" or step.ended_at is None:
                add(end, "issue", run=run.id, step=step.idx, kind=step.kind,
                    attempt=step.attempt,
                    issue="failed" if step.ended_at is not None else "interrupted",
                    message=step.message)
        if run.ended_at is not None:
            add(run.ended_at, "run_end", run=run.id, status=run.status, summary=run.summary,
                duration=round(run.ended_at - run.started_at, 3))
            add(run.ended_at, "resolution", run=run.id, steps=[
                {"step": st.idx, "kind": st.kind, "message": st.message}
                for st in steps if st.outcome == "ok"])
    for page in facts.pages:
        add(page.t, "issue", run=page.run, issue="page", level=page.level,
            template=page.template, message=page.summary)
    by_restore = {w.get("restore"): w for w in windows}
    for r in facts.restores:
        window = by_restore.get(r.id, {})
        add(r.finished_at if r.finished_at is not None else r.started_at, "restore",
            restore=r.id, strategy=r.strategy, restore_point=r.source, status=r.status,
            started=r.started_at, finished=r.finished_at, kept=r.kept, kept_kind=r.kept_kind,
            safety_backup=r.safety_backup, data_window_start=r.data_window_start,
            data_window_end=r.data_window_end, rows_missing=window.get("rows_missing"),
            error=r.error)
    if s.state == "resolved":
        add(s.updated_at, "resolved", reason=s.reason)
    return [line for _, _, line in sorted(lines, key=lambda e: (e[0], e[1]))]


# -- Markdown ---------------------------------------------------------------------------------


def _md(text: object) -> str:
    """Inline text: one line, no HTML."""
    return _one_line(str(text)).replace("<", "&lt;")


def _cell(text: object) -> str:
    return _md(text).replace("|", "\\|")


def _fence(text: str) -> list[str]:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence, *text.splitlines(), fence]


def render_markdown(data: Mapping[str, Any]) -> str:
    """report.md from report.json's object: every fact it states is in the object."""
    s = data["summary"]
    out = [f"# Incident {data['incident']}: {_md(s['scenario'])} ({data['app']})", "",
           f"Written by rollbackd from its journal at {when(data['generated_at'])}; "
           f"`rollbackd incidents report {data['incident']}` writes it again when the "
           "journal has more.", "",
           "## Summary", "",
           f"- **Outcome:** {_md(s['outcome'])}",
           f"- **State:** {s['state']}",
           f"- **Scenario:** {_md(s['scenario'])} ({s['severity']}) -> {s['action']} "
           f"[{s['mode']}]" + (f", opened by {_md(s['opened_by'])}"
                               if s["opened_by"] != s["scenario"] else ""),
           f"- **Opened:** {when(s['opened_at'])}",
           f"- **Resolved:** {when(s['resolved_at'], missing='not yet')}",
           f"- **Duration:** {format_duration(round(s['duration_s']))}"]
    if s["deploy"] is not None:
        d = s["deploy"]
        out.append(f"- **Deploy:** {d['id']} (version {_md(d['version'])}, {d['status']}, "
                   f"restore point {_md(d['restore_point'] or 'none')})")
    out += [f"- **Run:** {_md(r)}" for r in s["runs"]]
    out += [f"- **Restore:** {_md(r)}" for r in s["restores"]]
    out += ["", "## Impact", ""]
    out += [f"- {_md(line)}" for line in data["impact"]["statements"]]
    out += ["", "## Timeline", ""]
    out += [f"- {when(e['t'])} — {_md(e['text'])}" for e in data["timeline"]]
    annotations = data.get("annotations") or {}
    out += _root_cause_md(data["root_cause"],
                          _annotation_md(annotations.get("root_cause"), "--root-cause",
                                         data["incident"]))
    out += ["", "## Resolution", ""]
    out += [f"- {_md(line)}" for line in data["resolution"]["statements"]]
    for run in data["resolution"]["runs"]:
        out += ["", f"Run {run['run']} ({_md(run['runbook'])}, {run['action']}) steps:", ""]
        out += [f"{n}. {step['kind']}" + (f" (attempt {step['attempt']})"
                                          if step["attempt"] > 1 else "")
                + f": {step['outcome'] or 'interrupted'}"
                + (f" — {_md(step['message'])}" if step["message"] else "")
                for n, step in enumerate(run["steps"], start=1)]
    out += ["", "## Prevention", ""]
    out += _annotation_md(annotations.get("prevention"), "--prevention", data["incident"])
    out += [f"- [ ] {_md(item)}" for item in data["prevention"]]
    out += _data_window_md(data["data_window"])
    return "\n".join(out) + "\n"


def _annotation_md(noted: Mapping[str, Any] | None, option: str, incident: object) -> list[str]:
    """A person's text (``incidents annotate``), quoted line by line so that it stays inside
    its section, with who wrote it; or the command that writes it. What rollbackd recorded
    follows either way."""
    if not noted:
        return [f"Not written yet (`rollbackd incidents annotate {incident} {option} TEXT`). "
                "What rollbackd recorded:", ""]
    lines = [f"> {_md(line)}" if line.strip() else ">"
             for line in str(noted["text"]).splitlines()]
    return [*lines, "", f"— written by {_md(noted['by'])} at {when(noted['t'])}. "
            "What rollbackd recorded:", ""]


def _root_cause_md(root: Mapping[str, Any], annotation: Sequence[str] = ()) -> list[str]:
    out = ["", "## Root cause", "", *annotation]
    if root["deploy"] is not None:
        d = root["deploy"]
        out.append(f"- Deploy {d['id']} (version {_md(d['version'])}) began at "
                   f"{when(d['started_at'])}.")
    for sc in root["scenarios"]:
        out.append(f"- Rule **{_md(sc['scenario'])}** ({sc['severity']}, asks for "
                   f"{sc['requested_action']}), {sc['decision']} at {when(sc['t'])}: "
                   f"{_md(sc['reason'])}")
    if root["signals"]:
        out += ["", "Signal values:", ""]
        out += [f"- {_md(v['signal'])} = {_md(v['value'])} ({_md(v['source'])}, "
                f"{when(v['t'])})" for v in root["signals"]]
    for ev in root["evidence"]:
        out += ["", f"Run {ev['run']}, step {ev['step']} {ev['kind']}"
                + (f" (attempt {ev['attempt']})" if ev["attempt"] > 1 else "")
                + f": {ev['outcome'] or 'interrupted'}"
                + (f" — {_md(ev['message'])}" if ev["message"] else "")]
        if ev["output"]:
            out += ["", *_fence(ev["output"])]
    return out


def _data_window_md(windows: Sequence[Mapping[str, Any]]) -> list[str]:
    out = ["", "## Data window", ""]
    if not windows:
        return [*out, "No database restore in this incident: no data was undone."]
    for w in windows:
        out += [f"### Restore {w['restore']}: {w['strategy']} of {_md(w['source'])} "
                f"({w['status']})", ""]
        if w["undone"]:
            out.append(f"- Undone: the data written from "
                       f"{when(w['start'], missing='an unknown time')} to "
                       f"{when(w['end'], missing='an unknown time')}")
            out.append(f"- Kept in: {_md(w['location'])}")
        if w["compared"]:
            out.append(f"- Rows of the kept copy not in the restored database: "
                       f"{w['rows_missing']} (compared at {when(w['computed_at'])}, by "
                       f"primary key, at most {w['key_cap']} keys per table)")
        if w["note"]:
            out.append(f"- Note: {_md(w['note'])}")
        if w["error"]:
            out.append(f"- Error: {_md(w['error'])}")
        if w["tables"]:
            out += ["", "| Table | Kept as | Key | Rows missing | Compared | Example keys "
                    "| Notes |", "|---|---|---|---|---|---|---|"]
            for t in w["tables"]:
                out.append(
                    f"| {_cell(t['table'])} | {_cell(t['kept_as'])} "
                    f"| {_cell(', '.join(t['key']) or '(none)')} "
                    f"| {'' if t['missing'] is None else t['missing']} "
                    f"| {t['compared']}{' (capped)' if t['capped'] else ''} "
                    f"| {_cell(', '.join(t['examples']))} | {_cell(t['note'] or '')} |")
        out.append("")
    return out[:-1]


# -- the files --------------------------------------------------------------------------------


def _owner(state_dir: Path) -> tuple[int, int] | None:
    """Files written by root (``sudo rollbackd incidents report``) belong to the state
    directory's owner, so that the daemon can write them again."""
    if os.geteuid() != 0:
        return None
    with contextlib.suppress(OSError):
        st = state_dir.stat()
        return st.st_uid, st.st_gid
    return None


def _private_dir(path: Path, owner: tuple[int, int] | None) -> None:
    created = not path.exists()
    path.mkdir(mode=0o700, exist_ok=True)
    path.chmod(0o700)
    if owner is not None:
        os.chown(path, *owner)
    if created:
        fsync_dir(path.parent)


def write_report(config: Config, report: IncidentReport) -> ReportPaths:
    """Write the three files (each replaced atomically) into the incident's directory."""
    state_dir = config.daemon.state_dir
    paths = ReportPaths.of(state_dir, report.incident)
    owner = _owner(state_dir)
    log = "".join(json.dumps(line, sort_keys=True, default=str) + "\n"
                  for line in report.execution)
    target = paths.directory
    try:
        _private_dir(paths.directory.parent, owner)
        _private_dir(paths.directory, owner)
        for target, content in ((paths.execution_log, log),
                                (paths.json, json.dumps(report.data, sort_keys=True,
                                                        indent=1, default=str) + "\n"),
                                (paths.markdown, report.markdown())):
            replace_atomically(target, content.encode(), mode=0o600, owner=owner)
    except OSError as exc:
        raise ReportWriteError(f"{target}: cannot write the incident report: "
                               f"{exc.strerror or exc}") from None
    return paths


def read_report(paths: ReportPaths) -> dict[str, Any] | None:
    """The report.json written before, or None (missing, unreadable or damaged)."""
    try:
        data = json.loads(paths.json.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True, slots=True)
class CurrentReport:
    report: IncidentReport
    paths: ReportPaths
    written: bool
    """False: the report on disk was up to date and is returned as it is."""
    write_error: str | None = None
    """The report was made but could not be written (``ReportWriteError``'s text)."""


def current_report(config: Config, facts: IncidentFacts) -> CurrentReport:
    """The incident's report: the one on disk when it was made from the same journal rows,
    else made again (reusing data windows already computed) and written. A report that
    cannot be written is still returned, with ``write_error``."""
    paths = ReportPaths.of(config.daemon.state_dir, facts.incident)
    previous = read_report(paths)
    if (previous is not None and previous.get("format") == REPORT_FORMAT
            and previous.get("journal") == facts.fingerprint and paths.complete()):
        return CurrentReport(IncidentReport(previous, []), paths, written=False)
    report = build_report(config, facts, previous=previous)
    try:
        write_report(config, report)
    except ReportWriteError as exc:
        return CurrentReport(report, paths, written=False, write_error=str(exc))
    return CurrentReport(report, paths, written=True)


def write_incident_report(config: Config, journal: Journal, incident: int) -> ReportPaths:
    """(Re)write the incident's execution log and report: what the executor calls when a run
    ends. Blocking (it may compare databases). Raises :class:`ReportError` for an incident
    the journal does not have, :class:`ReportWriteError` when the files cannot be written,
    and the journal's errors."""
    facts = gather_facts(journal, incident)
    if facts is None:
        raise ReportError(f"no incident {incident} in the journal")
    paths = ReportPaths.of(config.daemon.state_dir, incident)
    report = build_report(config, facts, previous=read_report(paths))
    return write_report(config, report)
