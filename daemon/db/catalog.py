"""Tables as PostgreSQL's catalogue names them: resolving what an operator typed, quoting it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

USER_TABLES = """
SELECT c.oid, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 2, 3
"""
"""Every ordinary table of the database's own (no catalogue, toast or extension tables)."""


class NoSuchTableError(LookupError):
    """Names that denote no table; ``str()`` lists them."""


@dataclass(frozen=True, slots=True)
class TableRef:
    oid: int
    schema: str
    name: str

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def ident(self) -> sql.Composable:
        return sql.Identifier(self.schema, self.name)

    @property
    def dump_pattern(self) -> str:
        """A pg_dump/pg_restore ``-t`` pattern matching exactly this table: quoted, so no
        wildcards and the case kept."""
        return dump_pattern(self.qualified)


def dump_pattern(qualified: str) -> str:
    schema, _, name = qualified.partition(".")
    return ".".join('"' + part.replace('"', '""') + '"' for part in (schema, name))


def user_tables(conn: psycopg.Connection[Any]) -> list[TableRef]:
    return [TableRef(int(o), str(s), str(n)) for o, s, n in conn.execute(USER_TABLES).fetchall()]


def resolve_tables(conn: psycopg.Connection[Any], names: Sequence[str],
                   relkinds: Sequence[str] = ("r",)) -> list[TableRef]:
    """The tables ``names`` denote (search_path applies to unqualified ones), each once;
    :class:`NoSuchTableError` naming every name that denotes none."""
    found: list[TableRef] = []
    missing: list[str] = []
    for name in names:
        row = conn.execute(
            "SELECT c.oid, n.nspname, c.relname FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.oid = to_regclass(%s) AND c.relkind = ANY(%s)",
            (name, list(relkinds)),
        ).fetchone()
        if row is None:
            missing.append(name)
        elif int(row[0]) not in {t.oid for t in found}:
            found.append(TableRef(int(row[0]), str(row[1]), str(row[2])))
    if missing:
        raise NoSuchTableError(", ".join(missing))
    return found
