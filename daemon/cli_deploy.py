"""``rollbackd deploy begin|end|run`` and ``rollbackd backup create|list|verify|prune``.

A deploy starts only with a verified restore point: the full backup, the schema, the config
files and the code version are taken and checked first, and the deploy is journaled after, so
that a deploy that could not be protected leaves no trace but its error.

Only ``[database]`` and ``[backups]`` are needed; ``[app]`` adds the config snapshot and the
code version. Human output goes to stdout (progress bars to stderr, on a terminal only);
``--json`` prints one JSON document for scripts. Exit codes: 0 ok, 1 failed, 2 usage/config.

Register on the root group with ``register(cli)``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from daemon.backups import (
    BackupError,
    BackupStore,
    Kind,
    Manifest,
    Verification,
    format_size,
)
from daemon.backups import Progress as ProgressCallback
from daemon.cli_common import (
    EXIT_FAILED,
    Terminated,
    config_option,
    fail,
    load_or_fail,
    sigterm_raises,
    when,
    working,
)
from daemon.config import Config, ConfigError, DatabaseSettings
from daemon.journal import Deploy, Journal, JournalError
from daemon.pgtools import PgToolError, run_passthrough
from daemon.snapshot import SnapshotError, code_version
from policies.units import format_duration, parse_duration


class DeployError(Exception):
    """A deploy that cannot begin or end; ``str()`` is the one line the operator reads."""


@dataclass(frozen=True, slots=True)
class DeployStart:
    """What ``start_deploy`` did: the journaled deploy and its verified restore point."""

    deploy: Deploy
    restore_point: Manifest
    verification: Verification

    def as_json(self) -> dict[str, Any]:
        rp = self.restore_point
        return {
            "deploy": self.deploy.id, "app": self.deploy.app, "version": self.deploy.version,
            "started_at": self.deploy.started_at, "restore_point": rp.id,
            "verified": self.verification.ok, "database": rp.database, "size": rp.size,
            "tables": len(rp.tables), "rows": rp.rows, "code_version": rp.code_version,
            "config_files": [c.path for c in rp.config],
        }


# -- the operations, usable without click (the HTTP API and runbooks call these) -------------


def open_store(config: Config) -> BackupStore:
    db = config.database
    return BackupStore(config.backups,
                       connect_timeout=db.connect_timeout if db is not None else 5.0)


def open_journal(config: Config) -> Journal:
    try:
        return Journal.in_state_dir(config.daemon.state_dir)
    except JournalError as exc:
        raise DeployError(str(exc)) from None


def start_deploy(config: Config, version: str, *,
                 progress: ProgressCallback | None = None) -> DeployStart:
    """Take and verify the restore point, then journal the deploy; ``DeployError`` if it cannot.

    Nothing is journaled unless the restore point verified: a failed attempt leaves at most an
    unverified backup directory (kept for inspection, removed by ``prune``).
    """
    db = _database(config)
    store = open_store(config)
    journal = open_journal(config)
    try:
        code = code_version(config.app)
        files = config.app.config_files if config.app is not None else []
        manifest = store.create(db.dsn, "restore_point", version=version, config_files=files,
                                code_version=code, progress=progress)
        verification = store.verify(manifest.id, progress=progress)
        if not verification.ok:
            raise DeployError(f"restore point {manifest.id} failed verification: "
                              f"{verification.reason}; no deploy recorded")
        deploy = journal.begin_deploy(config.app_name, version, time.time(),
                                      code_version=code, restore_point=manifest.id,
                                      verified=True)
    except (BackupError, SnapshotError, PgToolError, JournalError) as exc:
        raise DeployError(f"cannot begin the deploy: {exc}") from None
    finally:
        journal.close()
    try:
        manifest = store.attach_deploy(manifest.id, deploy.id)
    except BackupError as exc:
        # The deploy is journaled with its verified restore point: that stands. Only the
        # manifest's back-reference is missing, which nothing depends on.
        click.echo(f"rollbackd: warning: deploy {deploy.id} recorded, but its restore "
                   f"point's manifest could not name it: {exc}", err=True)
    return DeployStart(deploy, manifest, verification)


def end_deploy(config: Config, status: str, deploy_id: int | None = None) -> Deploy:
    """Close ``deploy_id`` (default: the app's latest running deploy) with ``status``."""
    journal = open_journal(config)
    try:
        if deploy_id is None:
            running = journal.deploys(config.app_name, status="running")
            if not running:
                raise DeployError(f"no running deploy of {config.app_name} to end")
            deploy_id = running[0].id
        return journal.end_deploy(deploy_id, status, time.time())
    except JournalError as exc:
        raise DeployError(str(exc)) from None
    finally:
        journal.close()


def record_migration(config: Config, deploy: Deploy, status: str,
                     exit_code: int | None) -> None:
    """Journal the migration's outcome (the engine's ``migration.failed``), then end the deploy."""
    journal = open_journal(config)
    try:
        t = time.time()
        journal.add_event(t, {"type": "migration", "status": status, "version": deploy.version,
                              "deploy": deploy.id, "exit_code": exit_code})
        journal.end_deploy(deploy.id, status, t)
    except JournalError as exc:
        raise DeployError(str(exc)) from None
    finally:
        journal.close()


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


def _database(config: Config) -> DatabaseSettings:
    if config.database is None:
        raise DeployError("the config has no [database] section (needed for backups)")
    return config.database


# -- click plumbing --------------------------------------------------------------------------


def _config(ctx: click.Context, config_file: Path | None) -> tuple[Path, Config]:
    path, config = load_or_fail(ctx, config_file)
    if config.database is None:
        fail(f"{path}: database: required key is missing (deploys and backups need it)")
    return path, config


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, sort_keys=True))


@contextmanager
def _progress(enabled: bool) -> Iterator[ProgressCallback | None]:
    """A rich progress display on stderr when it is a terminal, else nothing."""
    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield None
        return
    columns = (TextColumn("{task.description:<16}"), BarColumn(),
               TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        tasks: dict[str, TaskID] = {}

        def report(stage: str, done: float, total: float | None) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield report


# -- deploy ----------------------------------------------------------------------------------


@click.group()
def deploy() -> None:
    """Record deploys, each protected by a verified restore point taken before it."""


@deploy.command("begin")
@config_option
@click.option("--version", "version", required=True, help="The version being deployed.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def deploy_begin(ctx: click.Context, config_file: Path | None, version: str,
                 as_json: bool) -> None:
    """Take and verify a restore point, then record the deploy's start."""
    _, config = _config(ctx, config_file)
    started = _begin(config, version, as_json)
    if as_json:
        _print_json(started.as_json())
    else:
        _print_begin(started, click.echo)


def _begin(config: Config, version: str, as_json: bool) -> DeployStart:
    try:
        with _progress(not as_json) as progress:
            return start_deploy(config, version, progress=progress)
    except DeployError as exc:
        fail(str(exc), EXIT_FAILED)


def _print_begin(started: DeployStart, echo: Any) -> None:
    d, rp = started.deploy, started.restore_point
    echo(f"deploy {d.id} of {d.app} {d.version} begun")
    echo(f"restore point {rp.id}: verified, {format_size(rp.size)}, database {rp.database}, "
         f"{len(rp.tables)} tables, {rp.rows} rows")
    extras = []
    if rp.code_version:
        extras.append(f"code {rp.code_version}")
    if rp.config:
        extras.append(f"{len(rp.config)} config file(s) kept")
    if extras:
        echo(", ".join(extras))


@deploy.command("end")
@config_option
@click.option("--status", type=click.Choice(["succeeded", "failed"]), required=True)
@click.option("--deploy", "deploy_id", type=int, default=None,
              help="The deploy to end (default: the latest running one).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def deploy_end(ctx: click.Context, config_file: Path | None, status: str,
               deploy_id: int | None, as_json: bool) -> None:
    """Record the end of a deploy."""
    _, config = _config(ctx, config_file)
    try:
        ended = end_deploy(config, status, deploy_id)
    except DeployError as exc:
        fail(str(exc), EXIT_FAILED)
    if as_json:
        _print_json({"deploy": ended.id, "version": ended.version, "status": ended.status,
                     "restore_point": ended.restore_point})
    else:
        click.echo(f"deploy {ended.id} of {ended.app} {ended.version} {ended.status}")


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if seconds <= 0:
        raise click.BadParameter("must be positive")
    return seconds


@deploy.command("run", context_settings={"ignore_unknown_options": True})
@config_option
@click.option("--version", "version", required=True, help="The version being deployed.")
@click.option("--timeout", default="1h", show_default=True, callback=_duration,
              help="How long the command may run before it is killed.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def deploy_run(ctx: click.Context, config_file: Path | None, version: str, timeout: float,
               command: tuple[str, ...]) -> None:
    """Begin a deploy, run a migration (``-- CMD ARGS...``), end the deploy with its status.

    The command's output passes straight through; rollbackd's own lines go to stderr. A
    failing command (or one killed at the timeout) is journaled as a failed migration.
    """
    _, config = _config(ctx, config_file)
    started = _begin(config, version, as_json=False)
    _print_begin(started, lambda line: click.echo(f"rollbackd: {line}", err=True))
    exit_code, why = _run_migration(list(command), timeout)
    status = "succeeded" if exit_code == 0 else "failed"
    try:
        record_migration(config, started.deploy, status, exit_code)
    except DeployError as exc:
        fail(f"the migration {status} but could not be journaled: {exc}", EXIT_FAILED)
    d = started.deploy
    if status == "failed":
        fail(f"{why}: deploy {d.id} of {d.version} recorded as a failed migration "
             f"(restore point {started.restore_point.id})", EXIT_FAILED)
    click.echo(f"rollbackd: deploy {d.id} of {d.version} succeeded", err=True)


def _run_migration(argv: list[str], timeout: float) -> tuple[int | None, str]:
    """The command's exit status (None when it could not run or was killed) and why it failed.

    SIGTERM or Ctrl-C kills the command (run_passthrough kills it on any interruption) and
    still journals the failed migration: a deploy must not stay "running" because rollbackd
    itself was stopped.
    """
    name = Path(argv[0]).name
    try:
        with sigterm_raises():
            code = run_passthrough(argv, timeout=timeout)
    except PgToolError as exc:
        return None, str(exc)
    except (KeyboardInterrupt, Terminated):
        return None, f"{name} was interrupted and killed"
    return code, f"{name} failed with exit status {code}"


# -- backup ----------------------------------------------------------------------------------


@click.group()
def backup() -> None:
    """Create, list, verify and prune PostgreSQL backups."""


@backup.command("create")
@config_option
@click.option("--kind", type=click.Choice(["manual", "safety", "restore_point"]),
              default="manual", show_default=True)
@click.option("--tables", default=None, metavar="T1,T2",
              help="Back up only these tables (kind 'tables').")
@click.option("--no-verify", is_flag=True, help="Skip the verification after the backup.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the manifest).")
@click.pass_context
def backup_create(ctx: click.Context, config_file: Path | None, kind: str,
                  tables: str | None, no_verify: bool, as_json: bool) -> None:
    """Take a backup now (and verify it)."""
    _, config = _config(ctx, config_file)
    db = _database(config)
    store = open_store(config)
    selected = [t.strip() for t in tables.split(",") if t.strip()] if tables else None
    if tables is not None and not selected:
        fail("--tables: no table named")
    real_kind: Kind = "tables" if selected else _kind(kind)
    try:
        with _progress(not as_json) as progress:
            manifest = store.create(db.dsn, real_kind, tables=selected, progress=progress)
            verification = None if no_verify else store.verify(manifest.id, progress=progress)
    except BackupError as exc:
        fail(str(exc), EXIT_FAILED)
    _report_created(manifest, verification, as_json)
    if verification is not None and not verification.ok:
        sys.exit(EXIT_FAILED)


def _kind(value: str) -> Kind:
    kinds: dict[str, Kind] = {"manual": "manual", "safety": "safety",
                              "restore_point": "restore_point"}
    return kinds[value]


def _report_created(manifest: Manifest, verification: Verification | None,
                    as_json: bool) -> None:
    verified = None if verification is None else verification.ok
    if as_json:
        _print_json({**manifest.dump(), "verified": verified,
                     "reason": None if verification is None else verification.reason})
        return
    state = {None: "not verified", True: "verified"}.get(verified, "FAILED verification")
    click.echo(f"backup {manifest.id}: {state}, {format_size(manifest.size)}, database "
               f"{manifest.database}, {len(manifest.tables)} tables, {manifest.rows} rows")
    if verification is not None and not verification.ok:
        click.echo(f"rollbackd: {verification.reason}", err=True)


@backup.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def backup_list(ctx: click.Context, config_file: Path | None, as_json: bool) -> None:
    """List the backups, oldest first."""
    _, config = _config(ctx, config_file)
    try:
        infos = open_store(config).list()
    except BackupError as exc:
        fail(str(exc), EXIT_FAILED)
    if as_json:
        _print_json([i.as_json() for i in infos])
        return
    if not infos:
        click.echo(f"no backups in {config.backups.dir}")
        return
    rows = [("id", "kind", "database", "created", "deploy", "size", "verified")]
    for i in infos:
        verified = {None: "-", True: "yes", False: "FAILED"}[i.verified]
        rows.append((i.id, i.kind, i.database or "-",
                     when(i.created_at, missing="-") if i.complete else "incomplete",
                     "-" if i.deploy is None else str(i.deploy), format_size(i.size), verified))
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@backup.command("verify")
@config_option
@click.argument("backup_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def backup_verify(ctx: click.Context, config_file: Path | None, backup_id: str,
                  as_json: bool) -> None:
    """Check a backup's checksums, its TOC and every data block; exit 1 when it is not sound."""
    _, config = _config(ctx, config_file)
    store = open_store(config)
    try:
        with _progress(not as_json) as progress:
            result = store.verify(backup_id, progress=progress)
    except BackupError as exc:
        fail(str(exc), EXIT_FAILED)
    if as_json:
        _print_json(result.model_dump(mode="json"))
    elif result.ok:
        click.echo(f"backup {backup_id} is sound: {result.files} files, "
                   f"{result.toc_entries} TOC entries, read in {format_duration(result.duration)}")
    if not result.ok:
        fail(f"backup {backup_id} failed verification: {result.reason}", EXIT_FAILED)


@backup.command("prune")
@config_option
@click.option("--keep", type=click.IntRange(min=0), default=None,
              help="Backups to keep (default: backups.keep).")
@click.option("--window", default=None, metavar="DURATION",
              help="Keep restore points of deploys begun this recently "
                   "(default: the policy's guards.rollback_window).")
@click.option("--json", "as_json", is_flag=True, help="Print the removed ids as a JSON array.")
@click.pass_context
def backup_prune(ctx: click.Context, config_file: Path | None, keep: int | None,
                 window: str | None, as_json: bool) -> None:
    """Remove old backups, keeping backups.keep and the restore points still needed."""
    path, config = _config(ctx, config_file)
    seconds = _window(path, config, window)
    try:
        protect = protected_restore_points(config, seconds, time.time())
        removed = open_store(config).prune(config.backups.keep if keep is None else keep,
                                           protect)
    except (BackupError, DeployError, JournalError) as exc:
        fail(str(exc), EXIT_FAILED)
    if as_json:
        _print_json(removed)
        return
    for backup_id in removed:
        click.echo(f"removed {backup_id}")
    click.echo(f"{len(removed)} backup(s) removed, {len(protect)} restore point(s) protected "
               f"(deploys within {format_duration(seconds)})")


def _window(path: Path, config: Config, given: str | None) -> float:
    if given is not None:
        try:
            return parse_duration(given)
        except ValueError as exc:
            fail(f"--window: {exc}")
    from daemon.config import load_policy

    try:
        return float(load_policy(config, path).guards.rollback_window)
    except ConfigError as exc:
        fail(str(exc))


@backup.command("restore")
@config_option
@click.argument("backup_id", metavar="ID")
@click.option("--strategy", type=click.Choice(["swap", "in_place", "clone"]), default=None,
              show_default="swap",
              help="swap: restore into a shadow database and swap names (the current one is "
                   "kept); in_place: one all-or-nothing pg_restore after a safety backup; "
                   "clone: ID is a clone from `backup clone`, swapped in within seconds.")
@click.option("--tables", default=None, metavar="T1,T2",
              help="Restore only these tables' data (one transaction, after a safety dump).")
@click.option("--cascade", is_flag=True,
              help="With --tables: also restore tables whose foreign keys reference them.")
@click.option("--yes", is_flag=True, help="Confirm: the restore replaces live data.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.pass_context
def backup_restore(ctx: click.Context, config_file: Path | None, backup_id: str,
                   strategy: str | None, tables: str | None, cascade: bool, yes: bool,
                   as_json: bool) -> None:
    """Restore a verified backup; prints the data window undone and where that data is kept."""
    from daemon.locks import LockError
    from daemon.restore import (
        RestoreError,
        RestoreOptions,
        restore_from_clone,
        restore_in_place,
        restore_swap,
        restore_tables,
    )

    _, config = _config(ctx, config_file)
    db = _database(config)
    selected = [t.strip() for t in tables.split(",") if t.strip()] if tables else []
    if tables is not None and not selected:
        fail("--tables: no table named")
    if cascade and not selected:
        fail("--cascade only applies with --tables")
    if selected and strategy is not None:
        fail("--tables replaces the rows of those tables in one transaction; it takes no "
             "--strategy")
    strategy = strategy or "swap"
    if not yes:
        fail(_restore_warning(backup_id, db.dsn, strategy, selected))
    store = open_store(config)
    try:
        options = RestoreOptions.from_config(config)
        with working(f"restoring backup {backup_id} ({'tables' if selected else strategy})",
                     enabled=not as_json):
            if selected:
                report = restore_tables(store, backup_id, options, selected, cascade=cascade)
            elif strategy == "clone":
                report = restore_from_clone(options, backup_id)
            elif strategy == "in_place":
                report = restore_in_place(store, backup_id, options)
            else:
                report = restore_swap(store, backup_id, options)
    except (RestoreError, LockError) as exc:
        fail(str(exc), EXIT_FAILED)
    if as_json:
        _print_json(report.as_json())
    else:
        for line in report.describe():
            click.echo(line)
    if not report.ok:
        fail("the restore completed but the database failed validation after it: "
             + "; ".join(f"{r.name}: {r.message}" for r in report.validation if not r.ok),
             EXIT_FAILED)


@backup.command("clone")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the clone's name as JSON.")
@click.pass_context
def backup_clone(ctx: click.Context, config_file: Path | None, as_json: bool) -> None:
    """Take a fast restore point: CREATE DATABASE ... TEMPLATE, while the app is stopped for
    the deploy. `backup restore NAME --strategy clone` swaps it back in seconds."""
    from daemon.restore import RestoreError, RestoreOptions, create_clone

    _, config = _config(ctx, config_file)
    _database(config)
    try:
        clone = create_clone(RestoreOptions.from_config(config))
    except RestoreError as exc:
        fail(str(exc), EXIT_FAILED)
    if as_json:
        _print_json({"clone": clone})
    else:
        click.echo(f"clone {clone} taken; roll back to it with: rollbackd backup restore "
                   f"{clone} --strategy clone --yes")


def _restore_warning(backup_id: str, dsn: str, strategy: str, tables: list[str]) -> str:
    from probes.pg import dbname_of

    name = dbname_of(dsn) or "the database"
    if tables:
        return (f"refusing without --yes: this replaces every row of {', '.join(tables)} in "
                f"{name} with backup {backup_id}'s (a safety dump of them is taken first)")
    if strategy == "clone":
        return (f"refusing without --yes: this swaps database {name} for the clone "
                f"{backup_id} (the current one is kept, renamed)")
    if strategy == "in_place":
        return (f"refusing without --yes: this overwrites database {name} in place with "
                f"backup {backup_id} (a safety backup is taken first)")
    return (f"refusing without --yes: this terminates every session of database {name} and "
            f"replaces it with backup {backup_id} (the current one is kept as "
            f"{name}_rolledback_<timestamp>)")
