"""`rollbackd backup restore` by hand is journaled (real PostgreSQL, real processes): linked to
the deploy whose restore point it restored (then `rolled_back` in `status`) and to the open
incident, which the daemon then resolves as rolled back by hand."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from daemon.journal import Journal
from policies.engine import Decision
from probes.pg import dbname_of
from tests.harness.paths import ROOT
from tests.harness.processes import start_daemon
from tests.harness.servers import free_port, wait_for

pytestmark = pytest.mark.e2e


def sql(dsn: str, statement: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement.encode())


def write_config(tmp_path: Path, dsn: str) -> Path:
    path = tmp_path / "rollbackd.toml"
    path.write_text(
        f'[daemon]\nstate_dir = "{tmp_path / "state"}"\ninterval = "500ms"\n'
        f'listen = "127.0.0.1:{free_port()}"\nmode = "dry-run"\nlog_format = "json"\n\n'
        '[app]\nname = "visionforge"\n\n'
        f'[database]\ndsn = "{dsn}"\nconnect_timeout = "2s"\nexpected_tables = ["users"]\n\n'
        f'[backups]\ndir = "{tmp_path / "backups"}"\nmin_free = "0"\n'
        'terminate_timeout = "5s"\nrestore_timeout = "2m"\nlock_wait_timeout = "5s"\n')
    return path


def rollbackd(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)


def deployed(tmp_path: Path, dsn: str) -> tuple[Path, dict[str, object]]:
    """A database, a deploy of v2 with its verified restore point, ended as succeeded (the
    bad deploy), and rows written after it: what a restore undoes."""
    sql(dsn, "CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL)")
    sql(dsn, "INSERT INTO users (name) SELECT 'user ' || n FROM generate_series(1, 20) n")
    config = write_config(tmp_path, dsn)
    begun = rollbackd(config, "deploy", "begin", "--version", "v2", "--json")
    assert begun.returncode == 0, begun.stderr
    deploy = json.loads(begun.stdout)
    ended = rollbackd(config, "deploy", "end", "--status", "succeeded")
    assert ended.returncode == 0, ended.stderr
    sql(dsn, "DELETE FROM users WHERE id <= 5")
    return config, deploy


def open_incident(tmp_path: Path) -> None:
    journal = Journal.in_state_dir(tmp_path / "state")
    try:
        journal.add_decision(Decision(
            t=time.time(), kind="open", incident=1, scenario="migration_failed",
            severity="critical", action="page", requested_action="immediate_rollback",
            timeline_s=900, mode="dry-run", reason="migration.failed == 1 held for 0s"))
    finally:
        journal.close()


def test_a_restore_by_hand_rolls_the_deploy_back_and_closes_the_incident(
        pg_db: str, tmp_path: Path) -> None:
    config, deploy = deployed(tmp_path, pg_db)
    open_incident(tmp_path)
    rp = str(deploy["restore_point"])

    restored = rollbackd(config, "backup", "restore", rp, "--yes")
    assert restored.returncode == 0, restored.stderr

    status = json.loads(rollbackd(config, "status", "--json").stdout)
    assert (status["deploy"]["id"], status["deploy"]["status"]) == (deploy["deploy"],
                                                                    "rolled_back")
    restore = status["restore"]
    assert (restore["id"], restore["source"], restore["strategy"], restore["status"],
            restore["ok"], restore["deploy"], restore["incident"]) == (
        1, rp, "swap", "restored", True, deploy["deploy"], 1)
    assert restore["database"] == dbname_of(pg_db)
    assert restore["kept"].startswith(f"{dbname_of(pg_db)}_rolledback_")
    assert restore["kept_kind"] == "database" and restore["finished_at"] >= restore["started_at"]
    assert restore["data_window_end"] >= restore["data_window_start"] > 0

    human = rollbackd(config, "status").stdout
    assert "deploy     v2 (rolled_back)" in human
    assert f"restore    restore 1 restored: swap of {rp} by " in human
    assert f"deploy {deploy['deploy']} rolled back, incident 1" in human

    shown = rollbackd(config, "incidents", "show", "1")
    assert shown.returncode == 0, shown.stderr
    assert f"restore 1 restored: swap of {rp}" in shown.stdout
    # --json stays the replay output format: decisions only.
    lines = rollbackd(config, "incidents", "show", "1", "--json").stdout.splitlines()
    assert [json.loads(line)["kind"] for line in lines] == ["open"]

    # The incident is closed as rolled back by hand: the daemon resolves it.
    daemon = start_daemon(config)
    try:
        def resolved() -> bool:
            out = rollbackd(config, "incidents", "show", "1", "--json").stdout
            return bool(json.loads(out.splitlines()[-1])["kind"] == "resolve")

        wait_for(resolved, 20, what=f"incident 1 to resolve ({daemon.output()[-1500:]})")
        last = json.loads(rollbackd(config, "incidents", "show", "1", "--json")
                          .stdout.splitlines()[-1])
        assert "rolled back by hand (restore 1 restored: swap of" in last["reason"]
    finally:
        daemon.close()
    assert json.loads(rollbackd(config, "status", "--json").stdout)["incident"] is None


def test_a_failed_restore_is_journaled_and_changes_neither_deploy_nor_incident(
        pg_db: str, tmp_path: Path) -> None:
    config, deploy = deployed(tmp_path, pg_db)
    open_incident(tmp_path)

    failed = rollbackd(config, "backup", "restore", "no-such-backup", "--yes")
    assert failed.returncode == 1

    status = json.loads(rollbackd(config, "status", "--json").stdout)
    assert status["deploy"]["status"] == "succeeded"
    restore = status["restore"]
    assert (restore["status"], restore["ok"], restore["source"], restore["deploy"],
            restore["incident"]) == ("failed", False, "no-such-backup", deploy["deploy"], 1)
    assert "no-such-backup" in restore["error"] and restore["finished_at"] is not None
    assert status["incident"]["incident"] == 1
    journal = Journal.in_state_dir(tmp_path / "state")
    try:
        assert not [e for e in journal.events_after(0) if e.payload["type"] == "close"]
    finally:
        journal.close()


def test_a_tables_restore_is_linked_but_does_not_roll_the_deploy_back(
        pg_db: str, tmp_path: Path) -> None:
    config, deploy = deployed(tmp_path, pg_db)
    restored = rollbackd(config, "backup", "restore", str(deploy["restore_point"]),
                         "--tables", "users", "--yes")
    assert restored.returncode == 0, restored.stderr
    status = json.loads(rollbackd(config, "status", "--json").stdout)
    assert status["deploy"]["status"] == "succeeded"
    restore = status["restore"]
    assert (restore["strategy"], restore["tables"], restore["status"], restore["deploy"],
            restore["incident"]) == ("tables", ["users"], "restored", deploy["deploy"], None)
    assert restore["safety_backup"]
