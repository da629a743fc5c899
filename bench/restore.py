"""Restore speed: bare pg_restore against rollbackd's swap restore, swap downtime, clone rollback.

Builds a database of about 1 GB on a throwaway PostgreSQL (``pgbench -i -s 70`` plus the
example app's tables and rows), takes a verified restore point through ``BackupStore``, then
measures, on the same backup:

* bare ``pg_restore -j 2`` into an empty database (``--rounds`` times, interleaved with the
  swap restores, medians: the first restore after the build would pay for its leftovers);
* rollbackd's swap restore (``restore_swap``: checksum re-check, shadow database, pg_restore
  -j 2, settings and grants, ANALYZE, validation, swap, validation of live), with ``--clients``
  sessions connected to live (one of them idle in a transaction) that the swap terminates.
  Targets: swap <= 1.15 x bare, connections blocked <= 2 s;
* a clone rollback: ``create_clone`` while nobody is connected, then ``restore_from_clone``.
  Target <= 5 s;
* a restore drill of the same restore point (recovery time, for reference).

Prints a table; not a test. The server runs with fsync off (as the test clusters do) and
max_wal_size raised, so absolute times are optimistic; the ratio is what the target is about.

    .venv/bin/python bench/restore.py [--scale 70] [--clients 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.config import BackupSettings, Config
from daemon.db.backups import BackupStore, Manifest
from daemon.db.drill import run_drill
from daemon.db.restore import RestoreOptions, create_clone, restore_from_clone, restore_swap
from daemon.db.tools import find_tool, libpq_env, server_major
from daemon.fmt import format_size
from daemon.proc import run_process
from policies.schema import convert
from policies.units import Duration, Size
from tests.harness.paths import APP_DIR
from tests.harness.processes import migrate
from tests.harness.servers import PgCluster

DATABASE = "visionforge"
APP_TABLES = ["users", "images", "audit_log"]
JOBS = 2
RATIO_TARGET = 1.15
BLOCKED_TARGET = 2.0
CLONE_TARGET = 5.0
LONG = 3600.0


@dataclass
class Row:
    what: str
    seconds: float | None
    detail: str = ""
    target: str = ""
    ok: bool | None = None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=70,
                        help="pgbench scale factor (70 is about 1 GB; 5 for a quick run)")
    parser.add_argument("--clients", type=int, default=4,
                        help="sessions connected to live during the swap (default 4)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="bare and swap restores, interleaved; medians (default 3)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rollbackd-bench-restore-"))
    cluster = PgCluster()
    try:
        cluster.start()
        rows = bench(cluster, work, args.scale, args.clients, args.rounds)
    finally:
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)
    print_table(rows, args.scale)
    return 0 if all(r.ok is not False for r in rows) else 1


def bench(cluster: PgCluster, work: Path, scale: int, clients: int, rounds: int) -> list[Row]:
    # Checkpoints would otherwise dominate a 1 GB restore, for both sides alike.
    cluster.execute("ALTER SYSTEM SET max_wal_size = '4GB'")
    cluster.execute("SELECT pg_reload_conf()")
    dsn = cluster.create_database(DATABASE)
    rows = [build(cluster, dsn, scale)]
    store = BackupStore(BackupSettings(dir=work / "backups", min_free=Size(0), jobs=JOBS,
                                       timeout=Duration(LONG)), connect_timeout=5)
    started = time.monotonic()
    manifest = store.create(dsn, "restore_point")
    verification = store.verify(manifest.id)
    assert verification.ok, verification.reason
    rows.append(Row("restore point (pg_dump -Fc, verified)", time.monotonic() - started,
                    f"{format_size(manifest.size)} archive"))
    options = RestoreOptions(dsn=dsn, state_dir=work / "state", expected_tables=APP_TABLES,
                             key_tables=APP_TABLES, restore_timeout=LONG,
                             statement_timeout=LONG, terminate_timeout=15.0, jobs=JOBS)
    # Interleaved rounds, medians: whichever ran first would otherwise pay for the build's
    # leftovers (dirty buffers, autovacuum) and make the comparison about order.
    bares: list[float] = []
    swaps: list[tuple[float, float]] = []
    for _ in range(rounds):
        bares.append(bare_restore(cluster, store, manifest))
        swaps.append(swap_restore(cluster, store, manifest, options, clients))
    rows += swap_rows(bares, swaps, clients)
    rows += clone_rows(cluster, options)
    rows.append(drill_row(work, dsn, cluster))
    return rows


def build(cluster: PgCluster, dsn: str, scale: int) -> Row:
    started = time.monotonic()
    version = int(str(cluster.execute("SHOW server_version_num")[0][0]))
    pgbench = find_tool("pgbench", server_major(version))
    result = run_process([str(pgbench.path), "-i", "-s", str(scale), "-q"], env=libpq_env(dsn),
                      timeout=LONG)
    if result.returncode != 0:
        raise SystemExit(f"pgbench -i failed: {result.stderr}")
    migrated = migrate(dsn)
    if migrated.returncode != 0:
        raise SystemExit(f"migrating the example app failed: {migrated.stderr}")
    seeded = subprocess.run(
        [sys.executable, str(APP_DIR / "seed.py"), "--dsn", dsn, "--users",
         str(100 * scale), "--images", str(1000 * scale)],
        capture_output=True, text=True, timeout=LONG, check=False)
    if seeded.returncode != 0:
        raise SystemExit(f"seeding the example app failed: {seeded.stderr}")
    cluster.execute("VACUUM ANALYZE", DATABASE)
    size = int(str(cluster.execute(f"SELECT pg_database_size('{DATABASE}')")[0][0]))
    return Row(f"database built (pgbench -s {scale} + example app)",
               time.monotonic() - started, format_size(size))


def bare_restore(cluster: PgCluster, store: BackupStore, manifest: Manifest) -> float:
    target = cluster.create_database("bare")
    pg_restore = find_tool("pg_restore", server_major(manifest.server_version_num))
    cluster.execute("CHECKPOINT")
    started = time.monotonic()
    result = run_process([str(pg_restore.path), "-j", str(JOBS), "--exit-on-error", "-d", "bare",
                       str(store.data_path(manifest))], env=libpq_env(target), timeout=LONG)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"bare pg_restore failed: {result.stderr}")
    cluster.execute('DROP DATABASE "bare"')
    return elapsed


def swap_restore(cluster: PgCluster, store: BackupStore, manifest: Manifest,
                 options: RestoreOptions, clients: int) -> tuple[float, float]:
    """Seconds of the whole swap restore, and of connections blocked during it."""
    cluster.execute("CHECKPOINT")
    with connected(options.dsn, clients):
        started = time.monotonic()
        report = restore_swap(store, manifest.id, options)
        elapsed = time.monotonic() - started
    assert report.ok, report.describe()
    cluster.execute(f'DROP DATABASE "{report.kept}" WITH (FORCE)')
    return elapsed, report.blocked_seconds or 0.0


def swap_rows(bares: list[float], swaps: list[tuple[float, float]], clients: int) -> list[Row]:
    bare = statistics.median(bares)
    swap = statistics.median(s for s, _ in swaps)
    blocked = max(b for _, b in swaps)
    ratio = swap / bare
    rounds = f"median of {len(bares)}: " if len(bares) > 1 else ""
    return [
        Row(f"bare pg_restore -j {JOBS} into an empty database", bare,
            rounds + ", ".join(f"{b:.2f}" for b in bares)),
        Row("rollbackd swap restore of the same backup", swap,
            f"{ratio:.2f} x bare; {rounds}" + ", ".join(f"{s:.2f}" for s, _ in swaps),
            f"<= {RATIO_TARGET} x bare", ratio <= RATIO_TARGET),
        Row("  connections blocked during the swap", blocked,
            f"worst of {len(swaps)}; {clients} sessions terminated each time",
            f"<= {BLOCKED_TARGET:g} s", blocked <= BLOCKED_TARGET),
    ]


def clone_rows(cluster: PgCluster, options: RestoreOptions) -> list[Row]:
    cluster.execute("CHECKPOINT")
    started = time.monotonic()
    clone = create_clone(options)
    taken = time.monotonic() - started
    started = time.monotonic()
    report = restore_from_clone(options, clone)
    elapsed = time.monotonic() - started
    assert report.ok, report.describe()
    cluster.execute(f'DROP DATABASE "{report.kept}" WITH (FORCE)')
    return [
        Row("clone taken (CREATE DATABASE ... TEMPLATE, app stopped)", taken,
            "at the deploy, not part of the rollback"),
        Row("clone rollback (restore_from_clone)", elapsed,
            f"connections blocked {report.blocked_seconds or 0.0:.2f} s",
            f"<= {CLONE_TARGET:g} s", elapsed <= CLONE_TARGET),
    ]


def drill_row(work: Path, dsn: str, cluster: PgCluster) -> Row:
    config = convert({
        "daemon": {"state_dir": str(work / "state")},
        "database": {"dsn": dsn, "expected_tables": APP_TABLES},
        "backups": {"dir": str(work / "backups"), "min_free": 0, "jobs": JOBS,
                    "restore_timeout": LONG},
    }, Config)
    report = run_drill(config)
    assert report.ok, report.describe()
    assert report.restore_seconds is not None and report.validate_seconds is not None
    left = cluster.execute(f"SELECT count(*) FROM pg_database WHERE datname LIKE "
                           f"'{DATABASE}_drill_%'")[0][0]
    return Row("drill: restore + validation in a scratch database", report.recovery_seconds,
               f"restore {report.restore_seconds:.1f} s + validation "
               f"{report.validate_seconds:.1f} s; scratch databases left: {left}")


@contextlib.contextmanager
def connected(dsn: str, count: int) -> Iterator[list[psycopg.Connection[Any]]]:
    """``count`` idle sessions on live, the first inside an open transaction."""
    sessions = [psycopg.connect(dsn, autocommit=True, connect_timeout=5) for _ in range(count)]
    if sessions:
        sessions[0].execute("BEGIN")
        sessions[0].execute("SELECT count(*) FROM users")
    try:
        yield sessions
    finally:
        for session in sessions:
            with contextlib.suppress(psycopg.Error):
                session.close()


def print_table(rows: list[Row], scale: int) -> None:
    table = Table(title=f"restore benchmark (pgbench scale {scale}, pg_restore -j {JOBS})",
                  title_justify="left")
    for column in ("measurement", "seconds", "detail", "target", "verdict"):
        table.add_column(column)
    for row in rows:
        verdict = "" if row.ok is None else ("ok" if row.ok else "MISSED")
        seconds = "" if row.seconds is None else f"{row.seconds:.2f}"
        table.add_row(row.what, seconds, row.detail, row.target, verdict)
    Console(width=160, highlight=False, soft_wrap=True).print(table)


if __name__ == "__main__":
    raise SystemExit(main())
