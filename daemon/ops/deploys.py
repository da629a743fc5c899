"""Deploys, each protected by a verified restore point taken before it.

A deploy starts only with a verified restore point: the full backup, the schema, the config
files and the code version are taken and checked first, and the deploy is journaled after, so
that a deploy that could not be protected leaves no trace but its error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.app.snapshot import SnapshotError, code_version
from daemon.config import Config
from daemon.db.backups import BackupError, Manifest, Verification
from daemon.db.backups import Progress as ProgressCallback
from daemon.db.restore import RestoreError, RestoreOptions, create_clone
from daemon.fmt import format_size
from daemon.journal import Deploy, JournalError
from daemon.ops.common import OpsError, database, open_journal, open_store
from daemon.proc import ProcError, Terminated, run_passthrough, sigterm_raises


@dataclass(frozen=True, slots=True)
class DeployStart:
    """What :func:`start_deploy` did: the journaled deploy and its verified restore point."""

    deploy: Deploy
    restore_point: Manifest
    verification: Verification
    warnings: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        rp = self.restore_point
        return {
            "deploy": self.deploy.id, "app": self.deploy.app, "version": self.deploy.version,
            "started_at": self.deploy.started_at, "restore_point": rp.id,
            "verified": self.verification.ok, "database": rp.database, "size": rp.size,
            "tables": len(rp.tables), "rows": rp.rows, "code_version": rp.code_version,
            "config_files": [c.path for c in rp.config], "clone": self.deploy.clone,
        }

    def describe(self) -> list[str]:
        d, rp = self.deploy, self.restore_point
        lines = [f"deploy {d.id} of {d.app} {d.version} begun",
                 f"restore point {rp.id}: verified, {format_size(rp.size)}, database "
                 f"{rp.database}, {len(rp.tables)} tables, {rp.rows} rows"]
        extras = []
        if rp.code_version:
            extras.append(f"code {rp.code_version}")
        if rp.config:
            extras.append(f"{len(rp.config)} config file(s) kept")
        if d.clone:
            extras.append(f"clone {d.clone} (a rollback swaps it in)")
        if extras:
            lines.append(", ".join(extras))
        return lines


@dataclass(frozen=True, slots=True)
class DeployEnd:
    deploy: Deploy

    def as_json(self) -> dict[str, Any]:
        d = self.deploy
        return {"deploy": d.id, "version": d.version, "status": d.status,
                "restore_point": d.restore_point}

    def describe(self) -> list[str]:
        d = self.deploy
        return [f"deploy {d.id} of {d.app} {d.version} {d.status}"]


def start_deploy(config: Config, version: str, *, clone: bool = False,
                 progress: ProgressCallback | None = None) -> DeployStart:
    """Take and verify the restore point, then journal the deploy; ``OpsError`` if it cannot.

    Nothing is journaled unless the restore point verified: a failed attempt leaves at most an
    unverified backup directory (kept for inspection, removed by ``prune``). With ``clone``,
    the live database is also cloned (the app must be stopped), and the deploy's rollback
    swaps the clone in by renaming instead of restoring; a clone refused refuses the deploy.
    """
    db = database(config)
    store = open_store(config)
    journal = open_journal(config)
    try:
        code = code_version(config.app)
        files = config.app.config_files if config.app is not None else []
        manifest, verification = store.create_verified(
            db.dsn, "restore_point", version=version, config_files=files, code_version=code,
            migrations=db.migrations, progress=progress)
        if not verification.ok:
            raise OpsError(f"restore point {manifest.id} failed verification: "
                           f"{verification.reason}; no deploy recorded")
        # Taken after the restore point, so that it holds at least the restore point's data.
        cloned = create_clone(RestoreOptions.from_config(config)) if clone else None
        deploy = journal.begin_deploy(config.app_name, version, time.time(),
                                      code_version=code, restore_point=manifest.id,
                                      verified=True, clone=cloned)
    except (BackupError, SnapshotError, ProcError, JournalError, RestoreError) as exc:
        raise OpsError(f"cannot begin the deploy: {exc}") from None
    finally:
        journal.close()
    warnings = []
    try:
        manifest = store.attach_deploy(manifest.id, deploy.id)
    except BackupError as exc:
        # The deploy is journaled with its verified restore point: that stands. Only the
        # manifest's back-reference is missing, which nothing depends on.
        warnings.append(f"deploy {deploy.id} recorded, but its restore point's manifest could "
                        f"not name it: {exc}")
    return DeployStart(deploy, manifest, verification, warnings)


def end_deploy(config: Config, status: str, deploy_id: int | None = None, *,
               migration: bool = False, exit_code: int | None = None) -> DeployEnd:
    """Close ``deploy_id`` (default: the app's latest running deploy) with ``status``.

    With ``migration``, ``status`` is the outcome of the deploy's migration (and
    ``exit_code`` its command's): journaled first as a migration event, which the engine reads
    as ``migration.failed``, as `rollbackd deploy run` journals it."""
    journal = open_journal(config)
    try:
        if deploy_id is None:
            running = journal.deploys(config.app_name, status="running")
            if not running:
                raise OpsError(f"no running deploy of {config.app_name} to end")
            deploy_id = running[0].id
        return DeployEnd(journal.end_deploy(deploy_id, status, time.time(),
                                            migration=migration, exit_code=exit_code))
    except JournalError as exc:
        raise OpsError(str(exc)) from None
    finally:
        journal.close()


def run_migration(argv: list[str], timeout: float) -> tuple[int | None, str]:
    """Run the deploy's migration with its output passed through: its exit status (None when
    it could not run or was killed) and why it failed.

    SIGTERM or Ctrl-C kills the command (run_passthrough kills it on any interruption) and
    still lets the caller journal the failed migration: a deploy must not stay "running"
    because rollbackd itself was stopped.
    """
    name = Path(argv[0]).name
    try:
        with sigterm_raises():
            code = run_passthrough(argv, timeout=timeout)
    except ProcError as exc:
        return None, str(exc)
    except (KeyboardInterrupt, Terminated):
        return None, f"{name} was interrupted and killed"
    return code, f"{name} failed with exit status {code}"
