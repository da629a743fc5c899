"""Schemas: the live schema against a restore point's, and down-migrations checked by that
comparison."""
from __future__ import annotations

import difflib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

from daemon.db.admin import (
    RestoreError,
)
from daemon.db.backups import BackupStore, Manifest
from daemon.db.catalog import dump_pattern
from daemon.db.restore.common import (
    run_client,
)
from daemon.db.tools import find_tool, libpq_env, server_major
from daemon.fmt import excerpt
from daemon.proc import ProcError, run_process


@dataclass(frozen=True, slots=True)
class SchemaDiff:
    identical: bool
    diff: list[str]
    """Unified diff lines, restore point (``---``) against live (``+++``)."""


@dataclass(frozen=True, slots=True)
class DownMigration:
    exit_code: int | None
    output: str
    """The last lines of the command's output."""
    diff: SchemaDiff | None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.diff is not None and self.diff.identical


def schema_diff(dsn: str, manifest: Manifest, store: BackupStore, *, timeout: float = 300.0,
                connect_timeout: float = 5.0) -> SchemaDiff:
    """The live schema against the restore point's ``schema.sql``: identical, or the diff.

    Both sides are normalised: comments, ``SET`` lines, ``\\restrict`` lines and blank lines
    carry no schema and differ between runs.
    """
    try:
        before = (store.path(manifest.id) / manifest.schema_file).read_text()
    except OSError as exc:
        raise RestoreError(f"cannot read the schema snapshot of {manifest.id}: "
                           f"{exc.strerror or exc}") from None
    try:
        pg_dump = find_tool("pg_dump", server_major(manifest.server_version_num))
        env = libpq_env(dsn, connect_timeout=connect_timeout)
    except ProcError as exc:
        raise RestoreError(str(exc)) from None
    selection = [a for t in manifest.selected_tables or () for a in ("-t", dump_pattern(t))]
    result = run_client(pg_dump.path, ["--schema-only", "-Fp", *selection], env,
                  time.monotonic() + timeout, "pg_dump --schema-only", kept=None)
    old, new = normalise_schema(before), normalise_schema(result.stdout)
    diff = list(difflib.unified_diff(old, new, fromfile=f"restore point {manifest.id}",
                                     tofile="live", lineterm="", n=2))
    return SchemaDiff(identical=not diff, diff=diff)


def normalise_schema(text: str) -> list[str]:
    skip = ("--", "SET ", "SELECT pg_catalog.set_config(", "\\restrict", "\\unrestrict")
    return [line.rstrip() for line in text.splitlines()
            if line.strip() and not line.startswith(skip)]


def run_down_migration(argv: Sequence[str], timeout: float, *, dsn: str, manifest: Manifest,
                       store: BackupStore) -> DownMigration:
    """Run the configured down-migration, then compare the schema with the restore point's.

    The schema is compared even when the command failed: the runbook needs to know what state
    it left.
    """
    if isinstance(argv, str) or not argv:
        raise RestoreError("the down-migration command must be a non-empty argv list")
    try:
        result = run_process(list(argv), env=dict(os.environ), timeout=timeout)
        code: int | None = result.returncode
        output = excerpt(result.stdout, result.stderr, lines=20)
    except ProcError as exc:
        code, output = None, str(exc)
    try:
        diff: SchemaDiff | None = schema_diff(dsn, manifest, store,
                                              timeout=min(timeout, 300.0))
    except RestoreError as exc:
        diff, output = None, f"{output}\nschema comparison failed: {exc}".strip()
    return DownMigration(exit_code=code, output=output, diff=diff)
