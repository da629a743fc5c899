"""What restores leave behind on a real PostgreSQL: kept databases (``<db>_rolledback_*``),
clones, kept tables (``rollbackd_kept``): pruned by the backups' rules, left out of later
restore points, and a table restore's sequences moved past the kept rows."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psycopg

from daemon.db.backups import find_restore_tool
from daemon.db.restore import prune_kept, restore_tables
from daemon.db.restore.clone import CLONE_COMMENT
from daemon.fmt import db_stamp
from daemon.proc import run_process
from probes.pg import dbname_of
from tests.harness.data import restore_point, run, scalar, seed_visionforge, store_in
from tests.harness.restores import cluster_state, write_after_restore_point
from tests.harness.restores import restore_options as options
from tests.harness.servers import PgCluster

HOUR = 3600.0


def test_restore_points_leave_out_the_rows_table_restores_kept_aside(
        pg_db: str, tmp_path: Path) -> None:
    store, rp = restore_point(pg_db, tmp_path)
    write_after_restore_point(pg_db)
    report = restore_tables(store, rp.id, options(pg_db, tmp_path), ["images"])
    assert report.kept.startswith("rollbackd_kept.")

    later, verification = store.create_verified(pg_db, "restore_point")

    assert verification.ok
    assert [t.qualified for t in later.tables] == [t.qualified for t in rp.tables]
    listing = run_process([str(find_restore_tool(later).path), "--list",
                           str(store.data_path(later))], env=dict(os.environ), timeout=30)
    assert "rollbackd_kept" not in listing.stdout
    assert "rollbackd_kept" not in (store.path(later.id) / later.schema_file).read_text()
    # Still there in live, for people to merge back from.
    assert scalar(pg_db, f"SELECT count(*) FROM {report.kept}") == 41


def test_a_table_restore_moves_sequences_past_the_kept_rows_so_they_merge_back_cleanly(
        pg_db: str, tmp_path: Path) -> None:
    store, rp = restore_point(pg_db, tmp_path)  # images 1..40
    run(pg_db, "INSERT INTO images (user_id, filename)"
               " SELECT 1, 'late-' || g FROM generate_series(1, 3) g")  # 41..43

    report = restore_tables(store, rp.id, options(pg_db, tmp_path), ["images"])

    [copy] = report.kept.split(", ")
    assert scalar(pg_db, f"SELECT max(id) FROM {copy}") == 43
    new = scalar(pg_db, "INSERT INTO images (user_id, filename) VALUES (1, 'after') RETURNING id")
    assert new == 44, "the sequence went back to the restore point: kept ids would be reused"
    run(pg_db, f"INSERT INTO images SELECT * FROM {copy} k"
               " WHERE NOT EXISTS (SELECT 1 FROM images i WHERE i.id = k.id)")
    assert scalar(pg_db, "SELECT count(*) FROM images") == 44
    assert any("public.images_id_seq" in note and "43" in note for note in report.notes), (
        report.notes)


def test_a_table_restore_leaves_sequences_the_kept_rows_do_not_reach_at_the_restore_point(
        pg_db: str, tmp_path: Path) -> None:
    store, rp = restore_point(pg_db, tmp_path)
    run(pg_db, "DELETE FROM images WHERE id > 30")
    restore_tables(store, rp.id, options(pg_db, tmp_path), ["images"])
    assert scalar(pg_db, "SELECT last_value FROM images_id_seq") == 40


def old(days: int) -> str:
    return db_stamp(time.time() - days * 86400)


def test_prune_drops_kept_databases_clones_and_tables_outside_the_window_beyond_keep(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    name = str(dbname_of(pg_db))
    seed_visionforge(pg_db, images=4)
    asides = {age: f"{name}_rolledback_{old(age)}" for age in (3, 2, 1)}
    recent = [f"{name}_rolledback_{db_stamp(time.time() - s)}" for s in (60, 120)]
    by_hand = f"{name}_rolledback_by_hand"
    for db in [*asides.values(), *recent, by_hand]:
        pg_cluster.execute(f'CREATE DATABASE "{db}"')
    clones = {age: f"{name}_clone_{old(age)}" for age in (3, 2)}
    for age, clone in clones.items():
        pg_cluster.execute(f'CREATE DATABASE "{clone}"')
        pg_cluster.execute(f"COMMENT ON DATABASE \"{clone}\" IS '"
                           + CLONE_COMMENT.format(db=name, at=time.time() - age * 86400) + "'")
    fresh_clone = f"{name}_clone_{db_stamp(time.time())}"
    pg_cluster.execute(f'CREATE DATABASE "{fresh_clone}"')
    pg_cluster.execute(f"COMMENT ON DATABASE \"{fresh_clone}\" IS '"
                       + CLONE_COMMENT.format(db=name, at=time.time()) + "'")
    not_a_clone = f"{name}_clone_{old(5)}"  # no rollbackd comment: someone else's
    pg_cluster.execute(f'CREATE DATABASE "{not_a_clone}"')
    old_set, new_set = f"_{old(2)}_ab12", f"_{db_stamp(time.time() - 60)}_cd34"
    run(pg_db, "CREATE SCHEMA rollbackd_kept",
        f"CREATE TABLE rollbackd_kept.public_images{old_set} AS TABLE images",
        f"CREATE TABLE rollbackd_kept.public_users{old_set} AS TABLE users",
        f"CREATE TABLE rollbackd_kept.public_images{new_set} AS TABLE images",
        "CREATE TABLE rollbackd_kept.made_by_hand (id int)")
    reader = psycopg.connect(pg_cluster.dsn(asides[2]), connect_timeout=5)  # someone reading

    try:
        pruned = prune_kept(options(pg_db, tmp_path), keep=1, window=HOUR)
    finally:
        reader.close()

    assert pruned.databases == sorted([asides[3], asides[1], clones[3], clones[2]])
    assert pruned.tables == sorted([f"rollbackd_kept.public_images{old_set}",
                                    f"rollbackd_kept.public_users{old_set}"])
    assert any(asides[2] in note and "in use" in note for note in pruned.notes), pruned.notes
    left = [str(d) for d, _, _ in cluster_state(pg_cluster, name)]
    assert left == sorted([name, asides[2], *recent, by_hand, fresh_clone, not_a_clone])
    assert sorted(str(r[0]) for r in psycopg.connect(pg_db, autocommit=True).execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'rollbackd_kept'")) == sorted(
        [f"public_images{new_set}", "made_by_hand"])
    again = prune_kept(options(pg_db, tmp_path), keep=1, window=HOUR)
    assert again.databases == [asides[2]] and again.tables == []


def test_prune_leaves_kept_databases_alone_while_a_swap_is_interrupted(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    name = str(dbname_of(pg_db))
    aside = f"{name}_rolledback_{old(3)}"
    pg_cluster.execute(f'CREATE DATABASE "{aside}"')
    pg_cluster.execute(f'ALTER DATABASE "{aside}" ALLOW_CONNECTIONS false')

    pruned = prune_kept(options(pg_db, tmp_path), keep=0, window=HOUR)

    assert pruned.databases == []
    assert any("rollbackd backup recover" in note for note in pruned.notes), pruned.notes
    assert [str(d) for d, _, _ in cluster_state(pg_cluster, name)] == [name, aside]


def test_prune_counts_only_usable_backups_as_the_ones_to_keep(
        pg_db: str, tmp_path: Path) -> None:
    seed_visionforge(pg_db, images=4)
    store = store_in(tmp_path)
    good, _ = store.create_verified(pg_db, "restore_point")
    broken = []
    for _ in range(2):
        manifest = store.create(pg_db, "restore_point")
        store.data_path(manifest).write_bytes(b"damaged")
        assert not store.verify(manifest.id).ok
        broken.append(manifest.id)

    removed = store.prune(1, protect=set())

    assert removed == [broken[0]], "the one usable backup must not be pruned for broken ones"
    assert [i.id for i in store.list()] == [good.id, broken[1]]
