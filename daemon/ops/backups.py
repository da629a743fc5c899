"""Backups by hand: create, list, verify, prune, clone (``rollbackd backup``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from daemon.config import Config
from daemon.db.backups import BackupError, BackupInfo, Kind, Manifest, Verification
from daemon.db.backups import Progress as ProgressCallback
from daemon.db.restore import RestoreError, RestoreOptions, create_clone
from daemon.fmt import format_size, when
from daemon.journal import JournalError
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
        manifest = store.create(db.dsn, kind, tables=list(tables) if tables else None,
                                migrations=db.migrations, progress=progress)
        verification = store.verify(manifest.id, progress=progress) if verify else None
    except BackupError as exc:
        raise OpsError(str(exc)) from None
    return CreatedBackup(manifest, verification)


@dataclass(frozen=True, slots=True)
class BackupList:
    directory: str
    infos: list[BackupInfo]

    def as_json(self) -> list[dict[str, Any]]:
        return [i.as_json() for i in self.infos]

    def describe(self) -> list[str]:
        if not self.infos:
            return [f"no backups in {self.directory}"]
        rows = [("id", "kind", "database", "created", "deploy", "size", "verified")]
        for i in self.infos:
            verified = {None: "-", True: "yes", False: "FAILED"}[i.verified]
            rows.append((i.id, i.kind, i.database or "-",
                         when(i.created_at, missing="-") if i.complete else "incomplete",
                         "-" if i.deploy is None else str(i.deploy), format_size(i.size),
                         verified))
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
        data: dict[str, Any] = self.result.model_dump(mode="json")
        return data

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
    still running, and safety copies taken by restores within it (they hold the only copy of
    the data those restores undid)."""
    journal = open_journal(config)
    try:
        recent = journal.deploys(since=now - window)
        running = journal.deploys(status="running")
    finally:
        journal.close()
    safety = {b.id for b in open_store(config).list()
              if b.kind in ("safety", "tables") and b.created_at is not None
              and now - b.created_at < window}
    return {d.restore_point for d in (*recent, *running) if d.restore_point} | safety


@dataclass(frozen=True, slots=True)
class Pruned:
    removed: list[str]
    protected: int
    window: float

    def as_json(self) -> list[str]:
        return self.removed

    def describe(self) -> list[str]:
        return [*(f"removed {backup_id}" for backup_id in self.removed),
                f"{len(self.removed)} backup(s) removed, {self.protected} restore point(s) "
                f"protected (deploys within {format_duration(self.window)})"]


def prune_backups(config: Config, keep: int, window: float) -> Pruned:
    """Remove old backups, keeping ``keep`` and what a rollback within ``window`` may need."""
    try:
        protect = protected_restore_points(config, window, time.time())
        removed = open_store(config).prune(keep, protect)
    except (BackupError, JournalError) as exc:
        raise OpsError(str(exc)) from None
    return Pruned(removed, len(protect), window)


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
