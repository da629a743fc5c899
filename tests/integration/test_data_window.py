"""The data window of a restore, row by row, in real PostgreSQL databases: exactly the rows of
the kept copy whose primary key the restored database lacks, with example keys; tables without
a primary key by their counts; a cap on the keys compared, said when reached; a table restore's
copies against their tables."""

from __future__ import annotations

from typing import Any

from daemon.db.data_window import TableDiff, compare_databases, compare_kept_tables
from tests.harness.data import run
from tests.harness.incidents import EXPECTED_WINDOW, live_and_kept
from tests.harness.servers import PgCluster


def by_table(diffs: list[TableDiff]) -> dict[str, dict[str, Any]]:
    return {d.table: d.as_json() for d in diffs}


def test_the_data_window_lists_exactly_the_kept_rows_the_restored_database_lacks(
        pg_cluster: PgCluster) -> None:
    live, kept = live_and_kept(pg_cluster)
    tables = by_table(compare_databases(pg_cluster.dsn(live), pg_cluster.dsn(kept),
                                        connect_timeout=5))
    assert {name: (t["missing"], t["examples"], t["key"])
            for name, t in tables.items()} == EXPECTED_WINDOW
    assert tables["public.users"]["compared"] == 24 and not tables["public.users"]["capped"]
    log = tables["public.events_log"]
    assert (log["kept_rows"], log["live_rows"]) == (5, 3)
    assert "no primary key" in log["note"]
    assert "no such table" in tables["public.audit"]["note"]


def test_a_table_with_more_keys_than_the_cap_is_compared_up_to_it_and_says_so(
        pg_cluster: PgCluster) -> None:
    live, kept = live_and_kept(pg_cluster)
    users = by_table(compare_databases(pg_cluster.dsn(live), pg_cluster.dsn(kept),
                                       connect_timeout=5, cap=22, examples=1))["public.users"]
    # Keys 1, 2, 4..23 compared (22 of them): 21, 22 and 23 are missing; one example listed.
    assert (users["compared"], users["capped"], users["missing"]) == (22, True, 3)
    assert users["examples"] == ["21"]
    assert "only the first 22 keys" in users["note"]


def test_a_table_restores_copies_are_compared_with_the_tables_they_were_copied_from(
        pg_cluster: PgCluster) -> None:
    live, _ = live_and_kept(pg_cluster)
    dsn = pg_cluster.dsn(live)
    copy = "rollbackd_kept.public_users_20270115080000_ab12"
    run(dsn, "CREATE SCHEMA rollbackd_kept", f"CREATE TABLE {copy} AS TABLE users",
        f"INSERT INTO {copy} VALUES (30, 'late'), (31, 'later')")
    [diff] = compare_kept_tables(dsn, [copy, "rollbackd_kept.public_gone_20270115080000_ab12"],
                                 connect_timeout=5)[:1]
    assert (diff.table, diff.kept_as, diff.key, diff.missing, diff.examples) == (
        "public.users", copy, ("id",), 2, ("30", "31"))
    gone = compare_kept_tables(dsn, ["rollbackd_kept.public_users_20270115080000_ffff"],
                               connect_timeout=5)
    assert gone[0].missing is None and "gone" in (gone[0].note or "")
