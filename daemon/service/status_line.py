"""The one line per cycle that says, in words, what rollbackd sees."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from policies.engine import Engine
from probes.runner import ProbeOutcome

Signals = Mapping[str, float | None]


def _pct(value: float | None) -> str:
    return "unknown" if value is None else f"{value * 100:.1f}%"


def _ms(value: float | None) -> str:
    return "unknown" if value is None else f"{value * 1000:.0f}ms"


def _http(signals: Signals) -> str | None:
    if "http.up" not in signals:
        return None
    up = signals["http.up"]
    state = "unknown" if up is None else "up" if up >= 1 else "DOWN"
    return (f"app {state}, errors {_pct(signals.get('http.error_ratio'))}, "
            f"p95 {_ms(signals.get('http.latency_p95'))}")


def _database(signals: Signals) -> str | None:
    if "db.up" not in signals:
        return None
    up = signals["db.up"]
    if up is None:
        return "database unknown"
    if up < 1:
        return "database UNREACHABLE"
    problems = [
        f"{int(count)} {label}"
        for key, label in (
            ("db.validation_failures", "validation failures"),
            ("db.blocked_queries", "blocked queries"),
        )
        if (count := signals.get(key)) is not None and count > 0
    ]
    text = f"database up ({_ms(signals.get('db.latency_seconds'))})"
    return f"{text}, {', '.join(problems)}" if problems else text


def _migrations(signals: Signals, version: str | None) -> str | None:
    """``version`` is the tool's own text (ProbeOutcome.info): the migration.version signal
    is a number for changed(), a fingerprint for Alembic revisions, never for reading."""
    if "migration.failed" not in signals:
        return None
    failed, running = signals.get("migration.failed"), signals.get("migration.in_progress")
    at = "" if version is None else f" at version {version}"
    if failed is None:
        return "migrations unknown"
    if failed >= 1:
        return f"migration FAILED{at}"
    if running is not None and running >= 1:
        return f"migration running{at}"
    return f"migrations clean{at}"


def _engine(engine: Engine | None) -> str | None:
    if engine is None:
        return None
    firing = [name for name, on in engine.firing().items() if on]
    incident = engine.incident
    if incident is None and not firing:
        return None
    text = f"incident {incident[0]} open ({incident[1]})" if incident else "no incident"
    text += ", firing: " + ", ".join(firing) if firing else ""
    return text + (" [PAUSED]" if engine.paused else "")


def describe(app: str, outcomes: Sequence[ProbeOutcome], signals: Signals,
             engine: Engine | None = None) -> str:
    """E.g. ``visionforge: app up, errors 0.0%, p95 12ms; database up (1ms); 6/6 probes ok``."""
    version = next((o.info["migration.version"] for o in outcomes
                    if "migration.version" in o.info), None)
    parts = [text for text in (_engine(engine), _http(signals), _database(signals),
                               _migrations(signals, version)) if text]
    failing = [o for o in outcomes if not o.ok]
    probes = f"{len(outcomes) - len(failing)}/{len(outcomes)} probes ok"
    if failing:
        probes += " (failing: " + ", ".join(f"{o.probe_id}: {o.error}" for o in failing) + ")"
    problems = [f"{o.probe_id} {about}: {text}" for o in outcomes
                for about, text in o.problems.items()]
    if problems:
        probes += " (problems: " + "; ".join(problems) + ")"
    parts.append(probes)
    return f"{app}: " + "; ".join(parts)
