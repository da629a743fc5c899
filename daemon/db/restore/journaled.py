"""A restore and its journal record: the one way every restore is carried out, by a person
(``rollbackd backup restore``, the API) or by the executor's ``restore_database`` step.

The restore is journaled before it touches the database (refused if it cannot be) and when it
ends, linked to its deploy and incident; see :meth:`daemon.journal.Journal.begin_restore` and
:meth:`~daemon.journal.Journal.finish_restore` for what follows from its end (the deploy rolled
back, the incident closed).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from daemon.db.admin import RestoreError, RestoreOptions
from daemon.db.backups import BackupStore
from daemon.db.restore.clone import restore_from_clone
from daemon.db.restore.common import RestoreReport
from daemon.db.restore.in_place import restore_in_place
from daemon.db.restore.swap import restore_swap
from daemon.db.restore.tables import restore_tables
from daemon.journal import Journal, JournalError, Restore, RestoreOutcome
from daemon.locks import LockError
from probes.pg import dbname_of

WholeStrategy = Literal["swap", "in_place", "clone"]


@dataclass(frozen=True, slots=True)
class JournaledRestore:
    """The journal's record of the restore (as it began) and the strategy's report."""

    record: Restore
    report: RestoreReport


def journaled_restore(journal: Journal, app: str, store: BackupStore, options: RestoreOptions,
                      source: str, strategy: WholeStrategy = "swap",
                      tables: Sequence[str] = (), cascade: bool = False, *, by: str,
                      incident: int | None = None,
                      close_incident: bool = True) -> JournaledRestore:
    """Restore ``source`` (a backup id; a clone's name for ``clone``): the rows of ``tables``
    when named, else the whole database by ``strategy``, journaled in ``journal``.

    ``RestoreError`` when refused (the journal cannot record it, the lock is held, the backup
    is not sound) or failed; its record then ends ``failed``, or ``interrupted`` for a
    ``BaseException`` (Ctrl-C, a cancelled thread's process ending). A report whose validation
    failed is returned (``report.ok`` false; the record ends ``validation_failed``).
    ``incident``: default the one open; ``close_incident``: a validated whole restore closes
    it (a person's restore; the executor passes False).
    """
    try:
        record = journal.begin_restore(
            app, source=source, strategy="tables" if tables else strategy,
            database=dbname_of(options.dsn) or "", tables=list(tables), by=by, t=time.time(),
            incident=incident)
    except JournalError as exc:
        raise RestoreError(f"refusing to restore without journaling it: {exc}") from None
    try:
        report = _restore(store, options, source, strategy, tables, cascade)
    except RestoreError as exc:
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
    return JournaledRestore(record, report)


def _restore(store: BackupStore, options: RestoreOptions, source: str,
             strategy: WholeStrategy, tables: Sequence[str], cascade: bool) -> RestoreReport:
    try:
        if tables:
            return restore_tables(store, source, options, tables, cascade=cascade)
        if strategy == "clone":
            return restore_from_clone(options, source)
        if strategy == "in_place":
            return restore_in_place(store, source, options)
        return restore_swap(store, source, options)
    except LockError as exc:
        raise RestoreError(str(exc)) from None


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
