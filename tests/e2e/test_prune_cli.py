"""``rollbackd backup prune`` as a real process: backups, kept databases and kept tables by one
set of rules, in one report."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from daemon.config import BackupSettings
from daemon.db.backups import BackupStore
from daemon.fmt import db_stamp
from probes.pg import dbname_of
from tests.harness.cli import rollbackd
from tests.harness.config import config_file
from tests.harness.data import run, seed_visionforge
from tests.harness.servers import PgCluster

pytestmark = pytest.mark.e2e


def write_config(tmp_path: Path, dsn: str) -> Path:
    return config_file(tmp_path, database={"dsn": dsn, "connect_timeout": "2s"},
                       backups={"dir": tmp_path / "backups", "min_free": "0"})


def complete_backups(tmp_path: Path) -> list[str]:
    store = BackupStore(BackupSettings(dir=tmp_path / "backups"))
    return [i.id for i in store.list() if i.complete]


def test_backup_prune_removes_old_kept_databases_and_tables_and_reports_them(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    name = str(dbname_of(pg_db))
    seed_visionforge(pg_db, images=4)
    config = write_config(tmp_path, pg_db)
    begun = rollbackd("deploy", "begin", "--version", "v1", "--json", "--config", str(config))
    assert begun.returncode == 0, begun.stderr
    week_ago = db_stamp(time.time() - 7 * 86400)
    old_aside = f"{name}_rolledback_{week_ago}"
    new_aside = f"{name}_rolledback_{db_stamp(time.time())}"
    for db in (old_aside, new_aside):
        pg_cluster.execute(f'CREATE DATABASE "{db}"')
    run(pg_db, "CREATE SCHEMA rollbackd_kept",
        f"CREATE TABLE rollbackd_kept.public_images_{week_ago}_ab12 AS TABLE images",
        f"CREATE TABLE rollbackd_kept.public_images_{db_stamp(time.time())}_cd34"
        " AS TABLE images")

    result = rollbackd("backup", "prune", "--keep", "1", "--window", "1h", "--json",
                       "--config", str(config))

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["removed"] == []
    assert report["removed_databases"] == [old_aside]
    assert report["removed_tables"] == [f"rollbackd_kept.public_images_{week_ago}_ab12"]
    assert pg_cluster.execute(f"SELECT datname FROM pg_database WHERE datname LIKE "
                              f"'{name}\\_%' ORDER BY 1") == [(new_aside,)]
    assert complete_backups(tmp_path) == [json.loads(begun.stdout)["restore_point"]]
    human = rollbackd("backup", "prune", "--keep", "0", "--window", "1h", "--config",
                      str(config))
    assert human.returncode == 0, human.stderr
    assert "0 backup(s), 0 kept database(s) and 0 kept table(s) removed" in human.stdout


def test_backup_prune_still_prunes_backups_when_the_database_is_down_and_says_so(
        pg_db: str, tmp_path: Path) -> None:
    seed_visionforge(pg_db, images=4)
    live = write_config(tmp_path, pg_db)
    made = [json.loads(rollbackd("backup", "create", "--json", "--config",
                                 str(live)).stdout)["id"] for _ in range(2)]
    down = write_config(tmp_path, "host=127.0.0.1 port=1 user=postgres dbname=gone")

    result = rollbackd("backup", "prune", "--keep", "1", "--window", "1h", "--json",
                       "--config", str(down))

    assert result.returncode == 1
    assert json.loads(result.stdout)["removed"] == [made[0]]
    [line] = result.stderr.strip().splitlines()
    assert "kept databases and tables not pruned" in line and "cannot connect" in line, line


def test_prune_keeps_the_safety_backup_of_an_interrupted_in_place_restore_whatever_its_age(
        pg_db: str, tmp_path: Path) -> None:
    from dataclasses import asdict

    from daemon.db.restore.in_place import STATE_FILE, Attempt, InterruptedRestore

    seed_visionforge(pg_db, images=4)
    config = write_config(tmp_path, pg_db)
    made = rollbackd("backup", "create", "--kind", "safety", "--json", "--config", str(config))
    assert made.returncode == 0, made.stderr
    safety = json.loads(made.stdout)["id"]
    record = InterruptedRestore(str(dbname_of(pg_db)), [Attempt(
        backup_id="rp", pid=1, host="h", started_at=0.0, safety_backup=safety,
        may_have_restored=True)])
    (tmp_path / "state").mkdir(exist_ok=True)
    (tmp_path / "state" / STATE_FILE).write_text(json.dumps(asdict(record)))

    newer = rollbackd("backup", "create", "--json", "--config", str(config))
    assert newer.returncode == 0, newer.stderr
    time.sleep(1.5)  # both now older than the window below

    pruned = rollbackd("backup", "prune", "--keep", "0", "--window", "1s", "--json",
                       "--config", str(config))

    assert pruned.returncode == 0, pruned.stderr
    assert json.loads(newer.stdout)["id"] in json.loads(pruned.stdout)["removed"]
    assert safety in complete_backups(tmp_path), pruned.stdout
