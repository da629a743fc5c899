"""Who is paged next: escalation levels, from the time an incident has waited unanswered,
its acknowledgements and what forced it up. Pure: the daemon's timer asks, the outbox sends.

The procedures' chain is the default: L1 the development lead at once, L2 the technical
director after 15 minutes unanswered, L3 the CTO after 30. The highest level reached is paged
again every ``repeat`` until someone acknowledges. Something that goes wrong after a person
has seen the incident (a failed validation after a rollback, a rule firing during the watch
period) forces the next level at once and needs a new acknowledgement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec

from policies.schema import Model, SchemaError, Within, convert, dotted
from policies.units import Duration

OnTimeout = Literal["page", "fix_forward", "dismiss"]
"""What applies when an incident waiting for a person reaches its timeline's end: ``page``
keeps paging at the top level; the others close the incident with that decision. Never an
automatic rollback: that is a person's call."""

DEFAULT_REPEAT = 900.0


class EscalationError(ValueError):
    """An ``[[escalation]]`` table that cannot be used; ``str()`` names the level and key."""


@dataclass(frozen=True, slots=True)
class Level:
    number: int
    """1 for L1 and so on, in the order the policy lists them."""
    who: str
    after: float
    """Seconds the incident has waited unanswered before this level is paged."""
    repeat: float = DEFAULT_REPEAT
    """While unacknowledged, the highest level reached is paged again this often."""
    channels: tuple[str, ...] = ()
    """The channels to page this level through, in order; empty: the configured order."""

    @property
    def name(self) -> str:
        return f"L{self.number}"

    @property
    def recipient(self) -> str:
        return f"{self.name} {self.who}"


DEFAULT_LEVELS = (
    Level(1, "development lead", 0.0),
    Level(2, "technical director", 900.0),
    Level(3, "CTO", 1800.0),
)


class _LevelFile(Model):
    who: Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[^\r\n]+$")]
    after: Duration
    """0 to 30d."""
    repeat: Annotated[Duration, Within(ge=1)] = Duration(DEFAULT_REPEAT)
    """1s to 30d."""
    channels: list[Literal["alertmanager", "pagerduty", "slack", "email", "webhook"]] = (
        msgspec.field(default_factory=list))


def parse_levels(tables: Sequence[Any], path: str) -> tuple[Level, ...]:
    """The policy's ``[[escalation]]`` tables, in order (L1 first); the procedures' three
    levels when there are none. Delays must grow: a later level is never paged before an
    earlier one."""
    if not tables:
        return DEFAULT_LEVELS
    levels: list[Level] = []
    for index, raw in enumerate(tables):
        where = f"{path}: escalation L{index + 1}"
        try:
            spec = convert(raw, _LevelFile)
        except SchemaError as exc:
            key = dotted(exc.keys) or "level"
            raise EscalationError(f"{where}: {key}: {exc.message}") from None
        if levels and spec.after <= levels[-1].after:
            raise EscalationError(f"{where}: after: must be later than L{index}'s "
                                  f"({levels[-1].after:g}s)")
        levels.append(Level(index + 1, spec.who, spec.after, spec.repeat,
                            tuple(spec.channels)))
    if levels[0].after != 0:
        raise EscalationError(f"{path}: escalation L1: after: must be 0s (the first level is "
                              "paged at once)")
    return tuple(levels)


@dataclass(frozen=True, slots=True)
class Waiting:
    """What the daemon knows of one incident that waits for a person."""

    since: float
    """When it began to wait (the decision that asked for a person)."""
    acked_at: float | None
    """The latest acknowledgement, if any."""
    forced: Sequence[float] = ()
    """When something forced the next level at once (each counts one level up)."""
    paged: Mapping[int, tuple[float, int]] = field(default_factory=dict)
    """Per level number: (when it was last paged, how many times)."""


@dataclass(frozen=True, slots=True)
class Due:
    """A page to send now: ``level``, and ``repeat`` (0 the first page of that level, n the
    n-th page again)."""

    level: Level
    repeat: int
    forced: bool = False


def acknowledged(state: Waiting) -> bool:
    """Acknowledged, and nothing forced the escalation up since."""
    if state.acked_at is None:
        return False
    return all(t <= state.acked_at for t in state.forced)


def level_reached(levels: Sequence[Level], state: Waiting, now: float) -> int:
    """The highest level number the incident has reached: by time waited unanswered (up to
    the acknowledgement), plus one for each forcing, never past the top."""
    stop = now if state.acked_at is None else min(now, state.acked_at)
    waited = max(0.0, stop - state.since)
    reached = max((lv.number for lv in levels if lv.after <= waited), default=1)
    return min(len(levels), reached + len(state.forced))


def due(levels: Sequence[Level], state: Waiting, now: float, *,
        top: bool = False) -> list[Due]:
    """The pages to send now. Every level reached that was never paged is paged (in order),
    then, while unacknowledged, the highest one again once its ``repeat`` has passed.
    ``top``: the timeline ran out with ``on_timeout = "page"``: the top level is reached."""
    reached = len(levels) if top else level_reached(levels, state, now)
    if acknowledged(state):
        return []
    pages = [Due(lv, 0, forced=bool(state.forced) and lv.number == reached)
             for lv in levels[:reached] if lv.number not in state.paged]
    highest = levels[reached - 1]
    last = state.paged.get(highest.number)
    if last is not None and now - last[0] >= highest.repeat:
        pages.append(Due(highest, last[1]))
    return pages


def timeline_over(since: float, timeline_s: float | None, now: float) -> bool:
    """The incident waited its whole timeline (``next release`` never runs out)."""
    return timeline_s is not None and now >= since + timeline_s
