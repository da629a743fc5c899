"""Process probe: the application's main process, its CPU share, memory and restarts.

The process is found by its systemd unit (MainPID), by a pidfile, or by its exact command line.
A process that is not there is a measurement (``process.up = 0``); a finder that cannot be asked
(systemctl failing, an unreadable pidfile) is a probe failure and raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

# psutil is imported where a process is looked at: the daemon imports this module for its
# app controller even when it neither probes a process nor restarts one.
if TYPE_CHECKING:
    import psutil

from policies.samples import Reading
from probes.base import NO_NOTES, Notes
from probes.settings import ProcessProbeSettings

SIGNALS = ("process.up", "process.cpu_ratio", "process.rss_bytes", "process.restarts")
# A pidfile is written after its process starts; a process younger than the file by more than
# this is some other process that reused a stale pid.
PID_REUSE_SLACK = 1.0


class ProcessQueryError(RuntimeError):
    """The finder could not be asked where the process is; the probe cannot measure."""


@dataclass(frozen=True, slots=True)
class Identity:
    """A process as psutil sees it; the start time tells a restarted or reused pid apart."""

    pid: int
    started: float


@dataclass(frozen=True, slots=True)
class Snapshot:
    identity: Identity
    cpu_seconds: float
    rss_bytes: int
    at: float


@dataclass(frozen=True, slots=True)
class Found:
    """The process as found this tick (``None``: not running) and, from systemd, its restarts."""

    snapshot: Snapshot | None
    restarts: int | None = None


def parse_systemctl_show(text: str) -> tuple[int | None, int | None]:
    """``(MainPID or None, NRestarts or None)`` from ``systemctl show -p MainPID,NRestarts``.

    Parsed as ``Key=value`` lines, not ``--value`` lines by position: systemctl prints
    properties in D-Bus order, not in the order they were asked for (systemd issue #28205).
    """
    props: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            props[key.strip()] = value.strip()
    try:
        main_pid = int(props["MainPID"])
    except (KeyError, ValueError):
        raise ProcessQueryError(f"systemctl show gave no MainPID: {text.strip()[:200]!r}") from None
    restarts: int | None
    try:
        restarts = int(props["NRestarts"])
    except (KeyError, ValueError):
        restarts = None  # older systemd, or not a service unit
    return (main_pid or None), restarts


def read_pidfile(path: Path) -> int | None:
    """The pid in ``path``; ``None`` when there is no pidfile or it is empty (app stopped)."""
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ProcessQueryError(f"cannot read pidfile {path}: {exc}") from exc
    if not text:
        return None
    first = text.split()[0]
    if not first.isdigit() or int(first) <= 0:
        raise ProcessQueryError(f"pidfile {path} does not hold a pid: {text[:40]!r}")
    return int(first)


def pidfile_target(path: Path) -> tuple[int | None, float | None]:
    """The pid in ``path`` and the file's mtime (a live process must be older than it)."""
    pid = read_pidfile(path)
    if pid is None:
        return None, None
    try:
        return pid, path.stat().st_mtime
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        raise ProcessQueryError(f"cannot stat pidfile {path}: {exc}") from exc


def find_by_cmdline(argv: list[str]) -> Identity | None:
    """The process whose argv is exactly ``argv``; of several, the main one.

    Workers forked from the main process share its argv: the main one is the match whose
    parent is not a match, and the oldest of those if there are still several.
    """
    import psutil

    matches: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["cmdline"] == argv and proc.info["status"] != psutil.STATUS_ZOMBIE:
            matches[proc.pid] = proc
    roots: list[Identity] = []
    for pid, proc in matches.items():
        with contextlib.suppress(psutil.Error):
            if proc.ppid() not in matches:
                roots.append(Identity(pid=pid, started=proc.create_time()))
    if not roots:
        return None
    return min(roots, key=lambda identity: (identity.started, identity.pid))


def observe(pid: int, not_before: float | None = None) -> Snapshot | None:
    """CPU seconds and RSS of the live process ``pid``; ``None`` if it is gone or a zombie.

    ``not_before``: a process started later than this (plus slack) is a stranger that reused
    a stale pid, and is treated as absent.
    """
    import psutil

    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            started = proc.create_time()
            cpu = proc.cpu_times()
            rss = proc.memory_info().rss
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    if not_before is not None and started > not_before + PID_REUSE_SLACK:
        return None
    return Snapshot(identity=Identity(pid=pid, started=started),
                    cpu_seconds=cpu.user + cpu.system, rss_bytes=rss, at=time.monotonic())


class ProcessProbe:
    """Watches the app's main process; keeps the last snapshot to derive CPU share and restarts."""

    kind: ClassVar[str] = "process"

    def __init__(self, settings: ProcessProbeSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self.timeout = float(settings.timeout)
        self._previous: Snapshot | None = None
        self._last_seen: Identity | None = None
        self._changes = 0

    def signals(self) -> list[str]:
        return list(SIGNALS)

    async def measure(self) -> Reading:
        found = await self._find()
        current = found.snapshot
        if current is None:
            self._previous = None
            return {"process.up": 0.0, "process.cpu_ratio": None, "process.rss_bytes": None,
                    "process.restarts": None}
        restarts = self._restarts(current.identity, found.restarts)
        cpu_ratio = self._cpu_ratio(current)
        self._previous = current
        return {"process.up": 1.0, "process.cpu_ratio": cpu_ratio,
                "process.rss_bytes": float(current.rss_bytes), "process.restarts": restarts}

    def _cpu_ratio(self, current: Snapshot) -> float | None:
        previous = self._previous
        if previous is None or previous.identity != current.identity:
            return None
        elapsed = current.at - previous.at
        if elapsed <= 0:
            return None
        return max(0.0, current.cpu_seconds - previous.cpu_seconds) / elapsed

    def _restarts(self, identity: Identity, reported: int | None) -> float | None:
        if self._last_seen is not None and identity != self._last_seen:
            self._changes += 1
        self._last_seen = identity
        if self.settings.unit is not None:
            return None if reported is None else float(reported)
        return float(self._changes)

    async def _find(self) -> Found:
        settings = self.settings
        if settings.unit is not None:
            pid, restarts = await self._ask_systemd(settings.unit)
            current = await asyncio.to_thread(observe, pid) if pid else None
            return Found(snapshot=current, restarts=restarts)
        if settings.pidfile is not None:
            return Found(snapshot=await asyncio.to_thread(_observe_pidfile, settings.pidfile))
        assert settings.cmdline is not None  # the settings require exactly one finder
        return Found(snapshot=await asyncio.to_thread(_observe_cmdline, settings.cmdline))

    async def _ask_systemd(self, unit: str) -> tuple[int | None, int | None]:
        argv = ["systemctl", "show", "--property=MainPID,NRestarts", unit]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            raise ProcessQueryError(f"cannot run systemctl: {exc}") from exc
        try:
            async with asyncio.timeout(self.settings.timeout):
                out, err = await proc.communicate()
        except (TimeoutError, asyncio.CancelledError):
            # Our own child: end it by its pid so that stuck systemctl calls do not pile up.
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.shield(proc.wait())
            raise
        if proc.returncode != 0:
            lines = err.decode(errors="replace").strip().splitlines()
            reason = lines[-1] if lines else f"exit status {proc.returncode}"
            raise ProcessQueryError(f"systemctl show {unit} failed: {reason}")
        return parse_systemctl_show(out.decode(errors="replace"))

    def notes(self) -> Notes:
        # Every failure of this probe raises, so the outcome's error says it all.
        return NO_NOTES

    async def aclose(self) -> None:
        return None


def _observe_pidfile(path: Path) -> Snapshot | None:
    pid, written = pidfile_target(path)
    return None if pid is None else observe(pid, not_before=written)


def _observe_cmdline(argv: list[str]) -> Snapshot | None:
    identity = find_by_cmdline(argv)
    return None if identity is None else observe(identity.pid)
