"""System probe: the least free disk among the configured paths, and available memory."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from policies.samples import Reading
from probes.base import Notes
from probes.settings import SystemProbeSettings

DISK = "system.disk_free_ratio"
MEMORY = "system.memory_available_ratio"
SIGNALS = (DISK, MEMORY)


def free_ratio_or_reason(path: Path) -> float | str:
    """Space an unprivileged writer can still use on ``path``'s filesystem, over its size; or
    why it cannot be measured (the path is missing, the filesystem has no size).

    ``f_bavail`` rather than ``f_bfree``: the blocks reserved for root are of no use to the
    application or to backups.
    """
    try:
        stats = os.statvfs(path)
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    if stats.f_blocks <= 0:
        return f"{path}: the filesystem reports no size"
    return stats.f_bavail / stats.f_blocks


def disk_free_ratio(path: Path) -> float | None:
    """:func:`free_ratio_or_reason`, with ``None`` for a path that cannot be measured."""
    ratio = free_ratio_or_reason(path)
    return None if isinstance(ratio, str) else ratio


def min_disk_free_ratio(paths: Sequence[Path]) -> tuple[float | None, list[str]]:
    """The tightest filesystem among ``paths`` (paths that cannot be measured are left out),
    and why each left-out path was."""
    measured = [free_ratio_or_reason(path) for path in paths]
    known = [ratio for ratio in measured if not isinstance(ratio, str)]
    reasons = [ratio for ratio in measured if isinstance(ratio, str)]
    return (min(known) if known else None), reasons


def memory_available_ratio() -> float | None:
    import psutil  # here: the daemon imports every probe's module, configured or not

    memory = psutil.virtual_memory()
    if memory.total <= 0:
        return None
    return float(memory.available) / float(memory.total)


def _measure(paths: Sequence[Path]) -> tuple[dict[str, float | None], dict[str, str]]:
    disk, unmeasured = min_disk_free_ratio(paths)
    reading = {DISK: disk, MEMORY: memory_available_ratio()}
    problems = {DISK: "cannot measure " + "; ".join(unmeasured)} if unmeasured else {}
    if reading[MEMORY] is None:
        problems[MEMORY] = "the kernel reports no memory total"
    return reading, problems


class SystemProbe:
    """Host resources the application and rollbackd's backups depend on."""

    kind: ClassVar[str] = "system"

    def __init__(self, settings: SystemProbeSettings) -> None:
        self.settings = settings
        self.name = "system"
        self.timeout = float(settings.timeout)
        self._problems: dict[str, str] = {}

    def signals(self) -> list[str]:
        return list(SIGNALS)

    async def measure(self) -> Reading:
        self._problems = {}
        # statvfs on a hung network mount blocks: keep it off the event loop.
        reading, self._problems = await asyncio.to_thread(_measure, list(self.settings.paths))
        return reading

    def notes(self) -> Notes:
        return Notes(problems=dict(self._problems))

    async def aclose(self) -> None:
        return None
