"""Restore drills against a real PostgreSQL, the drill units, and the drill metrics of a daemon."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from daemon.config import load_config
from daemon.db.backups import BackupStore, Manifest
from daemon.db.drill import DrillError, drill_lock_key, run_drill
from daemon.journal import Journal
from probes.pg import dbname_of
from tests.harness.cli import rollbackd
from tests.harness.config import config_file
from tests.harness.data import flip_a_byte, seed_visionforge, store_in, table_checksums
from tests.harness.paths import ROOT, SYSTEMD_DIR
from tests.harness.processes import Proc, daemon_url, scrape, start_daemon
from tests.harness.servers import PgCluster, free_port, wait_for
from tests.harness.systemd import INSTALLED_EXEC, UNIT, assert_rates_ok
from tests.harness.systemd import installed_console_script as _installed_console_script
from tests.harness.systemd import verify_unit as _verify

pytestmark = pytest.mark.e2e

TABLES = ["users", "images", "audit_log"]
SERVICE = SYSTEMD_DIR / "rollbackd-drill.service"
TIMER = SYSTEMD_DIR / "rollbackd-drill.timer"
VALIDATION = {"connect", "expected_tables", "constraints_validated", "indexes_valid",
              "row_counts"}


def write_config(tmp_path: Path, dsn: str, *, min_free: str = "0", checks: str = "") -> Path:
    return config_file(
        tmp_path,
        daemon={"listen": f"127.0.0.1:{free_port()}", "mode": "dry-run", "log_format": "json"},
        app={"name": "visionforge"},
        database={"dsn": dsn, "connect_timeout": "2s", "expected_tables": TABLES},
        backups={"dir": tmp_path / "backups", "min_free": min_free, "restore_timeout": "60s"},
        extra=checks)


def restore_point(dsn: str, tmp_path: Path) -> tuple[BackupStore, Manifest]:
    seed_visionforge(dsn)
    store = store_in(tmp_path / "backups")
    manifest = store.create(dsn, "restore_point")
    assert store.verify(manifest.id).ok
    return store, manifest


def scratch_databases(cluster: PgCluster, dsn: str) -> list[str]:
    rows = cluster.execute("SELECT datname FROM pg_database ORDER BY 1")
    pattern = re.compile(re.escape(f"{dbname_of(dsn)}_drill_") + r"\d{14}$")
    return [str(r[0]) for r in rows if pattern.match(str(r[0]))]


def journal(tmp_path: Path) -> Journal:
    return Journal.in_state_dir(tmp_path / "state")


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


# -- drills in process ----------------------------------------------------------------------


def test_the_newest_verified_restore_point_is_drilled_not_an_unverified_or_other_backup(
        pg_db: str, tmp_path: Path) -> None:
    store, _older = restore_point(pg_db, tmp_path)
    newest_verified = store.create(pg_db, "restore_point")
    assert store.verify(newest_verified.id).ok
    store.create(pg_db, "restore_point")  # never verified
    manual = store.create(pg_db, "manual")
    assert store.verify(manual.id).ok

    report = run_drill(load_config(write_config(tmp_path, pg_db)))

    assert report.ok, report.describe()
    assert report.backup_id == newest_verified.id


def test_a_drill_refuses_when_the_copy_would_cross_min_free_and_journals_the_refusal(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    restore_point(pg_db, tmp_path)

    report = run_drill(load_config(write_config(tmp_path, pg_db, min_free="1000TB")))

    assert not report.ok
    assert report.error is not None
    assert "not enough free space on the server" in report.error
    assert "backups.min_free is 1000.0 TB" in report.error
    assert report.restore_seconds is None and report.checks == []
    assert scratch_databases(pg_cluster, pg_db) == []
    drill = journal(tmp_path).latest_drill()
    assert drill is not None and not drill.ok


def test_a_scratch_database_left_by_a_killed_drill_is_dropped_by_the_next_one(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    restore_point(pg_db, tmp_path)
    stale = f"{dbname_of(pg_db)}_drill_20000101000000"
    pg_cluster.execute(f'CREATE DATABASE "{stale}"')

    report = run_drill(load_config(write_config(tmp_path, pg_db)))

    assert report.ok, report.describe()
    assert scratch_databases(pg_cluster, pg_db) == []
    assert any(stale in note for note in report.notes)


def test_a_second_drill_of_the_same_database_is_refused_while_one_runs(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    restore_point(pg_db, tmp_path)
    config = load_config(write_config(tmp_path, pg_db))
    with psycopg.connect(pg_cluster.dsn(), autocommit=True, connect_timeout=5) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (drill_lock_key(dbname_of(pg_db) or ""),))
        with pytest.raises(DrillError, match=r"another drill of \S+ is running"):
            run_drill(config)
    assert journal(tmp_path).latest_drill() is None


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


# -- the systemd units ----------------------------------------------------------------------


def _assignments(path: Path) -> list[tuple[str, str]]:
    pairs = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            pairs.append((key.strip(), value.strip()))
    return pairs


def _values(path: Path, key: str) -> list[str]:
    return [value for k, value in _assignments(path) if k == key]


def test_the_drill_service_and_timer_verify_clean_with_execstart_at_the_installed_script(
        tmp_path: Path) -> None:
    text = SERVICE.read_text()
    assert f"ExecStart={INSTALLED_EXEC} drill\n" in text
    service = tmp_path / SERVICE.name
    service.write_text(text.replace(f"ExecStart={INSTALLED_EXEC} ",
                                    f"ExecStart={_installed_console_script()} "))
    timer = tmp_path / TIMER.name
    shutil.copy(TIMER, timer)

    for unit in (service, timer):
        clean, report = _verify(unit)
        assert clean, report


def test_the_drill_service_rates_ok_in_the_offline_security_analysis() -> None:
    assert_rates_ok(SERVICE)


def test_the_drill_service_is_a_bounded_oneshot_as_the_daemons_user_with_its_hardening(
        ) -> None:
    assert _values(SERVICE, "Type") == ["oneshot"]
    assert _values(SERVICE, "ExecStart") == [f"{INSTALLED_EXEC} drill"]
    assert _values(SERVICE, "TimeoutStartSec") == ["2h"]
    # Only the daemon's own lifecycle differs; every other setting must match it.
    lifecycle = {"Description", "Type", "ExecStart", "ExecReload", "NotifyAccess", "WatchdogSec",
                 "Restart", "RestartSec", "RestartPreventExitStatus", "TimeoutStopSec",
                 "WantedBy"}
    daemon = sorted(p for p in _assignments(UNIT) if p[0] not in lifecycle)
    drill = sorted(p for p in _assignments(SERVICE) if p[0] not in lifecycle)
    assert [p for p in daemon if p not in drill] == []
    assert {k for k, _ in drill} - {k for k, _ in daemon} == {"TimeoutStartSec", "Nice"}


def test_the_timer_runs_the_drill_service_monthly_and_catches_up_after_downtime() -> None:
    assert _values(TIMER, "OnCalendar") == ["monthly"]
    assert _values(TIMER, "Persistent") == ["true"]
    assert _values(TIMER, "RandomizedDelaySec") == ["4h"]
    assert _values(TIMER, "WantedBy") == ["timers.target"]
    # No Unit=: a timer starts the service of its own name.
    assert _values(TIMER, "Unit") == []
    assert TIMER.with_suffix(".service") == SERVICE


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
