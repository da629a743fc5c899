"""How rollbackd writes times, sizes and command output for people and for names.

One format per purpose, used everywhere: :func:`when` in every line a person reads,
:func:`iso` in every JSON field, :func:`stamp` and :func:`db_stamp` inside the names of
backups, kept files and databases (their patterns are matched again later, so they never
change), :func:`format_size` for bytes and :func:`excerpt` for what a command printed.
"""

from __future__ import annotations

from datetime import UTC, datetime

EXCERPT_LINES = 10
EXCERPT_CHARS = 2000


def when(t: float | None, missing: str = "never") -> str:
    """A moment as operators read it everywhere in rollbackd: UTC, to the second."""
    if t is None:
        return missing
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(t: float) -> str:
    """A moment in JSON output: ISO 8601, UTC, to the second (``2026-11-29T16:20:00Z``)."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def stamp(t: float) -> str:
    """A moment inside a file or backup name (``20261129T162000Z``)."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y%m%dT%H%M%SZ")


def db_stamp(t: float) -> str:
    """A moment inside a database name: digits only (``20261129162000``), 14 of them."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y%m%d%H%M%S")


def format_size(n: float) -> str:
    """Bytes as a short decimal size (``12.3 MB``), as in messages and the CLI."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def excerpt(*texts: str, lines: int = EXCERPT_LINES, first: bool = False,
            joiner: str = "\n") -> str:
    """The non-blank lines of the given outputs (stdout, then stderr), bounded: the last
    ``lines`` of them, or with ``first`` the first ones (where an error begins) and a count
    of the rest. Empty when nothing was printed."""
    kept: list[str] = []
    for text in texts:
        kept += [line.rstrip() for line in text.splitlines() if line.strip()]
    if first:
        if len(kept) > lines:
            kept = [*kept[:lines - 1], f"... ({len(kept) - lines + 1} more lines)"]
        return joiner.join(kept)[:EXCERPT_CHARS]
    return joiner.join(kept[-lines:])[-EXCERPT_CHARS:]
