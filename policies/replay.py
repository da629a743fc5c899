"""The replay contract of ``rollbackd simulate``: JSON Lines in, the engine's decisions out.

Besides ``signals`` lines and the deploy, migration, alert, pause, resume and close events
(DESIGN section 3), a replay may hold the executor's runbook events, as the daemon journals
them::

    {"t": 200, "event": {"type": "runbook", "phase": "begin", "incident": 1,
                         "runbook": "immediate_rollback"}}
    {"t": 560, "event": {"type": "runbook", "phase": "end", "incident": 1,
                         "runbook": "immediate_rollback", "status": "succeeded",
                         "restored": true}}

``incident`` is null (or absent) for a run by hand. Once a run of the open incident has begun,
every decision for that incident pages (``action`` "page", ``reason`` says why): never a second
automatic rollback, and it does not resolve by ``clear_for``. An end with ``status``
"succeeded" starts the incident's watch period (``guards.watch_for``): the first rule to fire
inside it escalates the incident with a page; if none does, the incident resolves when the
watch period ends; if one did, it resolves once the watch period is over and its rules are
clear for their ``clear_for``. An end with ``status`` "failed" leaves the incident open until a
person closes it. An end that succeeded, or with ``restored`` true, sets ``migration.failed``
to 0 (like a deploy begin) and leaves the deploy nothing to roll back to until the next one.

``simulate`` invents no runbook events: without them, it assumes every automatic rollback it
decides is carried out at the moment of the decision, for the rate limit only, and an incident
still never has a second automatic rollback.

A line may say ``"at"``: the time the engine is given for it when that differs from ``t``, the
step the line belongs to (lines are ordered, and decided, by ``t``). A recording of the daemon
(``rollbackd run --record``) needs it: a cycle feeds its samples, then the events journaled
since the last cycle, each at its own time (earlier, or a moment later), and decides once at
the cycle's time::

    {"t": 1000.9, "signals": {"http.error_ratio": 0.01}}
    {"t": 1000.9, "at": 1000.4, "event": {"type": "deploy", "phase": "begin", "version": "v2"}}
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from policies.catalogue import EVENT_FED_PREFIX
from policies.engine import Decision, Engine
from policies.events import EventError, excerpt, is_number, parse_event
from policies.policy import Policy
from policies.samples import SIGNAL_NAME


class ReplayError(ValueError):
    """A malformed replay line; ``str()`` is ``line N: what is wrong``."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass(frozen=True, slots=True)
class ReplayLine:
    t: float
    signals: Mapping[str, float | None] | None
    event: Mapping[str, Any] | None
    at: float | None = None
    """The time the engine is given for the line, when not ``t``."""


def _signals(raw: Any, line: int) -> dict[str, float | None]:
    if not isinstance(raw, dict):
        raise ReplayError(line, '"signals" must be an object of name: number or null')
    values: dict[str, float | None] = {}
    for name, value in raw.items():
        if name.startswith(EVENT_FED_PREFIX):
            # The engine counts alerts from alert events; a value here would be ignored.
            raise ReplayError(line, f"{name}: alert signals come from alert events, "
                                    "not from signals lines")
        if not SIGNAL_NAME.fullmatch(name):
            raise ReplayError(line, f"{excerpt(name)} is not a signal name "
                                    "(e.g. http.error_ratio)")
        if value is not None and not is_number(value):
            raise ReplayError(line, f"signal {name}: expected a number or null, "
                                    f"got {excerpt(value)}")
        values[name] = None if value is None else float(value)
    return values


def _event(raw: Any, line: int) -> dict[str, Any]:
    try:
        event = parse_event(raw)
    except EventError as exc:
        raise ReplayError(line, str(exc)) from None
    if event["type"] == "deploy":
        # The replay contract: simulate assumes every deploy has a verified restore point.
        event.setdefault("verified", True)
    return event


def parse_line(raw: str | bytes, line: int) -> ReplayLine | None:
    """One replay line; ``None`` for a blank line."""
    try:
        text = raw.decode() if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise ReplayError(line, f"not UTF-8 (byte {exc.start + 1})") from None
    if not text.strip():
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReplayError(line, f"not JSON: {exc.msg} at column {exc.colno}") from None
    except RecursionError:
        raise ReplayError(line, "JSON nested too deeply") from None
    except ValueError:
        raise ReplayError(line, "a number has too many digits") from None
    if not isinstance(data, dict):
        raise ReplayError(line, "expected a JSON object")
    t = data.get("t")
    if not isinstance(t, int | float) or not is_number(t) or t < 0:
        raise ReplayError(line, '"t" must be a number of seconds >= 0')
    extra = set(data) - {"t", "at", "signals", "event"}
    if extra:
        raise ReplayError(line, f"unknown key {excerpt(sorted(extra)[0])}")
    if ("signals" in data) == ("event" in data):
        raise ReplayError(line, 'a line has either "signals" or "event"')
    at = data.get("at")
    if "at" in data and (not isinstance(at, int | float) or not is_number(at) or at < 0):
        raise ReplayError(line, '"at" must be a number of seconds >= 0')
    fed = None if at is None else float(at)
    if "signals" in data:
        return ReplayLine(float(t), _signals(data["signals"], line), None, fed)
    return ReplayLine(float(t), None, _event(data["event"], line), fed)


def parse_replay(lines: Iterable[str | bytes]) -> Iterator[ReplayLine]:
    """The replay's lines, each read and checked only when the engine asks for it, so memory
    is bounded by the policy's windows and not by the file (a 100 MB replay held as a list
    took 656 MB).

    A bad line raises :class:`ReplayError` when the iteration reaches it: by then decisions of
    the lines before it may have come out of :func:`run`. A caller that must not show partial
    output collects the decisions before showing any; ``lines`` must stay readable (a file
    open) until the iteration ends.
    """
    last: float | None = None
    for number, text in enumerate(lines, start=1):
        line = parse_line(text, number)
        if line is None:
            continue
        if last is not None and line.t < last:
            raise ReplayError(number, f"t={line.t:g} is earlier than the line before")
        last = line.t
        yield line


def run(policy: Policy, lines: Iterable[ReplayLine], mode: str = "auto") -> Iterator[Decision]:
    """Feed the engine line by line as ``lines`` yields them; it decides once per distinct
    ``t``, after all its lines. Holds no line once the engine has taken it."""
    engine = Engine(policy, mode, recorded=True)
    current: float | None = None
    for line in lines:
        if current is not None and line.t != current:
            yield from engine.decide(current)
        current = line.t
        at = line.t if line.at is None else line.at
        if line.signals is not None:
            engine.observe(at, line.signals)
        elif line.event is not None:
            engine.record(at, line.event)
    if current is not None:
        yield from engine.decide(current)


def to_jsonl(decision: Decision) -> str:
    return json.dumps(decision.as_dict())
