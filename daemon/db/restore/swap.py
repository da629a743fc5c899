"""The swap strategy: restore beside the live database, then trade names.

pg_restore -j N into a fresh ``<db>_shadow_<ts>``, database-level settings, grants, owner
and connection limit copied from the live database, ANALYZE, validation; then, from the
maintenance database: block connections to live, terminate its sessions (bounded by
``backups.terminate_timeout``), rename live to ``<db>_rolledback_<ts>`` and the shadow to
the live name. Connections are refused only during that last step (``blocked_seconds``).
Before the first rename any failure drops the shadow and re-allows connections: live is
untouched. If the second rename fails the first is undone.

A process killed during the pg_restore leaves live untouched and a stale shadow database,
which the next swap (under the lock, so nobody else can be using it) drops. Killed during the
swap step itself (a fraction of a second) it can leave live refusing connections; the next
swap finds the stale shadow and allows them again.
"""
from __future__ import annotations

import contextlib
import re
import time
from typing import Any

import psycopg
from psycopg import sql

from daemon.db.admin import (
    DatabaseProperties,
    RestoreError,
    RestoreOptions,
    admin_session,
    apply_properties,
    create_like,
    database_properties,
    derived_name,
    drop_quietly,
    session,
    terminate_sessions,
)
from daemon.db.backups import BackupStore, Manifest
from daemon.db.restore.common import (
    RestoreReport,
    locked,
    pg_restore,
    validate_live,
    verified_manifest,
)
from daemon.db.validate import summary, validate_data, validate_database
from daemon.fmt import db_stamp
from probes.base import one_line
from probes.pg import with_dbname


def restore_swap(store: BackupStore, backup_id: str, options: RestoreOptions) -> RestoreReport:
    """Restore ``backup_id`` into a shadow database, validate it, and swap it in."""
    live = options.database
    manifest = verified_manifest(store, backup_id, live, whole=True)
    with locked(options, f"swap restore of {backup_id}"):
        started = time.time()
        stamp = db_stamp(started)
        shadow = derived_name(live, f"_shadow_{stamp}")
        aside = derived_name(live, f"_rolledback_{stamp}")
        with admin_session(options) as admin:
            repair_swap_locked(admin, live)
            props = database_properties(admin, live)
            create_like(admin, shadow, props)
        try:
            restore_into(store, manifest, options, shadow, props)
            validate_replacement(options, shadow, manifest)
            with admin_session(options) as admin:
                blocked = swap_in(admin, options, live, shadow, aside)
        except BaseException:
            drop_quietly(options, shadow)
            raise
        validation = validate_live(options, manifest)
        return RestoreReport(
            strategy="swap", backup_id=manifest.id, source=manifest.id, database=live,
            started_at=started, finished_at=time.time(),
            data_window_start=manifest.created_at, data_window_end=started, kept=aside,
            kept_kind="database", blocked_seconds=round(blocked, 3),
            validation=validation)


def restore_into(store: BackupStore, manifest: Manifest, options: RestoreOptions, name: str,
                 props: DatabaseProperties | None) -> None:
    """Fill the new, empty database ``name`` from the backup (pg_restore -j N, stopping at
    the first error), give it ``props``' settings, grants and owner, and ANALYZE it: the
    swap's shadow and the drill's scratch database are made alike."""
    pg_restore(store, manifest, options, name, ["-j", str(options.jobs), "--exit-on-error"])
    finish_replacement(options, name, props)


def finish_replacement(options: RestoreOptions, name: str,
                        props: DatabaseProperties | None) -> None:
    if props is not None:
        with admin_session(options) as admin:
            apply_properties(admin, name, props)
    with session(with_dbname(options.dsn, name), options) as conn:
        conn.execute("ANALYZE")


def validate_replacement(options: RestoreOptions, name: str, manifest: Manifest | None) -> None:
    """The database to be swapped in must pass validation, or live stays as it is."""
    target = with_dbname(options.dsn, name)
    results = validate_database(target, expected_tables=options.expected_tables,
                                checks=options.checks, timeout=options.statement_timeout,
                                connect_timeout=options.connect_timeout)
    if manifest is not None and options.key_tables:
        results += validate_data(target, manifest, options.key_tables,
                                 timeout=options.statement_timeout,
                                 connect_timeout=options.connect_timeout)
    if not all(r.ok for r in results):
        raise RestoreError(f"the restored database {name} failed validation, so it was not "
                           f"swapped in (live is untouched): {summary(results)}")


def swap_in(admin: psycopg.Connection[Any], options: RestoreOptions, live: str, replacement: str,
          aside: str) -> float:
    """Rename live aside and ``replacement`` to live; seconds live refused connections."""
    blocked_at = time.monotonic()
    admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(
        sql.Identifier(live)))
    try:
        _rename_when_free(admin, live, aside, time.monotonic() + options.terminate_timeout)
    except BaseException:
        with contextlib.suppress(psycopg.Error):
            admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(
                sql.Identifier(live)))
        raise
    try:
        _rename_when_free(admin, replacement, live, time.monotonic() + options.terminate_timeout)
    except BaseException as exc:
        _put_back(admin, aside, live, exc)
        raise
    blocked = time.monotonic() - blocked_at
    # The kept database is for people to read the newer data from: let them in. The swap
    # has happened by now, so a failure here must not make it look as if it had not.
    with contextlib.suppress(psycopg.Error):
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(
            sql.Identifier(aside)))
    return blocked


def _put_back(admin: psycopg.Connection[Any], aside: str, live: str, why: BaseException) -> None:
    try:
        admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
            sql.Identifier(aside), sql.Identifier(live)))
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(
            sql.Identifier(live)))
    except psycopg.Error as exc:
        raise RestoreError(
            f"the swap failed after renaming {live} to {aside} ({one_line(why)}) and the old "
            f"name could not be put back ({one_line(exc)}): there is NO database {live} now; "
            f"run ALTER DATABASE {aside} RENAME TO {live}; ALTER DATABASE {live} "
            "ALLOW_CONNECTIONS true") from None


def _rename_when_free(admin: psycopg.Connection[Any], old: str, new: str,
                      deadline: float) -> None:
    """Terminate ``old``'s sessions and rename it, retrying while sessions linger."""
    while True:
        left = terminate_sessions(admin, old, deadline)
        try:
            admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                sql.Identifier(old), sql.Identifier(new)))
            return
        except psycopg.errors.ObjectInUse as exc:
            if time.monotonic() >= deadline:
                raise RestoreError(
                    f"database {old} could not be renamed: sessions would not end within "
                    f"backups.terminate_timeout ({len(left)} left: pids "
                    f"{', '.join(map(str, left)) or 'none visible'}; prepared transactions "
                    f"also hold it): {one_line(exc)}") from None
            time.sleep(0.05)


def repair_interrupted_swap(options: RestoreOptions) -> list[str]:
    """Undo what a swap killed midway left behind (see the module docstring); returns the stale
    shadows dropped. Takes the rollback lock unless ``options.take_lock`` is false."""
    with locked(options, "repair of an interrupted swap"), admin_session(options) as admin:
        return repair_swap_locked(admin, options.database)


def repair_swap_locked(admin: psycopg.Connection[Any], live: str) -> list[str]:
    """Shadows of an interrupted swap: under the lock nobody else can be restoring into them.

    A swap killed while it blocked connections left live refusing them; a stale shadow is
    the sign of that, so connections to live are allowed again too.
    """
    prefix = derived_name(live, "_shadow_00000000000000")[: -len("00000000000000")]
    pattern = re.compile(re.escape(prefix) + r"\d{14}$")
    stale = [str(name) for (name,) in admin.execute("SELECT datname FROM pg_database")
             if pattern.match(str(name))]
    for name in stale:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))
    if stale:
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(
            sql.Identifier(live)))
    return stale
