"""`rollbackd drill` as a real process against a real PostgreSQL, and the drill metrics of a
daemon."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from daemon.config import load_config
from daemon.db.drill import run_drill
from probes.pg import dbname_of
from tests.harness.cli import rollbackd
from tests.harness.data import (
    flip_a_byte,
    restore_point,
    seed_visionforge,
    store_in,
    table_checksums,
)
from tests.harness.drill import journal, scratch_databases, write_config
from tests.harness.paths import ROOT
from tests.harness.processes import Proc, daemon_url, scrape, start_daemon
from tests.harness.servers import PgCluster, wait_for

pytestmark = pytest.mark.e2e

VALIDATION = {"connect", "expected_tables", "constraints_validated", "indexes_valid",
              "row_counts"}


def failed_checks(report: dict[str, object]) -> set[str]:
    checks = report["checks"]
    assert isinstance(checks, list)
    return {c["name"] for c in checks if not c["ok"]}


# -- drills through the command line --------------------------------------------------------


def test_a_drill_restores_the_deploys_restore_point_into_a_scratch_database_and_drops_it(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    seed_visionforge(pg_db)
    config = write_config(tmp_path, pg_db)
    begun = rollbackd("deploy", "begin", "--version", "v1", "--json", "--config", str(config))
    assert begun.returncode == 0, begun.stderr
    point = json.loads(begun.stdout)["restore_point"]
    manifest = store_in(tmp_path / "backups").get(point)
    before = table_checksums(pg_db, manifest)

    with psycopg.connect(pg_db, autocommit=True, connect_timeout=5) as app_session:
        result = rollbackd("drill", "--json", "--config", str(config))
        # The drill never terminates the live database's sessions.
        assert app_session.execute("SELECT 1").fetchone() == (1,)

    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert (report["ok"], report["backup_id"], report["database"]) == (True, point,
                                                                       dbname_of(pg_db))
    assert report["recovery_seconds"] > 0
    assert report["recovery_seconds"] == pytest.approx(
        report["restore_seconds"] + report["validate_seconds"], abs=0.002)
    assert {c["name"]: c["ok"] for c in report["checks"]} == {
        **dict.fromkeys(VALIDATION, True), "scratch_dropped": True}
    assert re.fullmatch(rf"{dbname_of(pg_db)}_drill_\d{{14}}", report["scratch"])
    assert report["restored_size"] > 0
    assert scratch_databases(pg_cluster, pg_db) == []
    assert table_checksums(pg_db, manifest) == before
    drill = journal(tmp_path).latest_drill()
    assert drill is not None
    assert (drill.ok, drill.backup, drill.duration) == (True, point, report["recovery_seconds"])
    assert drill.details["scratch"] == report["scratch"]
    assert drill.details["restore_seconds"] == report["restore_seconds"]
    assert {c["name"] for c in drill.details["checks"]} == VALIDATION | {"scratch_dropped"}


def test_a_drill_of_a_backup_damaged_after_its_verification_fails_with_the_reason(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    store, manifest = restore_point(pg_db, tmp_path)
    flip_a_byte(store.data_path(manifest))
    config = write_config(tmp_path, pg_db)

    result = rollbackd("drill", "--config", str(config))

    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED" in result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert f"drill of {manifest.id} FAILED" in last
    assert "data.dump does not match its sha256" in last
    assert scratch_databases(pg_cluster, pg_db) == []
    drill = journal(tmp_path).latest_drill()
    assert drill is not None and (drill.ok, drill.backup) == (False, manifest.id)
    assert "sha256" in drill.details["error"]
    assert journal(tmp_path).latest_drill(ok=True) is None


def test_a_drill_without_any_restore_point_fails_with_one_clear_line(
        pg_db: str, tmp_path: Path) -> None:
    config = write_config(tmp_path, pg_db)

    result = rollbackd("drill", "--json", "--config", str(config))

    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert f"no restore point of database {dbname_of(pg_db)}" in line
    assert "rollbackd deploy begin" in line
    assert journal(tmp_path).latest_drill() is None


def test_a_copy_that_differs_from_its_manifest_or_fails_a_check_fails_and_is_still_dropped(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    store, manifest = restore_point(pg_db, tmp_path)
    # The manifest is outside the checksummed files. One row fewer there than the dump holds:
    # a copy must equal the snapshot, "at least as many rows" is not enough.
    path = store.path(manifest.id) / "manifest.json"
    data = json.loads(path.read_text())
    [users] = [t for t in data["tables"] if t["name"] == "users"]
    users["rows"] -= 1
    path.write_text(json.dumps(data))
    checks = '[[database.checks]]\nname = "no_users"\nsql = "SELECT id FROM users LIMIT 1"\n'
    config = write_config(tmp_path, pg_db, checks=checks)

    result = rollbackd("drill", "--json", "--config", str(config))

    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert failed_checks(report) == {"row_counts", "check:no_users"}
    [row_counts] = [c for c in report["checks"] if c["name"] == "row_counts"]
    assert f"public.users has {users['rows'] + 1} rows, the manifest {users['rows']}" in (
        row_counts["message"])
    last = result.stderr.strip().splitlines()[-1]
    assert "row_counts:" in last and "check:no_users:" in last
    # The copy existed (it was measured) and is gone.
    assert report["restored_size"] > 0
    assert scratch_databases(pg_cluster, pg_db) == []
    drill = journal(tmp_path).latest_drill()
    assert drill is not None and not drill.ok


def test_sigterm_during_a_drill_drops_the_scratch_database_and_journals_a_failed_drill(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    restore_point(pg_db, tmp_path)
    # A check that takes long keeps the drill in its validation, the scratch database there.
    checks = ('[[database.checks]]\nname = "slow"\n'
              'sql = "SELECT 1 FROM pg_sleep(30) s WHERE s::text = \'-\'"\n')
    config = write_config(tmp_path, pg_db, checks=checks)
    proc = subprocess.Popen([sys.executable, "-m", "daemon", "drill", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        wait_for(lambda: pg_cluster.execute(
            "SELECT 1 FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30)%'"
            " AND pid <> pg_backend_pid()"), 30, what="the drill to reach its validation")
        assert len(scratch_databases(pg_cluster, pg_db)) == 1
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    assert proc.returncode == 1, stderr
    assert "drill interrupted" in stderr.strip().splitlines()[-1]
    assert scratch_databases(pg_cluster, pg_db) == []
    drill = journal(tmp_path).latest_drill()
    assert drill is not None and not drill.ok
    assert "interrupted" in drill.details["error"]


# -- the daemon's metrics -------------------------------------------------------------------


def test_a_running_daemon_exports_the_last_successful_drill(
        pg_db: str, tmp_path: Path) -> None:
    restore_point(pg_db, tmp_path)
    config = write_config(tmp_path, pg_db)
    report = run_drill(load_config(config))
    assert report.ok, report.describe()

    daemon: Proc = start_daemon(config)
    try:
        url = daemon_url(config)

        def exported() -> float:
            return scrape(url).get(("rollbackd_drill_last_success_timestamp_seconds", ()), 0.0)

        wait_for(lambda: exported() > 0, 15, what="the drill timestamp on /metrics")
        series = scrape(url)
    finally:
        daemon.close()
    assert series[("rollbackd_drill_last_success_timestamp_seconds", ())] == pytest.approx(
        report.finished_at, abs=0.001)
    assert series[("rollbackd_drill_duration_seconds", ())] == pytest.approx(report.duration)


def test_on_a_terminal_a_drill_shows_what_it_is_doing_and_its_result(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    import os
    import pty
    import subprocess
    import sys

    restore_point(pg_db, tmp_path)
    config = write_config(tmp_path, pg_db)
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", "drill", "--config", str(config)],
            stdin=terminal, stdout=terminal, stderr=terminal, cwd=ROOT,
            env={**os.environ, "TERM": "xterm", "COLUMNS": "120"})
        os.close(terminal)
        seen = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal closed: the drill ended
                break
            if not chunk:
                break
            seen += chunk
        assert proc.wait(60) == 0
    finally:
        os.close(controller)
    text = seen.decode(errors="replace")
    assert "restoring into a scratch database" in text  # the spinner's line
    assert "recovery" in text.lower()
