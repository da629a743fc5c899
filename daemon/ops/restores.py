"""Restores, shared by the CLI and the API: which strategy, with what warning, and the journal's
record of each (linked to its deploy, marked rolled back, and to its incident)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Literal

from daemon.config import Config
from daemon.db.restore import (
    RestoreError,
    RestoreOptions,
    RestoreReport,
    restore_from_clone,
    restore_in_place,
    restore_swap,
    restore_tables,
)
from daemon.journal import Journal, JournalError, Restore, RestoreOutcome
from daemon.locks import LockError
from daemon.ops.common import OpsError, database, open_journal, open_store
from daemon.ops.operator import operator_name
from probes.pg import dbname_of

WholeStrategy = Literal["swap", "in_place", "clone"]


def restore(config: Config, backup_id: str, strategy: WholeStrategy = "swap",
            tables: Sequence[str] = (), cascade: bool = False, *, by: str | None = None,
            incident: int | None = None, close_incident: bool = True) -> RestoreReport:
    """Restore ``backup_id``: the rows of ``tables`` when named, else the whole database by
    ``strategy`` (``clone``: ``backup_id`` is a clone's name). ``OpsError`` when refused or
    failed; a report whose validation failed is returned (``report.ok`` is false).

    Every restore is journaled before it starts (refused if it cannot be) and when it ends,
    linked to its deploy and to ``incident`` (default: the one open). A whole-database restore
    that completed marks the deploy ``rolled_back``; one that was validated closes the
    incident when ``close_incident`` (a person's restore; the executor passes False and
    resolves after its watch period). ``by``: who, for the record (default: the operator
    running the command).
    """
    db = database(config)
    journal = open_journal(config)
    try:
        try:
            record = journal.begin_restore(
                config.app_name, source=backup_id, strategy="tables" if tables else strategy,
                database=dbname_of(db.dsn) or "", tables=list(tables),
                by=by or operator_name(), t=time.time(), incident=incident)
        except JournalError as exc:
            raise OpsError(f"refusing to restore without journaling it: {exc}") from None
        try:
            report = _restore(config, backup_id, strategy, tables, cascade)
        except OpsError as exc:
            _finish_failed(journal, record, "failed", str(exc))
            raise
        except BaseException as exc:  # Ctrl-C, SIGTERM as an exception: the state is unknown
            _finish_failed(journal, record, "interrupted",
                           f"interrupted ({type(exc).__name__}) during the restore")
            raise
        try:
            journal.finish_restore(record.id, _outcome(report), close_incident=close_incident)
        except JournalError as exc:
            # The database is restored: that stands. Saying "failed" would invite a second
            # restore; the report says what the journal lacks.
            report.notes.append(f"the restore is done but its end could not be journaled "
                                f"(restore {record.id} stays 'running' there): {exc}")
        return report
    finally:
        journal.close()


def _restore(config: Config, backup_id: str, strategy: WholeStrategy, tables: Sequence[str],
             cascade: bool) -> RestoreReport:
    try:
        options = RestoreOptions.from_config(config)
        if tables:
            return restore_tables(open_store(config), backup_id, options, tables,
                                  cascade=cascade)
        if strategy == "clone":
            return restore_from_clone(options, backup_id)
        if strategy == "in_place":
            return restore_in_place(open_store(config), backup_id, options)
        return restore_swap(open_store(config), backup_id, options)
    except (RestoreError, LockError) as exc:
        raise OpsError(str(exc)) from None


def _outcome(report: RestoreReport) -> RestoreOutcome:
    return RestoreOutcome(
        status="restored" if report.ok else "validation_failed",
        finished_at=report.finished_at, database=report.database, kept=report.kept,
        kept_kind=report.kept_kind, safety_backup=report.safety_backup,
        data_window_start=report.data_window_start, data_window_end=report.data_window_end,
        report=report.as_json())


def _finish_failed(journal: Journal, record: Restore,
                   status: Literal["failed", "interrupted"], error: str) -> None:
    # The restore's own error is the one to report; if this fails its record stays 'running'.
    with contextlib.suppress(JournalError):
        journal.finish_restore(record.id, RestoreOutcome(status=status, finished_at=time.time(),
                                                         error=error))


def restore_warning(config: Config, backup_id: str, strategy: WholeStrategy,
                    tables: Sequence[str]) -> str:
    """What the restore would do to live data, for a person to confirm."""
    name = dbname_of(database(config).dsn) or "the database"
    if tables:
        return (f"this replaces every row of {', '.join(tables)} in {name} with backup "
                f"{backup_id}'s (a safety dump of them is taken first)")
    if strategy == "clone":
        return (f"this swaps database {name} for the clone {backup_id} (the current one is "
                "kept, renamed)")
    if strategy == "in_place":
        return (f"this overwrites database {name} in place with backup {backup_id} (a safety "
                "backup is taken first)")
    return (f"this terminates every session of database {name} and replaces it with backup "
            f"{backup_id} (the current one is kept as {name}_rolledback_<timestamp>)")
