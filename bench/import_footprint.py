"""Where `rollbackd run`'s memory goes on import: RSS after each step, cumulative, in the
order the daemon imports them (with the imports it refuses refused, as `run` does), then the
resident memory by kind (Python's heap, shared libraries) once everything is in.

    .venv/bin/python bench/import_footprint.py

bench/footprint.py measures the running daemon; this tells which import the memory is for.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

STEPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("asyncio (and ssl: libssl, libcrypto)", ("asyncio",)),
    ("msgspec (and policies.schema)", ("msgspec", "policies.schema")),
    ("psycopg (psycopg_binary: its own libpq)", ("psycopg",)),
    ("structlog", ("structlog",)),
    ("httpx, httpcore, anyio", ("httpx", "httpcore")),
    ("starlette", ("starlette.applications", "starlette.routing")),
    ("uvicorn", ("uvicorn",)),
    ("prometheus_client", ("prometheus_client",)),
    ("sqlite3", ("sqlite3",)),
    ("policies (engine, policy, models)", ("policies.engine", "policies.policy")),
    ("probes", ("probes.settings", "probes.http", "probes.postgres", "probes.migrations")),
    ("daemon.config", ("daemon.config",)),
    ("daemon.journal", ("daemon.journal",)),
    ("start-up recovery (daemon.db.restore)", ("daemon.ops.recovery",)),
    ("daemon.runbooks.executor", ("daemon.runbooks.executor",)),
    ("daemon.paging", ("daemon.paging.pager", "daemon.paging.outbox")),
    ("daemon.service.api", ("daemon.service.api",)),
    ("daemon.service.loop", ("daemon.service.loop",)),
    ("daemon.cli.run", ("daemon.cli.run",)),
)


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 1e6


def resident_by_kind() -> dict[str, float]:
    """Resident MB per mapping: [heap] and anonymous (Python's objects), or the file's name."""
    kinds: dict[str, float] = {}
    kind = "[anon]"
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if fields and "-" in fields[0] and not fields[0].endswith(":"):
                kind = Path(fields[5]).name if len(fields) > 5 else "[anon]"
            elif fields and fields[0] == "Rss:":
                kinds[kind] = kinds.get(kind, 0.0) + int(fields[1]) / 1000
    return kinds


def main() -> int:
    before, modules = rss_mb(), len(sys.modules)
    print(f"{'import':<42}{'RSS MB':>8}{'+MB':>7}{'+modules':>10}")
    print(f"{'python':<42}{before:>8.1f}")
    # The group first, as in `rollbackd run`: then the imports the daemon refuses are refused.
    from daemon.cli import DAEMON_DOES_WITHOUT, do_without

    do_without(DAEMON_DOES_WITHOUT)
    steps = (("daemon.cli (click, importlib.metadata)", ("daemon.cli",)), *STEPS)
    for label, names in steps:
        for name in names:
            importlib.import_module(name)
        now = rss_mb()
        print(f"{label:<42}{now:>8.1f}{now - before:>+7.1f}{len(sys.modules) - modules:>10}")
        before, modules = now, len(sys.modules)
    print(f"\n{'resident by mapping (top 12)':<42}{'MB':>8}")
    by_kind = resident_by_kind()
    for kind in sorted(by_kind, key=by_kind.__getitem__, reverse=True)[:12]:
        mb = by_kind[kind]
        print(f"{kind[:42]:<42}{mb:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
