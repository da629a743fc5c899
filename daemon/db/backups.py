"""Verified PostgreSQL backups: taken consistently, described by a manifest, checked before trust.

Layout under ``backups.dir``, one directory per backup::

    20261125T151500Z-restore_point-ab12/
        data.dump          pg_dump -Fc            (or data/ for pg_dump -Fd -j N)
        schema.sql         pg_dump --schema-only  (same snapshot as the data)
        config/...         config files, at their absolute paths (restore points)
        manifest.json      written last, atomically: without it the backup is incomplete
        verified.json      the latest verification's outcome (written before the manifest
                           when the backup is verified as it is taken)

Every metadata file is written atomically (temp file, fsync, rename) and checked: a write that
fails (a full disk) is a :class:`BackupError`, and a new backup whose manifest or verification
could not be recorded is removed, never left to look complete. A backup is *usable* only when
it is complete and its latest recorded verification passed (:attr:`BackupInfo.usable`).

Consistency: one REPEATABLE READ transaction exports its snapshot, counts the rows of every
table in it, and both pg_dump runs import that snapshot (``--snapshot``). The manifest's row
counts are therefore exactly what the dump holds, whatever is written meanwhile.

API (``store = BackupStore(config.backups, connect_timeout=config.database.connect_timeout)``):

* ``store.create(dsn, kind, ...) -> Manifest`` takes a backup; ``store.create_verified(dsn,
  kind, ...) -> (Manifest, Verification)`` takes one and verifies it before it is recorded as
  complete; ``store.verify(id) -> Verification`` checks one (and stores the outcome);
  ``store.get(id) -> Manifest`` refuses incomplete backups; ``store.verification(id)`` is the
  last stored outcome; ``store.list()`` (each :class:`BackupInfo` says whether it is
  ``usable``); ``store.prune(keep, protect)``; ``store.check_free_space(dsn)``.
* For restores: ``store.data_path(manifest)`` is what pg_restore reads,
  ``store.path(id) / manifest.schema_file`` the schema dump, ``manifest.config`` the config
  files (``store.path(id) / entry.file``), ``find_restore_tool(manifest)`` the pg_restore (or
  psql) able to read it, and ``daemon.db.tools.libpq_env(dsn)`` /
  :func:`daemon.proc.run_process` to run it.

Everything here is synchronous (subprocesses and a psycopg connection, every wait bounded);
the daemon calls it through ``asyncio.to_thread``. Every failure is a :class:`BackupError`
whose message an operator can act on.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import msgspec
import psycopg
from psycopg import sql

from daemon.config import BackupSettings
from daemon.db.admin import connect
from daemon.db.catalog import NoSuchTableError, TableRef, resolve_tables, user_tables
from daemon.db.migrations import MigrationVersionError, read_version
from daemon.db.migrations import Tool as MigrationTool
from daemon.db.tools import (
    PgToolError,
    Tool,
    find_tool,
    libpq_env,
    server_major,
)
from daemon.durable import (
    ConfigFile,
    CopyError,
    fsync_dir,
    hold_point,
    replace_atomically,
    sha256_file,
    snapshot_config,
)
from daemon.fmt import excerpt, format_size, iso, stamp
from daemon.proc import run_process
from policies.schema import decode_json, to_builtins
from probes.pg import (
    milliseconds,
)

MANIFEST = "manifest.json"
VERIFIED = "verified.json"
DUMP_FILE = "data.dump"
DUMP_DIR = "data"
SCHEMA_FILE = "schema.sql"
FORMAT_VERSION = 1
KEPT_SCHEMA = "rollbackd_kept"
"""Where a table restore keeps the rows it replaced: left out of whole-database backups (a
later restore point must not carry them, nor a restore bring them back)."""
INCOMPLETE_GRACE = 3600.0
"""An incomplete backup directory younger than this may still be being written."""

Kind = Literal["restore_point", "safety", "manual", "tables"]
Method = Literal["custom", "directory"]
KINDS: tuple[str, ...] = ("restore_point", "safety", "manual", "tables")
ID_PATTERN = re.compile(r"^\d{8}T\d{6}Z-[a-z_]+-[0-9a-f]{4,}$")

Progress = Callable[[str, float, float | None], None]
"""``progress(stage, done, total)``: stage names a step, ``total`` None when unknown."""


class BackupError(Exception):
    """A backup that cannot be taken, found, verified or removed; ``str()`` is for an operator."""


class _Record(msgspec.Struct, frozen=True, kw_only=True):
    """What rollbackd writes and reads back, not settings: manifests outlive this code, so
    keys a newer rollbackd added are ignored where a settings model refuses them."""


class FileEntry(_Record, frozen=True, kw_only=True):
    path: str
    """Relative to the backup directory, ``/``-separated."""
    sha256: str
    size: int


class TableCount(_Record, frozen=True, kw_only=True):
    schema_: str = msgspec.field(name="schema")
    name: str
    rows: int
    """Rows in the backup's snapshot: exactly what the dump holds."""

    @property
    def qualified(self) -> str:
        return f"{self.schema_}.{self.name}"


class Manifest(_Record, frozen=True, kw_only=True):
    format_version: int = FORMAT_VERSION
    id: str
    kind: Kind
    method: Method
    data: str
    """The archive pg_restore reads: ``data.dump`` (custom) or ``data`` (directory)."""
    schema_file: str = SCHEMA_FILE
    database: str
    server_version: str
    server_version_num: int
    pg_dump_version: str
    created_at: float
    """Epoch seconds of the snapshot: the data is exactly as it was then."""
    created_at_iso: str
    duration: float
    snapshot: str
    deploy: int | None = None
    version: str | None = None
    """The application version being deployed (restore points)."""
    code_version: str | None = None
    migration_version: str | None = None
    """The migration tool's version in the snapshot (:mod:`daemon.db.migrations`); None when
    not recorded (no tool configured, or a backup of an earlier rollbackd)."""
    selected_tables: list[str] | None = None
    """For ``tables`` backups: the tables asked for; None means the whole database."""
    files: list[FileEntry]
    config: list[ConfigFile] = msgspec.field(default_factory=list)
    size: int
    tables: list[TableCount]

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)

    def dump(self) -> dict[str, Any]:
        """The manifest as JSON data (what ``manifest.json`` holds)."""
        data: dict[str, Any] = to_builtins(self)
        return data


class Verification(_Record, frozen=True, kw_only=True):
    id: str
    ok: bool
    reason: str | None = None
    """Why the backup is not sound (None when it is)."""
    checked_at: float
    duration: float
    files: int = 0
    toc_entries: int = 0

    def dump(self) -> dict[str, Any]:
        """The verification as JSON data (what ``verified.json`` holds)."""
        data: dict[str, Any] = to_builtins(self)
        return data


BackupState = Literal["verified", "unverified", "failed", "incomplete"]


@dataclass(frozen=True, slots=True)
class BackupInfo:
    """One backup directory as ``list`` sees it."""

    id: str
    kind: str
    database: str | None
    created_at: float | None
    deploy: int | None
    size: int
    verified: bool | None
    """True/False: the latest verification's outcome; None: never verified."""
    complete: bool
    reason: str | None = None
    """Why the latest verification failed."""
    version: str | None = None
    """The application version the deploy shipped (restore points)."""

    @property
    def state(self) -> BackupState:
        if not self.complete:
            return "incomplete"
        if self.verified is None:
            return "unverified"
        return "verified" if self.verified else "failed"

    @property
    def usable(self) -> bool:
        """Complete, and its latest recorded verification passed: safe to restore now."""
        return self.state == "verified"

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "database": self.database,
                "created_at": self.created_at, "deploy": self.deploy, "size": self.size,
                "verified": self.verified, "complete": self.complete, "state": self.state,
                "usable": self.usable, "reason": self.reason, "version": self.version}


@dataclass(frozen=True, slots=True)
class _Server:
    database: str
    version: str
    version_num: int
    size: int


def new_id(kind: str, at: float) -> str:
    return f"{stamp(at)}-{kind}-{secrets.token_hex(2)}"



def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` so that readers see the old file or the whole new
    one; :class:`BackupError` (one line: the file, the error, the free space) if it cannot."""
    try:
        replace_atomically(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
    except OSError as exc:
        raise BackupError(f"cannot write {path.name}: {_os_error(exc, path.parent)}") from None


def _os_error(exc: OSError, where: Path) -> str:
    """``No space left on device (0 B free in /var/backups)``."""
    message = exc.strerror or str(exc)
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return message
    return f"{message} ({format_size(free)} free in {where})"



class BackupStore:
    """The backups under ``settings.dir``: create, verify, list, get, prune.

    Owns one directory per backup (``<stamp>-<kind>-<hex>``) holding the dump, the schema,
    the config copies, ``manifest.json`` and ``verified.json``. Invariants: a manifest is
    written only once everything it describes is on disk, so a directory without one is
    incomplete and never offered for a restore; a backup is trusted only after a verification
    (checksums and ``pg_restore --list``) recorded in ``verified.json``; metadata is replaced
    atomically, never rewritten in place.

    ``connect_timeout`` bounds each connection to PostgreSQL (``database.connect_timeout``);
    ``settings.timeout`` bounds a whole backup or verification, and
    ``settings.lock_wait_timeout`` how long pg_dump waits for a table lock (a migration
    holding an exclusive lock makes the backup fail rather than wait behind it).
    """

    def __init__(self, settings: BackupSettings, *, connect_timeout: float = 5.0) -> None:
        self.settings = settings
        self.dir = settings.dir
        self.connect_timeout = connect_timeout

    # -- paths -----------------------------------------------------------------------------

    def path(self, backup_id: str) -> Path:
        """The directory of ``backup_id`` (which need not exist); rejects anything not an id."""
        if not ID_PATTERN.match(backup_id):
            raise BackupError(f"{backup_id!r} is not a backup id (e.g. "
                              "20261125T151500Z-restore_point-ab12)")
        return self.dir / backup_id

    def data_path(self, manifest: Manifest) -> Path:
        """The archive to hand to pg_restore (file for custom, directory for directory)."""
        return self.path(manifest.id) / manifest.data

    # -- reading ---------------------------------------------------------------------------

    def get(self, backup_id: str) -> Manifest:
        """The manifest of a complete backup; ``BackupError`` if absent or incomplete."""
        directory = self.path(backup_id)
        if not directory.is_dir():
            raise BackupError(f"no backup {backup_id} in {self.dir}")
        manifest = self._read_manifest(directory)
        if manifest is None:
            raise BackupError(f"backup {backup_id} is incomplete (no {MANIFEST}): "
                              "it was interrupted and cannot be trusted")
        return manifest

    def verification(self, backup_id: str) -> Verification | None:
        """The latest stored verification of ``backup_id``, if any."""
        path = self.path(backup_id) / VERIFIED
        try:
            return decode_json(path.read_bytes(), Verification)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            # Written atomically, so never torn by a crash: damaged since. Not to be trusted.
            reason = exc.strerror if isinstance(exc, OSError) else "not a verification record"
            return Verification(id=backup_id, ok=False, checked_at=0.0, duration=0.0,
                                reason=f"{VERIFIED} is unreadable ({reason}): verify again")

    def _dirs(self) -> Iterator[Path]:
        if not self.dir.is_dir():
            return
        for entry in self.dir.iterdir():
            if entry.is_dir() and not entry.is_symlink() and ID_PATTERN.match(entry.name):
                yield entry

    def _info(self, directory: Path) -> BackupInfo:
        try:
            manifest = self._read_manifest(directory)
        except BackupError:
            manifest = None  # unreadable: as untrustworthy as a missing one
        verification = self.verification(directory.name)
        if manifest is None:
            return BackupInfo(id=directory.name, kind=_id_kind(directory.name), database=None,
                              created_at=None, deploy=None, size=_du(directory),
                              verified=None if verification is None else verification.ok,
                              complete=False)
        return BackupInfo(id=manifest.id, kind=manifest.kind, database=manifest.database,
                          created_at=manifest.created_at, deploy=manifest.deploy,
                          size=manifest.size,
                          verified=None if verification is None else verification.ok,
                          complete=True,
                          reason=None if verification is None else verification.reason,
                          version=manifest.version)

    @staticmethod
    def _read_manifest(directory: Path) -> Manifest | None:
        path = directory / MANIFEST
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BackupError(f"cannot read {path}: {exc.strerror or exc}") from None
        try:
            return decode_json(raw, Manifest)
        except ValueError as exc:
            raise BackupError(f"{path} is not a valid manifest: {exc}") from None

    # -- space -----------------------------------------------------------------------------

    def check_free_space(self, dsn: str) -> tuple[int, int]:
        """``(free bytes, database bytes)``; ``BackupError`` when min_free would be crossed.

        The database's on-disk size overestimates a compressed dump, which is the safe side.
        """
        with self._connect(dsn) as conn:
            server = _server(conn)
        return self._check_space(server)

    def _check_space(self, server: _Server) -> tuple[int, int]:
        self.dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.dir).free
        if free - server.size < self.settings.min_free:
            raise BackupError(
                f"not enough free space for a backup in {self.dir}: {format_size(free)} free, "
                f"database {server.database} is {format_size(server.size)}, "
                f"backups.min_free is {format_size(self.settings.min_free)}")
        return free, server.size

    # -- creating --------------------------------------------------------------------------

    def create(self, dsn: str, kind: Kind, *, deploy: int | None = None,
               version: str | None = None, tables: Sequence[str] | None = None,
               config_files: Sequence[Path] = (), code_version: str | None = None,
               migrations: MigrationTool | None = None,
               progress: Progress | None = None) -> Manifest:
        """Take a backup of the database ``dsn`` names and return its manifest.

        ``tables`` limits the data to those tables (``name`` or ``schema.name``, with their
        owned sequences); ``config_files`` are snapshotted into ``config/``; ``migrations``
        (``[database].migrations``): the tool whose version is read in the snapshot and
        recorded (a query that fails records none). Refuses (with
        ``BackupError``) when free space would fall below ``backups.min_free``. On failure
        (a full disk included) the partial directory is removed; one left by a crash has no
        manifest and is listed as incomplete until ``prune`` removes it.
        """
        manifest, _ = self._create(dsn, kind, deploy=deploy, version=version, tables=tables,
                                   config_files=config_files, code_version=code_version,
                                   migrations=migrations, progress=progress, verify=False)
        return manifest

    def create_verified(self, dsn: str, kind: Kind, *, deploy: int | None = None,
                        version: str | None = None, tables: Sequence[str] | None = None,
                        config_files: Sequence[Path] = (), code_version: str | None = None,
                        migrations: MigrationTool | None = None,
                        progress: Progress | None = None) -> tuple[Manifest, Verification]:
        """:meth:`create`, verified before it is recorded as complete: ``verified.json`` is
        written before ``manifest.json``, so a backup killed or starved of disk space before
        both are written is incomplete (and removed, when the process lives to do it), never
        complete and unverified. A backup that fails verification is kept, recorded as
        failed, for inspection; check ``verification.ok``."""
        manifest, verification = self._create(
            dsn, kind, deploy=deploy, version=version, tables=tables,
            config_files=config_files, code_version=code_version, migrations=migrations,
            progress=progress, verify=True)
        assert verification is not None
        return manifest, verification

    def _create(self, dsn: str, kind: Kind, *, deploy: int | None, version: str | None,
                tables: Sequence[str] | None, config_files: Sequence[Path],
                code_version: str | None, migrations: MigrationTool | None,
                progress: Progress | None,
                verify: bool) -> tuple[Manifest, Verification | None]:
        if kind not in KINDS:
            raise BackupError(f"unknown backup kind {kind!r} (one of {', '.join(KINDS)})")
        if kind == "tables" and not tables:
            raise BackupError("a 'tables' backup needs the tables to back up")
        report = progress or _no_progress
        deadline = time.monotonic() + self.settings.timeout
        started = time.time()
        with self._connect(dsn) as conn:
            server = _server(conn)
            self._check_space(server)
            pg_dump = _find(server.version_num, "pg_dump")
            backup_id = new_id(kind, started)
            directory = self.path(backup_id)
            try:
                directory.mkdir(parents=True, exist_ok=False)
            except OSError as exc:
                raise BackupError(f"cannot create the backup directory {directory}: "
                                  f"{_os_error(exc, self.dir)}") from None
            try:
                manifest = self._take(conn, dsn, server, pg_dump, directory, kind, deadline,
                                      tables, config_files, report, migrations)
            except BaseException as exc:
                shutil.rmtree(directory, ignore_errors=True)
                if isinstance(exc, OSError):
                    raise BackupError(f"backup {backup_id} failed and was removed: "
                                      f"{_os_error(exc, directory.parent)}") from None
                raise
        try:
            manifest = msgspec.structs.replace(
                manifest, deploy=deploy, version=version, code_version=code_version,
                duration=round(time.time() - started, 3))
            verification = self._verification(directory, report, manifest) if verify else None
            hold_point("backup:before_metadata")
            if verification is not None:
                write_json_atomic(directory / VERIFIED, verification.dump())
            write_json_atomic(directory / MANIFEST, manifest.dump())
        except BaseException as exc:
            shutil.rmtree(directory, ignore_errors=True)
            if isinstance(exc, BackupError):
                raise BackupError(f"backup {backup_id} could not be recorded and was removed: "
                                  f"{exc}") from None
            raise
        return manifest, verification

    def _take(self, conn: psycopg.Connection[Any], dsn: str, server: _Server, pg_dump: Tool,
              directory: Path, kind: Kind, deadline: float, tables: Sequence[str] | None,
              config_files: Sequence[Path], report: Progress,
              migrations: MigrationTool | None = None) -> Manifest:
        env = libpq_env(dsn, connect_timeout=self.connect_timeout)
        with _transaction(conn):
            snapshot, at = _export_snapshot(conn)
            selected = None if tables is None else _resolve_tables(conn, tables)
            migration_version = None
            if migrations is not None:
                with contextlib.suppress(MigrationVersionError):
                    migration_version = read_version(conn, migrations)
            counts = _count_rows(conn, selected, report)
            method: Method = "directory" if self.settings.format == "directory" else "custom"
            data = DUMP_DIR if method == "directory" else DUMP_FILE
            common = [f"--snapshot={snapshot}",
                      f"--lock-wait-timeout={milliseconds(self.settings.lock_wait_timeout)}"]
            selection = [f"--exclude-schema={dump_pattern_schema(KEPT_SCHEMA)}"] \
                if selected is None else [
                arg for t in selected for arg in ("-t", t.dump_pattern)]
            data_argv = [str(pg_dump.path), *self._format_args(method), *common, *selection,
                         "-f", str(directory / data)]
            self._dump(data_argv, env, deadline, "dump data", directory / data, server.size,
                       report)
            schema_argv = [str(pg_dump.path), "--schema-only", "-Fp", *common, *selection,
                           "-f", str(directory / SCHEMA_FILE)]
            self._dump(schema_argv, env, deadline, "dump schema", None, None, report)
        config = self._snapshot_config(config_files, directory, report)
        files = _checksum_files(directory, report)
        return Manifest(
            id=directory.name, kind=kind, method=method, data=data,
            database=server.database, server_version=server.version,
            server_version_num=server.version_num, pg_dump_version=pg_dump.version,
            created_at=at, created_at_iso=iso(at), duration=0.0, snapshot=snapshot,
            migration_version=migration_version,
            selected_tables=None if selected is None else [t.qualified for t in selected],
            files=files, config=config, size=sum(f.size for f in files), tables=counts,
        )

    def _format_args(self, method: Method) -> list[str]:
        if method == "directory":
            return ["-Fd", "-j", str(self.settings.jobs)]
        return ["-Fc"]

    @staticmethod
    def _dump(argv: list[str], env: dict[str, str], deadline: float, stage: str,
              output: Path | None, estimate: int | None, report: Progress) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BackupError(f"backup timed out before {stage}")

        def tick() -> None:
            if output is not None:
                report(stage, float(_du(output)), None if estimate is None else float(estimate))

        report(stage, 0.0, None if estimate is None else float(estimate))
        try:
            result = run_process(argv, env=env, timeout=remaining, on_tick=tick)
        except PgToolError as exc:
            raise BackupError(f"pg_dump ({stage}) failed: {exc}") from None
        if result.returncode != 0:
            raise BackupError(f"pg_dump ({stage}) failed with exit status {result.returncode}: "
                              f"{excerpt(result.stderr, lines=5, joiner=' / ') or 'no output'}")
        done = float(_du(output)) if output is not None else 1.0
        report(stage, done, done)

    @staticmethod
    def _snapshot_config(files: Sequence[Path], directory: Path,
                         report: Progress) -> list[ConfigFile]:
        if not files:
            return []
        report("config snapshot", 0.0, float(len(files)))
        try:
            taken = snapshot_config(files, directory)
        except CopyError as exc:
            raise BackupError(str(exc)) from None
        report("config snapshot", float(len(files)), float(len(files)))
        return taken

    def attach_deploy(self, backup_id: str, deploy: int) -> Manifest:
        """Record the deploy a restore point belongs to (known only once the deploy is journaled).

        The manifest is rewritten atomically; the files and their checksums do not change.
        """
        manifest = msgspec.structs.replace(self.get(backup_id), deploy=deploy)
        write_json_atomic(self.path(backup_id) / MANIFEST, manifest.dump())
        return manifest

    # -- verifying -------------------------------------------------------------------------

    def verify(self, backup_id: str, *, progress: Progress | None = None) -> Verification:
        """Check a backup and store the outcome in ``<id>/verified.json`` (also returned).

        Sound means: a manifest; every file in it present with its size and sha256; a TOC
        pg_restore can read (``--list``); every data block readable and decompressable
        (``pg_restore -f /dev/null``). The first failure found is the ``reason``.
        ``BackupError`` when there is no such backup directory, or when the outcome cannot be
        recorded (a full disk): then an earlier record that says otherwise is removed, so
        that the backup counts as unverified rather than as what it no longer is.
        """
        directory = self.path(backup_id)
        if not directory.is_dir():
            raise BackupError(f"no backup {backup_id} in {self.dir}")
        result = self._verification(directory, progress or _no_progress, None)
        earlier = self.verification(backup_id)
        try:
            write_json_atomic(directory / VERIFIED, result.dump())
        except BackupError as exc:
            outcome = "sound" if result.ok else f"NOT sound ({result.reason})"
            if earlier is not None and earlier.ok == result.ok:
                stands = "the earlier verification, which said the same, stands"
            else:
                with contextlib.suppress(OSError):
                    (directory / VERIFIED).unlink()  # frees space; needs none
                stands = "it now counts as unverified"
            raise BackupError(f"backup {backup_id} was checked and is {outcome}, but the "
                              f"outcome could not be recorded: {exc}; {stands}") from None
        return result

    def _verification(self, directory: Path, report: Progress,
                      manifest: Manifest | None) -> Verification:
        started = time.monotonic()
        try:
            files, toc = self._check(directory, report, manifest)
            ok, reason = True, None
        except BackupError as exc:
            files, toc, ok, reason = 0, 0, False, str(exc)
        return Verification(id=directory.name, ok=ok, reason=reason, checked_at=time.time(),
                            duration=round(time.monotonic() - started, 3), files=files,
                            toc_entries=toc)

    def _check(self, directory: Path, report: Progress,
               manifest: Manifest | None) -> tuple[int, int]:
        deadline = time.monotonic() + self.settings.timeout
        if manifest is None:
            manifest = self._read_manifest(directory)
        if manifest is None:
            raise BackupError(f"incomplete: no {MANIFEST} (the backup was interrupted)")
        check_files(directory, manifest, report)
        # pg_restore cannot read archives of a newer pg_dump, nor restore into a newer server.
        pg_restore = find_restore_tool(manifest)
        archive = str(directory / manifest.data)
        env = dict(os.environ)
        report("read TOC", 0.0, None)
        listing = self._restore_tool([str(pg_restore.path), "--list", archive], env, deadline,
                                     "cannot read the archive's table of contents")
        toc = sum(1 for line in listing.splitlines() if line and not line.startswith(";"))
        report("read TOC", 1.0, 1.0)
        report("read data", 0.0, None)
        self._restore_tool([str(pg_restore.path), "-f", os.devnull, archive], env, deadline,
                           "cannot read every data block")
        report("read data", 1.0, 1.0)
        return len(manifest.files), toc

    @staticmethod
    def _restore_tool(argv: list[str], env: dict[str, str], deadline: float,
                      what: str) -> str:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BackupError(f"verification timed out: {what}")
        try:
            result = run_process(argv, env=env, timeout=remaining)
        except PgToolError as exc:
            raise BackupError(f"{what}: {exc}") from None
        if result.returncode != 0:
            raise BackupError(f"{what}: pg_restore exit status {result.returncode}: "
                              f"{excerpt(result.stderr, lines=5, joiner=' / ') or 'no output'}")
        return result.stdout

    # -- pruning ---------------------------------------------------------------------------

    def prune(self, keep: int, protect: set[str]) -> list[str]:
        """Remove old backups; return the ids removed, oldest first.

        Kept: the ``keep`` newest complete backups, and the ``keep`` newest usable ones
        (verified: newer backups that failed verification never push them out), every id in
        ``protect`` (e.g. restore points of deploys inside the rollback window), and
        incomplete directories touched within the last hour or ``backups.timeout`` (a backup
        may still be writing them).
        """
        if keep < 0:
            raise BackupError(f"keep must be >= 0, got {keep}")
        infos = self.list()
        complete = sorted((i for i in infos if i.complete),
                          key=lambda i: (i.created_at or 0.0, i.id), reverse=True)
        usable = [i for i in complete if i.usable]
        kept = {i.id for i in complete[:keep]} | {i.id for i in usable[:keep]} | protect
        grace = max(INCOMPLETE_GRACE, self.settings.timeout)
        now = time.time()
        doomed = [i.id for i in complete if i.id not in kept]
        doomed += [i.id for i in infos if not i.complete and i.id not in protect
                   and now - _newest_mtime(self.dir / i.id) > grace]
        removed: list[str] = []
        for backup_id in sorted(doomed, key=lambda b: (_id_time(b), b)):
            try:
                shutil.rmtree(self.dir / backup_id)
            except OSError as exc:
                raise BackupError(f"cannot remove backup {backup_id}: {exc.strerror or exc} "
                                  f"(removed before it: {', '.join(removed) or 'none'})"
                                  ) from None
            removed.append(backup_id)
        return removed

    # -- connections -----------------------------------------------------------------------

    def _connect(self, dsn: str) -> contextlib.AbstractContextManager[psycopg.Connection[Any]]:
        return connect(dsn, connect_timeout=self.connect_timeout,
                       statement_timeout=self.settings.timeout,
                       lock_timeout=self.settings.lock_wait_timeout, error=BackupError)

    # -- listing (last: the method's name shadows the builtin in the class body) --------

    def list(self) -> builtins.list[BackupInfo]:
        """Every backup directory, oldest first; incomplete ones included and marked so."""
        infos = [self._info(p) for p in self._dirs()]
        return sorted(infos, key=lambda i: (i.created_at or _id_time(i.id), i.id))


# -- helpers ---------------------------------------------------------------------------------


def _no_progress(stage: str, done: float, total: float | None) -> None:
    return None


def dump_pattern_schema(schema: str) -> str:
    """A pg_dump ``-n``/``-N`` pattern matching exactly ``schema`` (quoted: no wildcards)."""
    return '"' + schema.replace('"', '""') + '"'



def _find(version_num: int, name: str) -> Tool:
    try:
        return find_tool(name, server_major(version_num))
    except PgToolError as exc:
        raise BackupError(str(exc)) from None


def find_restore_tool(manifest: Manifest, name: str = "pg_restore") -> Tool:
    """The client (pg_restore, psql) able to read this backup: no older than its pg_dump."""
    dumped_by = int(manifest.pg_dump_version.split(".")[0])
    try:
        return find_tool(name, max(server_major(manifest.server_version_num), dumped_by))
    except PgToolError as exc:
        raise BackupError(str(exc)) from None


def _server(conn: psycopg.Connection[Any]) -> _Server:
    row = conn.execute(
        "SELECT current_database(), current_setting('server_version'),"
        " current_setting('server_version_num')::int, pg_database_size(current_database())"
    ).fetchone()
    assert row is not None
    return _Server(database=str(row[0]), version=str(row[1]).split()[0],
                   version_num=int(row[2]), size=int(row[3]))


@contextlib.contextmanager
def _transaction(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """The snapshot-exporting transaction; it must stay open until pg_dump has imported it."""
    # A server-wide idle_in_transaction_session_timeout would end it while pg_dump runs.
    conn.execute("SET idle_in_transaction_session_timeout = 0")
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    try:
        yield
    except BaseException:
        with contextlib.suppress(psycopg.Error):
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _export_snapshot(conn: psycopg.Connection[Any]) -> tuple[str, float]:
    """The snapshot id, and the server's clock when the snapshot was taken (its first query)."""
    row = conn.execute(
        "SELECT pg_export_snapshot(), extract(epoch FROM clock_timestamp())").fetchone()
    assert row is not None
    return str(row[0]), float(row[1])


def _resolve_tables(conn: psycopg.Connection[Any], names: Sequence[str]) -> list[TableRef]:
    try:
        return resolve_tables(conn, names, relkinds=("r", "p"))
    except NoSuchTableError as exc:
        raise BackupError(f"no such table: {exc}") from None


def _count_rows(conn: psycopg.Connection[Any], selected: list[TableRef] | None,
                report: Progress) -> list[TableCount]:
    tables = selected if selected is not None else [
        t for t in user_tables(conn) if t.schema != KEPT_SCHEMA]
    counts: list[TableCount] = []
    for index, table in enumerate(tables):
        report("count rows", float(index), float(len(tables)))
        query = sql.SQL("SELECT count(*) FROM {}.{}").format(
            sql.Identifier(table.schema), sql.Identifier(table.name))
        row = conn.execute(query).fetchone()
        assert row is not None
        counts.append(TableCount(schema_=table.schema, name=table.name, rows=int(row[0])))
    report("count rows", float(len(tables)), float(len(tables)))
    return counts


def _checksum_files(directory: Path, report: Progress) -> list[FileEntry]:
    """sha256 and size of every file written so far, each fsynced: the manifest vouches for them."""
    paths = sorted(p for p in directory.rglob("*") if p.is_file())
    total = float(sum(p.stat().st_size for p in paths))
    done = 0.0
    entries: list[FileEntry] = []
    for path in paths:
        report("checksums", done, total)
        digest, size = sha256_file(path)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        entries.append(FileEntry(path=path.relative_to(directory).as_posix(), sha256=digest,
                                 size=size))
        done += size
    for sub in sorted({p.parent for p in paths}):
        fsync_dir(sub)
    report("checksums", total, total)
    return entries


def check_files(directory: Path, manifest: Manifest, report: Progress) -> None:
    """Size and sha256 of every file the manifest lists; :class:`BackupError` naming the first
    that differs. Cheap enough to repeat before each restore of an already verified backup."""
    total = float(manifest.size)
    done = 0.0
    for entry in manifest.files:
        report("checksums", done, total)
        path = directory / entry.path
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise BackupError(f"{entry.path} is missing") from None
        if size != entry.size:
            raise BackupError(f"{entry.path} has {size} bytes, the manifest says {entry.size} "
                              "(truncated or overwritten)")
        digest, _ = sha256_file(path)
        if digest != entry.sha256:
            raise BackupError(f"{entry.path} does not match its sha256 in the manifest "
                              "(the file is corrupted)")
        done += size
    report("checksums", total, total)


def _du(path: Path) -> int:
    """Bytes in a file, or in all files under a directory (0 when it does not exist yet)."""
    try:
        if path.is_file():
            return path.stat().st_size
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    except OSError:
        return 0


def _newest_mtime(path: Path) -> float:
    newest = 0.0
    with contextlib.suppress(OSError):
        newest = path.stat().st_mtime
        for p in path.rglob("*"):
            with contextlib.suppress(OSError):
                newest = max(newest, p.stat().st_mtime)
    return newest


def _id_time(backup_id: str) -> float:
    try:
        return datetime.strptime(backup_id[:16], "%Y%m%dT%H%M%SZ").replace(
            tzinfo=UTC).timestamp()
    except ValueError:
        return 0.0


def _id_kind(backup_id: str) -> str:
    parts = backup_id.split("-")
    return "-".join(parts[1:-1]) if len(parts) >= 3 else "unknown"


