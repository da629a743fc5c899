"""Backups by hand: create, list, verify, prune, clone, recover (``rollbackd backup``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from daemon.config import Config
from daemon.db.backups import BackupError, BackupInfo, Kind, Manifest, Verification
from daemon.db.backups import Progress as ProgressCallback
from daemon.db.restore import (
    RestoreError,
    RestoreOptions,
    SwapRecovery,
    create_clone,
    inspect_interrupted_swap,
    interrupted_in_place,
    prune_kept,
    recover_interrupted_swap,
)
from daemon.fmt import format_size, when
from daemon.journal import JournalError
from daemon.locks import LockError
from daemon.ops.common import OpsError, database, open_journal, open_store
from policies.units import format_duration


@dataclass(frozen=True, slots=True)
class CreatedBackup:
    manifest: Manifest
    verification: Verification | None
    """None when verification was skipped."""

    @property
    def ok(self) -> bool:
        return self.verification is None or self.verification.ok

    def as_json(self) -> dict[str, Any]:
        v = self.verification
        return {**self.manifest.dump(), "verified": None if v is None else v.ok,
                "reason": None if v is None else v.reason}

    def describe(self) -> list[str]:
        m, v = self.manifest, self.verification
        state = ("not verified" if v is None else "verified" if v.ok
                 else "FAILED verification")
        return [f"backup {m.id}: {state}, {format_size(m.size)}, database {m.database}, "
                f"{len(m.tables)} tables, {m.rows} rows"]


def create_backup(config: Config, kind: Kind, *, tables: Sequence[str] | None = None,
                  verify: bool = True,
                  progress: ProgressCallback | None = None) -> CreatedBackup:
    db = database(config)
    store = open_store(config)
    try:
        selected = list(tables) if tables else None
        verification: Verification | None = None
        if verify:
            manifest, verification = store.create_verified(
                db.dsn, kind, tables=selected, migrations=db.migrations, progress=progress)
        else:
            manifest = store.create(db.dsn, kind, tables=selected, migrations=db.migrations,
                                    progress=progress)
    except BackupError as exc:
        raise OpsError(str(exc)) from None
    return CreatedBackup(manifest, verification)


_USABLE = {"verified": "yes", "unverified": "NOT USABLE until verified",
           "failed": "NOT USABLE: verification failed",
           "incomplete": "NOT USABLE: incomplete (interrupted)"}


@dataclass(frozen=True, slots=True)
class BackupList:
    directory: str
    infos: list[BackupInfo]

    def as_json(self) -> list[dict[str, Any]]:
        return [i.as_json() for i in self.infos]

    def describe(self) -> list[str]:
        if not self.infos:
            return [f"no backups in {self.directory}"]
        rows = [("id", "kind", "database", "created", "deploy", "version", "size", "verified",
                 "usable")]
        for i in self.infos:
            verified = {None: "-", True: "yes", False: "FAILED"}[i.verified]
            rows.append((i.id, i.kind, i.database or "-",
                         when(i.created_at, missing="-") if i.complete else "incomplete",
                         "-" if i.deploy is None else str(i.deploy), i.version or "-",
                         format_size(i.size), verified, _USABLE[i.state]))
        widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
        return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                for row in rows]


def list_backups(config: Config) -> BackupList:
    try:
        return BackupList(str(config.backups.dir), open_store(config).list())
    except BackupError as exc:
        raise OpsError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class VerifiedBackup:
    backup_id: str
    result: Verification

    def as_json(self) -> dict[str, Any]:
        return self.result.dump()

    def describe(self) -> list[str]:
        r = self.result
        if not r.ok:
            return []
        return [f"backup {self.backup_id} is sound: {r.files} files, {r.toc_entries} TOC "
                f"entries, read in {format_duration(r.duration)}"]


def verify_backup(config: Config, backup_id: str, *,
                  progress: ProgressCallback | None = None) -> VerifiedBackup:
    try:
        return VerifiedBackup(backup_id,
                              open_store(config).verify(backup_id, progress=progress))
    except BackupError as exc:
        raise OpsError(str(exc)) from None


def protected_restore_points(config: Config, window: float, now: float) -> set[str]:
    """What prune must keep: restore points of deploys begun within ``window`` seconds or
    still running, safety copies taken by restores within it (they hold the only copy of
    the data those restores undid), and, whatever their age, the safety copies of in-place
    restores that were interrupted (until a person has looked: they may be the only copy)."""
    journal = open_journal(config)
    try:
        recent = journal.deploys(since=now - window)
        running = journal.deploys(status="running")
    finally:
        journal.close()
    safety = {b.id for b in open_store(config).list()
              if b.kind in ("safety", "tables") and b.created_at is not None
              and now - b.created_at < window}
    interrupted = interrupted_in_place(config.daemon.state_dir)
    held = set() if interrupted is None else set(interrupted.safety_backups)
    return {d.restore_point for d in (*recent, *running) if d.restore_point} | safety | held


@dataclass(frozen=True, slots=True)
class Pruned:
    """What ``backup prune`` removed: backups (``removed``, oldest first, as ever), and the
    databases and tables restores kept (:func:`daemon.db.restore.prune_kept`)."""

    removed: list[str]
    protected: int
    window: float
    databases: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """What could have been removed but was left, and why (in use, an unresolved swap)."""
    problems: list[str] = field(default_factory=list)
    """What could not be pruned at all (the database unreachable, a rollback running)."""

    def as_json(self) -> dict[str, Any]:
        return {"removed": self.removed, "removed_databases": self.databases,
                "removed_tables": self.tables, "protected": self.protected,
                "window": self.window, "notes": self.notes, "problems": self.problems}

    def describe(self) -> list[str]:
        return [*(f"removed {backup_id}" for backup_id in self.removed),
                *(f"removed database {name}" for name in self.databases),
                *(f"removed table {name}" for name in self.tables),
                f"{len(self.removed)} backup(s), {len(self.databases)} kept database(s) and "
                f"{len(self.tables)} kept table(s) removed, {self.protected} restore point(s) "
                f"protected (deploys within {format_duration(self.window)})",
                *(f"note: {note}" for note in self.notes)]


def prune_backups(config: Config, keep: int, window: float) -> Pruned:
    """Remove old backups, and the databases and tables restores kept, keeping ``keep`` of
    each kind and what a rollback within ``window`` may need. The backups are pruned even when
    the database cannot be reached (that is in ``problems``)."""
    try:
        protect = protected_restore_points(config, window, time.time())
        removed = open_store(config).prune(keep, protect)
    except (BackupError, JournalError) as exc:
        raise OpsError(str(exc)) from None
    try:
        kept = prune_kept(RestoreOptions.from_config(config), keep, window)
    except (RestoreError, LockError) as exc:
        return Pruned(removed, len(protect), window,
                      problems=[f"kept databases and tables not pruned: {exc}"])
    return Pruned(removed, len(protect), window, kept.databases, kept.tables, kept.notes)


@dataclass(frozen=True, slots=True)
class Clone:
    name: str

    def as_json(self) -> dict[str, str]:
        return {"clone": self.name}

    def describe(self) -> list[str]:
        return [f"clone {self.name} taken; roll back to it with: rollbackd backup restore "
                f"{self.name} --strategy clone --yes"]


def take_clone(config: Config) -> Clone:
    database(config)
    try:
        return Clone(create_clone(RestoreOptions.from_config(config)))
    except RestoreError as exc:
        raise OpsError(str(exc)) from None


def swap_recovery(config: Config, *, repair: bool) -> SwapRecovery:
    """What an interrupted swap of the configured database left behind, completed or
    reverted when ``repair`` (under the rollback lock), else only inspected (no lock, no
    change: for ``status``). ``OpsError`` (one line) when the server cannot be reached, the
    lock is held by a rollback in progress, or a recovery step fails."""
    database(config)
    try:
        options = RestoreOptions.from_config(config)
        if repair:
            return recover_interrupted_swap(options)
        return inspect_interrupted_swap(options)
    except (RestoreError, LockError) as exc:
        raise OpsError(str(exc)) from None
