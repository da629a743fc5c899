"""`rollbackd deploy` and `rollbackd backup` as real processes against a real PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.config import BackupSettings
from daemon.db.backups import BackupStore
from daemon.journal import Journal
from tests.harness.cli import rollbackd
from tests.harness.config import config_file
from tests.harness.paths import APP_DIR, ROOT
from tests.harness.processes import migrate
from tests.harness.servers import PgCluster, wait_for

pytestmark = pytest.mark.e2e


def write_config(tmp_path: Path, dsn: str, *, min_free: str = "0", app: str = "") -> Path:
    return config_file(tmp_path, database={"dsn": dsn, "connect_timeout": "2s"},
                       backups={"dir": tmp_path / "backups", "min_free": min_free}, extra=app)


def journal(tmp_path: Path) -> Journal:
    return Journal.in_state_dir(tmp_path / "state")


def complete_backups(tmp_path: Path) -> list[str]:
    store = BackupStore(BackupSettings(dir=tmp_path / "backups"))
    return [i.id for i in store.list() if i.complete]


def git_checkout(directory: Path) -> str:
    directory.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    for argv in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "v2"]):
        subprocess.run(["git", "-C", str(directory), *argv], check=True, env=env, timeout=30)
    head = subprocess.run(["git", "-C", str(directory), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True, timeout=30)
    return head.stdout.strip()


def test_deploy_begin_json_names_the_deploy_and_its_verified_restore_point(
        pg_db: str, tmp_path: Path) -> None:
    assert migrate(pg_db).returncode == 0
    commit = git_checkout(tmp_path / "app")
    env_file = tmp_path / "app.env"
    env_file.write_text("SECRET=1\n")
    env_file.chmod(0o640)
    app = (f'[app]\nname = "visionforge"\nconfig_files = ["{env_file}"]\n'
           f'code = {{ adapter = "git", dir = "{tmp_path / "app"}" }}\n')
    config = write_config(tmp_path, pg_db, app=app)

    result = rollbackd("deploy", "begin", "--version", "v2-good", "--json", "--config",
                       str(config))

    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    deploy = journal(tmp_path).deploy(out["deploy"])
    assert deploy is not None
    assert (deploy.app, deploy.version, deploy.status, deploy.restore_point,
            deploy.restore_point_verified, deploy.code_version) == (
        "visionforge", "v2-good", "running", out["restore_point"], True, commit)
    manifest = BackupStore(BackupSettings(dir=tmp_path / "backups")).get(out["restore_point"])
    assert (manifest.kind, manifest.deploy, manifest.version, manifest.code_version) == (
        "restore_point", deploy.id, "v2-good", commit)
    [kept] = manifest.config
    assert (kept.path, kept.mode, kept.size) == (str(env_file), 0o640, 9)
    copy = tmp_path / "backups" / manifest.id / kept.file
    assert copy.read_text() == "SECRET=1\n"
    assert kept.file in {f.path for f in manifest.files}
    assert {"data.dump", "schema.sql"} <= {f.path for f in manifest.files}
    assert "CREATE TABLE public.users" in (tmp_path / "backups" / manifest.id /
                                          "schema.sql").read_text()

    listed = json.loads(rollbackd("backup", "list", "--json", "--config", str(config)).stdout)
    assert [(b["id"], b["kind"], b["deploy"], b["version"], b["verified"])
            for b in listed] == [(manifest.id, "restore_point", deploy.id, "v2-good", True)]
    assert set(listed[0]) >= {"id", "kind", "database", "created_at", "deploy", "size",
                              "verified"}
    human = rollbackd("backup", "list", "--config", str(config)).stdout
    assert human.splitlines()[0].split() == ["id", "kind", "database", "created", "deploy",
                                             "version", "size", "verified", "usable"]
    assert "  v2-good  " in human.splitlines()[1]


def test_deploy_begin_refuses_when_the_database_is_down_and_records_nothing(
        pg_private: PgCluster, tmp_path: Path) -> None:
    config = write_config(tmp_path, pg_private.dsn("postgres"))
    pg_private.stop("fast")

    result = rollbackd("deploy", "begin", "--version", "v2", "--config", str(config))

    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert "cannot connect to database" in line
    assert journal(tmp_path).latest_deploy() is None
    assert complete_backups(tmp_path) == []


def test_deploy_begin_refuses_when_min_free_would_be_crossed_and_records_nothing(
        pg_db: str, tmp_path: Path) -> None:
    config = write_config(tmp_path, pg_db, min_free="1000TB")

    result = rollbackd("deploy", "begin", "--version", "v2", "--json", "--config", str(config))

    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert "not enough free space" in line and "backups.min_free is 1000.0 TB" in line
    assert journal(tmp_path).latest_deploy() is None
    assert not (tmp_path / "backups").exists() or not list((tmp_path / "backups").iterdir())


def migration_argv(dsn: str, release: str) -> list[str]:
    return [sys.executable, str(APP_DIR / "migrate.py"), "--dsn", dsn,
            "--dir", str(APP_DIR / "migrations"), "--dir", str(APP_DIR / "releases" / release)]


def test_deploy_run_with_a_failing_migration_exits_1_and_journals_a_failed_migration(
        pg_db: str, tmp_path: Path) -> None:
    assert migrate(pg_db).returncode == 0
    config = write_config(tmp_path, pg_db)

    result = rollbackd("deploy", "run", "--version", "v2-failing", "--config", str(config),
                       "--", *migration_argv(pg_db, "v2-failing"))

    assert result.returncode == 1
    assert "migration 004_image_tags.sql failed" in result.stderr  # streamed through
    assert "recorded as a failed migration" in result.stderr.strip().splitlines()[-1]
    j = journal(tmp_path)
    deploy = j.latest_deploy()
    assert deploy is not None and deploy.status == "failed" and deploy.restore_point_verified
    migrations = [e.payload for e in j.events_after(0) if e.payload["type"] == "migration"]
    assert [(m["status"], m["version"], m["deploy"]) for m in migrations] == [
        ("failed", "v2-failing", deploy.id)]


def test_deploy_run_with_a_good_migration_ends_the_deploy_succeeded(
        pg_db: str, tmp_path: Path) -> None:
    assert migrate(pg_db).returncode == 0
    config = write_config(tmp_path, pg_db)

    result = rollbackd("deploy", "run", "--version", "v2-good", "--config", str(config),
                       "--", *migration_argv(pg_db, "v2-good"))

    assert result.returncode == 0, result.stderr
    assert "applied 004_images_visibility.sql" in result.stdout
    j = journal(tmp_path)
    deploy = j.latest_deploy()
    assert deploy is not None and deploy.status == "succeeded"
    events = [e.payload for e in j.events_after(0)]
    assert [(e["type"], e.get("phase"), e.get("status")) for e in events] == [
        ("deploy", "begin", None), ("migration", None, "succeeded"),
        ("deploy", "end", "succeeded")]
    store = BackupStore(BackupSettings(dir=tmp_path / "backups"))
    restore_point = store.get(deploy.restore_point or "")
    assert "images.visibility" not in (store.path(restore_point.id) / "schema.sql").read_text()


def test_a_deploy_run_stopped_by_sigterm_kills_its_command_and_records_the_failure(
        pg_db: str, tmp_path: Path) -> None:
    config = write_config(tmp_path, pg_db)
    pidfile = tmp_path / "cmd.pid"
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon", "deploy", "run", "--version", "v5", "--config",
         str(config), "--", "sh", "-c", f'echo $$ > "{pidfile}"; exec sleep 60'],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 20,
                 what="the migration command to start")
        command_pid = int(pidfile.read_text())
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    assert proc.returncode == 1
    assert "sh was interrupted and killed" in stderr.splitlines()[-1]
    with pytest.raises(ProcessLookupError):
        os.kill(command_pid, 0)
    deploy = journal(tmp_path).latest_deploy()
    assert deploy is not None and deploy.status == "failed"


def test_deploy_end_closes_the_latest_running_deploy_and_then_has_none_to_end(
        pg_db: str, tmp_path: Path) -> None:
    config = write_config(tmp_path, pg_db)
    begun = rollbackd("deploy", "begin", "--version", "v3", "--config", str(config))
    assert begun.returncode == 0, begun.stderr
    first, second = begun.stdout.splitlines()[:2]
    assert first == "deploy 1 of app v3 begun"
    assert second.startswith("restore point ") and ": verified, " in second

    ended = rollbackd("deploy", "end", "--status", "succeeded", "--json", "--config",
                      str(config))

    assert ended.returncode == 0, ended.stderr
    assert json.loads(ended.stdout) == {"deploy": 1, "version": "v3", "status": "succeeded",
                                        "restore_point": second.split()[2].rstrip(":")}
    deploy = journal(tmp_path).latest_deploy()
    assert deploy is not None and deploy.status == "succeeded"
    again = rollbackd("deploy", "end", "--status", "failed", "--config", str(config))
    assert again.returncode == 1 and "no running deploy" in again.stderr


def test_backup_verify_exits_1_with_the_reason_for_a_corrupted_backup(
        pg_db: str, tmp_path: Path) -> None:
    config = write_config(tmp_path, pg_db)
    created = rollbackd("backup", "create", "--json", "--config", str(config))
    assert created.returncode == 0, created.stderr
    backup_id = json.loads(created.stdout)["id"]
    assert json.loads(created.stdout)["verified"] is True
    dump = tmp_path / "backups" / backup_id / "data.dump"
    data = bytearray(dump.read_bytes())
    data[-10] ^= 0xFF
    dump.write_bytes(bytes(data))

    result = rollbackd("backup", "verify", backup_id, "--config", str(config))

    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert f"backup {backup_id} failed verification: data.dump does not match its sha256" in line
    listed = json.loads(rollbackd("backup", "list", "--json", "--config", str(config)).stdout)
    assert listed[0]["verified"] is False


def test_backup_prune_keeps_the_restore_point_of_a_recent_deploy(
        pg_db: str, tmp_path: Path) -> None:
    config = write_config(tmp_path, pg_db)
    begun = rollbackd("deploy", "begin", "--version", "v4", "--json", "--config", str(config))
    assert begun.returncode == 0, begun.stderr
    store = BackupStore(BackupSettings(dir=tmp_path / "backups", min_free=0))
    # A restore's safety copy holds the only copy of the data it undid: kept in the window.
    safety = store.create(pg_db, "safety").id
    manual = [store.create(pg_db, "manual").id for _ in range(2)]

    result = rollbackd("backup", "prune", "--keep", "1", "--window", "1h", "--json",
                       "--config", str(config))

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["removed"] == [manual[0]]
    assert sorted(complete_backups(tmp_path)) == sorted(
        [json.loads(begun.stdout)["restore_point"], safety, manual[1]])


@pytest.mark.parametrize("verb", [["deploy", "begin", "--version", "v1"], ["backup", "list"]])
def test_a_config_without_a_database_section_is_a_usage_error(
        tmp_path: Path, verb: list[str]) -> None:
    path = tmp_path / "rollbackd.toml"
    path.write_text(f'[backups]\ndir = "{tmp_path}"\n')

    result = rollbackd(*verb, "--config", str(path))

    assert result.returncode == 2
    assert "database" in result.stderr and len(result.stderr.strip().splitlines()) == 1
