"""Restores from verified backups, one module per strategy.

Every restore

* uses a backup only once it is verified (a backup verified before is re-checked against its
  manifest's checksums, so a file damaged since is refused too), and refuses it with the
  reason otherwise;
* runs under the rollback lock (this host's lock file and the fleet's advisory lock,
  :mod:`daemon.locks`), unless the caller already holds it (``RestoreOptions.take_lock``);
* keeps the data it replaces: the old database renamed aside (swap, clone) or a verified safety
  backup (in place, tables); and returns a :class:`RestoreReport` naming where, and the data
  window it undid (from the restore point's snapshot to the start of the restore);
* fails loudly with :class:`RestoreError`, pg_restore's own error lines included; nothing is
  reported as done unless all of it was.

Strategies: :mod:`.swap`, :mod:`.in_place`, :mod:`.tables`, :mod:`.clone`; :mod:`.schema`
compares schemas and runs down-migrations. Requires PostgreSQL 14 or newer
(``pg_terminate_backend(pid, timeout)``, ``DROP DATABASE ... WITH (FORCE)``). Everything is
synchronous with every wait bounded; the daemon calls it through ``asyncio.to_thread``.
"""

from daemon.db.admin import RestoreError, RestoreOptions
from daemon.db.backups import KEPT_SCHEMA
from daemon.db.restore.clone import clone_problem, create_clone, restore_from_clone
from daemon.db.restore.common import RestoreReport, Strategy
from daemon.db.restore.in_place import (
    InterruptedRestore,
    interrupted_in_place,
    recover_interrupted_in_place,
    restore_in_place,
)
from daemon.db.restore.kept import KeptPruned, prune_kept
from daemon.db.restore.schema import DownMigration, SchemaDiff, run_down_migration, schema_diff
from daemon.db.restore.swap import (
    SwapRecovery,
    inspect_interrupted_swap,
    recover_interrupted_swap,
    restore_swap,
)
from daemon.db.restore.tables import restore_tables

__all__ = [
    "KEPT_SCHEMA", "DownMigration", "InterruptedRestore", "KeptPruned", "RestoreError",
    "RestoreOptions", "RestoreReport", "SchemaDiff", "Strategy", "SwapRecovery",
    "clone_problem", "create_clone", "inspect_interrupted_swap", "interrupted_in_place",
    "prune_kept", "recover_interrupted_in_place", "recover_interrupted_swap", "restore_from_clone",
    "restore_in_place", "restore_swap", "restore_tables", "run_down_migration", "schema_diff",
]
