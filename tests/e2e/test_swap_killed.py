"""A real ``rollbackd backup restore`` SIGKILLed at every step of a swap (swap and clone
strategies), then the interrupted swap found, completed or reverted, and said which.

``ROLLBACKD_TEST_HOLD=<point>`` makes the process stop at that named step and say so on
stderr; the test kills it there, so each intermediate state is reached exactly.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import psycopg
import pytest

from daemon.db.restore import inspect_interrupted_swap, recover_interrupted_swap
from probes.pg import dbname_of, with_dbname
from tests.harness.cli import ROLLBACKD, rollbackd
from tests.harness.data import restore_point, run, scalar, table_checksums
from tests.harness.restores import (
    cluster_state,
    killed_at,
    restore_config,
    write_after_restore_point,
)
from tests.harness.restores import restore_options as options
from tests.harness.restores import rollbackd_sessions_gone as sessions_gone
from tests.harness.servers import PgCluster

pytestmark = pytest.mark.e2e

SWAP_STEPS = [
    # point, state recovery finds, what it does, which data live then holds
    ("swap:shadow_created", "shadow_left", "reverted", "previous"),
    ("swap:shadow_filled", "shadow_left", "reverted", "previous"),
    ("swap:marked", "before_rename", "reverted", "previous"),
    ("swap:connections_blocked", "before_rename", "reverted", "previous"),
    ("swap:after_first_rename", "between_renames", "completed", "restored"),
    ("swap:after_second_rename", "swapped", "completed", "restored"),
    ("swap:aside_allowed", "swapped", "completed", "restored"),
]


@pytest.mark.parametrize(("point", "state", "outcome", "holds"), SWAP_STEPS,
                         ids=[s[0].split(":")[1] for s in SWAP_STEPS])
def test_a_swap_killed_at_each_step_is_completed_or_reverted_and_says_which(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path, point: str, state: str,
        outcome: str, holds: str) -> None:
    name = str(dbname_of(pg_db))
    _, rp = restore_point(pg_db, tmp_path)
    at_restore_point = table_checksums(pg_db, rp)
    write_after_restore_point(pg_db)
    before = table_checksums(pg_db, rp)
    config = restore_config(tmp_path, pg_db)

    killed_at(point, [*ROLLBACKD, "backup", "restore", rp.id, "--yes", "--config",
                      str(config)])
    sessions_gone(pg_cluster)
    if point == "swap:after_first_rename":
        # The reported failure: no live database at all.
        with pytest.raises(psycopg.OperationalError, match="does not exist"):
            psycopg.connect(pg_db, connect_timeout=5).close()

    left = cluster_state(pg_cluster, name)
    seen = inspect_interrupted_swap(options(pg_db, tmp_path))
    assert cluster_state(pg_cluster, name) == left, "inspecting changed something"
    assert (seen.state, seen.outcome, seen.applied) == (state, outcome, False)
    verb = {"completed": "complete", "reverted": "revert"}[outcome]
    assert f"would {verb} it: " in "\n".join(seen.describe()), seen.describe()

    recovery = recover_interrupted_swap(options(pg_db, tmp_path))

    text = "\n".join(recovery.describe())
    assert (recovery.state, recovery.outcome, recovery.live_holds, recovery.applied) == (
        state, outcome, holds, True), text
    assert table_checksums(pg_db, rp) == (at_restore_point if holds == "restored" else before)
    databases = cluster_state(pg_cluster, name)
    assert all(allow for _, allow, _ in databases), databases
    assert not any(comment for _, _, comment in databases), databases
    assert [d for d, _, _ in databases if "_shadow_" in str(d)] == []
    asides = [str(d) for d, _, _ in databases if "_rolledback_" in str(d)]
    if holds == "restored":
        assert asides == [recovery.kept]
        assert table_checksums(with_dbname(pg_db, asides[0]), rp) == before
        assert f"{name} holds the restored data" in text, text
        assert f"before the restore is kept in {recovery.kept}" in text, text
    else:
        assert asides == [] and recovery.kept is None
        assert f"{name} holds the data it had before the restore" in text, text
    assert json.loads(json.dumps(recovery.as_json()))["outcome"] == outcome
    assert recover_interrupted_swap(options(pg_db, tmp_path)).outcome == "nothing"


CLONE_STEPS = [
    ("swap:connections_blocked", "before_rename", "reverted", "previous"),
    ("swap:after_first_rename", "between_renames", "completed", "restored"),
    ("swap:after_second_rename", "swapped", "completed", "restored"),
]


@pytest.mark.parametrize(("point", "state", "outcome", "holds"), CLONE_STEPS,
                         ids=[s[0].split(":")[1] for s in CLONE_STEPS])
def test_a_clone_swap_killed_at_each_step_is_completed_or_reverted(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path, point: str, state: str,
        outcome: str, holds: str) -> None:
    name = str(dbname_of(pg_db))
    _, rp = restore_point(pg_db, tmp_path)
    at_clone = table_checksums(pg_db, rp)
    config = restore_config(tmp_path, pg_db)
    taken = rollbackd("backup", "clone", "--json", "--config", str(config))
    assert taken.returncode == 0, taken.stderr
    clone = json.loads(taken.stdout)["clone"]
    write_after_restore_point(pg_db)
    before = table_checksums(pg_db, rp)

    killed_at(point, [*ROLLBACKD, "backup", "restore", clone, "--strategy", "clone", "--yes",
                      "--config", str(config)])
    sessions_gone(pg_cluster)

    recovery = recover_interrupted_swap(options(pg_db, tmp_path))

    assert (recovery.state, recovery.outcome, recovery.live_holds) == (state, outcome, holds)
    assert table_checksums(pg_db, rp) == (at_clone if holds == "restored" else before)
    databases = cluster_state(pg_cluster, name)
    assert all(allow for _, allow, _ in databases), databases
    if holds == "previous":
        # The clone is still a restore point: it swaps in as if nothing had happened.
        again = rollbackd("backup", "restore", clone, "--strategy", "clone", "--yes",
                          "--config", str(config))
        assert again.returncode == 0, again.stderr
        assert table_checksums(pg_db, rp) == at_clone
    else:
        assert [str(d) for d, _, _ in databases if str(d) == clone] == []
        assert table_checksums(with_dbname(pg_db, str(recovery.kept)), rp) == before


def test_rerunning_a_restore_killed_between_the_renames_completes_it_and_names_the_copy(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    name = str(dbname_of(pg_db))
    _, rp = restore_point(pg_db, tmp_path)
    at_restore_point = table_checksums(pg_db, rp)
    write_after_restore_point(pg_db)
    config = restore_config(tmp_path, pg_db)
    killed_at("swap:after_first_rename", [*ROLLBACKD, "backup", "restore", rp.id, "--yes",
                                          "--config", str(config)])
    sessions_gone(pg_cluster)
    [aside] = [str(d) for d, _, _ in cluster_state(pg_cluster, name) if "_rolledback_" in str(d)]

    checked = rollbackd("backup", "recover", "--check", "--json", "--config", str(config))
    assert checked.returncode == 0, checked.stderr
    report = json.loads(checked.stdout)
    assert (report["state"], report["outcome"], report["applied"], report["kept"]) == (
        "between_renames", "completed", False, aside)
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        psycopg.connect(pg_db, connect_timeout=5).close()

    again = rollbackd("backup", "restore", rp.id, "--yes", "--config", str(config))

    assert again.returncode == 0, again.stderr
    assert "completed the interrupted swap" in again.stdout, again.stdout
    assert f"before the restore is kept in {aside}" in again.stdout, again.stdout
    assert table_checksums(pg_db, rp) == at_restore_point
    assert scalar(with_dbname(pg_db, aside),
                  "SELECT count(*) FROM users WHERE email = 'late@example.com'") == 1


def test_recover_by_hand_reverts_a_swap_killed_while_live_refused_connections(
        pg_cluster: PgCluster, pg_db: str, tmp_path: Path) -> None:
    _, rp = restore_point(pg_db, tmp_path)
    write_after_restore_point(pg_db)
    before = table_checksums(pg_db, rp)
    config = restore_config(tmp_path, pg_db)
    killed_at("swap:connections_blocked", [*ROLLBACKD, "backup", "restore", rp.id, "--yes",
                                           "--config", str(config)])
    sessions_gone(pg_cluster)
    with pytest.raises(psycopg.OperationalError, match="not currently accepting"):
        psycopg.connect(pg_db, connect_timeout=5).close()

    result = subprocess.run([*ROLLBACKD, "backup", "recover", "--config", str(config)],
                            capture_output=True, text=True, timeout=90, check=False)

    assert result.returncode == 0, result.stderr
    assert "reverted the interrupted swap" in result.stdout, result.stdout
    assert table_checksums(pg_db, rp) == before
    run(pg_db, "SELECT 1")
