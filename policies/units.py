"""Durations ("5s", "2m", "1h30m") and sizes ("5GB", "512MiB") as config and policy values."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?", re.IGNORECASE)
_SIZE_FACTORS = {
    "B": 1,
    "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
    "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "TIB": 1024**4,
}


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``5s``, ``1m30s`` or ``250ms``; a bare number is seconds."""
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
                f"invalid duration {text!r} (expected e.g. 500ms, 5s, 2m, 1h30m)"
            ) from None
    if seconds < 0:
        raise ValueError(f"negative duration {text!r}")
    return seconds


def parse_size(text: str) -> int:
    """Bytes in a size such as ``5GB`` (decimal) or ``512MiB`` (binary); a bare number is bytes."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"invalid size {text!r} (expected e.g. 500MB, 5GB, 2GiB)")
    unit = (match.group(2) or "B").upper()
    return int(float(match.group(1)) * _SIZE_FACTORS[unit])


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


def _duration(value: Any) -> Any:
    if isinstance(value, str):
        return parse_duration(value)
    return value


def _size(value: Any) -> Any:
    if isinstance(value, str):
        return parse_size(value)
    return value


Duration = Annotated[float, BeforeValidator(_duration)]
"""A duration in seconds, written in config as a number or a string like ``5s``."""

Size = Annotated[int, BeforeValidator(_size)]
"""A size in bytes, written in config as a number or a string like ``5GB``."""
