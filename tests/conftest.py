from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from tests.harness.servers import PgCluster

_db_names = itertools.count()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One PostgreSQL server shared by the session; tests get their own databases on it."""
    cluster = PgCluster()
    cluster.start()
    yield cluster
    cluster.destroy()


@pytest.fixture
def pg_db(pg_cluster: PgCluster) -> str:
    """A fresh, empty database on the shared cluster; returns its DSN."""
    return pg_cluster.create_database(f"t{next(_db_names)}")


@pytest.fixture
def pg_private() -> Iterator[PgCluster]:
    """A cluster of the test's own, for tests that stop, crash or break the server."""
    cluster = PgCluster()
    cluster.start()
    yield cluster
    cluster.destroy()
