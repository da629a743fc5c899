"""Events the decision engine accepts, checked in one place for every source: replay lines,
the journal (deploy and migration records, pages from Alertmanager, operators' commands)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

ENUMS: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "deploy": {"phase": ("begin", "end")},
    "migration": {"status": ("failed", "succeeded")},
    "alert": {"status": ("firing", "resolved")},
    "pause": {},
    "resume": {},
    "close": {},
    "approve": {},
    "baseline": {},
}


class EventError(ValueError):
    """An event the engine cannot use; ``str()`` says which field is wrong."""


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def parse_event(raw: Any) -> dict[str, Any]:
    """``raw`` checked as an event; returned as a new dict (the caller's object is not kept)."""
    if not isinstance(raw, Mapping):
        raise EventError("an event must be an object")
    kind = raw.get("type")
    if not isinstance(kind, str) or kind not in ENUMS:
        raise EventError(f"event type {kind!r} is not one of {', '.join(ENUMS)}")
    for key, allowed in ENUMS[kind].items():
        if raw.get(key) not in allowed:
            raise EventError(f"{kind} event: {key} must be one of {', '.join(allowed)}")
    for key in ("version", "by", "decision", "reason", "runbook"):
        if key in raw and not isinstance(raw[key], str):
            raise EventError(f"{kind} event: {key} must be a string")
    if "verified" in raw and not isinstance(raw["verified"], bool):
        raise EventError(f"{kind} event: verified must be true or false")
    if kind in ("close", "approve"):
        # approve: a person's go for the incident's rollback (approve mode); the engine
        # ignores it, the daemon starts the runbook.
        incident = raw.get("incident")
        if not isinstance(incident, int) or isinstance(incident, bool) or incident < 1:
            raise EventError(f"{kind} event: incident must be the incident's number")
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
