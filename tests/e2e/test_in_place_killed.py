"""`rollbackd backup restore --strategy in_place` killed with SIGKILL while pg_restore runs (as
the OOM killer or `kill -9` would): pg_restore dies with it, the database is left exactly as
it was, and the next run names the safety backup the killed one took."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from daemon.config import load_config
from daemon.db.restore import RestoreOptions, interrupted_in_place, recover_interrupted_in_place
from daemon.db.restore.in_place import STATE_FILE
from probes.pg import dbname_of
from tests.harness.data import run, seed_visionforge, store_in, table_checksums
from tests.harness.paths import ROOT
from tests.harness.processes import Proc
from tests.harness.servers import PgCluster, wait_for

pytestmark = pytest.mark.e2e

ROLLBACKD = [sys.executable, "-m", "daemon"]

# An index whose every entry takes 20 ms to compute keeps pg_restore busy in its post-data
# step for SLOW_ROWS x 20 ms = 1.5 s: the test sees it start (polling every 50 ms) and kills
# rollbackd well inside it. Each restore of the restore point builds it in full again.
SLOW_ROWS = 75
SLOW_INDEX = """
CREATE FUNCTION slow_key(v bigint) RETURNS bigint IMMUTABLE LANGUAGE plpgsql AS
$$ BEGIN PERFORM pg_sleep(0.02); RETURN v; END $$;
CREATE INDEX images_slow_idx ON images (slow_key(id));
"""


def gone(process: psutil.Process) -> bool:
    """Ended: a child killed by the kernel is reaped by init, a zombie until then."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def write_config(tmp_path: Path, dsn: str) -> Path:
    path = tmp_path / "rollbackd.toml"
    path.write_text(
        f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n\n'
        f'[database]\ndsn = "{dsn}"\nconnect_timeout = "2s"\n'
        'expected_tables = ["users", "images", "audit_log"]\n'
        'key_tables = ["users", "images"]\n\n'
        f'[backups]\ndir = "{tmp_path / "backups"}"\nmin_free = "0"\n'
        'terminate_timeout = "5s"\nrestore_timeout = "2m"\nlock_wait_timeout = "5s"\n')
    return path


def test_a_killed_in_place_restore_takes_pg_restore_with_it_and_the_rerun_names_its_backup(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    name = str(dbname_of(pg_db))
    seed_visionforge(pg_db, images=SLOW_ROWS)
    run(pg_db, SLOW_INDEX)
    store = store_in(tmp_path / "backups")
    rp = store.create(pg_db, "restore_point")
    at_restore_point = table_checksums(pg_db, rp)
    run(pg_db, "DELETE FROM images WHERE id <= 10")
    before = table_checksums(pg_db, rp)
    config = write_config(tmp_path, pg_db)

    proc = Proc([*ROLLBACKD, "backup", "restore", rp.id, "--strategy", "in_place", "--yes",
                 "--config", str(config)])
    try:
        wait_for(lambda: pg_cluster.execute(
            f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{name}'"
            " AND state = 'active' AND query LIKE 'CREATE INDEX images_slow_idx%'")[0][0], 60,
                 interval=0.05, what=f"pg_restore to build the slow index "
                                     f"({proc.output()[-1000:]})")
        children = psutil.Process(proc.pid).children(recursive=True)
        assert [c.name() for c in children] == ["pg_restore"]
        os.kill(proc.pid, signal.SIGKILL)  # only rollbackd, not its process group
        proc.popen.wait(10)
    finally:
        proc.close()
    # pg_restore was killed with it, and its session ended without committing.
    wait_for(lambda: all(gone(c) for c in children), 10, what="pg_restore to die with rollbackd")
    wait_for(lambda: pg_cluster.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE"
        " 'rollbackd-restore:%'") == [(0,)], 30, what="the killed pg_restore's session to end")

    # The record names the safety backup the killed run took; a start-up of rollbackd (here
    # its recovery call) allows connections again, and the database is exactly as before.
    assert (tmp_path / "state" / STATE_FILE).exists()
    record = interrupted_in_place(tmp_path / "state")
    assert record is not None and record.blocked_connections
    [first_safety] = record.safety_backups
    assert store.get(first_safety).kind == "safety" and store.verify(first_safety).ok
    options = RestoreOptions.from_config(load_config(config))
    recovered = recover_interrupted_in_place(options)
    assert recovered is not None and recovered.safety_backups == [first_safety]
    assert table_checksums(pg_db, rp) == before

    again = subprocess.run([*ROLLBACKD, "backup", "restore", rp.id, "--strategy", "in_place",
                            "--yes", "--json", "--config", str(config)], capture_output=True,
                           text=True, timeout=120, env=dict(os.environ), cwd=ROOT, check=False)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["kept"] == first_safety and report["kept_kind"] == "backup"
    assert report["safety_backup"] not in (None, first_safety)
    assert any(first_safety in note and "interrupted" in note for note in report["notes"])
    assert table_checksums(pg_db, rp) == at_restore_point
    assert interrupted_in_place(tmp_path / "state") is None
