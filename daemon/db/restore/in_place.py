"""The in-place strategy: a verified safety backup, then ``pg_restore --clean --if-exists
--single-transaction`` over the live database: all or nothing. (``--clean`` drops only what
the archive holds: tables a failed migration added survive, and are listed in the report's
notes.) Refused while other sessions are connected: their writes would land in neither copy.
"""
from __future__ import annotations

import time
from typing import Any

import psycopg

from daemon.db.admin import (
    RestoreError,
    RestoreOptions,
    admin_session,
    session,
)
from daemon.db.backups import BackupStore, Manifest
from daemon.db.restore.common import (
    RestoreReport,
    locked,
    pg_restore,
    safety_backup,
    validate_live,
    verified_manifest,
)


def restore_in_place(store: BackupStore, backup_id: str,
                     options: RestoreOptions) -> RestoreReport:
    """A verified safety backup, then one all-or-nothing pg_restore over the live database."""
    live = options.database
    manifest = verified_manifest(store, backup_id, live, whole=True)
    with locked(options, f"in-place restore of {backup_id}"):
        # Writes between the safety backup and the restore would be in neither copy, and
        # pg_restore must connect, so connections cannot be blocked: the app must be stopped.
        _refuse_while_connected(options, live)
        started = time.time()
        safety = safety_backup(store, options, None)
        _refuse_while_connected(options, live)
        pg_restore(store, manifest, options, live,
                    ["--clean", "--if-exists", "--single-transaction", "--exit-on-error"],
                    kept=f"safety backup {safety}")
        with session(options.dsn, options) as conn:
            conn.execute("ANALYZE")
            extra = _extra_tables(conn, manifest)
        notes = [f"table(s) not in the restore point survived (--clean drops only what the "
                 f"archive holds): {', '.join(extra)}"] if extra else []
        return RestoreReport(
            strategy="in_place", backup_id=manifest.id, source=manifest.id, database=live,
            started_at=started, finished_at=time.time(),
            data_window_start=manifest.created_at, data_window_end=started, kept=safety,
            kept_kind="backup", safety_backup=safety,
            validation=validate_live(options, manifest), notes=notes)


def _refuse_while_connected(options: RestoreOptions, live: str) -> None:
    with admin_session(options) as admin:
        row = admin.execute(
            "SELECT count(*), string_agg(DISTINCT coalesce(nullif(application_name, ''), "
            "'unnamed') || '@' || coalesce(client_addr::text, 'local'), ', ')"
            " FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
            " AND backend_type = 'client backend'", (live,)).fetchone()
    if row is not None and row[0]:
        raise RestoreError(
            f"an in-place restore needs the application stopped: {row[0]} session(s) are "
            f"connected to {live} ({row[1]}); stop it first, or use --strategy swap, which "
            "blocks connections for the swap itself")


def _extra_tables(conn: psycopg.Connection[Any], manifest: Manifest) -> list[str]:
    known = {t.qualified for t in manifest.tables}
    rows = conn.execute(
        "SELECT n.nspname || '.' || c.relname FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r'"
        " AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        " AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1").fetchall()
    return [str(r[0]) for r in rows if str(r[0]) not in known]
