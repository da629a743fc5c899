"""Backups on a real full disk (a small tmpfs mounted by the test, as root): metadata that
cannot be written is one clear error, and a backup whose record could not be written is never
listed as usable."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.db.backups import BackupError
from daemon.journal import Journal
from tests.harness.cli import ROLLBACKD, rollbackd
from tests.harness.config import config_file
from tests.harness.data import run, store_in
from tests.harness.processes import Proc
from tests.harness.servers import IN_CI, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MB tmpfs: room for a small database's backup, and quick to fill."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs",
                              str(mount_point)], capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        message = f"cannot mount a tmpfs (needs root): {mounted.stderr.strip()}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(directory: Path) -> None:
    """Write a file until the file system has not one byte left."""
    with (directory / "filler").open("wb", buffering=0) as handle:
        for size in (1 << 20, 1 << 12, 1):
            chunk = b"\0" * size
            while True:
                try:
                    handle.write(chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    assert shutil.disk_usage(directory).free == 0


def seed_small(dsn: str) -> None:
    run(dsn, "CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL)",
        "INSERT INTO notes (body) SELECT md5(g::text) FROM generate_series(1, 2000) g")


def write_config(tmp_path: Path, dsn: str, backups: Path) -> Path:
    return config_file(tmp_path, database={"dsn": dsn, "connect_timeout": "2s"},
                       backups={"dir": backups, "min_free": "0"})


def backup_dirs(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name != "filler")


def test_a_backup_whose_verification_cannot_be_recorded_is_removed_with_one_clear_error(
        pg_db: str, small_disk: Path) -> None:
    seed_small(pg_db)
    store = store_in(small_disk)

    def fill_when_verified(stage: str, done: float, total: float | None) -> None:
        if stage == "read data" and total is not None and done == total:
            fill(small_disk)  # verification passed; its record is next

    with pytest.raises(BackupError) as failed:
        store.create_verified(pg_db, "manual", progress=fill_when_verified)

    message = str(failed.value)
    assert "No space left on device" in message and "verified.json" in message, message
    assert "removed" in message and "\n" not in message
    assert backup_dirs(small_disk) == [] and store.list() == []


def test_reverifying_on_a_full_disk_fails_in_one_line_and_the_backup_is_not_usable(
        pg_db: str, tmp_path: Path, small_disk: Path) -> None:
    seed_small(pg_db)
    config = write_config(tmp_path, pg_db, small_disk)
    created = rollbackd("backup", "create", "--no-verify", "--json", "--config", str(config))
    assert created.returncode == 0, created.stderr
    backup_id = json.loads(created.stdout)["id"]
    fill(small_disk)

    verified = rollbackd("backup", "verify", backup_id, "--config", str(config))

    assert verified.returncode == 1, verified.stderr
    assert len(verified.stderr.strip().splitlines()) == 1, verified.stderr
    line = verified.stderr.strip()
    assert line.startswith("rollbackd: ") and "No space left on device" in line, line
    [listed] = json.loads(rollbackd("backup", "list", "--json", "--config",
                                    str(config)).stdout)
    assert (listed["id"], listed["complete"], listed["usable"]) == (backup_id, True, False)
    assert listed["state"] == "unverified"
    human = rollbackd("backup", "list", "--config", str(config)).stdout
    assert "NOT USABLE" in human.splitlines()[1], human


def held_until_disk_full(argv: list[str], tmp_path: Path, disk: Path) -> Proc:
    """Run ``argv`` held just before it records the backup's metadata; fill the disk there,
    then let it go on. The process, ended."""
    release = tmp_path / "release"
    proc = Proc(argv, env={**os.environ, "ROLLBACKD_TEST_HOLD": "backup:before_metadata",
                           "ROLLBACKD_TEST_RELEASE": str(release)})
    try:
        wait_for(lambda: "test hold at backup:before_metadata" in proc.output(), 120,
                 interval=0.05, what="the backup to reach its metadata")
        fill(disk)
        release.touch()
        proc.popen.wait(120)
    finally:
        proc.close()
    return proc


@pytest.mark.parametrize("verb", [["backup", "create"], ["deploy", "begin", "--version", "v2"]])
def test_a_disk_that_fills_before_the_metadata_fails_the_command_in_one_line_and_leaves_nothing(
        pg_db: str, tmp_path: Path, small_disk: Path, verb: list[str]) -> None:
    seed_small(pg_db)
    config = write_config(tmp_path, pg_db, small_disk)

    proc = held_until_disk_full([*ROLLBACKD, *verb, "--config", str(config)], tmp_path,
                                small_disk)

    assert proc.popen.returncode == 1, proc.output()
    lines = [line for line in proc.output().splitlines() if "test hold" not in line]
    assert len(lines) == 1 and lines[0].startswith("rollbackd: "), lines
    assert "No space left on device" in lines[0], lines
    assert backup_dirs(small_disk) == []
    assert json.loads(rollbackd("backup", "list", "--json", "--config",
                                str(config)).stdout) == []
    assert Journal.in_state_dir(tmp_path / "state").deploys() == []
