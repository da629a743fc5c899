"""A connection error never repeats what the DSN holds: libpq quotes the value it found
invalid, which may be a password typed into the wrong field."""

from __future__ import annotations

import psycopg
import pytest

from probes.pg import connect_sync

SECRET = "Secret-PW-4711"


@pytest.mark.parametrize("dsn", [
    f"host=127.0.0.1 port={SECRET} dbname=x",
    f"host=127.0.0.1 port=1 dbname=x sslmode={SECRET}",
    f"host=127.0.0.1 port=1 dbname=x target_session_attrs={SECRET}",
    f"host=127.0.0.1 port=1 dbname=x keepalives={SECRET}",
])
def test_an_invalid_dsn_value_is_not_repeated_in_the_connection_error(dsn: str) -> None:
    with pytest.raises(psycopg.OperationalError) as caught:
        connect_sync(dsn, connect_timeout=2, statement_timeout=1, lock_timeout=1)
    message = str(caught.value)
    assert SECRET not in message
    assert '"***"' in message, message
    assert "invalid" in message
