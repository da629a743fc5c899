"""The configured probes as one set: built from the config, measured together each tick."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from daemon.config import Config
from policies.samples import Reading
from probes.base import Probe
from probes.http import HTTP_AGGREGATE_SIGNALS, HttpProbe, aggregate_http
from probes.migrations import MigrationsProbe
from probes.postgres import PostgresProbe
from probes.process import ProcessProbe
from probes.prometheus import PrometheusProbe
from probes.runner import ProbeOutcome, run_tick
from probes.system import SystemProbe


@dataclass(frozen=True, slots=True)
class Derived:
    """Signals computed from several probes after they measured (e.g. http.* over all URLs)."""

    signals: tuple[str, ...]
    compute: Callable[[], Reading]


@dataclass
class ProbeSet:
    probes: list[Probe]
    derived: list[Derived] = field(default_factory=list)

    def signals(self) -> list[str]:
        names = [s for p in self.probes for s in p.signals()]
        names += [s for d in self.derived for s in d.signals]
        return sorted(set(names))

    async def tick(self, bound: float) -> tuple[list[ProbeOutcome], dict[str, float | None]]:
        """Measure every probe; return the outcomes and all signals, derived ones included."""
        outcomes = await run_tick(self.probes, bound)
        values: dict[str, float | None] = {}
        for outcome in outcomes:
            values.update(outcome.reading)
        for derived in self.derived:
            reading = derived.compute()
            values.update({name: reading.get(name) for name in derived.signals})
        return outcomes, values

    async def aclose(self) -> None:
        await asyncio.gather(*(p.aclose() for p in self.probes), return_exceptions=True)


def _connect_timeout(configured: float, probe_timeout: float) -> float:
    """Leave the probe time to report ``db.up = 0`` when a host drops packets instead of refusing.

    libpq rounds the connect timeout up to whole seconds with a floor of 2 s.
    """
    return min(configured, max(2.0, probe_timeout - 1.0))


def build_probes(config: Config) -> ProbeSet:
    settings = config.probes
    http = [HttpProbe(s) for s in settings.http]
    probes: list[Probe] = [*http]
    db = config.database
    if db is not None and settings.postgres.enabled:
        probes.append(PostgresProbe(
            db.dsn, settings.postgres, expected_tables=db.expected_tables, checks=db.checks,
            connect_timeout=_connect_timeout(db.connect_timeout, settings.postgres.timeout),
        ))
    if db is not None and db.migrations is not None and settings.migrations.enabled:
        probes.append(MigrationsProbe(
            db.dsn, db.migrations, settings.migrations,
            connect_timeout=_connect_timeout(db.connect_timeout, settings.migrations.timeout),
        ))
    if settings.process is not None:
        probes.append(ProcessProbe(settings.process))
    if settings.system is not None:
        probes.append(SystemProbe(settings.system))
    probes += [PrometheusProbe(s) for s in settings.prometheus]
    derived: list[Derived] = []
    if http:
        derived.append(Derived(HTTP_AGGREGATE_SIGNALS, lambda: aggregate_http(http)))
    return ProbeSet(probes, derived)

