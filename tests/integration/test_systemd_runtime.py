"""rollbackd under the unit's memory protection: it imports and reaches PostgreSQL without W+X."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.harness.paths import ROOT

_UNDER_MDWE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    print("no PR_SET_MDWE:", os.strerror(ctypes.get_errno()))
    sys.exit(77)
import daemon.cli, daemon.service.loop, probes.postgres, probes.http, probes.process, probes.system
import psycopg
with psycopg.connect(sys.argv[1], connect_timeout=5) as conn:
    print(conn.execute("SELECT 1").fetchone()[0], psycopg.pq.__impl__)
"""


def test_rollbackd_runs_and_reaches_postgresql_with_write_execute_memory_denied(
    pg_db: str,
) -> None:
    """The unit leaves MemoryDenyWriteExecute off for JIT children; rollbackd needs no W+X."""
    result = subprocess.run(
        [sys.executable, "-c", _UNDER_MDWE, pg_db],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    if result.returncode == 77:
        pytest.skip(f"kernel without PR_SET_MDWE (Linux >= 6.3): {result.stdout.strip()}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == ["1", "binary"]
