"""What a restore drill test sets up and looks at: the config, the journal, scratch databases."""

from __future__ import annotations

import re
from pathlib import Path

from daemon.journal import Journal
from probes.pg import dbname_of
from tests.harness.config import config_file
from tests.harness.servers import PgCluster, free_port

TABLES = ["users", "images", "audit_log"]


def write_config(tmp_path: Path, dsn: str, *, min_free: str = "0", checks: str = "") -> Path:
    return config_file(
        tmp_path,
        daemon={"listen": f"127.0.0.1:{free_port()}", "mode": "dry-run", "log_format": "json"},
        app={"name": "visionforge"},
        database={"dsn": dsn, "connect_timeout": "2s", "expected_tables": TABLES},
        backups={"dir": tmp_path / "backups", "min_free": min_free, "restore_timeout": "60s"},
        extra=checks)


def scratch_databases(cluster: PgCluster, dsn: str) -> list[str]:
    rows = cluster.execute("SELECT datname FROM pg_database ORDER BY 1")
    pattern = re.compile(re.escape(f"{dbname_of(dsn)}_drill_") + r"\d{14}$")
    return [str(r[0]) for r in rows if pattern.match(str(r[0]))]


def journal(tmp_path: Path) -> Journal:
    return Journal.in_state_dir(tmp_path / "state")
