"""Restore drills: prove that the newest restore point restores, and measure the recovery time.

A drill takes the newest complete, verified restore point of the configured database (or the
backup it is given), and

1. restores it into a scratch database ``<db>_drill_<timestamp>`` on the same server, by the
   very steps a swap restore takes before its swap (a database created like live,
   ``pg_restore -j N --exit-on-error``, live's database-level settings and grants, ANALYZE);
2. validates the copy: the configured checklist (:func:`daemon.db.validate.validate_database`) and
   every table of the manifest holding exactly the manifest's rows (a restore yields the
   snapshot, so "at least" would hide a lossy archive);
3. measures the recovery time, restore plus validation;
4. drops the scratch database whatever happened (``WITH (FORCE)``, bounded);
5. records the outcome in the journal, from which the daemon exports
   ``rollbackd_drill_last_success_timestamp_seconds`` and ``rollbackd_drill_duration_seconds``.

A drill never touches the live database and does not take the rollback lock: a real rollback
must never wait behind a drill. Drills of one database exclude each other with an advisory lock
of their own, which also makes it safe to drop a scratch database a killed drill left behind.
It refuses to start when the scratch copy would leave less than ``backups.min_free`` free on
the server's disk (checked when the server is on this host and its data directory readable;
otherwise the report says the check was skipped).

Synchronous, every wait bounded; the daemon can call it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import re
import shutil
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from daemon.config import Config
from daemon.db.admin import (
    DatabaseProperties,
    RestoreError,
    RestoreOptions,
    admin_session,
    create_like,
    database_properties,
    derived_name,
    session,
)
from daemon.db.backups import BackupError, BackupStore, Manifest
from daemon.db.restore.common import verified_manifest
from daemon.db.restore.swap import restore_into
from daemon.db.validate import CheckResult, failures, summary, validate_database
from daemon.fmt import db_stamp, format_size, iso, when
from daemon.journal import Journal, JournalError
from daemon.locks import LockError, advisory_lock
from probes.pg import with_dbname

DRILL_INFIX = "_drill_"
DROP_TIMEOUT = 120.0
"""Bound on dropping the scratch database (terminating its sessions, removing its files)."""
_LOCK_PREFIX = 0x6472696C << 32
"""``dril`` in ASCII in the high half of the advisory lock key; the low half is the database."""


class DrillError(Exception):
    """No drill could be run (nothing to drill, another drill running); ``str()`` says why."""


class DrillConfigError(DrillError):
    """The configuration does not allow a drill (exit status 2)."""


@dataclass(slots=True)
class DrillReport:
    """One drill: what was restored where, how long it took, and every check's result."""

    backup_id: str
    database: str
    """The live database the backup is of (never touched)."""
    scratch: str
    started_at: float
    finished_at: float = 0.0
    snapshot_at: float | None = None
    """The restore point's snapshot time (from its manifest)."""
    size: int | None = None
    """Bytes of the backup."""
    restored_size: int | None = None
    """Bytes of the restored scratch database, measured before it was dropped."""
    restore_seconds: float | None = None
    """Creating the scratch database, pg_restore, settings and grants, ANALYZE."""
    validate_seconds: float | None = None
    checks: list[CheckResult] = field(default_factory=list)
    error: str | None = None
    """Why the drill stopped before its checks (refused backup, pg_restore error, ...)."""
    notes: list[str] = field(default_factory=list)

    @property
    def recovery_seconds(self) -> float | None:
        """Restore plus validation: how long a recovery from this backup takes."""
        if self.restore_seconds is None or self.validate_seconds is None:
            return None
        return round(self.restore_seconds + self.validate_seconds, 3)

    @property
    def duration(self) -> float:
        """The recovery time when there is one, else how long the failed attempt took."""
        recovery = self.recovery_seconds
        return recovery if recovery is not None else round(self.finished_at - self.started_at, 3)

    @property
    def ok(self) -> bool:
        return (self.error is None and self.recovery_seconds is not None and bool(self.checks)
                and not failures(self.checks))

    @property
    def reason(self) -> str:
        """Why the drill failed, on one line ("" when it passed)."""
        if self.ok:
            return ""
        parts = [self.error] if self.error else []
        if failures(self.checks):
            parts.append(summary(self.checks))
        return "; ".join(parts) or "the drill did not complete"

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "backup_id": self.backup_id, "database": self.database,
            "scratch": self.scratch, "started_at": self.started_at,
            "finished_at": self.finished_at, "snapshot_at": self.snapshot_at,
            "snapshot_at_iso": None if self.snapshot_at is None else iso(self.snapshot_at),
            "size": self.size, "restored_size": self.restored_size,
            "restore_seconds": self.restore_seconds, "validate_seconds": self.validate_seconds,
            "recovery_seconds": self.recovery_seconds, "duration": self.duration,
            "checks": [c.as_json() for c in self.checks], "error": self.error,
            "notes": self.notes,
        }

    def describe(self) -> list[str]:
        """The lines an operator reads."""
        size = "" if self.size is None else f", {format_size(self.size)}"
        snapshot = "" if self.snapshot_at is None else f", snapshot {when(self.snapshot_at)}"
        lines = [f"drill of backup {self.backup_id} (database {self.database}{snapshot}{size}): "
                 + ("PASSED" if self.ok else "FAILED")]
        if self.recovery_seconds is not None:
            assert self.restore_seconds is not None and self.validate_seconds is not None
            lines.append(f"recovery time {self.recovery_seconds:.1f}s (restore "
                         f"{self.restore_seconds:.1f}s + validation "
                         f"{self.validate_seconds:.1f}s) in scratch database {self.scratch}")
        if self.error:
            lines.append(f"error: {self.error}")
        lines += [f"  {'ok  ' if c.ok else 'FAIL'}  {c.name}: {c.message}" for c in self.checks]
        lines += [f"note: {n}" for n in self.notes]
        return lines


def run_drill(config: Config, backup_id: str | None = None) -> DrillReport:
    """Drill ``backup_id`` (default: the newest verified restore point) and journal the result.

    ``DrillConfigError`` when the config cannot drive a drill, ``DrillError`` when there is
    nothing to drill or another drill of the database runs; every other failure (a backup
    refused, too little space, pg_restore or a check failing) is a report with ``ok`` false,
    journaled like a success. An interruption (Ctrl-C, a SIGTERM turned into an exception)
    still drops the scratch database and journals the failed drill, then propagates.
    """
    options = _options(config)
    live = options.database
    store = BackupStore(config.backups, connect_timeout=options.connect_timeout)
    chosen = _choose(store, live, backup_id)
    with _drill_lock(options, live):
        report, interruption = _drill(store, chosen, options, float(config.backups.min_free))
    _record(config, report)
    if interruption is not None:
        raise interruption
    return report


def drill_lock_key(database: str) -> int:
    """The advisory lock (in the maintenance database) held while ``database`` is drilled."""
    return _LOCK_PREFIX | zlib.crc32(database.encode())


def scratch_pattern(database: str) -> re.Pattern[str]:
    """Names of the scratch databases drills of ``database`` create."""
    prefix = derived_name(database, DRILL_INFIX + "0" * 14)[:-14]
    return re.compile(re.escape(prefix) + r"\d{14}$")


# -- the steps -------------------------------------------------------------------------------


def _options(config: Config) -> RestoreOptions:
    try:
        options = RestoreOptions.from_config(config, take_lock=False)
        _ = options.database
    except RestoreError as exc:
        raise DrillConfigError(str(exc)) from None
    return options


def _choose(store: BackupStore, live: str, given: str | None) -> str:
    """The backup to drill: ``given`` if it exists, else the newest verified restore point."""
    try:
        if given is not None:
            if not store.path(given).is_dir():
                raise DrillError(f"no backup {given} in {store.dir}")
            return given
        points = [b for b in store.list()
                  if b.complete and b.kind == "restore_point" and b.database == live]
    except BackupError as exc:
        raise DrillError(str(exc)) from None
    verified = [b for b in points if b.verified]
    if verified:
        return max(verified, key=lambda b: (b.created_at or 0.0, b.id)).id
    if points:
        raise DrillError(f"no verified restore point of database {live} in {store.dir} "
                         f"({len(points)} restore point(s), none verified): verify one with "
                         "rollbackd backup verify ID, or take one with rollbackd deploy begin")
    raise DrillError(f"no restore point of database {live} in {store.dir} to drill: take one "
                     "with rollbackd deploy begin (or rollbackd backup create --kind "
                     "restore_point)")


def _drill(store: BackupStore, backup_id: str, options: RestoreOptions,
           min_free: float) -> tuple[DrillReport, BaseException | None]:
    live = options.database
    started = time.time()
    scratch = derived_name(live, DRILL_INFIX + db_stamp(started))
    report = DrillReport(backup_id=backup_id, database=live, scratch=scratch,
                         started_at=started)
    interruption: BaseException | None = None
    created = False
    try:
        manifest = verified_manifest(store, backup_id, live, whole=True)
        report.snapshot_at, report.size = manifest.created_at, manifest.size
        with admin_session(options) as admin:
            _drop_stale_scratches(admin, live, report)
            _check_space(admin, live, manifest, min_free, report)
            began = time.monotonic()
            created = True  # before CREATE: an interruption right after it must still drop
            props = _create_scratch(admin, live, scratch, report)
        restore_into(store, manifest, options, scratch, props)
        report.restore_seconds = round(time.monotonic() - began, 3)
        began = time.monotonic()
        report.checks = _validate(options, scratch, manifest)
        report.validate_seconds = round(time.monotonic() - began, 3)
        report.restored_size = _database_size(options, scratch)
    except (RestoreError, DrillError) as exc:
        report.error = str(exc)
    except BaseException as exc:
        report.error = f"the drill was interrupted ({type(exc).__name__})"
        interruption = exc
    finally:
        if created:
            report.checks.append(_drop_scratch(options, scratch))
        report.finished_at = time.time()
    return report, interruption


def _drop_stale_scratches(admin: psycopg.Connection[Any], live: str,
                          report: DrillReport) -> None:
    """Scratch databases of killed drills; under the drill lock no drill is using them."""
    pattern = scratch_pattern(live)
    for (name,) in admin.execute("SELECT datname FROM pg_database").fetchall():
        if pattern.match(str(name)):
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(str(name))))
            report.notes.append(f"dropped {name}, left behind by an interrupted drill")


def _check_space(admin: psycopg.Connection[Any], live: str, manifest: Manifest,
                 min_free: float, report: DrillReport) -> None:
    """Refuse when the copy would leave less than ``min_free`` on the server's disk.

    The copy needs about live's current size (the restore point's may be smaller, not larger
    by much); the compressed backup's size stands in when live does not exist.
    """
    row = admin.execute("SELECT pg_database_size(oid) FROM pg_database WHERE datname = %s",
                        (live,)).fetchone()
    needed = int(row[0]) if row is not None else manifest.size
    directory = _local_data_directory(admin)
    if directory is None:
        report.notes.append("free space on the server was not checked (it is not on this "
                            "host, or its data_directory is not readable: grant "
                            "pg_read_all_settings)")
        return
    try:
        free = shutil.disk_usage(directory).free
    except OSError as exc:
        report.notes.append(f"free space in {directory} was not checked: "
                            f"{exc.strerror or exc}")
        return
    if free - needed < min_free:
        raise DrillError(f"not enough free space on the server for the scratch database: "
                         f"{format_size(free)} free in {directory}, the copy needs about "
                         f"{format_size(needed)} (the size of {live}), backups.min_free is "
                         f"{format_size(min_free)}")


def _local_data_directory(admin: psycopg.Connection[Any]) -> str | None:
    if not _is_local(admin.info.host):
        return None
    try:
        row = admin.execute("SELECT current_setting('data_directory')").fetchone()
    except psycopg.errors.InsufficientPrivilege:
        return None
    return None if row is None else str(row[0])


def _is_local(host: str) -> bool:
    if host.startswith(("/", "@")) or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _create_scratch(admin: psycopg.Connection[Any], live: str, scratch: str,
                    report: DrillReport) -> DatabaseProperties | None:
    """The scratch database, created as a swap creates its shadow; live's properties."""
    try:
        props = database_properties(admin, live)
    except RestoreError:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(
            sql.Identifier(scratch)))
        report.notes.append(f"database {live} does not exist: the scratch database got the "
                            "server's default encoding, locale, settings and grants")
        return None
    create_like(admin, scratch, props)
    return props


def _validate(options: RestoreOptions, scratch: str, manifest: Manifest) -> list[CheckResult]:
    dsn = _scratch_dsn(options, scratch)
    results = validate_database(dsn, expected_tables=options.expected_tables,
                                checks=options.checks, timeout=options.statement_timeout,
                                connect_timeout=options.connect_timeout)
    results.append(_row_counts(dsn, manifest, options))
    return results


def _row_counts(dsn: str, manifest: Manifest, options: RestoreOptions) -> CheckResult:
    """Every table of the manifest holds exactly its rows (the manifest counted the dump)."""
    wrong: list[str] = []
    try:
        with session(dsn, options) as conn:
            for table in manifest.tables:
                query = sql.SQL("SELECT count(*) FROM {}").format(
                    sql.Identifier(table.schema_, table.name))
                try:
                    row = conn.execute(query).fetchone()
                except psycopg.errors.UndefinedTable:
                    wrong.append(f"{table.qualified} is missing (manifest: {table.rows} rows)")
                    continue
                rows = int(row[0]) if row is not None else 0
                if rows != table.rows:
                    wrong.append(f"{table.qualified} has {rows} rows, the manifest "
                                 f"{table.rows}")
    except RestoreError as exc:
        return CheckResult("row_counts", False, f"the rows could not be counted: {exc}")
    if wrong:
        return CheckResult(
            "row_counts", False,
            f"the restored copy is not the snapshot backup {manifest.id} describes: "
            f"{'; '.join(wrong)}; do not rely on this backup: take a new restore point and "
            "keep this one for inspection")
    return CheckResult("row_counts", True,
                       f"all {len(manifest.tables)} tables hold exactly the restore point's "
                       f"rows ({manifest.rows} in all)")


def _database_size(options: RestoreOptions, name: str) -> int | None:
    try:
        with admin_session(options) as admin:
            row = admin.execute("SELECT pg_database_size(%s)", (name,)).fetchone()
    except RestoreError:
        return None
    return None if row is None else int(row[0])


def _drop_scratch(options: RestoreOptions, scratch: str) -> CheckResult:
    bounded = dataclasses.replace(options, statement_timeout=DROP_TIMEOUT)
    try:
        with admin_session(bounded) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(scratch)))
    except RestoreError as exc:
        return CheckResult("scratch_dropped", False,
                           f"the scratch database {scratch} could not be dropped: {exc}; drop "
                           f"it with DROP DATABASE \"{scratch}\" WITH (FORCE) (the next drill "
                           "drops it too)")
    return CheckResult("scratch_dropped", True, f"the scratch database {scratch} was dropped")


def _scratch_dsn(options: RestoreOptions, scratch: str) -> str:
    return with_dbname(options.dsn, scratch)


def _record(config: Config, report: DrillReport) -> None:
    """Journal the drill; a drill that cannot be recorded fails (the metrics would not show it)."""
    details = {**report.as_json(), "scratch": report.scratch, "backup": report.backup_id}
    try:
        journal = Journal.in_state_dir(config.daemon.state_dir)
        try:
            journal.add_drill(report.finished_at, report.backup_id, report.ok, report.duration,
                              details)
        finally:
            journal.close()
    except JournalError as exc:
        report.checks.append(CheckResult("recorded", False,
                                         f"the drill could not be journaled: {exc}"))


# -- the drill lock --------------------------------------------------------------------------


@contextlib.contextmanager
def _drill_lock(options: RestoreOptions, live: str) -> Iterator[None]:
    """Hold the drill's advisory lock (not the rollback lock: a drill never delays a rollback);
    ``DrillError`` when another drill of ``live`` holds it."""
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(advisory_lock(
                options.maintenance_dsn, f"drill of {live}", key=drill_lock_key(live),
                connect_timeout=options.connect_timeout, name=f"the drill lock of {live}"))
        except LockError as exc:
            raise DrillError(f"another drill of {live} is running or the lock cannot be "
                             f"taken: {exc}") from None
        yield
