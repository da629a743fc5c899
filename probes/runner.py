"""One tick: every probe measured concurrently, each within its own timeout and the tick's bound."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from policies.samples import Reading
from probes.base import DescriptorStarvationError, Probe, starvation_in


@dataclass(frozen=True, slots=True)
class ProbeOutcome:
    """What one probe produced in one tick; on failure every signal it owns is unknown.

    ``error`` says why the probe as a whole failed. ``problems`` say why parts of a reading
    are unknown or counted as failed (a check's query error, a request's unexpected status),
    also when the probe as a whole did not fail; ``info`` holds text values that go with
    signals (see :class:`probes.base.Notes`).
    """

    probe: Probe
    reading: Reading
    duration: float
    error: str | None
    problems: Mapping[str, str] = field(default_factory=dict)
    info: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def probe_id(self) -> str:
        return probe_id(self.probe)


def probe_id(probe: Probe) -> str:
    """The probe's label in metrics and logs: ``postgres``, ``http.api``, ``prometheus.p95``."""
    return probe.kind if probe.name == probe.kind else f"{probe.kind}.{probe.name}"


async def measure_one(probe: Probe, bound: float) -> ProbeOutcome:
    """Measure ``probe``; a timeout or an exception becomes a failed outcome, never a raise."""
    started = time.monotonic()
    limit = min(probe.timeout, bound)
    error: str | None = None
    reading: Reading = {}
    try:
        async with asyncio.timeout(limit):
            reading = await probe.measure()
    except TimeoutError:
        error = f"timed out after {limit:g}s"
    except Exception as exc:  # a probe must never take the daemon down
        error = describe_failure(exc)
    duration = time.monotonic() - started
    expected = probe.signals()
    if error is not None:
        reading = dict.fromkeys(expected)
    else:
        # A probe returning fewer signals than it declared left them unmeasured.
        reading = {name: reading.get(name) for name in expected}
    notes = probe.notes()
    return ProbeOutcome(probe=probe, reading=reading, duration=duration, error=error,
                        problems=dict(notes.problems), info=dict(notes.info))


def describe_failure(exc: Exception) -> str:
    """Why a probe failed, in one line; rollbackd's own want of descriptors said as such."""
    if not isinstance(exc, DescriptorStarvationError) and (cause := starvation_in(exc)) is not None:
        exc = DescriptorStarvationError(cause)
    if isinstance(exc, DescriptorStarvationError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}".strip()


async def run_tick(probes: Sequence[Probe], bound: float) -> list[ProbeOutcome]:
    """Measure all ``probes`` at once; the tick takes at most ``bound`` seconds (and scheduling)."""
    return list(await asyncio.gather(*(measure_one(p, bound) for p in probes)))
