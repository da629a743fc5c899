"""Restores against a real PostgreSQL: swap, in place and per table, and what they refuse."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from daemon.db.admin import derived_name
from daemon.db.restore import (
    RestoreError,
    clone_problem,
    create_clone,
    recover_interrupted_swap,
    restore_from_clone,
    restore_in_place,
    restore_swap,
    restore_tables,
    run_down_migration,
    schema_diff,
)
from daemon.locks import LockError, advisory_lock, host_lock
from probes.pg import dbname_of, with_dbname
from tests.harness.data import (
    flip_a_byte,
    restore_point,
    run,
    scalar,
    seed_visionforge,
    store_in,
    table_checksums,
)
from tests.harness.restores import restore_options as options
from tests.harness.restores import restore_point_pg_restore_refuses, write_after_restore_point
from tests.harness.servers import PgCluster


def databases_like(cluster: PgCluster, pattern: str) -> list[str]:
    return [str(r[0]) for r in cluster.execute(
        f"SELECT datname FROM pg_database WHERE datname LIKE '{pattern}' ORDER BY 1")]


def db_settings(cluster: PgCluster, name: str) -> tuple[object, ...]:
    rows = cluster.execute(
        "SELECT s.setconfig, ARRAY(SELECT a::text FROM unnest(d.datacl) a ORDER BY 1),"
        " pg_get_userbyid(d.datdba) FROM pg_database d"
        f" LEFT JOIN pg_db_role_setting s ON s.setdatabase = d.oid AND s.setrole = 0"
        f" WHERE d.datname = '{name}'")
    return rows[0]


def test_swap_restores_the_restore_point_and_keeps_the_newer_data_in_the_renamed_database(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    name = dbname_of(pg_db)
    assert name is not None
    role = f"reader_{name}"
    store, rp = restore_point(pg_db, tmp_path)
    at_restore_point = table_checksums(pg_db, rp)
    pg_cluster.execute(f"CREATE ROLE {role}")
    pg_cluster.execute(f"ALTER DATABASE {name} SET work_mem = '12MB'")
    pg_cluster.execute(f"ALTER DATABASE {name} SET search_path = '$user', public, extra")
    pg_cluster.execute(f"REVOKE TEMPORARY ON DATABASE {name} FROM PUBLIC")
    pg_cluster.execute(f"GRANT CONNECT, CREATE ON DATABASE {name} TO {role}")
    write_after_restore_point(pg_db)
    before = table_checksums(pg_db, rp)
    settings_before = db_settings(pg_cluster, name)

    report = restore_swap(store, rp.id, options(pg_db, tmp_path))

    assert report.ok, report.validation
    assert table_checksums(pg_db, rp) == at_restore_point
    assert report.kept_kind == "database" and report.kept.startswith(f"{name}_rolledback_")
    kept = with_dbname(pg_db, report.kept)
    assert table_checksums(kept, rp) == before
    assert scalar(kept, "SELECT count(*) FROM users WHERE email = 'late@example.com'") == 1
    assert scalar(pg_db, "SELECT count(*) FROM users WHERE email = 'late@example.com'") == 0
    assert db_settings(pg_cluster, name) == settings_before
    assert scalar(pg_db, "SELECT current_setting('search_path')") == '"$user", public, extra'
    assert scalar(pg_db, "SELECT current_setting('work_mem')") == "12MB"
    assert report.data_window_start == rp.created_at
    assert rp.created_at < report.data_window_end <= report.started_at + 1
    assert report.blocked_seconds is not None and report.blocked_seconds < 2
    assert databases_like(pg_cluster, f"{name}_shadow_%") == []
    assert "data window undone" in "\n".join(report.describe())


def test_swap_terminates_open_sessions_and_idle_transactions_within_the_timeouts(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    store, rp = restore_point(pg_db, tmp_path)
    at_restore_point = table_checksums(pg_db, rp)
    idle = psycopg.connect(pg_db, autocommit=True, connect_timeout=5)
    in_transaction = psycopg.connect(pg_db, connect_timeout=5)
    in_transaction.execute("SELECT * FROM users FOR UPDATE")  # now idle in transaction
    in_transaction.execute("INSERT INTO users (email, name) VALUES ('uncommitted@x', 'U')")
    try:
        started = time.monotonic()
        report = restore_swap(store, rp.id, options(pg_db, tmp_path, terminate_timeout=3.0))
        assert time.monotonic() - started < 30
        assert table_checksums(pg_db, rp) == at_restore_point
        for conn in (idle, in_transaction):
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
        assert report.ok
    finally:
        idle.close()
        in_transaction.close()


def test_in_place_restore_is_preceded_by_a_safety_backup_holding_the_newer_rows(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    store, rp = restore_point(pg_db, tmp_path)
    at_restore_point = table_checksums(pg_db, rp)
    write_after_restore_point(pg_db)
    run(pg_db, "CREATE TABLE added_by_migration (id int)")
    before = table_checksums(pg_db, rp)

    report = restore_in_place(store, rp.id, options(pg_db, tmp_path))

    assert report.ok, report.validation
    assert table_checksums(pg_db, rp) == at_restore_point
    assert report.kept_kind == "backup"
    safety = store.get(report.kept)
    assert safety.kind == "safety"
    assert {t.qualified: t.rows for t in safety.tables if t.qualified in before} == {
        k: v[0] for k, v in before.items()}
    assert any("public.added_by_migration" in note for note in report.notes)
    # The safety backup restores (in place again) to exactly the pre-restore rows.
    restore_in_place(store, safety.id, options(pg_db, tmp_path))
    assert table_checksums(pg_db, rp) == before


def test_table_restore_replaces_only_the_named_tables_and_their_sequences(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    store, rp = restore_point(pg_db, tmp_path)
    at_restore_point = table_checksums(pg_db, rp)
    seq_at_rp = scalar(pg_db, "SELECT last_value FROM images_id_seq")
    write_after_restore_point(pg_db)
    before = table_checksums(pg_db, rp)

    report = restore_tables(store, rp.id, options(pg_db, tmp_path), ["images"])

    after = table_checksums(pg_db, rp)
    assert after["public.images"] == at_restore_point["public.images"]
    assert after["public.users"] == before["public.users"]
    assert after["public.audit_log"] == before["public.audit_log"]
    # Not back to the restore point's value: past the id of the row written since, which is
    # kept aside (tests/integration/test_leftovers.py).
    assert scalar(pg_db, "SELECT last_value FROM images_id_seq") == seq_at_rp + 1
    assert report.tables == ["public.images"] and report.kept_kind == "tables"
    # The rows it replaced were copied aside in the same transaction: nothing written after
    # the safety dump is lost.
    [copy] = report.kept.split(", ")
    assert copy.startswith("rollbackd_kept.public_images_")
    kept = scalar(pg_db, f"SELECT md5(string_agg(t::text, '|' ORDER BY t::text)) FROM {copy} t")
    assert kept == before["public.images"][1]
    assert report.safety_backup is not None
    safety = store.get(report.safety_backup)
    assert (safety.kind, [t.rows for t in safety.tables]) == (
        "tables", [before["public.images"][0]])
    # The safety dump puts exactly the newer rows back.
    restore_tables(store, safety.id, options(pg_db, tmp_path), ["images"])
    assert table_checksums(pg_db, rp)["public.images"] == before["public.images"]


def test_table_restore_refuses_referenced_tables_unless_cascading(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    store, rp = restore_point(pg_db, tmp_path)
    at_restore_point = table_checksums(pg_db, rp)
    write_after_restore_point(pg_db)
    before = table_checksums(pg_db, rp)

    with pytest.raises(RestoreError) as refused:
        restore_tables(store, rp.id, options(pg_db, tmp_path), ["users"])
    assert "public.images" in str(refused.value) and "public.audit_log" in str(refused.value)
    assert "--cascade" in str(refused.value)
    assert table_checksums(pg_db, rp) == before

    report = restore_tables(store, rp.id, options(pg_db, tmp_path), ["users"], cascade=True)
    assert sorted(report.tables) == ["public.audit_log", "public.images", "public.users"]
    assert any("--cascade also restored" in note for note in report.notes)
    assert table_checksums(pg_db, rp) == at_restore_point


@pytest.mark.parametrize("damage", ["bit flip", "truncation"])
def test_a_damaged_backup_is_refused_with_the_reason_and_nothing_changes(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path, damage: str) -> None:
    store, rp = restore_point(pg_db, tmp_path)
    write_after_restore_point(pg_db)
    before = table_checksums(pg_db, rp)
    dump = store.data_path(rp)
    if damage == "bit flip":
        flip_a_byte(dump)
    else:
        dump.write_bytes(dump.read_bytes()[: dump.stat().st_size // 2])

    for restore in (restore_swap, restore_in_place):
        with pytest.raises(RestoreError) as refused:
            restore(store, rp.id, options(pg_db, tmp_path))
        assert ("sha256" if damage == "bit flip" else "truncated") in str(refused.value)
    assert table_checksums(pg_db, rp) == before
    assert databases_like(pg_cluster, f"{dbname_of(pg_db)}_%") == []
    assert [i.kind for i in store.list()] == ["restore_point"]  # no safety backup taken


def test_pg_restore_errors_fail_loudly_and_leave_the_live_database_as_it_was(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    name = dbname_of(pg_db)
    store = store_in(tmp_path / "backups")
    rp, role = restore_point_pg_restore_refuses(pg_cluster, pg_db, store)
    write_after_restore_point(pg_db)
    before = table_checksums(pg_db, rp)

    for restore in (restore_swap, restore_in_place):
        with pytest.raises(RestoreError) as failed:
            restore(store, rp.id, options(pg_db, tmp_path))
        message = str(failed.value)
        assert "pg_restore: error" in message and f'role "{role}" does not exist' in message
        assert table_checksums(pg_db, rp) == before
    assert databases_like(pg_cluster, f"{name}_shadow_%") == []


def test_a_second_restore_is_refused_while_the_host_or_the_fleet_lock_is_held(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    store, rp = restore_point(pg_db, tmp_path)
    opts = options(pg_db, tmp_path)
    with host_lock(opts.state_dir, "a restore by the test"), pytest.raises(LockError) as local:
        restore_swap(store, rp.id, opts)
    assert "a restore by the test" in str(local.value) and "pid" in str(local.value)

    other_host = options(pg_db, tmp_path / "other-host")
    with advisory_lock(opts.maintenance_dsn, "host-b restore"), \
            pytest.raises(LockError) as fleet:
        restore_swap(store, rp.id, other_host)
    assert "fleet-wide" in str(fleet.value) and "host-b restore" in str(fleet.value)
    assert restore_swap(store, rp.id, other_host).ok  # both released


def test_schema_diff_reports_a_migration_and_identical_after_the_down_migration(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    store, rp = restore_point(pg_db, tmp_path)
    assert schema_diff(pg_db, rp, store).identical
    run(pg_db, "ALTER TABLE images ADD COLUMN caption text")
    diff = schema_diff(pg_db, rp, store)
    assert not diff.identical
    assert [line for line in diff.diff if line.startswith("+") and "caption" in line]

    down = ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-d", pg_db,
            "-c", "ALTER TABLE images DROP COLUMN caption"]
    result = run_down_migration(down, 30, dsn=pg_db, manifest=rp, store=store)
    assert result.exit_code == 0 and result.diff is not None and result.diff.identical
    assert result.ok


def test_a_clone_is_refused_while_sessions_are_connected_and_swaps_back_in(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    seed_visionforge(pg_db)
    opts = options(pg_db, tmp_path, key_tables=[])
    with psycopg.connect(pg_db, connect_timeout=5), pytest.raises(RestoreError) as busy:
        create_clone(opts)
    assert "stop" in str(busy.value)
    clone = create_clone(opts)
    store = store_in(tmp_path / "backups")
    snapshot = store.create(pg_db, "manual")
    at_clone = table_checksums(pg_db, snapshot)
    write_after_restore_point(pg_db)

    report = restore_from_clone(opts, clone)

    assert report.ok and report.blocked_seconds is not None
    assert table_checksums(pg_db, snapshot) == at_clone
    assert report.data_window_start is not None and report.data_window_start <= time.time()
    assert scalar(with_dbname(pg_db, report.kept),
                  "SELECT count(*) FROM users WHERE email = 'late@example.com'") == 1


def test_rollbackds_own_probe_sessions_do_not_keep_a_clone_from_being_taken(
        pg_db: str, tmp_path: Path) -> None:
    # The daemon's PostgreSQL probe keeps a session on the live database: ended for the copy,
    # it connects again at its next look. The app's own sessions are never ended.
    seed_visionforge(pg_db)
    opts = options(pg_db, tmp_path, key_tables=[])
    probe = psycopg.connect(pg_db, connect_timeout=5, application_name="rollbackd")
    clone = create_clone(opts)
    assert clone_problem(opts, clone) is None
    with pytest.raises(psycopg.OperationalError):
        probe.execute("SELECT 1")
    probe.close()
    with psycopg.connect(pg_db, connect_timeout=5, application_name="visionforge"), \
            pytest.raises(RestoreError, match="1 session"):
        create_clone(opts, f"{clone}_again")


def test_a_clone_that_is_gone_or_not_rollbackds_is_said_so_before_a_restore_relies_on_it(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    seed_visionforge(pg_db)
    name = dbname_of(pg_db)
    opts = options(pg_db, tmp_path, key_tables=[])
    assert "no longer exists" in (clone_problem(opts, f"{name}_clone_gone") or "")
    pg_cluster.execute(f'CREATE DATABASE "{name}_other"')
    assert "not a rollbackd clone" in (clone_problem(opts, f"{name}_other") or "")


def test_only_a_rollbackd_clone_of_this_database_can_be_swapped_in(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    seed_visionforge(pg_db)
    name = dbname_of(pg_db)
    pg_cluster.execute(f'CREATE DATABASE "{name}_other"')
    with pytest.raises(RestoreError, match="not a rollbackd clone"):
        restore_from_clone(options(pg_db, tmp_path, key_tables=[]), f"{name}_other")
    assert scalar(pg_db, "SELECT count(*) FROM users") > 0



def test_what_a_swap_killed_while_connections_were_blocked_leaves_is_repaired(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    name = dbname_of(pg_db)
    assert name is not None
    seed_visionforge(pg_db)
    # A rollbackd killed inside the swap step leaves live refusing connections (the app is
    # down) and the shadow it was about to swap in.
    stale = f"{name}_shadow_20260101000000"
    pg_cluster.execute(f'CREATE DATABASE "{stale}"')
    pg_cluster.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_db, connect_timeout=3).close()
    recovery = recover_interrupted_swap(options(pg_db, tmp_path))
    assert (recovery.outcome, recovery.actions) == (
        "reverted", [f"allowed connections to {name}", f"dropped {stale}"])
    assert databases_like(pg_cluster, f"{name}_shadow_%") == []
    assert scalar(pg_db, "SELECT count(*) FROM users") > 0
    assert recover_interrupted_swap(options(pg_db, tmp_path)).outcome == "nothing"


def test_shortened_names_of_two_long_database_names_never_collide() -> None:
    first, second = "visionforge_" + "x" * 50 + "_eu", "visionforge_" + "x" * 50 + "_us"
    suffix = "_shadow_20260101000000"
    assert derived_name(first, suffix) != derived_name(second, suffix)
    assert all(len(derived_name(n, suffix).encode()) <= 63 for n in (first, second))
    assert derived_name("visionforge", suffix) == "visionforge" + suffix
