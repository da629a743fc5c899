"""``rollbackd backup create|list|verify|prune|restore|clone|recover``."""

from __future__ import annotations

from pathlib import Path

import click

from daemon.cli.common import (
    EXIT_FAILED,
    config_option,
    fail,
    json_option,
    load_with_database,
    progress_bars,
    render,
    render_outcome,
    working,
)
from daemon.config import Config, ConfigError, load_policy
from daemon.db.backups import Kind
from daemon.ops.backups import (
    create_backup,
    list_backups,
    prune_backups,
    swap_recovery,
    take_clone,
    verify_backup,
)
from daemon.ops.common import OpsError
from daemon.ops.restores import WholeStrategy, restore, restore_warning
from policies.units import parse_duration


@click.group()
def backup() -> None:
    """Create, list, verify, prune and restore PostgreSQL backups."""


def _table_list(option: str, value: str | None) -> list[str]:
    selected = [t.strip() for t in value.split(",") if t.strip()] if value else []
    if value is not None and not selected:
        fail(f"{option}: no table named")
    return selected


@backup.command("create")
@config_option
@click.option("--kind", type=click.Choice(["manual", "safety", "restore_point"]),
              default="manual", show_default=True)
@click.option("--tables", default=None, metavar="T1,T2",
              help="Back up only these tables (kind 'tables').")
@click.option("--no-verify", is_flag=True, help="Skip the verification after the backup.")
@json_option("Print one JSON object (the manifest).")
@click.pass_context
def backup_create(ctx: click.Context, config_file: Path | None, kind: str,
                  tables: str | None, no_verify: bool, as_json: bool) -> None:
    """Take a backup now (and verify it)."""
    _, config = load_with_database(ctx, config_file)
    selected = _table_list("--tables", tables)
    kinds: dict[str, Kind] = {"manual": "manual", "safety": "safety",
                              "restore_point": "restore_point"}
    try:
        with progress_bars(not as_json) as progress:
            created = create_backup(config, "tables" if selected else kinds[kind],
                                    tables=selected, verify=not no_verify, progress=progress)
    except OpsError as exc:
        fail(str(exc), EXIT_FAILED)
    render(created, as_json)
    if created.verification is not None and not created.verification.ok:
        fail(str(created.verification.reason), EXIT_FAILED)


@backup.command("list")
@config_option
@json_option("Print a JSON array.")
@click.pass_context
def backup_list(ctx: click.Context, config_file: Path | None, as_json: bool) -> None:
    """List the backups, oldest first."""
    _, config = load_with_database(ctx, config_file)
    render_outcome(lambda: list_backups(config), as_json)


@backup.command("verify")
@config_option
@click.argument("backup_id", metavar="ID")
@json_option()
@click.pass_context
def backup_verify(ctx: click.Context, config_file: Path | None, backup_id: str,
                  as_json: bool) -> None:
    """Check a backup's checksums, its TOC and every data block; exit 1 when it is not sound."""
    _, config = load_with_database(ctx, config_file)
    try:
        with progress_bars(not as_json) as progress:
            verified = verify_backup(config, backup_id, progress=progress)
    except OpsError as exc:
        fail(str(exc), EXIT_FAILED)
    render(verified, as_json)
    if not verified.result.ok:
        fail(f"backup {backup_id} failed verification: {verified.result.reason}", EXIT_FAILED)


@backup.command("prune")
@config_option
@click.option("--keep", type=click.IntRange(min=0), default=None,
              help="Backups (and kept databases, clones, kept table sets) to keep "
                   "(default: backups.keep).")
@click.option("--window", default=None, metavar="DURATION",
              help="Keep restore points of deploys begun this recently "
                   "(default: the policy's guards.rollback_window).")
@json_option("Print one JSON object: removed (backup ids), removed_databases, removed_tables.")
@click.pass_context
def backup_prune(ctx: click.Context, config_file: Path | None, keep: int | None,
                 window: str | None, as_json: bool) -> None:
    """Remove old backups, kept databases (<db>_rolledback_*, clones) and kept tables
    (rollbackd_kept), keeping the newest --keep of each and all from within the window.
    Exit 1 when part of it could not be done (what was done is still printed)."""
    path, config = load_with_database(ctx, config_file)
    seconds = _window(path, config, window)
    try:
        pruned = prune_backups(config, config.backups.keep if keep is None else keep, seconds)
    except OpsError as exc:
        fail(str(exc), EXIT_FAILED)
    render(pruned, as_json)
    if pruned.problems:
        fail("; ".join(pruned.problems), EXIT_FAILED)


def _window(path: Path, config: Config, given: str | None) -> float:
    if given is not None:
        try:
            return parse_duration(given)
        except ValueError as exc:
            fail(f"--window: {exc}")
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
@click.option("--without-fleet", is_flag=True,
              help="In fleet mode, restore the shared database from this host alone (the "
                   "other hosts do not follow it).")
@json_option("Print the report as one JSON object.")
@click.pass_context
def backup_restore(ctx: click.Context, config_file: Path | None, backup_id: str,
                   strategy: WholeStrategy | None, tables: str | None, cascade: bool,
                   yes: bool, without_fleet: bool, as_json: bool) -> None:
    """Restore a verified backup; prints the data window undone and where that data is kept."""
    _, config = load_with_database(ctx, config_file)
    selected = _table_list("--tables", tables)
    if cascade and not selected:
        fail("--cascade only applies with --tables")
    if selected and strategy is not None:
        fail("--tables replaces the rows of those tables in one transaction; it takes no "
             "--strategy")
    chosen: WholeStrategy = strategy or "swap"
    if not yes:
        fail("refusing without --yes: " + restore_warning(config, backup_id, chosen, selected))
    try:
        with working(f"restoring backup {backup_id} ({'tables' if selected else chosen})",
                     enabled=not as_json):
            report = restore(config, backup_id, chosen, selected, cascade,
                             without_fleet=without_fleet)
    except OpsError as exc:
        fail(str(exc), EXIT_FAILED)
    render(report, as_json)
    if not report.ok:
        fail("the restore completed but the database failed validation after it: "
             + "; ".join(f"{r.name}: {r.message}" for r in report.validation if not r.ok),
             EXIT_FAILED)


@backup.command("clone")
@config_option
@json_option("Print the clone's name as JSON.")
@click.pass_context
def backup_clone(ctx: click.Context, config_file: Path | None, as_json: bool) -> None:
    """Take a fast restore point: CREATE DATABASE ... TEMPLATE, while the app is stopped for
    the deploy. `backup restore NAME --strategy clone` swaps it back in seconds."""
    _, config = load_with_database(ctx, config_file)
    render_outcome(lambda: take_clone(config), as_json)


@backup.command("recover")
@config_option
@click.option("--check", is_flag=True,
              help="Only report what an interrupted swap left and what recovery would do.")
@json_option("Print the findings as one JSON object.")
@click.pass_context
def backup_recover(ctx: click.Context, config_file: Path | None, check: bool,
                   as_json: bool) -> None:
    """Complete or revert a swap (or clone swap) that was killed midway, and say which.

    Exit 1 when the state needs a person (nothing is changed then) or recovery failed."""
    _, config = load_with_database(ctx, config_file)
    try:
        recovery = swap_recovery(config, repair=not check)
    except OpsError as exc:
        fail(str(exc), EXIT_FAILED)
    render(recovery, as_json)
    if recovery.needs_operator:
        fail(f"the interrupted swap of {recovery.database} needs a person: {recovery.advice}",
             EXIT_FAILED)
