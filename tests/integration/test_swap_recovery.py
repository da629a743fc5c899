"""Recovery of interrupted swaps on a real PostgreSQL, for the states no marker explains: a
swap by an older rollbackd (no marker), a missing live database beside a kept copy, and a
recovery asked for while a rollback holds the lock."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from daemon.db.restore import (
    RestoreError,
    inspect_interrupted_swap,
    recover_interrupted_swap,
    restore_swap,
)
from daemon.db.restore.swap import swapped_in_since
from daemon.locks import LockError, advisory_lock
from probes.pg import dbname_of, with_dbname
from tests.harness.data import restore_point, table_checksums
from tests.harness.restores import cluster_state, write_after_restore_point
from tests.harness.restores import restore_options as options
from tests.harness.servers import PgCluster

STAMP = "20260101000000"


def test_an_older_rollbackds_swap_killed_between_its_renames_is_reverted(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    name = str(dbname_of(pg_db))
    _, rp = restore_point(pg_db, tmp_path)
    write_after_restore_point(pg_db)
    before = table_checksums(pg_db, rp)
    # What a swap without markers left when killed after its first rename: live renamed
    # aside (still refusing connections) and an unmarked shadow of the same timestamp.
    pg_cluster.execute(f'CREATE DATABASE "{name}_shadow_{STAMP}"')
    pg_cluster.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    pg_cluster.execute(f'ALTER DATABASE "{name}" RENAME TO "{name}_rolledback_{STAMP}"')

    recovery = recover_interrupted_swap(options(pg_db, tmp_path))

    assert (recovery.state, recovery.outcome, recovery.live_holds) == (
        "between_renames", "reverted", "previous")
    assert recovery.actions == [f"renamed {name}_rolledback_{STAMP} to {name}",
                                f"allowed connections to {name}",
                                f"dropped {name}_shadow_{STAMP}"]
    assert table_checksums(pg_db, rp) == before
    assert cluster_state(pg_cluster, name) == [(name, True, None)]


def test_a_missing_live_database_beside_a_kept_copy_is_named_and_left_to_a_person(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    name = str(dbname_of(pg_db))
    store, rp = restore_point(pg_db, tmp_path)
    before = table_checksums(pg_db, rp)
    aside = f"{name}_rolledback_{STAMP}"
    # A completed restore's kept copy (it takes connections), and live gone: nothing says
    # the copy should be live again, so recovery must not decide that alone.
    pg_cluster.execute(f'ALTER DATABASE "{name}" RENAME TO "{aside}"')
    state = cluster_state(pg_cluster, name)

    recovery = recover_interrupted_swap(options(pg_db, tmp_path))

    assert (recovery.state, recovery.outcome, recovery.applied) == (
        "live_missing", "needs_operator", False)
    assert f"ALTER DATABASE {aside} RENAME TO {name}" in "\n".join(recovery.describe())
    assert cluster_state(pg_cluster, name) == state
    with pytest.raises(RestoreError) as refused:
        restore_swap(store, rp.id, options(pg_db, tmp_path))
    assert f"ALTER DATABASE {aside} RENAME TO {name}" in str(refused.value)
    assert cluster_state(pg_cluster, name) == state
    assert table_checksums(with_dbname(pg_db, aside), rp) == before


def test_a_kept_copy_an_older_swap_left_refusing_connections_is_let_in(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    name = str(dbname_of(pg_db))
    restore_point(pg_db, tmp_path)
    aside = f"{name}_rolledback_{STAMP}"
    pg_cluster.execute(f'CREATE DATABASE "{aside}"')
    pg_cluster.execute(f'ALTER DATABASE "{aside}" ALLOW_CONNECTIONS false')

    recovery = recover_interrupted_swap(options(pg_db, tmp_path))

    assert (recovery.state, recovery.outcome, recovery.kept) == ("swapped", "completed", aside)
    assert cluster_state(pg_cluster, name) == [(name, True, None), (aside, True, None)]


def test_live_refusing_connections_for_no_known_reason_is_reported_not_changed(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    name = str(dbname_of(pg_db))
    pg_cluster.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    try:
        recovery = recover_interrupted_swap(options(pg_db, tmp_path))
        assert (recovery.state, recovery.outcome) == ("live_blocked", "needs_operator")
        assert cluster_state(pg_cluster, name) == [(name, False, None)]
    finally:
        pg_cluster.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


def test_inspecting_says_a_rollback_holds_the_lock_and_recovering_waits_for_it(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    name = str(dbname_of(pg_db))
    shadow = f"{name}_shadow_{STAMP}"
    pg_cluster.execute(f'CREATE DATABASE "{shadow}"')
    opts = options(pg_db, tmp_path)
    with advisory_lock(opts.maintenance_dsn, "a restore in progress"):
        seen = inspect_interrupted_swap(opts)
        assert (seen.state, seen.applied) == ("shadow_left", False)
        assert seen.lock_holder is not None
        assert "may be a swap in progress" in "\n".join(seen.describe())
        with pytest.raises(LockError):
            recover_interrupted_swap(opts)
    assert [d for d, _, _ in cluster_state(pg_cluster, name)] == [name, shadow]
    assert recover_interrupted_swap(opts).actions == [f"dropped {shadow}"]
    with psycopg.connect(pg_db, connect_timeout=5):
        pass


def test_a_swap_that_completed_unrecorded_is_told_by_the_copy_it_set_aside_since_it_began(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    """What a host taking over a lost one reads when nothing was cut short: a kept copy set
    aside since the lost host began restoring says its swap completed; an older one does
    not."""
    name = str(dbname_of(pg_db))
    began = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC
    pg_cluster.execute(f'CREATE DATABASE "{name}_rolledback_20270115075959"')  # before it
    assert swapped_in_since(options(pg_db, tmp_path), began) is None
    pg_cluster.execute(f'CREATE DATABASE "{name}_rolledback_20270115080003"')

    found = swapped_in_since(options(pg_db, tmp_path), began)

    assert found is not None
    assert (found.outcome, found.live_holds, found.kept, found.applied) == (
        "completed", "restored", f"{name}_rolledback_20270115080003", False)
