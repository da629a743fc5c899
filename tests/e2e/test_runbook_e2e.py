"""End to end: `rollbackd run` in auto mode executes immediate_rollback when a deploy's
migration fails (`rollbackd deploy run -- CMD`), with the example app as a real process under
the `process` adapter; the main loop keeps its interval while the run goes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from daemon.config import load_config
from daemon.db.backups import BackupStore
from probes.pg import dbname_of, with_dbname
from tests.harness.cli import rollbackd
from tests.harness.data import restore_into_fresh_database, run, scalar, table_checksums
from tests.harness.paths import APP_DIR
from tests.harness.processes import Proc, daemon_url, scrape, start_daemon
from tests.harness.rollbacks import (
    Host,
    deploy_invalid_index,
    deploy_run,
    finished_run,
    rollback_host,
)
from tests.harness.servers import PgCluster, require_binary, wait_for

pytestmark = pytest.mark.e2e

START_DELAY = 3
"""The app's start command waits this long first: the run then lasts several cycles (only
the test that counts the cycles while a run goes needs that)."""


@pytest.fixture
def host(pg_db: str, tmp_path: Path) -> Iterator[Host]:
    found = rollback_host(pg_db, tmp_path)
    yield found
    found.close()


@pytest.fixture
def slow_starting_host(pg_db: str, tmp_path: Path) -> Iterator[Host]:
    found = rollback_host(pg_db, tmp_path, start_delay=START_DELAY)
    yield found
    found.close()


def metric(url: str, name: str, **labels: str) -> float | None:
    return scrape(url).get((name, tuple(sorted(labels.items()))))


def test_a_failed_migration_is_rolled_back_by_the_daemon_end_to_end(
        slow_starting_host: Host) -> None:
    host = slow_starting_host
    daemon: Proc = start_daemon(host.config)
    try:
        url = daemon_url(host.config)
        assert metric(url, "rollbackd_runbook_running") == 0
        assert metric(url, "rollbackd_runbook_steps_total", step="stop_app",
                      outcome="ok") == 0
        first_pid = host.app_pid()

        deployed = deploy_run(host.config, "false")
        assert deployed.returncode == 1 and "failed migration" in deployed.stderr

        # While the run goes, the main loop keeps its interval.
        cycles_while_running: set[float] = set()
        deadline = time.monotonic() + 90
        while finished_run(host.journal) is None and time.monotonic() < deadline:
            series = scrape(url)
            if series.get(("rollbackd_runbook_running", ())) == 1:
                cycles_while_running.add(series[("rollbackd_cycles_total", ())])
            time.sleep(0.2)
        done = finished_run(host.journal)
        assert done is not None, daemon.output()[-3000:]
        assert len(cycles_while_running) >= 2, cycles_while_running

        assert done.status == "succeeded", (done.summary, daemon.output()[-3000:])
        assert (done.runbook, done.incident, done.requested_by) == (
            "immediate_rollback", 1, "rollbackd")
        steps = host.journal.steps(done.id)
        assert [s.kind for s in steps] == list(done.plan)
        assert all(s.ended_at is not None for s in steps)
        restore = next(s for s in steps if s.kind == "restore_database")
        # `false` changed nothing: schema and migration version are the restore point's.
        assert restore.outcome == "skipped"
        assert restore.message == "database unchanged; code and configuration rolled back"
        assert host.journal.restores() == []

        wait_for(host.answers, 10, what="the app answering again")
        assert host.app_pid() not in (None, first_pid)
        assert '"executed": true' in daemon.output()
        wait_for(lambda: metric(url, "rollbackd_runbook_running") == 0, 5,
                 what="rollbackd_runbook_running back to 0")
        assert metric(url, "rollbackd_runbook_steps_total", step="stop_app", outcome="ok") == 1
        assert metric(url, "rollbackd_runbook_steps_total", step="restore_database",
                      outcome="skipped") == 1
        assert metric(url, "rollbackd_runbook_steps_total", step="validate",
                      outcome="ok") == 2
        assert metric(url, "rollbackd_runbook_duration_seconds_count",
                      runbook="immediate_rollback") == 1
        assert metric(url, "rollbackd_pages_total", channel="journal",
                      outcome="recorded") == 2
        assert [p.template for p in host.journal.pages(incident=1)] == [
            "emergency", "completion"]

        promtool = require_binary("promtool", "prometheus")
        exposition = httpx.get(f"{url}/metrics", timeout=5).text
        checked = subprocess.run([promtool, "check", "metrics"], input=exposition,
                                 capture_output=True, text=True, timeout=30, check=False)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        daemon.close()


def test_a_migration_that_changed_the_schema_is_restored_by_the_daemon(
        host: Host, pg_cluster: PgCluster) -> None:
    daemon: Proc = start_daemon(host.config)
    try:
        deployed = deploy_invalid_index(host.config, host.dsn)
        assert deployed.returncode == 1
        run(host.dsn, "INSERT INTO users (email, name) VALUES ('late@example.com', 'Late')")
        wait_for(lambda: finished_run(host.journal) is not None, 90,
                 what=f"the run to end ({daemon.output()[-2000:]})")
        done = finished_run(host.journal)
        assert done is not None and done.status == "succeeded", done
        [restore] = host.journal.restores(incident=1)
        assert restore.status == "restored" and restore.kept is not None
        assert scalar(host.dsn, "SELECT count(*) FROM pg_index WHERE NOT indisvalid") == 0
        wait_for(host.answers, 10, what="the app answering again")

        # Every table equals the restore point: its row counts and per-table checksums.
        store = BackupStore(load_config(host.config).backups)
        manifest = store.get(restore.source)
        restored = table_checksums(host.dsn, manifest)
        assert {name: count for name, (count, _) in restored.items()} == {
            t.qualified: t.rows for t in manifest.tables}
        # A name of this test's own on the shared cluster (other tests make references too).
        reference = restore_into_fresh_database(pg_cluster, store, manifest,
                                                f"{dbname_of(host.dsn)}_reference")
        assert restored == table_checksums(reference, manifest)
        # The row written after the deploy is in the kept copy, and counted in the report.
        assert scalar(host.dsn,
                      "SELECT count(*) FROM users WHERE email = 'late@example.com'") == 0
        assert scalar(with_dbname(host.dsn, restore.kept),
                      "SELECT count(*) FROM users WHERE email = 'late@example.com'") == 1
        report = rollbackd("incidents", "report", "1", config=host.config)
        assert report.returncode == 0, report.stderr
        assert re.search(r"\| public\.users \| public\.users \| id \| 1 \|", report.stdout), \
            report.stdout
        # A clean (shortened) watch period resolves the incident.
        wait_for(lambda: (found := host.journal.incident(1)) is not None
                 and found.state == "resolved", 20, what="the incident to resolve")
        summary = host.journal.incident(1)
        assert summary is not None and "watch period was clean" in summary.reason
    finally:
        daemon.close()


def test_a_rollback_by_hand_shows_its_plan_then_runs_with_yes(host: Host) -> None:
    began = rollbackd("deploy", "begin", "--version", "v2", "--json", config=host.config)
    assert began.returncode == 0, began.stderr
    release = APP_DIR / "releases" / "v2-destructive"
    assert subprocess.run([sys.executable, str(APP_DIR / "migrate.py"), "--dsn", host.dsn,
                           "--dir", str(APP_DIR / "migrations"), "--dir", str(release)],
                          capture_output=True, timeout=60, check=False).returncode == 0
    host.journal.add_drill(time.time(), "rp", True, 4.25, {})

    nothing_open = rollbackd("rollback", config=host.config)
    assert nothing_open.returncode == 1 and "name the runbook" in nothing_open.stderr
    planned = rollbackd("rollback", "--runbook", "immediate_rollback", config=host.config)
    assert planned.returncode == 0, planned.stderr
    assert "runbook immediate_rollback for no incident, budget 1h:" in planned.stdout
    assert " 3. restore_database (strategy=auto" in planned.stdout
    assert "data window it would undo: " in planned.stdout
    assert "expected downtime: about 4.2s of restore" in planned.stdout
    assert "run again with --yes" in planned.stderr
    assert host.journal.runs() == [] and host.answers()

    done = rollbackd("rollback", "--runbook", "immediate_rollback", "--yes", "--json",
                     config=host.config, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout)
    assert out["executed"] and out["run"]["status"] == "succeeded"
    assert out["plan"]["data_window"]["seconds"] > 0
    [stored] = host.journal.runs()
    assert stored.requested_by != "rollbackd" and stored.incident is None
    assert [s.kind for s in host.journal.steps(stored.id)] == list(stored.plan)
    [restore] = host.journal.restores()
    assert restore.status == "restored"
    assert scalar(host.dsn, "SELECT count(*) FROM information_schema.columns"
                            " WHERE table_name = 'images' AND column_name = 'title'") == 1
    wait_for(host.answers, 10, what="the app answering again")


def test_a_rollback_by_hand_of_a_deploy_with_a_clone_says_so_and_swaps_the_clone_in(
        host: Host) -> None:
    host.app.close()  # a clone is taken while the app is stopped for the deploy
    began = rollbackd("deploy", "begin", "--version", "v2", "--clone", "--json",
                      config=host.config)
    assert began.returncode == 0, began.stderr
    clone = json.loads(began.stdout)["clone"]
    release = APP_DIR / "releases" / "v2-destructive"
    assert subprocess.run([sys.executable, str(APP_DIR / "migrate.py"), "--dsn", host.dsn,
                           "--dir", str(APP_DIR / "migrations"), "--dir", str(release)],
                          capture_output=True, timeout=60, check=False).returncode == 0

    planned = rollbackd("rollback", "--runbook", "immediate_rollback", config=host.config)
    assert planned.returncode == 0, planned.stderr
    assert f"clone {clone}: swapped in by renaming, in seconds" in planned.stdout
    done = rollbackd("rollback", "--runbook", "immediate_rollback", "--yes", "--json",
                     config=host.config, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["plan"]["clone"] == clone
    [restore] = host.journal.restores()
    assert (restore.strategy, restore.source, restore.status) == ("clone", clone, "restored")
    assert scalar(host.dsn, "SELECT count(*) FROM information_schema.columns"
                            " WHERE table_name = 'images' AND column_name = 'title'") == 1
    wait_for(host.answers, 10, what="the app answering again")
