"""Clone restore points: ``CREATE DATABASE ... TEMPLATE`` while the app is stopped for the
deploy, swapped back in within seconds (the live database is kept, renamed aside).
"""
from __future__ import annotations

import re
import time
from typing import Any

import psycopg
from psycopg import sql

from daemon.db.admin import (
    RestoreError,
    RestoreOptions,
    admin_session,
    database_properties,
    derived_name,
)
from daemon.db.restore.common import (
    RestoreReport,
    locked,
    validate_live,
)
from daemon.db.restore.swap import (
    ASIDE_INFIX,
    SwapMarker,
    finish_replacement,
    recover_swap_locked,
    swap_in,
    validate_replacement,
)
from daemon.fmt import db_stamp
from probes.pg import APPLICATION_NAME

CLONE_COMMENT = "rollbackd clone of {db} taken at {at}"


CLONE_ATTEMPTS = 3
"""Tries at the copy: a probe of rollbackd's may connect again between its session's end and
the copy."""

_END_OWN_PROBES = """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
    WHERE datname = %s AND application_name = %s AND pid <> pg_backend_pid()"""

_OTHER_SESSIONS = """SELECT count(*) FROM pg_stat_activity
    WHERE datname = %s AND application_name IS DISTINCT FROM %s"""


def create_clone(options: RestoreOptions, name: str | None = None) -> str:
    """``CREATE DATABASE <name> TEMPLATE <live>``; the clone's name.

    PostgreSQL copies the files only when nobody is connected to the live database, so this is
    for a deploy that stops the application first. The sessions of rollbackd's own probes
    (``application_name = rollbackd``, on this host or another of its fleet) are ended for the
    copy: they connect again at their next look. Any other session refuses the clone: it is
    not ended, as that would be an outage the deploy did not plan.
    """
    live = options.database
    taken = time.time()
    clone = name or derived_name(live, "_clone_" + db_stamp(taken))
    with admin_session(options) as admin:
        for attempt in range(1, CLONE_ATTEMPTS + 1):
            admin.execute(_END_OWN_PROBES, (live, APPLICATION_NAME))
            try:
                admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(clone), sql.Identifier(live)))
                break
            except psycopg.errors.ObjectInUse:
                row = admin.execute(_OTHER_SESSIONS, (live, APPLICATION_NAME)).fetchone()
                others = row[0] if row else 0
                if others or attempt == CLONE_ATTEMPTS:
                    raise RestoreError(
                        f"cannot clone {live}: {others or 'some'} session(s) are connected "
                        "to it; a clone is taken while the application is stopped for the "
                        "deploy (stop it, then clone)") from None
                time.sleep(0.2 * attempt)  # an ended session takes a moment to leave
        admin.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
            sql.Identifier(clone), sql.Literal(CLONE_COMMENT.format(db=live, at=taken))))
    return clone


def restore_from_clone(options: RestoreOptions, clone: str) -> RestoreReport:
    """Swap the clone in as the live database; the current live is kept as ``_rolledback_``.
    A swap interrupted earlier is completed or reverted first (the report's notes say which);
    reverted, the clone is a clone again."""
    live = options.database
    with locked(options, f"clone restore from {clone}"):
        started = time.time()
        aside = derived_name(live, ASIDE_INFIX + db_stamp(started))
        with admin_session(options) as admin:
            recovery = recover_swap_locked(admin, options)
            props = database_properties(admin, live)
            database_properties(admin, clone)
            comment = _comment(admin, clone)
            taken = _clone_time(comment, live)
            if taken is None:
                # Only a clone rollbackd took of this very database may replace it.
                raise RestoreError(f"{clone} is not a rollbackd clone of {live} (its comment "
                                   "does not say so): refusing to swap it in")
        finish_replacement(options, clone, props)
        validate_replacement(options, clone, None)
        marker = SwapMarker(live=live, replacement=clone, aside=aside, kind="clone",
                            source=clone, validated_at=time.time(), previous_comment=comment)
        with admin_session(options) as admin:
            blocked = swap_in(admin, options, marker)
        return RestoreReport(
            strategy="clone", backup_id=None, source=f"clone {clone}", database=live,
            started_at=started, finished_at=time.time(), data_window_start=taken,
            data_window_end=started, kept=aside, kept_kind="database",
            blocked_seconds=round(blocked, 3), validation=validate_live(options, None),
            notes=recovery.notes())


def clone_problem(options: RestoreOptions, clone: str) -> str | None:
    """Why ``clone`` cannot be swapped in for the live database, or None: it is gone (pruned,
    or swapped in by an earlier restore), or it is not a rollbackd clone of that database."""
    live = options.database
    with admin_session(options) as admin:
        if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                         (clone,)).fetchone() is None:
            return f"clone {clone} no longer exists (pruned, or swapped in by an earlier restore)"
        if _clone_time(_comment(admin, clone), live) is None:
            return f"{clone} is not a rollbackd clone of {live}"
    return None


def _comment(admin: psycopg.Connection[Any], name: str) -> str:
    row = admin.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database"
                        " WHERE datname = %s", (name,)).fetchone()
    return str(row[0]) if row and row[0] else ""


def clone_time(comment: str | None, live: str) -> float | None:
    """When the clone was taken, if ``comment`` is a rollbackd clone comment for ``live``."""
    return _clone_time(comment or "", live)


def _clone_time(comment: str, live: str) -> float | None:
    match = re.fullmatch(re.escape(CLONE_COMMENT.format(db=live, at="@")).replace(
        "@", r"([0-9.]+)"), comment)
    return float(match.group(1)) if match else None
