"""Test data in a real PostgreSQL: the example app's seeded database, statements and queries,
table checksums, a backup store that never refuses for space, and a corrupted file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg

from daemon.config import BackupSettings
from daemon.db.backups import BackupStore, Manifest, find_restore_tool
from daemon.db.tools import libpq_env
from daemon.proc import run_process
from policies.schema import convert
from tests.harness.paths import APP_DIR
from tests.harness.processes import migrate
from tests.harness.servers import PgCluster


# A store that never refuses for space: these tests are about what goes into a backup.
def store_in(directory: Path, **settings: object) -> BackupStore:
    return BackupStore(convert({"dir": str(directory), "min_free": 0, **settings},
                               BackupSettings), connect_timeout=2)


def run(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        for statement in statements:
            conn.execute(statement)


def scalar(dsn: str, query: str) -> object:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(query).fetchone()
        assert row is not None
        return row[0]


def seed_visionforge(dsn: str, users: int = 8, images: int = 40) -> None:
    assert migrate(dsn).returncode == 0
    result = subprocess.run([sys.executable, str(APP_DIR / "seed.py"), "--dsn", dsn,
                             "--users", str(users), "--images", str(images)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def table_checksums(dsn: str, manifest: Manifest) -> dict[str, tuple[int, str | None]]:
    """Per table: row count and an md5 of all its rows in a fixed order."""
    sums: dict[str, tuple[int, str | None]] = {}
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        for table in manifest.tables:
            query = psycopg.sql.SQL(
                "SELECT count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM {}.{} t"
            ).format(psycopg.sql.Identifier(table.schema_), psycopg.sql.Identifier(table.name))
            row = conn.execute(query).fetchone()
            assert row is not None
            sums[table.qualified] = (int(row[0]), row[1])
    return sums


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def restore_point(dsn: str, tmp_path: Path, *, images: int = 40) -> tuple[BackupStore, Manifest]:
    """The example app's database seeded, and a verified restore point of it in
    ``tmp_path/backups``."""
    seed_visionforge(dsn, images=images)
    store = store_in(tmp_path / "backups")
    manifest = store.create(dsn, "restore_point")
    assert store.verify(manifest.id).ok
    return store, manifest


def restore_into_fresh_database(cluster: PgCluster, store: BackupStore, manifest: Manifest,
                                name: str) -> str:
    target = cluster.create_database(name)
    pg_restore = find_restore_tool(manifest)
    result = run_process([str(pg_restore.path), "--exit-on-error", "--no-owner", "-d", name,
                       str(store.data_path(manifest))],
                      env=libpq_env(target), timeout=60)
    assert result.returncode == 0, result.stderr
    return target
