"""Events the decision engine accepts, checked in one place for every source: replay lines,
the journal (deploy and migration records, pages from Alertmanager, operators' commands, the
executor's runbook runs)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from policies.runbooks import ACTION_RUNBOOK

ENUMS: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "deploy": {"phase": ("begin", "end")},
    "migration": {"status": ("failed", "succeeded")},
    "alert": {"status": ("firing", "resolved")},
    "pause": {},
    "resume": {},
    "close": {},
    "approve": {},
    "baseline": {},
    "runbook": {"phase": ("begin", "end")},
    "annotate": {},
    "ack": {},  # a person saw the incident's page: escalation stops (the engine ignores it)
}
RUN_STATUSES = ("succeeded", "failed")


class EventError(ValueError):
    """An event the engine cannot use; ``str()`` says which field is wrong."""


def excerpt(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to about ``limit`` characters: a message stays one readable line
    whatever the input holds."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 4]}...{text[-1]}"


def is_number(value: Any) -> bool:
    """A finite number the engine can compute with (an integer too large for a float is not)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def parse_event(raw: Any) -> dict[str, Any]:
    """``raw`` checked as an event; returned as a new dict (the caller's object is not kept)."""
    if not isinstance(raw, Mapping):
        raise EventError("an event must be an object")
    kind = raw.get("type")
    if not isinstance(kind, str) or kind not in ENUMS:
        raise EventError(f"event type {excerpt(kind)} is not one of {', '.join(ENUMS)}")
    for key, allowed in ENUMS[kind].items():
        if raw.get(key) not in allowed:
            raise EventError(f"{kind} event: {key} must be one of {', '.join(allowed)}")
    for key in ("version", "by", "decision", "reason", "runbook", "root_cause", "prevention"):
        if key in raw and not isinstance(raw[key], str):
            raise EventError(f"{kind} event: {key} must be a string")
    if "verified" in raw and not isinstance(raw["verified"], bool):
        raise EventError(f"{kind} event: verified must be true or false")
    if kind in ("close", "approve", "annotate"):
        # approve: a person's go for the incident's rollback (approve mode); the engine
        # ignores it, the daemon starts the runbook. annotate: a person's root cause and
        # prevention for the incident's report; the engine ignores it too.
        incident = raw.get("incident")
        if not isinstance(incident, int) or isinstance(incident, bool) or incident < 1:
            raise EventError(f"{kind} event: incident must be the incident's number")
    if kind == "approve":
        _check_approval(raw)
    if kind == "runbook":
        _check_run(raw)
    if kind == "alert":
        labels = raw.get("labels")
        if (not isinstance(labels, Mapping) or not isinstance(labels.get("alertname"), str)
                or not all(isinstance(k, str) and isinstance(v, str)
                           for k, v in labels.items())):
            raise EventError("alert event: labels must map strings to strings, with an alertname")
    if kind == "baseline":
        values = raw.get("values")
        if not isinstance(values, Mapping) or not all(
                isinstance(k, str) and (v is None or is_number(v)) for k, v in values.items()):
            raise EventError("baseline event: values must map signal names to numbers or null")
    return dict(raw)


APPROVED_ACTIONS = tuple(ACTION_RUNBOOK)
"""The rollback actions, each with its bundled runbook."""


def _check_approval(raw: Mapping[str, Any]) -> None:
    """A person's approval may name the rollback ``action`` they chose (absent: the incident's
    own) and, for a selective rollback, the ``tables`` whose data it restores."""
    if "action" in raw and raw["action"] not in APPROVED_ACTIONS:
        raise EventError(f"approve event: action must be one of {', '.join(APPROVED_ACTIONS)}")
    tables = raw.get("tables", [])
    if not isinstance(tables, list) or not all(isinstance(t, str) and t for t in tables):
        raise EventError("approve event: tables must be a list of table names")


def _check_run(raw: Mapping[str, Any]) -> None:
    """A runbook run's begin or end, as the executor journals it: ``incident`` (the incident's
    number, or null or absent for a run by hand outside any incident), ``runbook`` (its name);
    an end also ``status`` (succeeded or failed) and ``restored`` (whether the run put the
    database back: from the restore point, or by a down-migration)."""
    incident = raw.get("incident")
    if incident is not None and (not isinstance(incident, int) or isinstance(incident, bool)
                                 or incident < 1):
        raise EventError("runbook event: incident must be the incident's number, or null for "
                         "a run by hand")
    name = raw.get("runbook")
    if not isinstance(name, str) or not name:
        raise EventError("runbook event: runbook must be the runbook's name")
    if raw["phase"] == "begin":
        if "status" in raw or "restored" in raw:
            raise EventError("runbook event: a begin has no status or restored (an end has)")
        return
    if raw.get("status") not in RUN_STATUSES:
        raise EventError(f"runbook event: status must be one of {', '.join(RUN_STATUSES)}")
    if not isinstance(raw.get("restored"), bool):
        raise EventError("runbook event: restored must be true or false")
