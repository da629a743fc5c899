"""The facts a page is rendered from: strings only, computed from the journal.

Every page says what the journal says of the incident, never what an alert or a webhook
wrote: text that may have come from outside (decision reasons carry alert names, a person's
reason, a deploy's version; run summaries carry command errors; annotations are a person's)
is only ever shown through :func:`quote`, one line, bounded, its control characters escaped,
so that no value can forge a line of the page ("x\\nEMERGENCY: all clear" stays inside its
quotes on the line it belongs to). Names rollbackd chose (scenarios, runbooks, databases) go
through :func:`plain`: one line, bounded.

The fact names are :data:`GENERAL_FACTS` (every page) and :data:`INCIDENT_FACTS` (pages about
an incident); :mod:`daemon.paging.templates` accepts only these as placeholders.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Sequence
from pathlib import Path

from daemon.fmt import when
from daemon.journal import Journal, Noted, Restore, Run, RunStep
from policies.catalogue import is_known
from policies.engine import Decision
from policies.units import format_duration

STATUS_EVERY = 15 * 60
"""Seconds between status updates while a run goes (the procedures' 15 minutes)."""
SHORT_TERM = 24 * 3600
"""The procedures' short-term actions are due within 24 hours of the resolution."""
LONG_TERM = 7 * 24 * 3600
"""The long-term actions, within a week."""

QUOTE_CHARS = 200
"""The most of one outside value a page shows."""
EVIDENCE_LINES = 20
"""The newest decisions listed as evidence; older ones are counted."""
PLAIN_CHARS = 120

GENERAL_FACTS = ("app", "now", "level", "recipient", "sender", "channel", "host", "note")
INCIDENT_FACTS = (
    "incident", "summary", "scenario", "opened_by", "severity", "action", "mode", "state",
    "opened_at", "updated_at", "elapsed", "timeline", "deadline", "reason", "what_fired",
    "evidence", "user_impact", "next_update", "options", "api_decision", "expected_downtime",
    "drill", "run", "runbook", "run_status", "run_started_at", "run_elapsed", "step_index",
    "step_count", "step_kind", "steps_done", "restore_point", "resolved_at",
    "resolution_time", "resolution", "services_affected", "data_loss", "runs_summary",
    "root_cause", "prevention", "annotate_command", "report_command", "report_path",
    "short_term_due", "long_term_due",
)

OPTIONS = ("immediate_rollback", "planned_rollback", "selective_rollback --tables T",
           "fix_forward", "dismiss")
"""What a person may answer a decision request with (``rollbackd decide N ...``)."""

USER_IMPACT = {
    "immediate_rollback": "the app is stopped at once while its database and code are rolled "
                          "back: users see it unavailable until the rollback ends",
    "planned_rollback": "the app is put in maintenance and stopped gracefully for the "
                        "rollback: users see it unavailable for the expected downtime",
    "selective_rollback": "only the affected tables are restored while the app runs: users "
                          "may see those tables' recent changes undone",
}
NO_CHANGE = "rollbackd changes nothing by itself: users see the failure until a person acts"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)+")


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """``value`` as a quoted, escaped, bounded one-liner (Python's repr of the text: a newline
    shows as ``\\n``, an escape sequence or a bidi override as ``\\x1b``, ``\\u202e``)."""
    text = str(value)
    if len(text) > limit:
        text = text[:limit - 1] + "…"
    return repr(text)


def plain(value: object, limit: int = PLAIN_CHARS) -> str:
    """A name rollbackd chose, as one bounded line: anything unprintable becomes a space."""
    text = " ".join("".join(c if c.isprintable() else " " for c in str(value)).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _duration(seconds: float) -> str:
    return format_duration(round(max(0.0, seconds)))


def general_facts(app: str, *, now: float, level: int = 0,
                  recipient: str = "") -> dict[str, str]:
    """What every page can say: for test pages and for contacts paged outside an incident.
    ``sender`` and ``channel`` are defaults a caller may replace (with who pages a contact,
    which channel a test goes through)."""
    return {
        "app": plain(app),
        "now": when(now),
        "level": f"L{level}" if level > 0 else "outside escalation",
        "recipient": plain(recipient) or "the on-call engineer",
        "sender": "the on-call engineer",
        "channel": "this channel",
        "host": plain(socket.gethostname()),
        "note": "(none)",
    }


def incident_facts(journal: Journal, app: str, incident: int, *, now: float, level: int = 1,
                   recipient: str = "", state_dir: Path | None = None) -> dict[str, str]:
    """Every fact of :data:`INCIDENT_FACTS` about ``incident``, from the journal (reads only).
    An incident the journal does not have gives the general facts, its number and a summary
    saying so (a page still goes out; the rest renders as unknown)."""
    facts = general_facts(app, now=now, level=level, recipient=recipient)
    summary = journal.incident(incident)
    if summary is None:
        return {**facts, "incident": str(incident),
                "summary": f"incident {incident} is not in the journal"}
    decisions = journal.decisions(limit=1000, incident=incident)
    runs = journal.runs(incident=incident, limit=100)  # newest first
    latest = runs[0] if runs else None
    steps = journal.steps(latest.id) if latest is not None else []
    restores = list(reversed(journal.restores(incident=incident, limit=100)))
    acting = next((d for d in reversed(decisions) if d.kind in ("open", "escalate")), None)
    timeline = acting.timeline_s if acting is not None else None
    deadline = None if timeline is None else summary.opened_at + timeline
    resolved_at = summary.updated_at if summary.state == "resolved" else None
    annotation = journal.annotation(incident)
    n = summary.incident
    facts |= {
        "incident": str(n),
        "summary": (f"incident {n} of {facts['app']}: {plain(summary.scenario)} "
                    f"({summary.severity}) -> {summary.action} [{summary.mode}], opened "
                    f"{when(summary.opened_at)}, "
                    + ("still open" if resolved_at is None else f"resolved {when(resolved_at)}")),
        "scenario": plain(summary.scenario),
        "opened_by": plain(summary.opened_by),
        "severity": summary.severity,
        "action": summary.action,
        "mode": summary.mode,
        "state": summary.state,
        "opened_at": when(summary.opened_at),
        "updated_at": when(summary.updated_at),
        "elapsed": _duration((resolved_at or now) - summary.opened_at),
        "timeline": "none" if timeline is None else _duration(timeline),
        "deadline": "none (the rule has no timeline)" if deadline is None else when(deadline),
        "reason": quote(summary.reason),
        "what_fired": _what_fired(acting or decisions[0]),
        "evidence": _evidence(decisions),
        "user_impact": USER_IMPACT.get(summary.action, NO_CHANGE),
        "next_update": when(now + STATUS_EVERY),
        "options": _options(n),
        "api_decision": (f"POST /api/v1/incidents/{n}/decision with "
                         '{"decision": "<option>", "reason": "...", "by": "<you>"}'),
        **_drill_facts(journal),
        **_run_facts(latest, steps, now),
        "resolved_at": when(resolved_at, missing="not yet"),
        "resolution_time": ("not resolved yet" if resolved_at is None
                            else _duration(resolved_at - summary.opened_at)),
        "resolution": "not resolved yet" if resolved_at is None else quote(summary.reason),
        "services_affected": _services(facts["app"], decisions),
        "data_loss": _data_loss(restores),
        "runs_summary": _runs_summary(list(reversed(runs))),
        "root_cause": _noted(annotation.root_cause),
        "prevention": _noted(annotation.prevention),
        "annotate_command": (f"rollbackd incidents annotate {n} --root-cause '...' "
                             "--prevention '...'"),
        "report_command": f"rollbackd incidents report {n}",
        "report_path": (f"state_dir/incidents/{n}/report.md" if state_dir is None
                        else plain(state_dir / "incidents" / str(n) / "report.md", 300)),
        "short_term_due": when(None if resolved_at is None else resolved_at + SHORT_TERM,
                               missing="24 hours after the resolution"),
        "long_term_due": when(None if resolved_at is None else resolved_at + LONG_TERM,
                              missing="a week after the resolution"),
    }
    return facts


def needs_annotation(journal: Journal, incident: int) -> bool:
    """The incident is resolved and a person has not yet written both its root cause and its
    prevention (``rollbackd incidents annotate``): the reminders go on."""
    summary = journal.incident(incident)
    return (summary is not None and summary.state == "resolved"
            and not journal.annotation(incident).complete)


def _what_fired(d: Decision) -> str:
    return (f"rule {plain(d.scenario)} ({d.severity}) asks for {d.requested_action}, "
            f"decided {d.action} [{d.mode}]: {quote(d.reason)}")


def _evidence(decisions: Sequence[Decision]) -> str:
    lines = [f"- {when(d.t)} {d.kind} {plain(d.scenario)} ({d.severity}) -> {d.action}: "
             f"{quote(d.reason)}" for d in decisions[-EVIDENCE_LINES:]]
    if len(decisions) > EVIDENCE_LINES:
        lines.insert(0, f"- ({len(decisions) - EVIDENCE_LINES} earlier decisions: "
                        "`rollbackd incidents show` lists them)")
    return "\n".join(lines) or "- no decision recorded"


def _options(n: int) -> str:
    return "\n".join(f"- rollbackd decide {n} {option} --reason '...'" for option in OPTIONS)


def _drill_facts(journal: Journal) -> dict[str, str]:
    drill = journal.latest_drill(ok=True)
    if drill is None:
        return {"expected_downtime": "unknown: no drill has run",
                "drill": "no drill has passed (`rollbackd drill` measures the recovery time)"}
    return {"expected_downtime": (f"about {_duration(drill.duration)} (the recovery time of "
                                  f"the last drill, {when(drill.t)})"),
            "drill": (f"the drill of {plain(drill.backup)} passed at {when(drill.t)}: "
                      f"recovery in {_duration(drill.duration)}")}


def _run_facts(run: Run | None, steps: Sequence[RunStep], now: float) -> dict[str, str]:
    if run is None:
        return {"run": "none", "runbook": "none", "run_status": "no runbook has run",
                "run_started_at": "never", "run_elapsed": "0s", "step_index": "0",
                "step_count": "0", "step_kind": "none", "steps_done": "- no step yet",
                "restore_point": "none"}
    current = steps[-1] if steps else None
    done = [f"- step {s.idx} {s.kind}"
            + (f" (attempt {s.attempt})" if s.attempt > 1 else "")
            + (f": {s.outcome} in {_duration(s.ended_at - s.started_at)}"
               if s.ended_at is not None else ": going")
            for s in steps]
    return {
        "run": str(run.id),
        "runbook": plain(run.runbook),
        "run_status": run.status,
        "run_started_at": when(run.started_at),
        "run_elapsed": _duration((run.ended_at or now) - run.started_at),
        "step_index": "0" if current is None else str(current.idx),
        "step_count": str(len(run.plan)),
        "step_kind": "not started" if current is None else plain(current.kind),
        "steps_done": "\n".join(done) or "- no step yet",
        "restore_point": plain(run.restore_point or "none"),
    }


def _services(app: str, decisions: Sequence[Decision]) -> str:
    rules = list(dict.fromkeys(plain(d.scenario) for d in decisions))
    signals = list(dict.fromkeys(name for d in decisions for name in _NAME.findall(d.reason)
                                 if is_known(name)))
    text = f"{app} (rules {', '.join(rules) or 'none'}"
    return text + (f"; signals {', '.join(signals)})" if signals else ")")


def _kept_where(restore: Restore) -> str:
    kept = plain(restore.kept or "")
    if not kept:
        return "it was not kept"
    if restore.kept_kind == "database":
        return f"it is kept in database {kept}"
    if restore.kept_kind == "backup":
        return f"it is kept in safety backup {kept}"
    return f"it is kept in tables {kept} of database {plain(restore.database)}"


def _data_loss(restores: Sequence[Restore]) -> str:
    done = [r for r in restores if r.completed]
    if not done:
        return "no data lost: the database was not restored"
    lines = []
    for r in done:
        what = f"tables {', '.join(plain(t) for t in r.tables)}" if r.tables else "the data"
        lines.append(
            f"- restore {r.id} ({r.strategy} of {plain(r.source)}, {r.status}): {what} written "
            f"from {when(r.data_window_start, missing='an unknown time')} to "
            f"{when(r.data_window_end, missing='an unknown time')} is not in the restored "
            f"database; {_kept_where(r)}")
    return "\n".join(lines)


def _runs_summary(runs: Sequence[Run]) -> str:
    lines = [f"- run {r.id} {plain(r.runbook)} {r.status}"
             + (f" after {_duration(r.ended_at - r.started_at)}" if r.ended_at else "")
             + (f": {quote(r.summary)}" if r.summary else "") for r in runs]
    return "\n".join(lines) or "- no runbook ran"


def _noted(noted: Noted | None) -> str:
    if noted is None:
        return "not written yet"
    return f"{quote(noted.text, 300)} (by {quote(noted.by, 60)}, {when(noted.t)})"
