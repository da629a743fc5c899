"""Durations ("5s", "2m", "1h30m") and sizes ("5GB", "512MiB") as config and policy values.

Every duration is a finite number of seconds from 0 to :data:`MAX_DURATION` (30 days) and
every size a finite number of bytes from 0 to :data:`MAX_SIZE` (1 EiB), unless a field narrows
its own range further. Booleans are not numbers here: ``interval = true`` is a mistake, not
one second.
"""

from __future__ import annotations

import math
import re
from typing import Any

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?", re.IGNORECASE)
_SIZE_FACTORS = {
    "B": 1,
    "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
    "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "TIB": 1024**4,
}

MAX_DURATION = 30 * 86400.0
"""The longest duration a setting takes (30 days): longer is a typo, and a window that long
would keep more history than the daemon should hold."""

MAX_SIZE = 1024**6
"""The largest size a setting takes (1 EiB)."""

_SHOWN = 40  # characters of a bad value repeated in a message, so that it stays one short line


def _shown(value: object) -> str:
    text = str(value).lower() if isinstance(value, bool) else repr(value)
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN - 4]}...{text[-1]}"


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``5s``, ``1m30s`` or ``250ms``; a bare number is seconds.
    Refuses what is not a finite duration of 0 seconds or more (``inf``, ``nan``, ``1e999``)."""
    value = text.strip()
    if not value:
        raise ValueError("empty duration")
    try:
        seconds = float(value)
    except ValueError:
        pos, seconds = 0, 0.0
        for match in _DURATION_PART.finditer(value):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _DURATION_SECONDS[match.group(2)]
            pos = match.end()
        if pos != len(value) or pos == 0:
            raise ValueError(
                f"invalid duration {_shown(text)} (expected e.g. 500ms, 5s, 2m, 1h30m)"
            ) from None
    if not math.isfinite(seconds):
        raise ValueError(f"duration {_shown(text)} is not a finite number of seconds")
    if seconds < 0:
        raise ValueError(f"negative duration {_shown(text)}")
    return seconds


def parse_size(text: str) -> int:
    """Bytes in a size such as ``5GB`` (decimal) or ``512MiB`` (binary); a bare number is bytes."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"invalid size {_shown(text)} (expected e.g. 500MB, 5GB, 2GiB)")
    unit = (match.group(2) or "B").upper()
    size = float(match.group(1)) * _SIZE_FACTORS[unit]
    if not math.isfinite(size):
        raise ValueError(f"size {_shown(text)} is not a finite number of bytes")
    return int(size)


def check_duration(seconds: float, maximum: float = MAX_DURATION) -> float:
    """``seconds`` if it is a finite duration from 0 to ``maximum``."""
    if not math.isfinite(seconds):
        raise ValueError("duration is not a finite number of seconds")
    if seconds < 0:
        raise ValueError("duration must not be negative")
    if seconds > maximum:
        raise ValueError(f"duration is longer than the {format_duration(maximum)} a setting "
                         "may be")
    return seconds


def _number(value: Any, what: str, example: str) -> float:
    """A TOML number as a float; booleans and other types are refused."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected {what} such as {example}, not {_shown(value)}")
    try:
        return float(value)
    except OverflowError:
        return math.inf  # an integer too large for a float: refused as out of range


def _duration(value: Any) -> float:
    if isinstance(value, str):
        return check_duration(parse_duration(value))
    return check_duration(_number(value, "a duration", '"5s" or a number of seconds'))


def _size(value: Any) -> int:
    size = (parse_size(value) if isinstance(value, str)
            else _number(value, "a size", '"5GB" or a number of bytes'))
    if not math.isfinite(size) or size > MAX_SIZE:
        raise ValueError("size is larger than the 1EiB a setting may be")
    if size < 0:
        raise ValueError("size must not be negative")
    if size != int(size):
        raise ValueError("a size is a whole number of bytes")
    return int(size)


def format_duration(seconds: float) -> str:
    """The shortest spelling of a duration, for summaries and logs."""
    if 0 < seconds < 1:
        return f"{seconds * 1000:g}ms"
    parts: list[str] = []
    rest = seconds
    for unit in ("d", "h", "m"):
        size = _DURATION_SECONDS[unit]
        if rest >= size:
            count = int(rest // size)
            parts.append(f"{count}{unit}")
            rest -= count * size
    if rest or not parts:
        parts.append(f"{rest:g}s")
    return "".join(parts)


def format_size(size: int) -> str:
    """The shortest exact spelling of a size in binary units (``1KiB``, ``64MiB``)."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


class Duration(float):
    """A duration in seconds, from 0 to 30 days, written in settings as a number or a string
    like ``5s``; a field narrows its range with ``schema.Within``."""

    __slots__ = ()

    @classmethod
    def parse(cls, value: Any) -> Duration:
        return cls(_duration(value))


class Size(int):
    """A size in bytes, from 0 to 1 EiB, written in settings as a number or a string like
    ``5GB``."""

    __slots__ = ()

    @classmethod
    def parse(cls, value: Any) -> Size:
        return cls(_size(value))
