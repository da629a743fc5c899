from tests.harness.servers import PgCluster


def test_a_throwaway_cluster_answers_queries_and_stops(pg_private: PgCluster) -> None:
    assert pg_private.execute("SELECT 1") == [(1,)]
    pg_private.stop()
    assert not pg_private.is_running()
