"""Restores, shared by the CLI and the API: which strategy, with what warning, and the journal's
record of each (linked to its deploy, marked rolled back, and to its incident)."""

from __future__ import annotations

from collections.abc import Sequence

from daemon.config import Config
from daemon.db.restore import RestoreError, RestoreOptions, RestoreReport
from daemon.db.restore.journaled import WholeStrategy, journaled_restore
from daemon.ops.common import (
    OpsError,
    database,
    open_journal,
    open_store,
    refused_in_fleet,
)
from daemon.ops.operator import operator_name
from probes.pg import dbname_of

__all__ = ["WholeStrategy", "restore", "restore_warning"]


def restore(config: Config, backup_id: str, strategy: WholeStrategy = "swap",
            tables: Sequence[str] = (), cascade: bool = False, *, by: str | None = None,
            incident: int | None = None, close_incident: bool = True,
            without_fleet: bool = False) -> RestoreReport:
    """Restore ``backup_id``: the rows of ``tables`` when named, else the whole database by
    ``strategy`` (``clone``: ``backup_id`` is a clone's name). ``OpsError`` when refused or
    failed; a report whose validation failed is returned (``report.ok`` is false).

    Every restore is journaled before it starts (refused if it cannot be) and when it ends,
    linked to its deploy and to ``incident`` (default: the one open), by
    :func:`daemon.db.restore.journaled.journaled_restore`, which the executor's restore step
    uses too. A whole-database restore that completed marks the deploy ``rolled_back``; one
    that was validated closes the incident when ``close_incident`` (a person's restore; the
    executor passes False and resolves after its watch period). ``by``: who, for the record
    (default: the operator running the command). On a host of a fleet the restore is refused
    unless ``without_fleet``: the other hosts would not follow it.
    """
    database(config)
    if config.fleet is not None and not without_fleet:
        raise refused_in_fleet(config.fleet.name)
    journal = open_journal(config)
    try:
        options = RestoreOptions.from_config(config)
        return journaled_restore(
            journal, config.app_name, open_store(config), options, backup_id, strategy,
            tables, cascade, by=by or operator_name(), incident=incident,
            close_incident=close_incident).report
    except RestoreError as exc:
        raise OpsError(str(exc)) from None
    finally:
        journal.close()


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
