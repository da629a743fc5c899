"""`rollbackd run` starting after a restore was SIGKILLed between a swap's two renames (no
live database): before its first cycle it completes the swap, records a page saying what it
found and did, and then watches a database that exists again."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.journal import Journal
from probes.pg import dbname_of
from tests.harness.cli import ROLLBACKD, rollbackd
from tests.harness.data import restore_point, table_checksums
from tests.harness.processes import start_daemon
from tests.harness.restores import (
    cluster_state,
    killed_at,
    restore_config,
    write_after_restore_point,
)
from tests.harness.restores import rollbackd_sessions_gone as sessions_gone
from tests.harness.servers import PgCluster, free_port

pytestmark = pytest.mark.e2e


def test_the_daemon_completes_a_swap_killed_between_its_renames_before_it_starts_watching(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    name = str(dbname_of(pg_db))
    _, rp = restore_point(pg_db, tmp_path)
    at_restore_point = table_checksums(pg_db, rp)
    write_after_restore_point(pg_db)
    config = restore_config(tmp_path, pg_db)
    killed_at("swap:after_first_rename", [*ROLLBACKD, "backup", "restore", rp.id, "--yes",
                                          "--config", str(config)])
    sessions_gone(pg_cluster)
    assert name not in [str(d) for d, _, _ in cluster_state(pg_cluster, name)]

    text = config.read_text()
    assert text.startswith("[daemon]\n"), text
    config.write_text(text.replace("[daemon]\n", f'[daemon]\ninterval = "1s"\nlisten = '
                                   f'"127.0.0.1:{free_port()}"\nmode = "dry-run"\n'
                                   'log_format = "json"\n', 1))
    daemon = start_daemon(config)  # ready: its first cycle completed
    try:
        assert "interrupted restore found at start-up" in daemon.output()
        assert table_checksums(pg_db, rp) == at_restore_point
        journal = Journal.in_state_dir(tmp_path / "state")
        try:
            [page] = journal.pages()
        finally:
            journal.close()
        assert page.template == "emergency"
        assert "there is no database" in page.summary and "complet" in page.summary, page.summary
        assert page.details["swap"]["outcome"] == "completed"
    finally:
        daemon.close()




def test_status_names_a_swap_killed_between_its_renames_and_changes_nothing(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    name = str(dbname_of(pg_db))
    _, rp = restore_point(pg_db, tmp_path)
    config = restore_config(tmp_path, pg_db)
    killed_at("swap:after_first_rename", [*ROLLBACKD, "backup", "restore", rp.id, "--yes",
                                          "--config", str(config)])
    sessions_gone(pg_cluster)
    before = cluster_state(pg_cluster, name)

    status = rollbackd("status", "--config", str(config))

    assert status.returncode == 0, status.stderr
    assert f"INTERRUPTED interrupted swap of {name} found" in status.stdout, status.stdout
    assert cluster_state(pg_cluster, name) == before
