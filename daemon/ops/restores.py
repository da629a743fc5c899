"""Restores, shared by the CLI and the API: which strategy, with what warning."""

from __future__ import annotations

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
from daemon.locks import LockError
from daemon.ops.common import OpsError, database, open_store
from probes.pg import dbname_of

WholeStrategy = Literal["swap", "in_place", "clone"]


def restore(config: Config, backup_id: str, strategy: WholeStrategy = "swap",
            tables: Sequence[str] = (), cascade: bool = False) -> RestoreReport:
    """Restore ``backup_id``: the rows of ``tables`` when named, else the whole database by
    ``strategy`` (``clone``: ``backup_id`` is a clone's name). ``OpsError`` when refused or
    failed; a report whose validation failed is returned (``report.ok`` is false)."""
    database(config)
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
