"""The executor in-process against a real PostgreSQL and the example app as a real process
(the ``process`` control adapter): a deploy's restore point, a bad change after it, and the
bundled immediate_rollback carried out, every step journaled."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from daemon.config import Config
from daemon.db.backups import Manifest
from daemon.journal import Journal
from daemon.ops.deploys import start_deploy
from daemon.runbooks.context import RunRequest
from daemon.runbooks.executor import Executor, RunResult
from daemon.runbooks.steps import UNCHANGED
from policies.runbooks import BUILTIN
from policies.schema import convert
from probes.pg import dbname_of, with_dbname
from tests.harness.data import flip_a_byte, run, scalar, seed_visionforge, table_checksums
from tests.harness.paths import APP_DIR
from tests.harness.processes import migrate, start_app
from tests.harness.servers import PgCluster, free_port

RELEASES = APP_DIR / "releases"


def git(directory: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(directory), "-c", "user.email=t@example.com",
                           "-c", "user.name=t", *args], capture_output=True, text=True,
                          timeout=30, check=True)
    return done.stdout.strip()


@dataclass
class Site:
    """One app host: the database, the app (process adapter), its code and config file."""

    dsn: str
    url: str
    pidfile: Path
    code: Path
    env_file: Path
    config: Config
    journal: Journal

    def app_pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            return pid if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE else None
        except psutil.NoSuchProcess:
            return None

    def answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def deploy(self) -> Manifest:
        return start_deploy(self.config, "v2").restore_point

    def stop_app(self) -> None:
        """As a deploy that takes a clone does first: nobody may be connected for the copy."""
        pid = self.app_pid()
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        psutil.Process(pid).wait(timeout=10)

    async def immediate_rollback(self, incident: int = 1) -> RunResult:
        return await self.rollback("immediate_rollback", incident)

    async def rollback(self, runbook: str, incident: int = 1) -> RunResult:
        request = RunRequest(BUILTIN[runbook], incident=incident,
                             scenario="migration_failed", action=runbook,
                             reason="migration.failed == 1 held for 0s", by="rollbackd",
                             timeline_s=900)
        return await Executor(self.config, self.journal, backoff=0.1).run(request)


@pytest.fixture
def site(pg_db: str, tmp_path: Path) -> Iterator[Site]:
    seed_visionforge(pg_db)
    code = tmp_path / "code"
    code.mkdir()
    (code / "release.txt").write_text("v1\n")
    git(code, "init", "-q")
    git(code, "add", ".")
    git(code, "commit", "-q", "-m", "v1")
    env_file = tmp_path / "app.env"
    env_file.write_text("FEATURE=off\n")
    pidfile = tmp_path / "app.pid"
    port = free_port()
    app, url = start_app(pg_db, port=port, pidfile=pidfile)
    argv = [sys.executable, str(APP_DIR / "app.py"), "--dsn", pg_db, "--host", "127.0.0.1",
            "--port", str(port), "--pidfile", str(pidfile), "--release-version", "v1"]
    config = convert({
        "daemon": {"state_dir": str(tmp_path / "state")},
        "app": {"name": "visionforge",
                "control": {"adapter": "process", "pidfile": str(pidfile), "start": argv,
                            "stop_timeout": "5s"},
                "code": {"adapter": "git", "dir": str(code)},
                "config_files": [str(env_file)]},
        "database": {"dsn": pg_db, "migrations": "knex", "connect_timeout": "2s",
                     "expected_tables": ["users", "images", "audit_log"],
                     "key_tables": ["users", "images", "audit_log"]},
        "backups": {"dir": str(tmp_path / "backups"), "min_free": 0},
        "probes": {"http": [{"name": "health", "url": f"{url}/health"}]},
    }, Config)
    journal = Journal.in_state_dir(tmp_path / "state")
    found = Site(pg_db, url, pidfile, code, env_file, config, journal)
    yield found
    journal.close()
    app.close()
    pid = found.app_pid()  # the app as the executor started it again
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def assert_every_step_begun_and_ended(result: RunResult) -> None:
    """Each step up to where the run stopped: begun and ended, once (nothing retried here)."""
    kinds = [s.kind for s in result.steps]
    assert kinds == list(result.run.plan)[:len(kinds)]
    assert all(s.ended_at is not None and s.outcome is not None for s in result.steps)


async def test_immediate_rollback_restores_the_restore_point_and_restarts_the_app(
        site: Site) -> None:
    manifest = site.deploy()
    before = table_checksums(site.dsn, manifest)
    v1 = git(site.code, "rev-parse", "HEAD")
    # The release: new code, new config, a migration that drops a column and deletes rows,
    # and users who keep writing meanwhile.
    (site.code / "release.txt").write_text("v2\n")
    git(site.code, "commit", "-qam", "v2")
    site.env_file.write_text("FEATURE=on\n")
    assert migrate(site.dsn, APP_DIR / "migrations",
                   RELEASES / "v2-destructive").returncode == 0
    run(site.dsn, "INSERT INTO users (email, name) VALUES ('late@example.com', 'Late')")
    old_pid = site.app_pid()

    result = await site.immediate_rollback()

    assert result.ok, result.describe()
    assert result.run.status == "succeeded" and result.failed_step is None
    assert_every_step_begun_and_ended(result)
    assert len(result.steps) == len(result.run.plan)
    outcomes = {s.kind: s.outcome for s in result.steps}
    assert outcomes["restore_database"] == "ok"
    assert table_checksums(site.dsn, manifest) == before
    # The rows written after the deploy are in the database the swap kept aside.
    [restore] = site.journal.restores(incident=1)
    assert restore.status == "restored" and restore.kept is not None
    assert restore.kept.startswith(f"{dbname_of(site.dsn)}_rolledback_")
    kept = with_dbname(site.dsn, restore.kept)
    assert scalar(kept, "SELECT count(*) FROM users WHERE email = 'late@example.com'") == 1
    deploy = site.journal.latest_deploy("visionforge")
    assert deploy is not None and deploy.status == "rolled_back"
    # Code and config are the restore point's; the app runs again, a new process.
    assert git(site.code, "rev-parse", "HEAD") == v1
    assert site.env_file.read_text() == "FEATURE=off\n"
    assert site.answers()
    assert site.app_pid() not in (None, old_pid)
    assert result.state.startswith("app running (started again), database restored")
    pages = site.journal.pages(incident=1)
    assert [p.template for p in pages] == ["emergency", "completion"]
    assert "kept in database" in pages[-1].summary


async def test_a_deploy_with_a_clone_is_rolled_back_by_swapping_the_clone_in(
        site: Site) -> None:
    site.stop_app()
    started = start_deploy(site.config, "v2", clone=True)
    clone = started.deploy.clone
    assert clone is not None and clone.startswith(f"{dbname_of(site.dsn)}_clone_")
    manifest = started.restore_point
    before = table_checksums(site.dsn, manifest)
    assert migrate(site.dsn, APP_DIR / "migrations",
                   RELEASES / "v2-destructive").returncode == 0
    run(site.dsn, "INSERT INTO users (email, name) VALUES ('late@example.com', 'Late')")

    result = await site.immediate_rollback()

    assert result.ok, result.describe()
    [restore_step] = [s for s in result.steps if s.kind == "restore_database"]
    assert restore_step.outcome == "ok"
    assert restore_step.message is not None
    assert restore_step.message.startswith(f"restored {clone} by clone")
    assert table_checksums(site.dsn, manifest) == before
    [restore] = site.journal.restores(incident=1)
    assert (restore.strategy, restore.source, restore.status, restore.deploy) == (
        "clone", clone, "restored", started.deploy.id)
    assert restore.kept is not None and "_rolledback_" in restore.kept
    assert scalar(with_dbname(site.dsn, restore.kept),
                  "SELECT count(*) FROM users WHERE email = 'late@example.com'") == 1
    deploy = site.journal.deploy(started.deploy.id)
    assert deploy is not None and deploy.status == "rolled_back"
    assert site.answers()


async def test_a_deploys_clone_that_is_gone_leaves_the_rollback_to_the_restore_point(
        site: Site, pg_cluster: PgCluster) -> None:
    site.stop_app()
    started = start_deploy(site.config, "v2", clone=True)
    assert started.deploy.clone is not None
    pg_cluster.execute(f'DROP DATABASE "{started.deploy.clone}"')  # pruned, say
    assert migrate(site.dsn, APP_DIR / "migrations",
                   RELEASES / "v2-destructive").returncode == 0

    result = await site.immediate_rollback()

    assert result.ok, result.describe()
    [restore_step] = [s for s in result.steps if s.kind == "restore_database"]
    assert "no longer exists" in restore_step.details["clone_unusable"]
    [restore] = site.journal.restores(incident=1)
    assert (restore.strategy, restore.source) == ("swap", started.restore_point.id)


async def test_a_failed_restore_stops_the_run_and_pages_the_state_left_behind(
        site: Site) -> None:
    manifest = site.deploy()
    assert migrate(site.dsn, APP_DIR / "migrations",
                   RELEASES / "v2-destructive").returncode == 0
    flip_a_byte(site.config.backups.dir / manifest.id / manifest.data)

    result = await site.immediate_rollback()

    assert result.run.status == "failed" and result.failed_step == 3
    assert [(s.kind, s.outcome) for s in result.steps] == [
        ("page", "ok"), ("stop_app", "ok"), ("restore_database", "failed")]
    assert_every_step_begun_and_ended(result)
    page = result.page
    assert page is not None and page.template == "emergency"
    assert "FAILED at step 3 (restore_database)" in page.summary
    assert ("state left behind: app stopped, database not restored (the restore failed; "
            "see its message for what it left), code not rolled back, config not rolled "
            "back") in page.summary
    assert page.details["kind"] == "restore_database"
    assert site.app_pid() is None  # stopped, never started blindly past the failed restore
    [restore] = site.journal.restores(incident=1)
    assert restore.status == "failed"


async def test_a_transactional_failed_migration_is_not_restored(site: Site) -> None:
    manifest = site.deploy()
    before = table_checksums(site.dsn, manifest)
    failed = migrate(site.dsn, APP_DIR / "migrations", RELEASES / "v2-failing")
    assert failed.returncode == 1  # rolled back by PostgreSQL: schema and version unchanged
    run(site.dsn, "INSERT INTO users (email, name) VALUES ('kept@example.com', 'Kept')")

    result = await site.immediate_rollback()

    assert result.ok, result.describe()
    restore_step = next(s for s in result.steps if s.kind == "restore_database")
    assert (restore_step.outcome, restore_step.message) == ("skipped", UNCHANGED)
    assert restore_step.details["migration_version"] == "3"
    assert site.journal.restores() == []
    # Nothing undone: the row written after the deploy is still in the live database.
    assert scalar(site.dsn, "SELECT count(*) FROM users WHERE email = 'kept@example.com'") == 1
    assert table_checksums(site.dsn, manifest)["public.images"] == before["public.images"]
    assert site.answers()
    assert "database unchanged (not restored)" in result.state
    assert "no data undone" in site.journal.pages(incident=1)[-1].summary


async def test_a_failed_data_migration_that_deleted_rows_is_restored_not_called_unchanged(
        site: Site) -> None:
    # A non-transactional data migration that failed after deleting rows: the schema and the
    # migration version are still the restore point's, the rows are not.
    manifest = site.deploy()
    before = table_checksums(site.dsn, manifest)
    run(site.dsn, "DELETE FROM images")

    result = await site.immediate_rollback()

    assert result.ok, result.describe()
    restore_step = next(s for s in result.steps if s.kind == "restore_database")
    assert restore_step.outcome == "ok", restore_step.message
    assert "images" in restore_step.details["restore_because"]
    assert table_checksums(site.dsn, manifest)["public.images"] == before["public.images"]
    [restore] = site.journal.restores(incident=1)
    assert restore.status == "restored" and restore.kept is not None  # what was left, kept


async def test_never_a_second_restore_for_one_incident(site: Site) -> None:
    site.deploy()
    assert migrate(site.dsn, APP_DIR / "migrations",
                   RELEASES / "v2-destructive").returncode == 0
    assert (await site.immediate_rollback()).ok
    again = await site.immediate_rollback()
    assert again.ok
    step = next(s for s in again.steps if s.kind == "restore_database")
    assert step.outcome == "skipped" and "never twice for one incident" in (step.message or "")
    assert len(site.journal.restores(incident=1)) == 1


async def test_planned_rollback_assesses_keeps_a_safety_backup_and_validates_the_data(
        site: Site) -> None:
    manifest = site.deploy()
    before = table_checksums(site.dsn, manifest)
    assert migrate(site.dsn, APP_DIR / "migrations",
                   RELEASES / "v2-destructive").returncode == 0

    result = await site.rollback("planned_rollback")

    assert result.ok, result.describe()
    assert len(result.steps) == len(result.run.plan)
    assert_every_step_begun_and_ended(result)
    by_kind = {s.kind: s for s in result.steps}
    # The assessment records what the validators say of the damaged database.
    assert by_kind["assess"].outcome == "ok"
    assert "rows:audit_log" in (by_kind["assess"].message or "")
    safety = by_kind["safety_backup"].details["backup"]
    assert site.config.backups.dir.joinpath(safety).is_dir()
    assert by_kind["stop_app"].details["signal"] == "TERM"  # graceful
    validated = [s for s in result.steps if s.kind == "validate"]
    assert [s.outcome for s in validated] == ["ok", "ok", "ok"]
    assert table_checksums(site.dsn, manifest) == before
    assert site.answers()
    assert [p.template for p in site.journal.pages(incident=1)] == ["planned", "completion"]
