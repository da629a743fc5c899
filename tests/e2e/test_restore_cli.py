"""`rollbackd backup restore` as a real process: confirmation, its report, and being killed."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import psutil
import pytest

from daemon.config import load_config
from daemon.db.backups import Manifest
from daemon.db.restore import RestoreOptions, recover_interrupted_in_place
from daemon.fmt import when
from probes.pg import dbname_of
from tests.harness.cli import ROLLBACKD, rollbackd
from tests.harness.config import config_file
from tests.harness.data import restore_point, run, seed_visionforge, store_in, table_checksums
from tests.harness.processes import Proc
from tests.harness.servers import PgCluster, wait_for

pytestmark = pytest.mark.e2e

# An index whose every entry takes 20 ms to compute keeps pg_restore busy in its post-data
# step for SLOW_ROWS x 20 ms = 1.5 s: the test sees it start (polling every 50 ms) and kills
# rollbackd well inside it. Each restore of the restore point builds it in full again.
SLOW_ROWS = 75
SLOW_INDEX = """
CREATE FUNCTION slow_key(v bigint) RETURNS bigint IMMUTABLE LANGUAGE plpgsql AS
$$ BEGIN PERFORM pg_sleep(0.02); RETURN v; END $$;
CREATE INDEX images_slow_idx ON images (slow_key(id));
"""


def write_config(tmp_path: Path, dsn: str) -> Path:
    return config_file(
        tmp_path,
        database={"dsn": dsn, "connect_timeout": "2s",
                  "expected_tables": ["users", "images", "audit_log"],
                  "key_tables": ["users", "images"]},
        backups={"dir": tmp_path / "backups", "min_free": "0", "terminate_timeout": "5s",
                 "restore_timeout": "2m", "lock_wait_timeout": "5s"})


def test_restore_refuses_without_yes_naming_what_it_would_destroy(
        pg_db: str, tmp_path: Path) -> None:
    _, rp = restore_point(pg_db, tmp_path)
    config = write_config(tmp_path, pg_db)
    for extra, words in (([], "terminates every session"), (["--strategy", "in_place"],
                                                            "overwrites database"),
                         (["--tables", "images"], "replaces every row of images")):
        result = rollbackd("backup", "restore", rp.id, *extra, "--config", str(config))
        assert result.returncode == 2
        assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1
    mixed = rollbackd("backup", "restore", rp.id, "--tables", "images", "--strategy",
                      "in_place", "--yes", "--config", str(config))
    assert mixed.returncode == 2 and "takes no --strategy" in mixed.stderr


def test_restore_prints_the_data_window_and_where_the_newer_data_is_kept(
        pg_db: str, tmp_path: Path) -> None:
    _, rp = restore_point(pg_db, tmp_path)
    at_restore_point = table_checksums(pg_db, rp)
    run(pg_db, "DELETE FROM images WHERE id <= 10")
    config = write_config(tmp_path, pg_db)

    human = rollbackd("backup", "restore", rp.id, "--yes", "--config", str(config))
    assert human.returncode == 0, human.stderr
    assert "data window undone: " + when(rp.created_at) in human.stdout
    assert f"kept in database {dbname_of(pg_db)}_rolledback_" in human.stdout
    assert table_checksums(pg_db, rp) == at_restore_point

    tables = rollbackd("backup", "restore", rp.id, "--tables", "images", "--yes", "--json",
                       "--config", str(config))
    assert tables.returncode == 0, tables.stderr
    report = json.loads(tables.stdout)
    assert (report["ok"], report["strategy"], report["kept_kind"], report["tables"]) == (
        True, "tables", "tables", ["public.images"])
    assert report["kept"].startswith("rollbackd_kept.public_images_") and report["safety_backup"]
    assert report["data_window_start"] == rp.created_at


def _kill_when_restoring(proc: Proc, cluster: PgCluster, database_like: str,
                         with_children: bool) -> None:
    def restoring() -> bool:
        rows = cluster.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE '" + database_like
            + "' AND state = 'active' AND query LIKE 'CREATE INDEX images_slow_idx%'")
        return bool(rows[0][0])

    wait_for(restoring, 60, interval=0.05, what=f"pg_restore to build the slow index "
                                                  f"({proc.output()[-1000:]})")
    victims = [proc.pid]
    if with_children:
        # As when systemd kills the service's whole control group.
        victims += [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    proc.popen.wait(10)


def slow_restore_point_and_later_writes(
        pg_db: str, tmp_path: Path) -> tuple[Manifest, dict[str, tuple[int, str | None]], Path]:
    """A restore point whose restore takes over a second (SLOW_INDEX), rows deleted after it, the
    tables' checksums as they are now, and a config: what a killed restore must not change."""
    seed_visionforge(pg_db, images=SLOW_ROWS)
    run(pg_db, SLOW_INDEX)
    rp = store_in(tmp_path / "backups").create(pg_db, "restore_point")
    run(pg_db, "DELETE FROM images WHERE id <= 10")
    return rp, table_checksums(pg_db, rp), write_config(tmp_path, pg_db)


def test_a_swap_killed_while_pg_restore_runs_leaves_live_untouched_and_the_next_one_works(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    name = dbname_of(pg_db)
    rp, before, config = slow_restore_point_and_later_writes(pg_db, tmp_path)

    proc = Proc([*ROLLBACKD, "backup", "restore", rp.id, "--yes", "--config", str(config)])
    try:
        _kill_when_restoring(proc, pg_cluster, f"{name}_shadow_%", with_children=False)
    finally:
        proc.close()
    assert table_checksums(pg_db, rp) == before
    assert pg_cluster.execute(
        f"SELECT datallowconn FROM pg_database WHERE datname = '{name}'") == [(True,)]

    again = rollbackd("backup", "restore", rp.id, "--yes", "--json", "--config", str(config))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["ok"]
    assert pg_cluster.execute(
        f"SELECT count(*) FROM pg_database WHERE datname LIKE '{name}_shadow_%'") == [(0,)]


def test_an_in_place_restore_killed_midway_leaves_the_database_unchanged(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    name = dbname_of(pg_db)
    rp, before, config = slow_restore_point_and_later_writes(pg_db, tmp_path)

    proc = Proc([*ROLLBACKD, "backup", "restore", rp.id, "--strategy", "in_place", "--yes",
                 "--config", str(config)])
    try:
        _kill_when_restoring(proc, pg_cluster, str(name), with_children=True)
    finally:
        proc.close()
    wait_for(lambda: pg_cluster.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '" + str(name)
        + "' AND application_name LIKE 'rollbackd%'") == [(0,)], 30,
        what="the killed pg_restore's session to end")
    # It was killed while it held every other session out: rollbackd's next start (or
    # restore) lets them in again.
    assert pg_cluster.execute(
        f"SELECT datallowconn FROM pg_database WHERE datname = '{name}'") == [(False,)]
    recover_interrupted_in_place(RestoreOptions.from_config(load_config(config)))
    assert table_checksums(pg_db, rp) == before


def test_a_clone_taken_before_a_bad_migration_rolls_it_back_in_seconds(
        pg_db: str, tmp_path: Path) -> None:
    _, rp = restore_point(pg_db, tmp_path)
    at_clone = table_checksums(pg_db, rp)
    config = write_config(tmp_path, pg_db)
    taken = rollbackd("backup", "clone", "--json", "--config", str(config))
    assert taken.returncode == 0, taken.stderr
    clone = json.loads(taken.stdout)["clone"]
    run(pg_db, "ALTER TABLE images DROP COLUMN title", "DELETE FROM audit_log")

    refused = rollbackd("backup", "restore", clone, "--strategy", "clone",
                        "--config", str(config))
    assert refused.returncode == 2 and f"for the clone {clone}" in refused.stderr
    restored = rollbackd("backup", "restore", clone, "--strategy", "clone", "--yes", "--json",
                         "--config", str(config))
    assert restored.returncode == 0, restored.stderr
    report = json.loads(restored.stdout)
    assert report["strategy"] == "clone" and report["kept_kind"] == "database"
    assert report["blocked_seconds"] < 5
    assert table_checksums(pg_db, rp) == at_clone


def test_a_clone_is_refused_while_the_app_is_connected(pg_db: str, tmp_path: Path) -> None:
    import psycopg

    seed_visionforge(pg_db)
    config = write_config(tmp_path, pg_db)
    with psycopg.connect(pg_db, connect_timeout=5):
        refused = rollbackd("backup", "clone", "--config", str(config))
    assert refused.returncode == 1
    assert "stop it, then clone" in refused.stderr
