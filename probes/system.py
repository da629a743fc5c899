"""System probe: the least free disk among the configured paths, and available memory."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import psutil

from policies.samples import Reading
from probes.settings import SystemProbeSettings

SIGNALS = ("system.disk_free_ratio", "system.memory_available_ratio")


def disk_free_ratio(path: Path) -> float | None:
    """Space an unprivileged writer can still use on ``path``'s filesystem, over its size.

    ``f_bavail`` rather than ``f_bfree``: the blocks reserved for root are of no use to the
    application or to backups. ``None`` when the path is missing or the filesystem has no size.
    """
    try:
        stats = os.statvfs(path)
    except OSError:
        return None
    if stats.f_blocks <= 0:
        return None
    return stats.f_bavail / stats.f_blocks


def min_disk_free_ratio(paths: Sequence[Path]) -> float | None:
    """The tightest filesystem among ``paths``; paths that cannot be measured are left out."""
    known = [r for r in (disk_free_ratio(p) for p in paths) if r is not None]
    return min(known) if known else None


def memory_available_ratio() -> float | None:
    memory = psutil.virtual_memory()
    if memory.total <= 0:
        return None
    return float(memory.available) / float(memory.total)


def _measure(paths: Sequence[Path]) -> dict[str, float | None]:
    return {
        "system.disk_free_ratio": min_disk_free_ratio(paths),
        "system.memory_available_ratio": memory_available_ratio(),
    }


class SystemProbe:
    """Host resources the application and rollbackd's backups depend on."""

    kind: ClassVar[str] = "system"

    def __init__(self, settings: SystemProbeSettings) -> None:
        self.settings = settings
        self.name = "system"
        self.timeout = settings.timeout

    def signals(self) -> list[str]:
        return list(SIGNALS)

    async def measure(self) -> Reading:
        # statvfs on a hung network mount blocks: keep it off the event loop.
        return await asyncio.to_thread(_measure, list(self.settings.paths))

    async def aclose(self) -> None:
        return None
