"""What every restore strategy shares: its report, the verified backup it starts from, the
safety backup it takes, running the client tools under the restore's deadline, validation of
the result, and the rollback lock."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from daemon.db.admin import RestoreError, RestoreOptions
from daemon.db.backups import BackupError, BackupStore, Manifest, check_files, find_restore_tool
from daemon.db.tools import libpq_env
from daemon.db.validate import CheckResult, summary, validate_data, validate_database
from daemon.fmt import excerpt, iso, when
from daemon.locks import rollback_lock
from daemon.proc import ProcError, run_process
from probes.pg import with_dbname

Strategy = Literal["swap", "in_place", "tables", "clone"]


@dataclass(slots=True)
class RestoreReport:
    """What a restore did: the data window it undid and where the newer data is kept."""

    strategy: Strategy
    backup_id: str | None
    """The backup restored (None for a clone, named in ``source``)."""
    source: str
    database: str
    started_at: float
    finished_at: float
    data_window_start: float | None
    """The restore point's snapshot time: data written after it was undone."""
    data_window_end: float
    """When the restore began."""
    kept: str
    """Where the pre-restore data is: a database name or a safety backup id."""
    kept_kind: Literal["database", "backup", "tables"]
    safety_backup: str | None = None
    """In place and tables: the verified backup taken just before the restore."""
    blocked_seconds: float | None = None
    """Swap and clone: how long the live database refused connections."""
    tables: list[str] = field(default_factory=list)
    validation: list[CheckResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return round(self.finished_at - self.started_at, 3)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.validation)

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "strategy": self.strategy, "backup_id": self.backup_id,
            "source": self.source, "database": self.database, "started_at": self.started_at,
            "finished_at": self.finished_at, "duration": self.duration,
            "blocked_seconds": self.blocked_seconds,
            "data_window_start": self.data_window_start,
            "data_window_end": self.data_window_end,
            "data_window_start_iso": None if self.data_window_start is None
            else iso(self.data_window_start),
            "data_window_end_iso": iso(self.data_window_end),
            "kept": self.kept, "kept_kind": self.kept_kind,
            "safety_backup": self.safety_backup, "tables": self.tables,
            "validation": [r.as_json() for r in self.validation], "notes": self.notes,
        }

    def describe(self) -> list[str]:
        """The lines an operator reads (CLI output, completion notices)."""
        what = f"tables {', '.join(self.tables)} of" if self.tables else "database"
        lines = [f"restored {what} {self.database} from {self.source} by {self.strategy} "
                 f"in {self.duration:.1f}s"
                 + ("" if self.blocked_seconds is None
                    else f" (connections blocked {self.blocked_seconds:.2f}s)")]
        start = when(self.data_window_start, missing="unknown")
        lines.append(f"data window undone: {start} to {when(self.data_window_end)}")
        where = {"database": f"database {self.kept}", "backup": f"safety backup {self.kept}",
                 "tables": f"tables {self.kept}"}[self.kept_kind]
        lines.append(f"data as it was before the restore is kept in {where}")
        if self.safety_backup is not None and self.safety_backup != self.kept:
            lines.append(f"a safety backup taken just before is {self.safety_backup}")
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"validation: {summary(self.validation)}")
        return lines


def verified_manifest(store: BackupStore, backup_id: str, live: str, *,
                      whole: bool) -> Manifest:
    """The manifest of a sound backup of ``live``; ``RestoreError`` with the reason if not.

    A backup verified before is re-checked against its checksums only (a file damaged since
    is caught; the bytes pg_restore read then are the bytes it reads now). One never verified,
    or that failed, is verified now.
    """
    try:
        manifest = store.get(backup_id)
        last = store.verification(backup_id)
        if last is not None and last.ok:
            try:
                check_files(store.path(backup_id), manifest, lambda *_: None)
            except BackupError as exc:
                raise RestoreError(f"backup {backup_id} is refused: {exc}") from None
        else:
            result = store.verify(backup_id)
            if not result.ok:
                raise RestoreError(f"backup {backup_id} is refused: it failed verification: "
                                   f"{result.reason}")
    except BackupError as exc:
        raise RestoreError(f"backup {backup_id} is refused: {exc}") from None
    if manifest.database != live:
        raise RestoreError(f"backup {backup_id} is of database {manifest.database}, not "
                           f"{live}: refusing to restore it over another database")
    if whole and manifest.selected_tables is not None:
        raise RestoreError(f"backup {backup_id} holds only the tables "
                           f"{', '.join(manifest.selected_tables)}: restore them with --tables")
    return manifest


def safety_backup(store: BackupStore, options: RestoreOptions,
                   tables: list[str] | None) -> str:
    try:
        if tables is None:
            taken, result = store.create_verified(options.dsn, "safety")
        else:
            taken, result = store.create_verified(options.dsn, "tables", tables=tables)
    except BackupError as exc:
        raise RestoreError(f"the safety backup failed, nothing was restored: {exc}") from None
    if not result.ok:
        raise RestoreError(f"the safety backup {taken.id} failed verification, nothing was "
                           f"restored: {result.reason}")
    return taken.id


def validate_live(options: RestoreOptions, manifest: Manifest | None) -> list[CheckResult]:
    results = validate_database(options.dsn, expected_tables=options.expected_tables,
                                checks=options.checks, timeout=options.statement_timeout,
                                connect_timeout=options.connect_timeout)
    if manifest is not None and options.key_tables:
        results += validate_data(options.dsn, manifest, options.key_tables,
                                 timeout=options.statement_timeout,
                                 connect_timeout=options.connect_timeout)
    return results


def pg_restore(store: BackupStore, manifest: Manifest, options: RestoreOptions, target: str,
                flags: list[str], kept: str | None = None) -> None:
    tool = restore_tool(manifest, "pg_restore")
    env = tool_env(with_dbname(options.dsn, target), options)
    run_client(tool.path, [*flags, "-d", target, str(store.data_path(manifest))], env,
         time.monotonic() + options.restore_timeout, f"pg_restore into {target}", kept=kept)


def restore_tool(manifest: Manifest, name: str) -> Any:
    try:
        return find_restore_tool(manifest, name)
    except BackupError as exc:
        raise RestoreError(str(exc)) from None


CLIENT_CHECK_INTERVAL_MS = 1000
"""How often a restore tool's server session checks that the tool is still there during a long
statement (PostgreSQL 14+): a killed pg_restore's session ends within this, not when the index
it was building is done."""


def tool_env(dsn: str, options: RestoreOptions, *, application_name: str | None = None,
             lock_timeout: float | None = None) -> dict[str, str]:
    """libpq environment, with a lock_timeout (``options.lock_wait_timeout`` unless given): a
    restore fails rather than queue for locks; and the session ends soon after the tool does."""
    try:
        env = libpq_env(dsn, connect_timeout=options.connect_timeout)
    except ProcError as exc:
        raise RestoreError(str(exc)) from None
    if application_name is not None:
        env["PGAPPNAME"] = application_name
    wait = options.lock_wait_timeout if lock_timeout is None else lock_timeout
    ours = (f"-c lock_timeout={max(1, int(wait * 1000))} "
            f"-c client_connection_check_interval={CLIENT_CHECK_INTERVAL_MS}")
    env["PGOPTIONS"] = f"{env.get('PGOPTIONS', '')} {ours}".strip()
    return env


def run_client(tool: Path, args: list[str], env: Any, deadline: float, what: str,
         kept: str | None) -> Any:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise RestoreError(f"{what}: the restore timeout ran out before it started")
    try:
        result = run_process([str(tool), *args], env=env, timeout=remaining)
    except ProcError as exc:
        raise RestoreError(f"{what} failed: {exc}" + _kept(kept)) from None
    check_exit(result, what, kept)
    return result


def check_exit(result: Any, what: str, kept: str | None) -> None:
    """``RestoreError`` with the tool's own messages unless it exited 0 (a single-transaction
    or fresh-database restore that failed changed nothing)."""
    if result.returncode != 0:
        raise RestoreError(f"{what} failed (exit status {result.returncode}); nothing was "
                           f"changed" + _kept(kept) + ". Its messages:\n"
                           + (excerpt(result.stderr, lines=30, first=True) or "(no output)"))


def _kept(kept: str | None) -> str:
    return "" if kept is None else f" (the pre-restore data is also in {kept})"


@contextlib.contextmanager
def locked(options: RestoreOptions, what: str) -> Iterator[None]:
    if not options.take_lock:
        yield
        return
    with rollback_lock(options.state_dir, options.maintenance_dsn, what,
                       connect_timeout=options.connect_timeout):
        yield
