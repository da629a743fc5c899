"""The names of every signal that probes and events produce: what a policy may refer to.

Probes declare the same names (a test keeps both in step); a condition naming anything
else is a typo and the policy is rejected.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

HTTP_METRICS = ("up", "error_ratio", "latency_p50", "latency_p95", "latency_p99")
HTTP = tuple(f"http.{m}" for m in HTTP_METRICS)
DB = (
    "db.up",
    "db.latency_seconds",
    "db.connections_ratio",
    "db.invalid_indexes",
    "db.unvalidated_constraints",
    "db.missing_tables",
    "db.blocked_queries",
    "db.validation_failures",
)
MIGRATION = ("migration.failed", "migration.in_progress", "migration.version")
PROCESS = ("process.up", "process.cpu_ratio", "process.rss_bytes", "process.restarts")
SYSTEM = ("system.disk_free_ratio", "system.memory_available_ratio")

FIXED = frozenset(HTTP + DB + MIGRATION + PROCESS + SYSTEM)

_PER_URL = re.compile(r"http\.[a-z][a-z0-9_]*\.(" + "|".join(HTTP_METRICS) + r")")
_ALERT = re.compile(r"alert\.[A-Za-z_][A-Za-z0-9_]*")

EVENT_FED_PREFIX = "alert."
MIGRATION_FAILED = "migration.failed"


def is_known(signal: str, extra: Iterable[str] = ()) -> bool:
    """True for a catalogue name, a per-URL HTTP signal, an alert signal, or a declared extra."""
    return (
        signal in FIXED
        or signal in extra
        or _PER_URL.fullmatch(signal) is not None
        or _ALERT.fullmatch(signal) is not None
    )


def is_event_fed(signal: str) -> bool:
    """Signals that events set (alerts, the migration wrapper): they start at 0, never unknown."""
    return signal.startswith(EVENT_FED_PREFIX) or signal == MIGRATION_FAILED
