"""Backups against a real PostgreSQL: consistent manifests, usable dumps, refused corruption."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import msgspec
import psycopg
import pytest

from daemon.db.backups import MANIFEST, BackupError, find_restore_tool
from daemon.db.tools import PgToolError, find_tool, libpq_env
from daemon.proc import ProcError, run_process
from probes.pg import dbname_of
from tests.harness.data import (
    flip_a_byte,
    restore_into_fresh_database,
    run,
    scalar,
    seed_visionforge,
    store_in,
    table_checksums,
)
from tests.harness.servers import PgCluster


def seed_small(dsn: str) -> None:
    run(dsn, "CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL)",
        "INSERT INTO notes (body) SELECT md5(g::text) FROM generate_series(1, 2000) g")




@pytest.mark.parametrize("fmt", ["custom", "directory"])
def test_a_backup_restored_with_pg_restore_holds_exactly_the_source_tables(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path, fmt: str) -> None:
    seed_visionforge(pg_db)
    store = store_in(tmp_path, format=fmt, jobs=2)
    manifest = store.create(pg_db, "manual")
    assert manifest.method == fmt
    assert store.verify(manifest.id).ok

    restored = restore_into_fresh_database(pg_cluster, store, manifest,
                                           f"{dbname_of(pg_db)}_restored_{fmt}")

    source = table_checksums(pg_db, manifest)
    assert table_checksums(restored, manifest) == source
    assert {t.qualified: t.rows for t in manifest.tables} == {
        name: count for name, (count, _) in source.items()}
    assert {"public.users", "public.images", "public.audit_log"} <= set(source)
    assert source["public.images"][0] == 40


def test_manifest_row_counts_are_what_the_dump_holds_while_a_writer_keeps_inserting(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    run(pg_db, "CREATE TABLE events (id bigserial PRIMARY KEY, at timestamptz DEFAULT now(),"
               " payload text)",
        "INSERT INTO events (payload) SELECT repeat('x', 200) FROM generate_series(1, 5000)")
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        with psycopg.connect(pg_db, autocommit=True, connect_timeout=5) as conn:
            while not stop.is_set():
                conn.execute("INSERT INTO events (payload) VALUES ('concurrent')")
                written[0] += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while written[0] < 50:
            time.sleep(0.01)
        manifest = store_in(tmp_path).create(pg_db, "manual")
        before_stop = written[0]
    finally:
        stop.set()
        thread.join(10)

    counted = {t.qualified: t.rows for t in manifest.tables}["public.events"]
    total = int(scalar(pg_db, "SELECT count(*) FROM events"))
    assert 5050 <= counted < total, "the writer must have inserted during the backup"
    assert before_stop > 50
    restored = restore_into_fresh_database(pg_cluster, store_in(tmp_path), manifest,
                                           f"{dbname_of(pg_db)}_restored")
    assert scalar(restored, "SELECT count(*) FROM events") == counted


def test_a_truncated_data_file_is_refused_by_verify_with_the_reason(
        pg_db: str, tmp_path: Path) -> None:
    seed_small(pg_db)
    store = store_in(tmp_path)
    manifest = store.create(pg_db, "manual")
    dump = store.data_path(manifest)
    with dump.open("r+b") as handle:
        handle.truncate(dump.stat().st_size // 2)

    result = store.verify(manifest.id)

    assert not result.ok
    assert result.reason is not None
    assert "data.dump" in result.reason and "truncated" in result.reason
    stored = json.loads((tmp_path / manifest.id / "verified.json").read_text())
    assert stored["ok"] is False and stored["reason"] == result.reason
    [info] = store.list()
    assert info.verified is False and info.complete


def test_a_bit_flipped_data_file_is_refused_by_verify_with_the_reason(
        pg_db: str, tmp_path: Path) -> None:
    seed_small(pg_db)
    store = store_in(tmp_path)
    manifest = store.create(pg_db, "manual")
    assert store.verify(manifest.id).ok
    flip_a_byte(store.data_path(manifest))

    result = store.verify(manifest.id)

    assert not result.ok
    assert result.reason == "data.dump does not match its sha256 in the manifest " \
                            "(the file is corrupted)"
    assert store.list()[0].verified is False


def test_pg_restore_still_refuses_a_truncated_archive_whose_manifest_was_made_to_match(
        pg_db: str, tmp_path: Path) -> None:
    """Checksums only prove the file is what was written; pg_restore proves it is readable."""
    seed_small(pg_db)
    store = store_in(tmp_path)
    manifest = store.create(pg_db, "manual")
    dump = store.data_path(manifest)
    with dump.open("r+b") as handle:
        handle.truncate(dump.stat().st_size - 200)
    from daemon.durable import sha256_file

    digest, size = sha256_file(dump)
    files = [msgspec.structs.replace(f, sha256=digest, size=size) if f.path == "data.dump"
             else f for f in manifest.files]
    forged = msgspec.structs.replace(manifest, files=files)
    (tmp_path / manifest.id / MANIFEST).write_text(json.dumps(forged.dump()))

    result = store.verify(manifest.id)

    assert not result.ok
    assert result.reason is not None and "pg_restore" in result.reason, result.reason


def test_a_directory_without_manifest_is_incomplete_and_never_trusted(
        pg_db: str, tmp_path: Path) -> None:
    seed_small(pg_db)
    store = store_in(tmp_path)
    manifest = store.create(pg_db, "restore_point")
    (tmp_path / manifest.id / MANIFEST).unlink()  # as if the backup had been killed

    [info] = store.list()
    assert (info.id, info.complete, info.kind, info.database) == (
        manifest.id, False, "restore_point", None)
    with pytest.raises(BackupError, match="incomplete"):
        store.get(manifest.id)
    result = store.verify(manifest.id)
    assert not result.ok and result.reason is not None and "incomplete" in result.reason


def test_prune_keeps_the_newest_n_and_the_protected_and_drops_stale_incomplete_ones(
        pg_db: str, tmp_path: Path) -> None:
    run(pg_db, "CREATE TABLE t (id int)")
    store = store_in(tmp_path)
    made = [store.create(pg_db, "restore_point").id for _ in range(4)]
    stale = tmp_path / "20200101T000000Z-manual-dead"
    stale.mkdir()
    (stale / "data.dump").write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    os.utime(stale / "data.dump", (two_hours_ago, two_hours_ago))
    os.utime(stale, (two_hours_ago, two_hours_ago))
    fresh = tmp_path / "20991231T000000Z-manual-beef"
    fresh.mkdir()  # still being written by another backup: not removed

    removed = store.prune(2, protect={made[0]})

    assert removed == [stale.name, made[1]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [made[0], made[2], made[3], fresh.name])
    assert store.prune(2, protect={made[0]}) == []


def test_a_backup_is_refused_when_min_free_would_be_crossed_and_leaves_nothing(
        pg_db: str, tmp_path: Path) -> None:
    store = store_in(tmp_path, min_free=10**18)
    with pytest.raises(BackupError, match=r"not enough free space .*backups\.min_free"):
        store.check_free_space(pg_db)
    with pytest.raises(BackupError, match="min_free"):
        store.create(pg_db, "restore_point")
    assert list(tmp_path.iterdir()) == []


def test_a_tables_backup_dumps_and_counts_only_the_named_tables(
        pg_db: str, tmp_path: Path) -> None:
    seed_visionforge(pg_db, users=3, images=6)
    store = store_in(tmp_path)
    manifest = store.create(pg_db, "tables", tables=["users", "public.images"])
    assert manifest.selected_tables == ["public.users", "public.images"]
    assert [(t.qualified, t.rows) for t in manifest.tables] == [
        ("public.users", 3), ("public.images", 6)]
    listing = run_process([str(find_restore_tool(manifest).path), "--list",
                        str(store.data_path(manifest))], env=dict(os.environ), timeout=30)
    assert "TABLE DATA public users" in listing.stdout
    assert "audit_log" not in listing.stdout
    with pytest.raises(BackupError, match="no such table: nope"):
        store.create(pg_db, "tables", tables=["nope"])


def test_an_unreachable_database_is_one_clear_error(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    with pytest.raises(BackupError, match="cannot connect to database"):
        store.create("host=127.0.0.1 port=1 user=postgres dbname=x", "manual")
    assert list(tmp_path.iterdir()) == []


def test_the_libpq_environment_carries_the_password_so_argv_never_does() -> None:
    env = libpq_env("host=db.example port=6543 user=app dbname=vf password=s3cret "
                    "sslmode=require", base={})
    assert env == {"PGHOST": "db.example", "PGPORT": "6543", "PGUSER": "app",
                   "PGDATABASE": "vf", "PGPASSWORD": "s3cret", "PGSSLMODE": "require",
                   "PGAPPNAME": "rollbackd"}
    with pytest.raises(PgToolError, match="keepalives") as caught:
        libpq_env("dbname=vf password=s3cret keepalives=1", base={})
    assert "s3cret" not in str(caught.value)


def test_a_tool_that_outlives_its_timeout_is_killed() -> None:
    started = time.monotonic()
    with pytest.raises(ProcError, match=r"did not finish within 0\.5s"):
        run_process([sys.executable, "-c", "import time; time.sleep(30)"],
                 env=dict(os.environ), timeout=0.5)
    assert time.monotonic() - started < 5


def test_client_tools_older_than_the_server_are_refused() -> None:
    with pytest.raises(PgToolError, match=r"no pg_dump for PostgreSQL 99 or newer: .* is 1\d"):
        find_tool("pg_dump", 99)
